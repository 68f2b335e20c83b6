"""The ``tensorrt`` backend's runtime and build plumbing on CPU: what ``TrtRuntime`` feeds Polygraphy's ``TrtRunner``
(a stub standing in for it, holding to the rules runner.py states), the copies of its outputs and its close, the
builder worker started only for a build, the timing cache's lock, trtexec's process handling (a fake ``trtexec``
script) and the ONNX export's external-data threshold. TensorRT itself runs in ``tests/integration/test_tensorrt.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import types
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from pytest_deploy import tensor
from pytest_deploy.backends import onnx_export
from pytest_deploy.backends import tensorrt as trt_backend
from pytest_deploy.backends.tensorrt_engine import TrtRuntime
from pytest_deploy.spec import InputSpace

polygraphy_array = pytest.importorskip("polygraphy.util.array")


class StubEngine:
    """The engine's one question the runtime asks: is an input a shape tensor (its values read on the host)?"""

    def __init__(self, shape_inputs=()):
        self.shape_inputs = set(shape_inputs)

    def is_shape_inference_io(self, name: str) -> bool:
        return name in self.shape_inputs


class StubRunner:
    """Stands in for Polygraphy's ``TrtRunner``: keeps each feed, refuses a shape tensor outside host memory as
    ``TrtRunner._infer_impl`` does, and returns views of one host buffer per output that every infer overwrites (what
    ``copy_outputs_to_host=True`` gives: ``_get_array_on_cpu`` reuses ``host_output_buffers``)."""

    def __init__(self, engine: StubEngine):
        self.engine = engine
        self.feeds: list[OrderedDict] = []
        self.host_buffer = torch.zeros(4)
        self.is_active = True
        self.deactivations = 0

    def infer(self, feed, copy_outputs_to_host=None):
        for name, array in feed.items():
            if self.engine.is_shape_inference_io(name) and not polygraphy_array.is_on_cpu(array):
                raise AssertionError(f"TrtRunner refuses shape tensor {name} outside host memory")
        self.feeds.append(feed)
        self.host_buffer.fill_(len(self.feeds))  # this infer's result, in the reused buffer
        return OrderedDict(out=self.host_buffer[:2])

    def deactivate(self):
        self.is_active = False
        self.deactivations += 1


def runtime(inputs=("x",), shape_inputs=(), device="cpu") -> tuple[TrtRuntime, StubRunner]:
    rt = object.__new__(TrtRuntime)
    rt.runner = StubRunner(StubEngine(shape_inputs))
    rt.declared = list(inputs)
    rt.inputs = list(inputs)
    rt.outputs = ["out"]
    rt.device = device
    return rt, rt.runner


# ------------------------------------------------------------------------------ TrtRuntime


def test_shape_tensor_inputs_stay_on_the_host_and_the_others_go_to_the_device():
    """The meta device stands in for CUDA: anything not on the CPU is what TrtRunner refuses for a shape tensor."""
    rt, runner = runtime(inputs=("x", "target"), shape_inputs={"target"}, device="meta")
    x, target = torch.randn(2, 3).t(), torch.tensor([3, 2])
    rt.run((x, target))
    feed = runner.feeds[0]
    assert feed["target"].device.type == "cpu" and torch.equal(feed["target"], target)
    assert feed["x"].device.type == "meta" and feed["x"].is_contiguous() and feed["x"].shape == (3, 2)


def test_outputs_are_copies_the_next_run_does_not_overwrite():
    rt, runner = runtime()
    first = rt.run((torch.ones(2),))
    second = rt.run((torch.ones(2),))
    assert first[0][0] == "output[0]"
    assert first[0][1].tolist() == [1.0, 1.0] and second[0][1].tolist() == [2.0, 2.0]
    assert first[0][1].data_ptr() != runner.host_buffer.data_ptr()


def test_close_deactivates_the_runner_once():
    rt, runner = runtime()
    rt.close()
    rt.close()
    assert runner.deactivations == 1 and not runner.is_active


