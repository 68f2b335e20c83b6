"""Crashes, hangs and interruptions: one check's worker dies, the session goes on and says what happened.

The crashes here are real: a forward that calls ``os.abort()``, a null-pointer read through ctypes,
``sys.exit`` inside a backend stage, a stage that sleeps past ``--deploy-timeout``, a SIGINT. Checks of
native backends run in a forked worker by default; ``native_demo`` (registered by the conftest below) is a
native backend whose ``compile`` stage does what its model asks, so the stage named in the message is
known; ``onnx`` and ``trace`` show the same for real backends.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import pytest_deploy.check
import pytest_deploy.isolation
import pytest_deploy.keep  # noqa: F401

NO_CACHE = ("-p", "no:cacheprovider")

CONFTEST = """
import ctypes
import os
import sys
import time

from pytest_deploy import Backend, register_backend


class NativeDemo(Backend):
    # a native backend whose compile stage misbehaves as the model's `crash` attribute asks
    name = "native_demo"
    native = True

    def build(self, ctx):
        how = getattr(ctx.model, "crash", None)
        with ctx.stage("compile"):
            if how == "segv":
                ctypes.string_at(0)  # reads address 0: SIGSEGV
            elif how == "abort":
                os.abort()
            elif how == "exit":
                sys.exit(3)
            elif how == "kill":
                os.kill(os.getpid(), 9)  # what the kernel's OOM killer does
            elif how == "hang":
                time.sleep(600)
        model = ctx.model
        return lambda args: model(*args)


register_backend(NativeDemo, replace=True)
"""

MODELS = """
import ctypes
import os
import signal
import time

import torch
from pytest_deploy import deployable, tensor

SPEC = dict(inputs=[tensor("batch", 4)], dims={"batch": (1, 3)}, examples=3)


class Net(torch.nn.Module):
    def __init__(self, crash=None):
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)
        self.crash = crash

    def forward(self, x):
        return self.fc(x)
"""


def report(pytester, name="report.json") -> dict[str, dict]:
    data = json.loads((pytester.path / name).read_text())
    return {(r["test"].split("::")[-1], r["backend"]): r for r in data["results"]}


def test_a_crash_in_a_native_stage_fails_that_check_and_the_session_goes_on(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_crashes=MODELS + """

@deployable(backends=["native_demo"], **SPEC)
def test_segfault():
    return Net("segv")


@deployable(backends=["native_demo"], **SPEC)
def test_abort():
    return Net("abort")


@deployable(backends=["native_demo"], **SPEC)
def test_exit():
    return Net("exit")


@deployable(backends=["native_demo"], **SPEC)
def test_killed():
    return Net("kill")


@deployable(backends=["native_demo"], **SPEC)
def test_fine_after_the_crashes():
    return Net()
""")
    result = pytester.runpytest(*NO_CACHE, "-p", "no:randomly", "--deploy-report=report.json")
    result.assert_outcomes(failed=4, passed=1)
    result.stdout.fnmatch_lines([
        "*native_demo: stage compile: worker died with SIGSEGV during compile*",
        "*native_demo: stage compile: worker died with SIGABRT during compile*",
        "*native_demo: stage compile: sys.exit(3) was called during compile*",
        "*native_demo: stage compile: worker died with SIGKILL (killed from outside: out of memory?*during compile*",
    ])
    results = report(pytester)
    assert {k[0]: (r["outcome"], r["stage"]) for k, r in results.items()} == {
        "test_segfault": ("failed", "compile"), "test_abort": ("failed", "compile"),
        "test_exit": ("failed", "compile"), "test_killed": ("failed", "compile"),
        "test_fine_after_the_crashes": ("passed", None)}
    assert results["test_fine_after_the_crashes", "native_demo"]["details"]["isolated"] == "worker process"


def test_a_forward_that_crashes_fails_under_a_real_backend_and_the_next_test_passes(pytester):
    # onnx is isolated by default; trace only under --deploy-isolate=all (without it, this crash would end pytest)
    pytester.makepyfile(test_forward=MODELS + """

class NullRead(Net):
    def forward(self, x):
        ctypes.string_at(0)
        return self.fc(x)


class Aborts(Net):
    def forward(self, x):
        os.abort()


@deployable(backends=["onnx"], **SPEC)
def test_null_pointer():
    return NullRead().eval()


@deployable(backends=["trace"], **SPEC)
def test_aborts():
    return Aborts().eval()


@deployable(backends=["trace", "onnx"], **SPEC)
def test_next():
    return Net().eval()
