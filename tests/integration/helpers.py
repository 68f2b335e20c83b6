"""Helpers shared by the backend test files that drive ``verify()`` directly."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from pytest_deploy import DeployFailure, Result, verify
from pytest_deploy.backends.base import short_path


def site(test_file: str, source: str) -> str:
    """``file:line  `source``` for the first line of ``test_file`` that reads ``source``, as messages cite it."""
    lines = Path(test_file).read_text().splitlines()
    line = next(n for n, text in enumerate(lines, 1) if text.strip() == source)
    return f"{short_path(test_file)}:{line}  `{source}`"


def line_of(test_file: str, source: str, after: str | None = None) -> int:
    """The number of the first line of ``test_file`` that reads ``source`` (after the first line reading ``after``)."""
    lines = [text.strip() for text in Path(test_file).read_text().splitlines()]
    start = lines.index(after) if after is not None else 0
    return next(n for n, text in enumerate(lines[start:], start + 1) if text == source)


def check(backend: str, model, inputs, dims, *, examples: int = 5, **kwargs) -> tuple[Result, str | None]:
    """verify() on ``backend``; the result, and the failure message (None when it passed).

    Runs in this process (``isolate="none"``) so that tests can watch the model through forward hooks
    and patched functions; isolation has its own tests (test_isolation.py)."""
    kwargs.setdefault("isolate", "none")
    try:
        return verify(model.eval(), backend, inputs=inputs, dims=dims, examples=examples, **kwargs), None
    except DeployFailure as exc:
        return exc.result, str(exc)


def record_spawned_runs(monkeypatch) -> list[tuple[list[tuple[int, ...]], list[tuple[int, ...]]]]:
    """Record each run of a spawned runtime (``pytest_deploy.worker.Runtime.run``, called in pytest's process): the
    shapes of the inputs sent to the worker process, and of the outputs its runtime (a TensorRT engine, an ONNX
    Runtime session) sent back. A patch of the runtime's own library cannot do this: the spawned interpreter imports
    it afresh, so the patch never reaches the process that runs the engine."""
    from pytest_deploy import worker

    runs: list[tuple[list[tuple[int, ...]], list[tuple[int, ...]]]] = []
    real = worker.Runtime.run

    def spy(self, args):
        leaves = real(self, args)
        runs.append(([tuple(a.shape) for a in args if hasattr(a, "shape")],
                     [tuple(v.shape) for _, v in leaves if hasattr(v, "shape")]))
        return leaves

    monkeypatch.setattr(worker.Runtime, "run", spy)
    return runs


class SmallCNN(nn.Module):
    """Conv, BatchNorm, ReLU, a strided conv and a linear head: the CNN of the precision and TensorRT tests."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class AbortingRuntime:
    """A spawned runtime (``pytest_deploy.worker.Runtime`` factory ``helpers:AbortingRuntime``) that opens fine and
    aborts the worker process on its first run, as a crashing GPU driver would."""

    def __init__(self, config: dict):
        self.info = {"opened_in": os.getpid()}

    def run(self, args):
        os.abort()


class CudaScriptRuntime:
    """A spawned runtime that runs a TorchScript file on CUDA (``config["path"]``): the GPU test of the spawned route."""

    def __init__(self, config: dict):
        import torch

        self.module = torch.jit.load(config["path"], map_location="cuda")
        self.info = {"device": torch.cuda.get_device_name(0)}

    def run(self, args):
        import torch

        with torch.no_grad():
            return [("output", self.module(*(a.to("cuda") for a in args)).cpu())]
