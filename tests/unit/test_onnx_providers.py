"""The execution providers an ONNX Runtime session is built with (issue 26): the CUDA provider with TF32 off, as
the fp32 tolerances assume and as the TensorRT backend builds; the CPU provider as it is. Pure: no GPU needed."""

from __future__ import annotations

from pytest_deploy.backends.onnx import session_providers


def test_the_cuda_provider_runs_with_tf32_off():
    assert session_providers(["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        ("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]


def test_the_cpu_provider_gets_no_options():
    assert session_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