def test_a_spawned_runtime_is_closed_in_its_worker_when_the_runtime_closes(tmp_path, monkeypatch):
    """Runtime.close ends the worker, which first calls the runtime's close() (TrtRuntime's deactivates its runner)."""
    from pytest_deploy.worker import Runtime

    (tmp_path / "closing_runtime.py").write_text(textwrap.dedent("""
        class Closing:
            def __init__(self, config):
                self.marker = config["marker"]
                self.info = {}

            def run(self, args):
                return []

            def close(self):
                with open(self.marker, "w") as fh:
                    fh.write("closed")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))  # the worker is started with this process's sys.path
    marker = tmp_path / "closed"
    worker = Runtime("demo", timeout=120)
    try:
        worker.open("closing_runtime:Closing", {"marker": str(marker)})
        assert not marker.exists()
    finally:
        worker.close()
    assert marker.read_text() == "closed"


# ------------------------------------------------------------------------------ the backend's verify, on fakes


class FakeCache:
    """The artifact cache's interface as ``_engine`` uses it, recording which locks are held."""

    def __init__(self, root: Path):
        self.root = root
        self.entries: dict[str, Path] = {}
        self.held: set[str] = set()
        self.events: list[str] = []

    @contextlib.contextmanager
    def lock(self, key: str):
        assert key not in self.held, f"lock {key} taken twice"
        self.held.add(key)
        try:
            yield
        finally:
            self.held.discard(key)

    def lookup(self, key: str) -> Path | None:
        return self.entries.get(key)

    def store(self, key: str, files: dict) -> Path:
        entry = self.root / key
        shutil.rmtree(entry, ignore_errors=True)
        entry.mkdir(parents=True)
        for name, source in files.items():
            shutil.copyfile(source, entry / name)
        self.entries[key] = entry
        return entry


class FakeCtx:
    """What ``TensorRTBackend.verify`` uses of a check; ``run_examples`` only keeps the runner it is given."""

    def __init__(self, tmp_path: Path, spawn_runtime: bool, options=None):
        self.workdir = tmp_path / "work"
        self.workdir.mkdir()
        self.options = dict(options or {})
        self.space = InputSpace.resolve([tensor("batch", 4)], {"batch": (1, 2)}, names=["x"])
        self.model = torch.nn.Linear(4, 2)
        self.spawn_runtime = spawn_runtime
        self.timeout = None
        self.cleanup = contextlib.ExitStack()
        self.cache = FakeCache(tmp_path / "cache")
        self.result = types.SimpleNamespace(cached=False, details={})
        self.runners: list = []

    def path(self, name: str) -> str:
        return str(self.workdir / name)

    def note(self, key: str, value) -> None:
        self.result.details[key] = value

    @contextlib.contextmanager
    def stage(self, name: str, hint=None):
        yield

    def run_examples(self, runner, reference=None, record=True) -> None:
        self.runners.append(runner)


@pytest.fixture
def fake_trt(monkeypatch, tmp_path):
    """A ``tensorrt`` module holding only its version (all verify reads of it here), and the export replaced by a
    file: what is under test is what verify does around the build, not TensorRT."""
    module = types.ModuleType("tensorrt")
    module.__version__ = "10.3.0"
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(b"graph")
    monkeypatch.setattr(trt_backend, "_export", lambda ctx, precision: str(onnx_path))
    monkeypatch.setattr(trt_backend, "_graph_outputs", lambda path: ["out"])
    monkeypatch.setattr(onnx_export, "onnx_digest", lambda path: "digest")
    monkeypatch.setattr(trt_backend, "engine_cache_key", lambda *parts: "engine-key")
    return module


def cached_engine(ctx: FakeCtx) -> None:
    """An engine already in the artifact cache under the key verify computes."""
    engine = ctx.workdir.parent / "cached.engine"
    engine.write_bytes(b"engine")
    ctx.cache.store("engine-key", {trt_backend.ENGINE: str(engine)})


def test_the_in_process_runtime_is_closed_when_the_check_ends(tmp_path, monkeypatch, fake_trt):
    """--deploy-isolate=none: TrtRuntime lives in pytest's process, and the check's cleanup deactivates it."""
    opened = []

    class Recording:
        def __init__(self, config):
            self.config, self.closed = config, 0
            opened.append(self)

        def run(self, args):
            return []

        def close(self):
            self.closed += 1

    monkeypatch.setattr(trt_backend, "TrtRuntime", Recording)
    ctx = FakeCtx(tmp_path, spawn_runtime=False)
    cached_engine(ctx)
    trt_backend.TensorRTBackend().verify(ctx)
    assert [r.config["engine"] for r in opened] == [str(ctx.cache.entries["engine-key"] / trt_backend.ENGINE)]
    assert opened[0].closed == 0
    ctx.cleanup.close()
    assert opened[0].closed == 1


def count_runtimes(monkeypatch, calls: list | None = None) -> list:
    """Every ``worker.Runtime`` constructed (none starts a process), its calls kept in ``calls``; the runtime's own
    worker is stubbed apart."""
    from pytest_deploy import worker
    from pytest_deploy.backends import base

    made: list = []
    calls = [] if calls is None else calls

    class Counted:
        def __init__(self, label, timeout=None):
            made.append(label)

        def call(self, function, config, stage):
            calls.append((function, config))

        def close(self):
            pass

    monkeypatch.setattr(worker, "Runtime", Counted)
    monkeypatch.setattr(base, "spawned_runtime", lambda ctx, label, factory, config: types.SimpleNamespace(
        factory=factory, config=config))
    return made


def test_an_engine_from_the_cache_spawns_no_builder_process(tmp_path, monkeypatch, fake_trt):
    made = count_runtimes(monkeypatch)
    ctx = FakeCtx(tmp_path, spawn_runtime=True)
    cached_engine(ctx)
    trt_backend.TensorRTBackend().verify(ctx)
    assert ctx.result.cached and ctx.runners
    assert made == []


def test_a_build_spawns_one_builder_process(tmp_path, monkeypatch, fake_trt):
    made = count_runtimes(monkeypatch)
    ctx = FakeCtx(tmp_path, spawn_runtime=True)
    (ctx.workdir / trt_backend.ENGINE).write_bytes(b"engine")  # what the (stubbed) builder worker writes
    trt_backend.TensorRTBackend().verify(ctx)
    assert made == ["TensorRT"] and not ctx.result.cached
    assert "engine-key" in ctx.cache.entries


# ------------------------------------------------------------------------------ trtexec's process


def fake_trtexec(tmp_path: Path, seconds: int) -> tuple[Path, Path]:
    """A ``trtexec`` that writes its pid and sleeps (``exec``: the pid written is the sleeping process's)."""
    pidfile = tmp_path / "trtexec.pid"
    script = tmp_path / "bin" / "trtexec"
    script.parent.mkdir()
    script.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep {seconds}\n")
    script.chmod(0o755)
    return script, pidfile


def trtexec_job(tmp_path: Path, trtexec: Path, timeout=None) -> dict:
    return {"onnx": str(tmp_path / "model.onnx"), "engine": str(tmp_path / "model.engine"), "shapes": {},
            "settings": {"strongly_typed": False, "tf32": False}, "timing_cache": str(tmp_path / "timing.cache"),
            "trtexec": str(trtexec), "timeout": timeout}


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def running(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan waits for init to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's")
def test_trtexec_dies_with_the_process_that_started_it(tmp_path):
    """What --deploy-timeout does to the builder's worker (SIGKILL) must not leave trtexec building on the GPU."""
    script, pidfile = fake_trtexec(tmp_path, 60)
    code = ("import json, sys\nfrom pytest_deploy.backends.tensorrt_engine import _build_trtexec\n"
            "_build_trtexec(json.loads(sys.argv[1]))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    parent = subprocess.Popen([sys.executable, "-c", code, json.dumps(trtexec_job(tmp_path, script))], env=env)
    pid = None
    try:
        assert wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 60), "fake trtexec never started"
        pid = int(pidfile.read_text())
        assert running(pid)
        parent.kill()
        parent.wait()
        assert wait_for(lambda: not running(pid), 10), "trtexec outlived the process that started it"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if pid is not None and running(pid):
            os.kill(pid, signal.SIGKILL)


def test_trtexec_is_killed_at_the_timeout(tmp_path):
    from pytest_deploy.backends.tensorrt_engine import _build_trtexec
    from pytest_deploy.errors import StageError

    script, pidfile = fake_trtexec(tmp_path, 20)
    start = time.monotonic()
    with pytest.raises(StageError) as info:
        _build_trtexec(trtexec_job(tmp_path, script, timeout=1))
    assert time.monotonic() - start < 15
    assert info.value.stage == "compile"
    assert "trtexec did not finish within 1 s (--deploy-timeout) and was killed" in info.value.message
    assert not running(int(pidfile.read_text()))


def test_the_build_is_given_the_check_timeout(tmp_path, monkeypatch, fake_trt):
    calls: list = []
    count_runtimes(monkeypatch, calls)
    ctx = FakeCtx(tmp_path, spawn_runtime=True)
    ctx.timeout = 42.0
    (ctx.workdir / trt_backend.ENGINE).write_bytes(b"engine")
    trt_backend.TensorRTBackend().verify(ctx)
    assert [(function, job["timeout"]) for function, job in calls] == [("pytest_deploy.backends.tensorrt_engine:build_engine", 42.0)]


# ------------------------------------------------------------------------------ the timing cache


class TimingBuilds:
    """Stands in for the builder worker: ``build_engine`` loads the timing cache it is given and saves it with this
    build's timing added (as ``load_timing_cache=`` / ``save_timing_cache=`` do), a timing cache being a set of lines
    here; ``merge_timing_cache`` unites two such sets (as ``ITimingCache.combine`` does). ``during_build`` runs
    inside the build: another check's build finishing meanwhile."""

    def __init__(self, ctx: FakeCtx, timing: str, during_build=None):
        self.ctx, self.timing, self.during_build = ctx, timing, during_build
        self.calls: list = []
        self.held_during_build: list = []

    def __call__(self, function: str, job: dict) -> None:
        self.calls.append((function, dict(job)))
        if function == "build_engine":
            self.held_during_build.append(set(self.ctx.cache.held))
            if self.during_build:
                self.during_build()
            Path(job["engine"]).write_bytes(b"engine")
            write_timings(job["timing_cache"], read_timings(job["timing_cache"]) | {"this build"})
        elif function == "merge_timing_cache":
            write_timings(job["into"], read_timings(job["into"]) | read_timings(job["from"]))


def read_timings(path) -> set[str]:
    return set(Path(path).read_text().split("\n")) - {""} if Path(path).exists() else set()


def write_timings(path, timings: set[str]) -> None:
    Path(path).write_text("\n".join(sorted(timings)))


def build_engine_with_timings(tmp_path, during_build=None, stored: set[str] | None = None):
    from pytest_deploy.fingerprint import gpu_environment

    ctx = FakeCtx(tmp_path, spawn_runtime=True)
    timing = trt_backend.timing_cache_key("10.3.0", gpu_environment())
    if stored is not None:
        write_timings(tmp_path / "stored.cache", stored)
        ctx.cache.store(timing, {trt_backend.TIMING_CACHE: str(tmp_path / "stored.cache")})
    builds = TimingBuilds(ctx, timing, during_build and (lambda: during_build(ctx, timing)))
    config = {"onnx": str(tmp_path / "model.onnx"), "shapes": {}, "shape_values": {}}
    engine = trt_backend._engine(ctx, config, "python", "10.3.0", {"strongly_typed": False, "tf32": False}, builds)
    return ctx, timing, builds, engine


def test_the_timing_cache_lock_is_not_held_while_the_engine_builds(tmp_path, fake_trt):
    """Held across the build, it serialised every build with this TensorRT on this GPU, unbounded by the timeout."""
    ctx, timing, builds, engine = build_engine_with_timings(tmp_path, stored={"earlier build"})
    assert builds.held_during_build == [{"engine-key"}]  # the engine's own lock only: one build per engine
    assert read_timings(ctx.cache.entries[timing] / trt_backend.TIMING_CACHE) == {"earlier build", "this build"}
    assert [function for function, _ in builds.calls] == ["build_engine"]  # the stored cache was unchanged
    assert Path(engine).read_bytes() == b"engine" and not ctx.cache.held


def test_a_timing_cache_stored_during_the_build_is_merged_not_overwritten(tmp_path, fake_trt):
    def another_build_finishes(ctx, timing):
        write_timings(tmp_path / "other.cache", {"earlier build", "another build"})
        with ctx.cache.lock(timing):  # free during the build
            ctx.cache.store(timing, {trt_backend.TIMING_CACHE: str(tmp_path / "other.cache")})

    ctx, timing, builds, _ = build_engine_with_timings(tmp_path, another_build_finishes, stored={"earlier build"})
    stored = ctx.cache.entries[timing] / trt_backend.TIMING_CACHE
    assert read_timings(stored) == {"earlier build", "another build", "this build"}
    merges = [job for function, job in builds.calls if function == "merge_timing_cache"]
    assert merges == [{"into": ctx.path(trt_backend.TIMING_CACHE), "from": str(stored)}]


def test_the_first_build_stores_its_timing_cache(tmp_path, fake_trt):
    ctx, timing, builds, _ = build_engine_with_timings(tmp_path)
    assert read_timings(ctx.cache.entries[timing] / trt_backend.TIMING_CACHE) == {"this build"}
    assert [function for function, _ in builds.calls] == ["build_engine"]


# ------------------------------------------------------------------------------ the export's external data


def test_external_data_follows_the_onnx_threshold_option(tmp_path):
    ctx = FakeCtx(tmp_path, spawn_runtime=False)  # a Linear(4, 2): 40 bytes of weights
    assert not onnx_export.external_data(ctx)  # 2 GiB by default
    ctx.options["onnx_external_data_threshold"] = 40
    assert not onnx_export.external_data(ctx)
    ctx.options["onnx_external_data_threshold"] = 39
    assert onnx_export.external_data(ctx)


@pytest.mark.parametrize("threshold, external", [(None, False), (1, True)])
def test_tensorrt_exports_with_the_onnx_backends_threshold(tmp_path, monkeypatch, threshold, external):
    saved = []
    monkeypatch.setattr(onnx_export, "export_dynamo", lambda ctx, path, opset, external: saved.append(external))
    options = {} if threshold is None else {"onnx_external_data_threshold": threshold}
    ctx = FakeCtx(tmp_path, spawn_runtime=False, options=options)
    assert trt_backend._export(ctx, "fp32") == ctx.path("model.onnx")
    assert saved == [external] and ctx.result.details["onnx_external_data"] is external
