"""Models from five libraries beyond transformers (tiny configs, random weights, built offline), declared as a
user would.

Each model in :mod:`libs.zoo` becomes one ``@deployable`` model test whose inputs are what its ``forward``
takes: by keyword for diffusers and x-transformers, positionally for monai, kornia and torch_geometric (node
features and an ``edge_index`` whose values are bounded by the ``nodes`` dim). No tolerance is set: every
backend compares at its defaults. A library that is not installed skips its tests with the reason.

Real deployment defects are declared in ``DEFECTS`` as strict expected failures with the stage they must fail
at (``tests/corpora/hooks.py`` checks the stage). False failures caused by a pytest-deploy bug whose fix is under
way are in ``PENDING``: non-strict expected failures whose reason starts ``PENDING-FIX`` and names the bug.

CI runs the models in ``CI_SUBSET`` (at least one of each library); ``make libs-corpus`` runs them all
(``PYTEST_DEPLOY_LIBS=all``), and ``PYTEST_DEPLOY_LIBS=monai,kornia`` runs the named libraries or models.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from libs import zoo
from pytest_deploy import deployable, mask, tensor

BACKENDS = ["trace", "script", "export", "onnx", "tvm"]
EXAMPLES = 5

#: Models CI runs; ``PYTEST_DEPLOY_LIBS=all`` (``make libs-corpus``) runs every one.
CI_SUBSET = ("transformer2d", "monai_unet", "xt_encoder_mask", "gaussian_blur", "gcn")

#: (model, backend) -> "stage: cause" of a real deployment defect, each checked by running the same path by hand
#: (torch 2.13, ONNX Runtime 1.32, TVM 0.27; the libraries' pins in requirements-dev.txt).
DEFECTS: dict[tuple[str, str], str] = {
    # diffusers
    **{(name, "script"): ("export: torch.jit.script cannot compile get_timestep_embedding's call: an int passed "
                          "for a float parameter (diffusers/models/embeddings.py)") for name in ("unet2d", "unet1d")},
    **{(name, "script"): ("export: torch.jit.script cannot compile diffusers' attention: keyword-argument "
                          "expansion (**kwargs)") for name in ("unet2d_condition", "transformer2d")},
    ("autoencoder_kl", "script"): ("export: torch.jit.script cannot compile diffusers' attention processor "
                                   "lookup: a nested function definition (diffusers/models/attention.py)"),
    ("dit", "script"): ("export: torch.jit.script cannot compile the patch embedding: an optional module "
                        "attribute called (diffusers/models/embeddings.py)"),
    # kornia
    ("gaussian_blur", "script"): ("export: torch.jit.script cannot compile kornia's get_gaussian_kernel2d: a list "
                                  "comprehension with an if (kornia/filters/kernels.py)"),
    ("sobel", "script"): ("export: torch.jit.script cannot compile kornia's get_spatial_gradient_kernel2d: keyword-only "
                          "arguments with defaults (kornia/filters/kernels.py)"),
    ("median_blur", "script"): ("export: torch.jit.script cannot compile kornia's padding check: a module-level set "
                                "used as a value (kornia/filters/median.py)"),
    ("ssim_loss", "script"): ("export: torch.jit.script cannot compile kornia's ssim: a module-level set used as a "
                              "value (kornia/metrics)"),
    # monai
    ("swin_unetr", "script"): ("export: torch.jit.script cannot compile MONAI's PatchEmbed: a tuple indexed past "
                               "its length in the 3-D branch of a 2-D model (patchembedding.py)"),
    **{("dice_loss", backend): ("export: torch.export cannot follow DiceLoss's reduce_axis = "
                                "torch.arange(2, len(input.shape)).tolist() (dice.py): data-dependent ints used as "
                                "torch.sum dims, with static shapes too")
       for backend in ("export", "onnx", "tvm")},
    # x_transformers
    **{(name, "script"): ("export: torch.jit.script cannot compile x-transformers: keyword-only arguments with "
                          "defaults (and einops/einx calls) throughout its forward methods")
       for name in ("xt_decoder", "xt_encoder_mask", "xt_rotary", "xt_alibi", "xt_rel_pos", "xt_vit",
                    "xt_continuous", "xt_autoregressive_loss")},
    **{(name, "trace"): ("run: the traced graph keeps the sequence length it was traced at (position biases and "
                         "masks built from Python ints): another seq fails in the TorchScript interpreter")
       for name in ("xt_encoder_mask", "xt_alibi", "xt_rel_pos")},
    **{(name, backend): ("export: torch.export specialises seq to the example's length (position biases and masks "
                         "built from Python ints of the shape)")
       for name in ("xt_encoder_mask", "xt_alibi", "xt_rel_pos") for backend in ("export", "onnx", "tvm")},
    ("xt_autoregressive_loss", "tvm"): ("export: TVM's importers cannot convert the cross-entropy: no aten.amax in "
                                        "the exported-program importer, and the ONNX frontend refuses a Reshape of "
                                        "a scalar (PrimType)"),
    # torch_geometric
    ("gcn", "script"): ("load: the scripted GCNConv does not load back: torch.jit.load finds edge_index typed Tensor "
                        "in one branch and SparseTensor in the other (gcn_conv.py's cached normalisation)"),
    ("gat", "script"): ("export: torch.jit.script cannot compile GATConv: an Optional[Tensor] used as a bool "
                        "(gat_conv.py)"),
    ("gcn", "tvm"): ("export: TVM's importers cannot convert the message passing: no aten.scatter_add in the "
                     "exported-program importer, and the ONNX frontend fails on the ScatterElements graph"),
    ("gat", "tvm"): ("export: TVM's importers cannot convert the message passing: no aten.scatter_reduce or "
                     "aten.scatter_add in the exported-program importer, and the ONNX frontend fails on the graph"),
}

#: (model, backend) -> "PENDING-FIX: ..." for a false failure from a pytest-deploy bug being fixed (issue 22).
PENDING: dict[tuple[str, str], str] = {}

def _spec(spec):
    kind, shape = spec[0], spec[1]
    if kind == "int":
        return tensor(*shape, dtype=torch.int64, low=spec[2], high=spec[3])
    if kind == "mask":
        return mask(*shape, dtype=torch.bool)
    return tensor(*shape, low=spec[2], high=spec[3])


def _declare(model: zoo.Model):
    def build():
        pytest.importorskip(model.library, reason=f"the {model.name} model test needs {model.library} "
                                                  "(pinned in requirements-dev.txt)")
        return model.build()

    build.__name__ = f"test_{model.name}"
    build.__doc__ = f"{model.library}: {model.name}{': ' + model.notes if model.notes else ''}"
    xfail = {backend: reason for (name, backend), reason in DEFECTS.items() if name == model.name}
    inputs = ({k: _spec(v) for k, v in model.inputs.items()} if isinstance(model.inputs, dict)
              else [_spec(v) for v in model.inputs])
    test = deployable(backends=BACKENDS, inputs=inputs, dims=model.dims, examples=EXAMPLES, xfail=xfail or None)(build)
    test.corpus, test.corpus_group = "libs", model.library  # tests/corpora/hooks.py selects and marks by these
    test.in_ci_subset = model.name in CI_SUBSET
    test.pending_fix = {backend: reason for (name, backend), reason in PENDING.items() if name == model.name}
    return pytest.mark.libs(test)


for _model in zoo.MODELS:
    globals()[f"test_{_model.name}"] = _declare(_model)
