"""A backend's runtime in a spawned worker process: how CUDA checks run (CUDA cannot start in a forked child).

The ``spawn_runtime`` backend option puts the same route under test on this CPU-only machine: the ONNX Runtime
session is created and run in a fresh interpreter, and a crash there fails that one check, naming the signal and
the stage, while pytest's process goes on.
"""

from __future__ import annotations

import os

import helpers  # tests/integration/helpers.py
import pytest
import torch
from torch import nn

from pytest_deploy import Backend, DeployFailure, register_backend, tensor, verify
from pytest_deploy.backends.base import spawned_runtime

pytest.importorskip("onnxruntime")

SPAWN = {"spawn_runtime": True}


def test_onnx_runtime_runs_in_a_spawned_worker(monkeypatch):
    import onnxruntime

    def refuse(*args, **kwargs):
        raise AssertionError("an ONNX Runtime session was created in pytest's process")

    # the spawned interpreter imports onnxruntime afresh; in this process no session may be made
    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)
    model = helpers.SmallCNN().eval()
    result = verify(model, "onnx", inputs=[tensor("batch", 3, 16, 16)], dims={"batch": (1, 2)}, examples=3,
                    backend_options=SPAWN, isolate="none", cache_dir=None)
    assert result.passed and result.examples == 3
    assert result.details["isolated"].startswith("spawned worker process")
    assert result.details["onnxruntime_provider"] == "CPUExecutionProvider"
    assert result.max_abs_error is not None and result.max_abs_error < 1e-4


def test_spawned_runtime_runs_every_generated_shape(monkeypatch):
    """The observation test_tensorrt.py's dynamic-batch test makes of its engine, here on ONNX Runtime's CPU session
    in its spawned worker: every generated batch, the dims' bounds among them, ran there."""
    runs = helpers.record_spawned_runs(monkeypatch)
    model = nn.Sequential(nn.Linear(6, 12), nn.GELU(), nn.Linear(12, 3)).eval()
    result = verify(model, "onnx", inputs=[tensor("batch", 6)], dims={"batch": (1, 16)}, examples=10,
                    backend_options=SPAWN, cache_dir=None)
    assert result.passed and result.details["isolated"].startswith("spawned worker process")
    assert all(outputs == [(inputs[0][0], 3)] for inputs, outputs in runs), runs
    batches = {inputs[0][0] for inputs, _ in runs}
    assert {1, 16} <= batches and len(batches) >= 3, runs
    assert len(runs) >= result.examples


def test_onnx_spawned_runtime_finds_a_mismatch():
    class Drifts(nn.Module):
        """Adds 1 only while not exported: ONNX Runtime's outputs differ from eager by exactly 1."""

        def forward(self, x):
            return x + 1 if not torch.compiler.is_compiling() and not torch.onnx.is_in_onnx_export() else x

    with pytest.raises(DeployFailure) as info:
        verify(Drifts(), "onnx", inputs=[tensor("batch", 4)], dims={"batch": (1, 2)}, examples=2,
               backend_options=SPAWN, isolate="none", cache_dir=None)
    assert info.value.result.stage == "compare"
    assert info.value.result.max_abs_error == pytest.approx(1.0)


class CrashingRuntime(Backend):
    """Opens ``helpers:AbortingRuntime`` in a spawned worker: the first example's run aborts that process."""

    name = "spawn_crash_demo"
    spawns_runtime = True

    def build(self, ctx):
        from pytest_deploy.compare import Leaves

        assert ctx.spawn_runtime
        with ctx.stage("load"):
            runtime = spawned_runtime(ctx, "crash demo", "helpers:AbortingRuntime", {})
        ctx.note("opened_in", runtime.info["opened_in"])
        return lambda args: Leaves(runtime.run(args))


def test_a_crash_in_the_spawned_runtime_fails_that_check_only():
    register_backend(CrashingRuntime, replace=True)
    model = nn.Linear(4, 2).eval()
    spec = dict(inputs=[tensor("batch", 4)], dims={"batch": (1, 2)}, examples=2, isolate="none", cache_dir=None)
    with pytest.raises(DeployFailure) as info:
        verify(model, "spawn_crash_demo", backend_options=SPAWN, **spec)
    result = info.value.result
    assert result.stage == "run"
    assert "SIGABRT" in result.message and "stage run" in result.message
    assert result.details["opened_in"] != os.getpid()  # the runtime lived in another process
    # this process is intact: the next check runs
    assert verify(model, "trace", **spec).passed


class CudaScript(Backend):
    """TorchScript run on CUDA by ``helpers:CudaScriptRuntime`` in a spawned worker."""

    name = "spawn_cuda_demo"
    native = True
    spawns_runtime = True

    def uses_cuda(self, options=None):
        return True

    def build(self, ctx):
        from pytest_deploy.compare import Leaves

        path = ctx.path("model.pt")
        with ctx.stage("export"):
            torch.jit.trace(ctx.model, ctx.canonical.args).save(path)
        with ctx.stage("load"):
            runtime = spawned_runtime(ctx, "CUDA demo", "helpers:CudaScriptRuntime", {"path": path})
        ctx.note("device", runtime.info["device"])
        return lambda args: Leaves(runtime.run(args))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")
def test_on_a_gpu_cuda_starts_in_the_spawned_worker_after_the_parent_counted_devices():
    torch.cuda.get_device_name(0)  # pytest's process has initialised CUDA: a forked child could not any more
    register_backend(CudaScript, replace=True)
    result = verify(nn.Linear(4, 2).eval(), "spawn_cuda_demo", inputs=[tensor("batch", 4)], dims={"batch": (1, 2)},
                    examples=3, cache_dir=None)
    assert result.passed and result.details["isolated"].startswith("spawned worker process")
    assert result.details["device"] == torch.cuda.get_device_name(0)


def test_tvm_runtime_runs_in_a_spawned_worker(monkeypatch):
    pytest.importorskip("tvm")
    from pytest_deploy.backends.tvm import TvmBackend

    if TvmBackend().unavailable_reason({}):
        pytest.skip(TvmBackend().unavailable_reason({}))
    import tvm

    def refuse(*args, **kwargs):
        raise AssertionError("a Relax VM was created in pytest's process")

    monkeypatch.setattr(tvm.relax, "VirtualMachine", refuse)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    result = verify(model, "tvm", inputs=[tensor("batch", 4)], dims={"batch": (1, 3)}, examples=3,
                    backend_options=SPAWN, isolate="none", cache_dir=None)
    assert result.passed and result.details["isolated"].startswith("spawned worker process")
