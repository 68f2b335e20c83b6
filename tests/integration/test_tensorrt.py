"""The ``tensorrt`` backend end to end: ONNX export → TensorRT engine → serialize → deserialize → execute on CUDA.

The end-to-end tests need the tensorrt module and a CUDA device (and trtexec on PATH for its route); elsewhere
they are skipped with the exact reason. The pytester tests run everywhere: without TensorRT or CUDA a
deployable test's ``[tensorrt]`` item is skipped with the install reason, and fails under ``--deploy-strict``.
"""

from __future__ import annotations

import shutil
import textwrap

import helpers  # tests/integration/helpers.py
import pytest
import torch
from torch import nn

from pytest_deploy import tensor, verify
from pytest_deploy.backends.tensorrt import unavailable_reason

HAS_CUDA = torch.cuda.is_available()


def needs_trt(precision: str = "fp32", builder: str = "python") -> pytest.MarkDecorator:
    """Skip unless the backend can run this check here, with the backend's own reason (tensorrt or polygraphy
    missing, no converter or quantizer for the precision, no CUDA device, no trtexec for that builder): a GPU
    machine that lacks one part says which, instead of failing at verify()."""
    reason = unavailable_reason({"precision": precision, "trt_builder": builder})
    if reason and not HAS_CUDA and "CUDA device" not in reason:
        reason += "; and no CUDA device here (torch.cuda.is_available() is False)"
    return pytest.mark.skipif(reason is not None, reason=reason or "runs")

def cnn() -> nn.Module:
    torch.manual_seed(0)
    return helpers.SmallCNN().eval()


INPUTS = [tensor("batch", 3, 16, 16)]
DIMS = {"batch": (1, 4)}


@needs_trt()
def test_cnn_fp32(tmp_path):
    result = verify(cnn(), "tensorrt", inputs=INPUTS, dims=DIMS, examples=5, cache_dir=tmp_path)
    assert result.outcome == "passed" and (result.atol, result.rtol) == (1e-3, 1e-3)
    assert result.max_abs_error <= 1e-3
    again = verify(cnn(), "trt", inputs=INPUTS, dims=DIMS, examples=2, cache_dir=tmp_path)
    assert again.cached  # the engine came from the artifact cache


@needs_trt("fp16")
def test_cnn_fp16_uses_fp16_tolerances(tmp_path):
    result = verify(cnn(), "tensorrt", inputs=INPUTS, dims=DIMS, examples=5, cache_dir=tmp_path, precision="fp16")
    assert result.outcome == "passed" and (result.atol, result.rtol) == (1e-2, 1e-2)
    assert result.details["trt_strongly_typed"] and result.details["precision_converter"]
    user = verify(cnn(), "tensorrt", inputs=INPUTS, dims=DIMS, examples=2, atol=5e-2, rtol=5e-2, precision="fp16")
    assert (user.atol, user.rtol) == (5e-2, 5e-2)


@needs_trt("int8")
def test_cnn_int8_builds_the_symmetric_qdq_graph_into_a_strongly_typed_engine(tmp_path):
    """precision=int8: the calibrated QDQ graph (int8 activations, symmetric) is TensorRT's explicit quantization;
    judged by the agreement gate, as the onnx backend's int8 is."""
    result = verify(cnn(), "tensorrt", inputs=INPUTS, dims=DIMS, examples=5, cache_dir=tmp_path, precision="int8")
    assert result.outcome == "passed", result.message
    assert result.details["trt_strongly_typed"] and result.details["quantization"]["target"] == "tensorrt"
    assert result.details["agreement"]["output"]["cosine"] >= 0.99


@needs_trt()
def test_dynamic_batch_runs_every_generated_shape(monkeypatch):
    """The engine runs in a spawned worker process: each run is recorded where it crosses into that process (in
    pytest's), with the shapes of the outputs the engine sent back; a batch whose outputs have that batch ran."""
    runs = helpers.record_spawned_runs(monkeypatch)
    model = nn.Sequential(nn.Linear(6, 12), nn.GELU(), nn.Linear(12, 3)).eval()
    result = verify(model, "tensorrt", inputs=[tensor("batch", 6)], dims={"batch": (1, 16)}, examples=10)
    assert result.outcome == "passed", result.message
    assert result.details["isolated"].startswith("spawned worker process"), result.details["isolated"]
    assert all(outputs == [(inputs[0][0], 3)] for inputs, outputs in runs), runs
    batches = {inputs[0][0] for inputs, _ in runs}
    assert {1, 16} <= batches and len(batches) >= 3, runs
    assert len(runs) >= result.examples


@needs_trt()
def test_timing_caches_of_two_builds_merge(tmp_path):
    """Two builds' timing caches (each model's own cache directory) merged as Polygraphy's save_timing_cache merges:
    the result is a timing cache TensorRT reads, holding at least what each held."""
    import tensorrt as trt
    from polygraphy.backend.trt import get_trt_logger

    from pytest_deploy.backends.tensorrt_engine import merge_timing_cache

    linear = nn.Sequential(nn.Linear(6, 12), nn.GELU(), nn.Linear(12, 3)).eval()
    for model, inputs, cache in ((cnn(), INPUTS, "a"), (linear, [tensor("batch", 6)], "b")):
        result = verify(model, "tensorrt", inputs=inputs, dims=DIMS, examples=2, cache_dir=tmp_path / cache)
        assert result.outcome == "passed", result.message
    [a], [b] = (list((tmp_path / cache).rglob("timing.cache")) for cache in ("a", "b"))
    merged = tmp_path / "merged.cache"
    shutil.copyfile(a, merged)
    merge_timing_cache({"into": str(merged), "from": str(b)})
    assert merged.stat().st_size >= max(a.stat().st_size, b.stat().st_size)
    builder = trt.Builder(get_trt_logger())
    assert builder.create_builder_config().create_timing_cache(merged.read_bytes())


@needs_trt("fp16", builder="trtexec")
def test_trtexec_route(tmp_path):
    result = verify(cnn(), "tensorrt", inputs=INPUTS, dims=DIMS, examples=3, cache_dir=tmp_path,
                    backend_options={"trt_builder": "trtexec"}, precision="fp16")
    assert result.outcome == "passed"


# ------------------------------------------------------------------------------ here: skipped


TEST_FILE = """
    import torch
    from pytest_deploy import deployable, tensor

    @deployable(backends=["trt"], inputs=[tensor("batch", 4)], dims={"batch": (1, 3)}, examples=2)
    def test_linear():
        return torch.nn.Linear(4, 2).eval()
"""


@pytest.mark.skipif(unavailable_reason({}) is None, reason="TensorRT and a CUDA device are present: nothing skips")
def test_pytest_item_skips_with_the_install_reason_and_fails_under_strict(pytester):
    reason = unavailable_reason({})
    pytester.makepyfile(textwrap.dedent(TEST_FILE))
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs", "-v")
    result.assert_outcomes(skipped=1)
    assert "test_linear[tensorrt] SKIPPED" in result.stdout.str()
    pattern = reason.replace("[", "[[]")  # fnmatch: the extra's brackets are literal
    result.stdout.fnmatch_lines([f"SKIPPED *{pattern}"])
    assert 'pip install "pytest-deploy[tensorrt]"' in reason
    result = pytester.runpytest("-p", "no:cacheprovider", "--deploy-strict")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*{pattern} (failing because of --deploy-strict)"])
    # at fp16 too: the item skips for TensorRT's absence, never passes at float32 in its place
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs", "--deploy-precision=fp16")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines([f"SKIPPED *{pattern}"])
