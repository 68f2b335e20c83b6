"""Hugging Face architectures from tiny configs (random weights, built offline), declared as a user would.

Each architecture in :mod:`hf.zoo` becomes one ``@deployable`` model test whose inputs are what its
``forward`` takes, by keyword: token ids with ``tensor(..., dtype=torch.int64)``, padding masks with
``mask(...)``, pixel values and waveforms as floats. For BERT that is::

    @deployable(backends=BACKENDS, dims={"batch": (1, 2), "seq": (2, 12)}, examples=EXAMPLES,
                inputs={"input_ids": tensor("batch", "seq", dtype=torch.int64, low=0, high=99),
                        "attention_mask": mask("batch", "seq"),
                        "token_type_ids": tensor("batch", "seq", dtype=torch.int64, low=0, high=2)})
    def test_bert():
        return BertModel(BertConfig(...), attn_implementation="eager").eval()

Real deployment defects are declared in ``DEFECTS`` as strict expected failures, each with the stage it
must fail at (``tests/hf/conftest.py`` checks the stage too): a failure at another stage, a new failure,
or a defect that went away fails the run. Nothing here is a failure caused by the generated inputs.

CI runs the architectures in ``CI_SUBSET`` (one or more of each family and every kind of input); ``make
hf-corpus`` runs them all (``PYTEST_DEPLOY_HF=all``).
"""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers", reason="the Hugging Face corpus needs transformers (requirements-dev.txt)")

from hf import zoo
from pytest_deploy import deployable, mask, tensor

BACKENDS = ["trace", "script", "export", "onnx", "tvm"]
EXAMPLES = 5

#: Architectures CI runs; ``PYTEST_DEPLOY_HF=all`` (``make hf-corpus``) runs every one.
CI_SUBSET = ("bert", "distilbert", "gpt2", "llama", "t5", "vit", "mobilenet_v2", "mobilenet_v2_init", "wav2vec2")

_SCRIPT = ("export: torch.jit.script cannot compile Hugging Face modules: it compiles every attribute's class "
           "and finds no TorchScript source for the config stored on the module")
_TABLE = ("compile: position embeddings cut from a fixed-size table to [:seq]: TVM types the result T.min(seq, 64) and "
          "leaves the ops after it unlowered")
_SCORES = ("compile: attention scores plus the broadcast padding mask over dynamic seq and dec_seq: TVM leaves "
           "relax.add and softmax unlowered")
_CONV_TRIM = ("compile: the positional convolution's padding trim on a dynamic length: TVM cannot infer the shape and "
              "leaves the ops after it unlowered")
_VACUOUS = "reference: vacuous: with the library's default init at this size every output is (near) zero"

#: (architecture, backend) -> "stage: cause" of a real deployment defect, found by running the corpus (make
#: hf-corpus; transformers 5.24, torch 2.13, TVM 0.27, ONNX Runtime 1.32). None comes from the generated inputs.
DEFECTS: dict[tuple[str, str], str] = {
    **{(a.name, "script"): _SCRIPT for a in zoo.ARCHS},
    **{(f"{a.name}_init", "script"): _SCRIPT for a in zoo.ARCHS if a.vanishing},
    **{(name, "tvm"): _TABLE for name in ("bert", "albert", "electra", "distilbert", "clip_text")},
    **{(name, "tvm"): _SCORES for name in ("t5", "bart", "marian", "pegasus")},
    **{(name, "tvm"): _CONV_TRIM for name in ("wav2vec2", "hubert")},
    ("deberta_v2", "tvm"): "export: TVM's importer cannot convert aten.log of the int64 relative positions (relax.log)",
    ("opt", "tvm"): "export: TVM's importer cannot reshape a tensor whose shape it lost (aten.view in the attention)",
    ("whisper", "tvm"): "export: TVM's importer cannot convert aten.repeat with a symbolic count (relax.tile)",
    ("falcon", "tvm"): ("compare: TVM 0.27 miscomputes fused_qkv[..., [-2], :] (a list index with a negative value) "
                        "in the multi-query split: wrong logits, no error"),
    **{(name, backend): _VACUOUS for name in ("mobilenet_v2", "efficientnet")
       for backend in ("trace", "export", "onnx", "tvm")},
}


#: ``PYTEST_DEPLOY_HF_PRECISION=fp16`` (make hf-corpus-fp16): every architecture on onnx, converted to float16 and
#: judged with the default fp16 tolerances; its declared defects are these (and the vacuous ones above).
PRECISION = os.environ.get("PYTEST_DEPLOY_HF_PRECISION") or None
_AUDIO_FP16 = ("compare: float16 rounding in the convolutional feature encoder over the raw waveform reaches 2e-2 to "
               "2.6e-2 on O(1) features, over the 1e-2 tolerance; the verified block list keeps its first Conv "
               "(and, for Wav2Vec2, the GroupNorm after it) float32")
FP16_DEFECTS: dict[tuple[str, str], str] = {
    **{(name, "onnx"): _AUDIO_FP16 for name in ("wav2vec2", "hubert")},
    **{key: reason for key, reason in DEFECTS.items() if key[1] == "onnx"},
}


def _spec(kind_spec):
    kind, shape = kind_spec[0], kind_spec[1]
    if kind == "ids":
        return tensor(*shape, dtype=torch.int64, low=kind_spec[2], high=kind_spec[3])
    if kind == "mask":
        return mask(*shape)
    return tensor(*shape, low=kind_spec[2], high=kind_spec[3])


def _declare(name: str, arch: zoo.Arch, init: str):
    def build():
        return arch.build(init=init)

    build.__name__ = f"test_{name}"
    build.__doc__ = f"{arch.model_class} ({arch.family}){': ' + arch.notes if arch.notes else ''}"
    defects = FP16_DEFECTS if PRECISION == "fp16" else DEFECTS
    xfail = {backend: reason for (arch_name, backend), reason in defects.items() if arch_name == name}
    test = deployable(backends=["onnx"] if PRECISION else BACKENDS, inputs={k: _spec(v) for k, v in arch.inputs.items()},
                      dims=arch.dims, examples=EXAMPLES, xfail=xfail or None, precision=PRECISION)(build)
    test.in_ci_subset = name in CI_SUBSET  # tests/hf/conftest.py deselects the others unless PYTEST_DEPLOY_HF=all
    test.corpus, test.corpus_group = "hf", arch.family
    return pytest.mark.hf(test)


for _arch in zoo.ARCHS:
    globals()[f"test_{_arch.name}"] = _declare(_arch.name, _arch, "default")
    if _arch.vanishing:  # the same architecture with weights whose signal survives: the real check
        globals()[f"test_{_arch.name}_init"] = _declare(f"{_arch.name}_init", _arch, "normal")
