"""The GPU paths a CPU machine cannot check: ONNX Runtime's CUDA provider at fp32 and fp16, TVM built for CUDA.

Each test skips, with what is missing, where there is no CUDA device or no runtime for it;
``tests/gpu/run_gpu_checks.sh`` runs them (and the other CUDA tests) on a GPU machine, one line per check.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pytest_deploy import tensor, verify
from pytest_deploy.backends import get_backend

SPEC = dict(inputs=[tensor("batch", 3, 16, 16)], dims={"batch": (1, 4)}, examples=4)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5)).eval()


NO_CUDA = "needs a CUDA device: torch.cuda.is_available() is False here"


def _onnx_cuda_reason(precision: str) -> str | None:
    """Why ONNX Runtime's CUDA provider cannot run the check at ``precision`` here (the onnx backend's own reason
    first: onnx, onnxscript, the fp16 converter), or None."""
    if not torch.cuda.is_available():
        return NO_CUDA
    reason = get_backend("onnx").unavailable_reason({"precision": precision})
    if reason:
        return reason
    import onnxruntime

    providers = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        return (f"needs onnxruntime-gpu: onnxruntime {onnxruntime.__version__} here has no CUDAExecutionProvider "
                f"(it has {', '.join(providers)}); pip install onnxruntime-gpu")
    return None


def _onnx_case(precision: str):
    reason = _onnx_cuda_reason(precision)
    return pytest.param(precision, marks=pytest.mark.skipif(reason is not None, reason=str(reason)))


@pytest.mark.parametrize("precision", [_onnx_case("fp32"), _onnx_case("fp16")])
def test_onnx_runs_on_the_cuda_provider(precision):
    result = verify(_model(), "onnx", precision=precision, **SPEC)
    assert result.passed, result.message
    assert result.details["onnxruntime_provider"] == "CUDAExecutionProvider", result.details
    assert result.details["onnxruntime_tf32"] is False, result.details  # use_tf32=0, as fp32 tolerances assume
    assert result.details["isolated"].startswith("spawned worker process"), result.details["isolated"]


def _tvm_cuda_reason() -> str | None:
    """Why TVM cannot build for CUDA here (the tvm backend's own reason: tvm missing, no linker, a TVM built without
    CUDA), or None."""
    if not torch.cuda.is_available():
        return NO_CUDA
    return get_backend("tvm").unavailable_reason({"tvm_target": "cuda"})


@pytest.mark.skipif(_tvm_cuda_reason() is not None, reason=str(_tvm_cuda_reason()))
def test_tvm_builds_and_runs_for_cuda():
    result = verify(_model(), "tvm", backend_options={"tvm_target": "cuda"}, **SPEC)
    assert result.passed, result.message
    assert result.details["tvm_target"] == "cuda"


class _Amplified(nn.Module):
    """Finite in float32 (the amplified values are scaled back down); beyond 65504, so inf, in float16."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return (torch.relu(self.conv(x)) * 1000.0 * 100.0 * 1e-5).mean((2, 3))


@pytest.mark.skipif(_onnx_cuda_reason("fp16") is not None, reason=str(_onnx_cuda_reason("fp16")))
def test_onnx_fp16_overflow_is_located_on_the_cuda_provider():
    """The probe runs in the spawned worker, on the CUDA provider, where the float16 kernels overflow (pytest's
    process would run it on the CPU provider, which computes float16 nodes in float32 and finds nothing)."""
    from pytest_deploy import DeployFailure

    torch.manual_seed(0)
    with pytest.raises(DeployFailure) as info:
        verify(_Amplified().eval(), "onnx", precision="fp16", **SPEC)
    details = info.value.result.details
    assert details["onnxruntime_provider"] == "CUDAExecutionProvider", details
    assert details["precision_emulation"] is None, details
    assert details["precision_overflow"]["op"] == "Mul", details.get("precision_overflow_error")
