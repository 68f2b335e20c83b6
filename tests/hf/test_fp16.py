"""Two corpus architectures at fp16 in every CI run (the whole corpus at fp16 is ``make hf-corpus-fp16``): BERT,
whose last hidden state is a graph output the pooler reads again, and Llama, whose rotary positions cast an int64
``arange`` to float. onnxconverter-common's converted graphs of both were refused by ONNX Runtime before
pytest-deploy mended them (docs/hf-corpus.md, "At fp16")."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers", reason="the Hugging Face corpus needs transformers (requirements-dev.txt)")
for _module in ("onnx", "onnxscript", "onnxsim", "onnxruntime", "onnxconverter_common"):
    pytest.importorskip(_module)

from hf import zoo
from hf.test_corpus import _spec
from pytest_deploy import verify
from pytest_deploy.compare import DEFAULT_TOLERANCES


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_a_transformer_passes_at_fp16_with_the_default_tolerance(name):
    arch = zoo.BY_NAME[name]
    result = verify(arch.build(), "onnx", inputs={k: _spec(v) for k, v in arch.inputs.items()}, dims=arch.dims,
                    examples=3, precision="fp16", isolate="none")
    assert result.outcome == "passed", result.message
    assert (result.atol, result.rtol) == DEFAULT_TOLERANCES["onnx"]["float16"]
    assert "rounded to float16" in result.details["precision_emulation"]
    assert result.max_abs_error > 1e-5  # float16 ran, not float32