""")
    result = pytester.runpytest(*NO_CACHE, "--deploy-isolate=all", "--deploy-report=report.json")
    result.assert_outcomes(failed=2, passed=2)
    result.stdout.fnmatch_lines([
        "*onnx: stage run: worker died with SIGSEGV during the eager PyTorch reference run*",
        "*trace: stage run: worker died with SIGABRT during the eager PyTorch reference run*",
    ])
    results = report(pytester)
    assert results["test_next", "trace"]["outcome"] == results["test_next", "onnx"]["outcome"] == "passed"


def test_a_stage_that_hangs_is_killed_at_the_timeout(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_hang=MODELS + """

@deployable(backends=["native_demo"], **SPEC)
def test_hangs_in_compile():
    return Net("hang")


@deployable(backends=["native_demo"], **SPEC)
def test_fine():
    return Net()
""")
    result = pytester.runpytest(*NO_CACHE, "--deploy-timeout=1", "--deploy-report=report.json")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines([
        "*native_demo: stage compile: worker killed: timed out: compile ran longer than 1 s (--deploy-timeout)*"])
    assert report(pytester)["test_hangs_in_compile", "native_demo"]["stage"] == "compile"


def test_without_a_worker_the_timeout_interrupts_python_code(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_hang=MODELS + """

class Spins(Net):
    def forward(self, x):
        while x.shape[0] == 2:  # the canonical example: forever
            time.sleep(0.01)
        return self.fc(x)


@deployable(backends=["native_demo"], **SPEC)
def test_hangs_in_compile():
    return Net("hang")


@deployable(backends=["trace"], **SPEC)
def test_hangs_in_forward():
    return Spins()
""")
    result = pytester.runpytest(*NO_CACHE, "--deploy-timeout=1", "--deploy-isolate=none")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([
        "*native_demo: stage compile: timed out: compile ran longer than 1 s (--deploy-timeout)*",
        "*trace: stage run: timed out: the eager PyTorch reference run ran longer than 1 s*",
    ])


def test_ctrl_c_in_a_worker_stops_the_session_and_the_report_is_written(pytester):
    pytester.makepyfile(test_interrupt=MODELS + """

class Interrupts(Net):
    def forward(self, x):
        with open("forward.pid", "w") as fh:
            fh.write(str(os.getpid()))
        os.kill(int(os.environ["PYTEST_SESSION_PID"]), signal.SIGINT)  # pytest's process: as if Ctrl-C was pressed
        time.sleep(30)


@deployable(backends=["trace"], **SPEC)
def test_a_first():
    return Net().eval()


@deployable(backends=["trace"], **SPEC)
def test_b_interrupted():
    return Interrupts().eval()


@deployable(backends=["trace"], **SPEC)
def test_c_never_runs():
    return Net().eval()
""")
    # the session's pid for the model (never this process, whatever runs the model), and Ctrl-C handled as in a
    # terminal, whatever SIGINT disposition the session inherits from the process that started it
    pytester.makeconftest("""
import os
import signal

os.environ["PYTEST_SESSION_PID"] = str(os.getpid())
signal.signal(signal.SIGINT, signal.default_int_handler)
with open("session.pid", "w") as fh:
    fh.write(str(os.getpid()))
""")
    result = pytester.runpytest_subprocess(*NO_CACHE, "--deploy-isolate=all", "--deploy-report=report.json",
                                           timeout=120)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    # the model ran in the check's worker process, not in pytest's
    assert (pytester.path / "forward.pid").read_text() != (pytester.path / "session.pid").read_text()
    data = json.loads((pytester.path / "report.json").read_text())
    assert data["interrupted"] is True
    assert [(r["test"].split("::")[-1], r["outcome"]) for r in data["results"]] == [("test_a_first", "passed")]


def test_results_survive_a_dying_xdist_worker(pytester):
    # no isolation: the abort kills the xdist worker itself; the results it sent before are kept
    pytester.makepyfile(test_dies=MODELS + """

class Aborts(Net):
    def forward(self, x):
        os.abort()


@deployable(backends=["trace", "script"], **SPEC)
def test_a_fine():
    return Net().eval()


@deployable(backends=["trace"], **SPEC)
def test_b_kills_its_worker():
    return Aborts().eval()
""")
    result = pytester.runpytest_subprocess(*NO_CACHE, "-n", "1", "--deploy-isolate=none",
                                           "--deploy-report=report.json", timeout=240)
    result.assert_outcomes(passed=2, failed=1)
    results = report(pytester)
    assert results["test_a_fine", "trace"]["outcome"] == results["test_a_fine", "script"]["outcome"] == "passed"
    died = next(r for k, r in results.items() if k[0].startswith("test_b_kills_its_worker"))
    assert died["outcome"] == "failed" and "xdist worker running this check died" in died["message"]


# ------------------------------------------------------------------------------- keep artifacts


LOST_BRANCH = MODELS + """

