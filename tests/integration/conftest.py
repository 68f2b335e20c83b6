"""Shared set-up of the integration tests (they drive pytest-deploy through ``pytester``)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    """pytester runs print the summary for a 400-column terminal, so tests read the full table; the tests of the
    compact layout (test_reports.py) set COLUMNS themselves."""
    monkeypatch.setenv("COLUMNS", "400")


@pytest.fixture(scope="session", autouse=True)
def torch_fully_imported():
    """Run each in-process backend once, and import the native ones' libraries, before any ``pytester`` run.

    ``pytester`` removes from ``sys.modules``, after each run, every module the run imported. Parts of
    torch that load lazily (``torch._dynamo``, ``torch._inductor``, what ``torch.export`` and the
    optimizers pull in) register C++ operator libraries when imported and fail when imported a second
    time in the same process; importing them here, before any snapshot, keeps them loaded.
    """
    import torch

    from pytest_deploy import tensor, verify

    def make():
        return torch.nn.Sequential(torch.nn.Linear(4, 2)).eval()

    train = {"scheduler": lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, 0.5), "steps": 1,
             "save": ("epoch", "model", "optimizer", "scheduler")}
    for backend in ("state_dict", "checkpoint", "trace", "script", "export"):
        verify(make(), backend, factory=make, inputs=[tensor("batch", 4)], dims={"batch": (1, 3)}, examples=1,
               train=train)
    # the same for the native backends' libraries, which pytest-deploy imports before forking a worker:
    # onnx's C++ extension aborts the process when it is imported a second time
    from pytest_deploy.backends import get_backend

    for backend in ("onnx", "tvm"):
        if get_backend(backend).unavailable_reason() is None:
            get_backend(backend).prepare()