class Sign(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


@deployable(backends=["trace", "onnx", "export"], **SPEC)
def test_sign():
    return Sign().eval()
"""


def test_keep_artifacts_leaves_a_repro_that_shows_the_mismatch_with_plain_python(pytester):
    pytester.makepyfile(test_keep=LOST_BRANCH)
    keep = pytester.path / "kept"
    result = pytester.runpytest(*NO_CACHE, f"--deploy-keep-artifacts={keep}", "--deploy-onnx-exporter=torchscript")
    # trace and the tracing ONNX exporter freeze the branch; export refuses it
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(["*kept: *test_sign*trace; reproduce without pytest: python *repro.py*"])
    for backend in ("trace", "onnx"):
        folder = next(keep.glob(f"*test_sign/{backend}"))
        assert {p.name for p in folder.iterdir()} >= {"artifact", "inputs.pt", "expected.pt", "actual.pt",
                                                       "repro.py", "failure.txt"}
        run = subprocess.run([sys.executable, str(folder / "repro.py")], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONWARNINGS": "ignore"})
        assert run.returncode == 1, run.stdout + run.stderr
        assert "MISMATCH" in run.stdout and "mismatch reproduced" in run.stdout
        assert "import pytest" not in (folder / "repro.py").read_text()
    # a failure before any example ran keeps what was built, says so, and writes no repro
    export = next(keep.glob("*test_sign/export"))
    assert not (export / "repro.py").exists() and "data-dependent" in (export / "failure.txt").read_text()


# ---------------------------------------------------------------------------------------- CUDA


class _OnDevice:
    """A native backend that runs the model on ``device``; ``uses_cuda`` as given."""

    def __init__(self, name, device, uses_cuda):
        from pytest_deploy import Backend

        outer = self

        class OnDevice(Backend):
            native = True

            def uses_cuda(self, options=None):
                return uses_cuda

            def build(self, ctx):
                import copy

                outer.build_pid = os.getpid()
                with ctx.stage("compile"):
                    model = copy.deepcopy(ctx.model).to(device)  # .to() moves in place: eager keeps the original
                return lambda args: model(*(a.to(device) for a in args)).cpu()

        OnDevice.name = name
        self.backend = OnDevice
        self.build_pid = None


def _net():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 2)).eval()


def test_a_check_that_uses_cuda_runs_in_pytests_process_and_says_why():
    from pytest_deploy import register_backend, tensor, verify

    demo = _OnDevice("cuda_demo", "cpu", uses_cuda=True)  # claims CUDA; runs on the CPU here
    register_backend(demo.backend, replace=True)
    result = verify(_net(), "cuda_demo", inputs=[tensor("batch", 4)], dims={"batch": (1, 3)}, examples=2)
    assert result.passed and demo.build_pid == os.getpid()
    assert result.details["isolated"].startswith("no: the check uses CUDA, which a forked worker process cannot")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(not _cuda(), reason="needs a CUDA device (none here)")
def test_on_a_gpu_cuda_fails_in_a_forked_worker_so_cuda_checks_stay_in_process():
    # why uses_cuda exists: after the parent has counted CUDA devices, a forked child cannot initialise CUDA
    from pytest_deploy import DeployFailure, register_backend, tensor, verify

    spec = dict(inputs=[tensor("batch", 4)], dims={"batch": (1, 3)}, examples=3)
    forked = _OnDevice("cuda_forked", "cuda", uses_cuda=False)
    register_backend(forked.backend, replace=True)
    with pytest.raises(DeployFailure, match="Cannot re-initialize CUDA in forked subprocess"):
        verify(_net(), "cuda_forked", **spec)
    kept = _OnDevice("cuda_kept", "cuda", uses_cuda=True)
    register_backend(kept.backend, replace=True)
    result = verify(_net(), "cuda_kept", **spec)
    assert result.passed and kept.build_pid == os.getpid()


def test_a_worker_killed_mid_check_leaves_no_work_directory(tmp_path, monkeypatch):
    """A check given no workdir makes its own; the worker that is killed (here: a timeout) cannot remove it,
    so pytest's process does."""
    import tempfile
    import time

    from pytest_deploy import Backend, DeployFailure, register_backend, tensor, verify

    class Hangs(Backend):
        name = "hang_demo"
        native = True

        def build(self, ctx):
            with ctx.stage("compile"):
                open(ctx.path("partial.bin"), "wb").close()
                time.sleep(60)

    register_backend(Hangs, replace=True)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(DeployFailure, match="timed out"):
        verify(_net(), "hang_demo", inputs=[tensor("batch", 4)], dims={"batch": (1, 2)}, examples=2, timeout=2)
    assert not list(tmp_path.glob("pytest-deploy-*"))
