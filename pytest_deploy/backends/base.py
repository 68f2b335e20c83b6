"""The backend interface. A backend turns a model into an artifact on disk and loads it back.

Heavy imports (torch, onnx, tvm, tensorrt) happen inside methods; availability is checked with
``importlib.util.find_spec``, never by importing.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import logging
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from ..localize import Finding, LocalizationError
from ..sources import cap, first_line, is_model_code, is_user_file, short_path, user_frame

#: A loaded artifact: called with one example's inputs (in the spec's order), returns outputs (nested, or Leaves).
Runner = Callable[[tuple], Any]


class Check(Protocol):
    """What a backend sees of the check it runs in (``pytest_deploy.context.CheckContext`` implements it).

    Backends import this, never the checker: the checker depends on backends, not the other way round."""

    model: Any  #: the eager model (a ``torch.nn.Module``)
    backend: str  #: this backend's canonical name
    space: Any  #: the input space (:class:`pytest_deploy.spec.InputSpace`): specs, dims, names, keywords
    tol: Any  #: the tolerance (:class:`pytest_deploy.compare.Tolerance`)
    options: dict[str, Any]  #: backend options (targets, exporters, precisions)
    #: at int8: the calibration inputs ``calibration=`` gave (a list of tuples or dicts), or None: generated ones
    calibration: Any
    seed: int  #: the check's seed (its generated examples')
    workdir: Path  #: where the artifact is written
    result: Any  #: the :class:`pytest_deploy.Result` being filled
    cache: Any  #: the artifact cache (:class:`pytest_deploy.cache.ArtifactCache`)
    cleanup: contextlib.ExitStack  #: callbacks run when the check ends
    artifacts: dict[str, str]  #: files built outside the work directory, for --deploy-keep-artifacts
    runner: Runner | None
    #: what --deploy-latency times when it is not ``runner`` (the artifact users ship, alone); None: ``runner``
    latency_runner: Runner | None
    #: other builds of the same artifact to time beside it (``{"untuned": runner}`` for a tuned TVM module)
    latency_variants: dict[str, Runner]
    failed_example: Any
    timeout: float | None  #: seconds one stage may take (--deploy-timeout), or None
    #: the check uses CUDA (or the ``spawn_runtime`` backend option asks): the backend's runtime runs in a spawned
    #: worker process (:func:`spawned_runtime`), never in pytest's process or a forked one
    spawn_runtime: bool

    @property
    def canonical(self) -> Any:
        """The example artifacts are built (traced, exported) from."""

    @property
    def content_key(self) -> str:
        """Hash of the model's structure, weights, reachable source and the input space."""

    @property
    def model_key(self) -> str:
        """Names the model's current state and the inputs within this process, for work shared by backends:
        the content key when the cache is on, else one that hashes no weights."""

    def path(self, name: str) -> str: ...
    def note(self, key: str, value: Any) -> None: ...
    def stage(self, name: str, hint: str | None = None) -> AbstractContextManager[None]: ...
    def call(self, fn: Callable[..., Any], args: tuple) -> Any: ...
    def cached_files(self, kind: str, parts: Any, names: list[str], build: Callable[[], None]) -> Path: ...
    def artifact(self, name: str, path: str) -> None: ...
    def run_examples(self, runner: Runner, *, reference: Callable[[tuple], Any] | None = None,
                     record: bool = True) -> None: ...
    def recorded_eager(self, args: tuple) -> Any: ...
    def eager(self, args: tuple, model: Any = None) -> Any: ...
    def fresh_model(self) -> Any: ...
    def traced_decisions(self, retrace: Callable[[tuple], Any] | None = None) -> None: ...


class Backend:
    """Subclass, set ``name`` (and ``aliases``, ``requires``, ``extra``), implement :meth:`build`."""

    name: str = ""
    aliases: tuple[str, ...] = ()
    #: importable module names the backend needs (checked with find_spec)
    requires: tuple[str, ...] = ()
    #: pip extra that installs ``requires``, for the install hint
    extra: str | None = None
    description: str = ""
    #: loads native code (a shared library, a runtime with its own threads): under the default
    #: ``--deploy-isolate=native`` the check runs in a worker process, so a crash fails only that check
    native: bool = False
    #: source of ``load(artifact: Path)`` returning ``run(args) -> outputs`` for the standalone repro script
    #: of ``--deploy-keep-artifacts`` (None: pytest_deploy.keep's loader for the backend, if any)
    repro_loader: str | None = None

    #: the precisions (``precision=``, ``--deploy-precision``) this backend deploys at: a backend that lists only fp32
    #: has no reduced-precision route, and its checks at fp16 or bf16 are skipped (see :meth:`precision_reason`)
    precisions: tuple[str, ...] = ("fp32",)

    def precision_reason(self, precision: str) -> str | None:
        """None when the backend deploys at ``precision``; otherwise why not (the check is then skipped, never
        passed at float32 in its place)."""
        if precision in self.precisions:
            return None
        if precision.startswith("int8"):
            return (f"{self.name} has no int8 route here; precision={precision} is checked by the onnx backend only "
                    "(ONNX Runtime's quantization)")
        if self.precisions == ("fp32",):
            return (f"{self.name} has no reduced-precision route; it checks float32 only, so precision={precision} "
                    f"is not checked here (onnx and tensorrt deploy at reduced precision)")
        return (f"{self.name} does not deploy at {precision}; it deploys at {', '.join(self.precisions)}")

    def unavailable_reason(self, options: dict | None = None) -> str | None:
        """None when the backend can run here; otherwise why not and what to install. ``options`` are the
        backend options of the check (a target, a precision), which can decide it."""
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            hint = f"pip install 'pytest-deploy[{self.extra}]'" if self.extra else f"pip install {' '.join(missing)}"
            return f"{self.name}: {', '.join(missing)} not installed; {hint}"
        return None

    #: modules imported by :meth:`prepare`: what the check imports anyway, loaded once in pytest's process so
    #: that each worker process inherits them instead of importing them again
    preload: tuple[str, ...] = ()

    def prepare(self) -> None:
        """Import what the backend needs, before a worker process is forked for a check (imports only: no
        native thread pool or device is started here, so the fork stays safe)."""
        for name in (*self.requires, *self.preload):
            if importlib.util.find_spec(name.split(".")[0]) is not None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    importlib.import_module(name)

    #: the backend honours ``ctx.spawn_runtime``: whatever touches CUDA (engine build, session, runs) happens in a
    #: spawned worker process (:func:`spawned_runtime`)
    spawns_runtime: bool = False

    def uses_cuda(self, options: dict | None = None) -> bool:
        """True when the check runs on a GPU. CUDA does not survive fork (a forked child cannot initialise it once
        the parent has so much as counted devices), so such a check is not forked: it runs in pytest's process
        with ``ctx.spawn_runtime`` set, and the backend puts everything that touches CUDA in a spawned worker
        (:func:`spawned_runtime`)."""
        return False

    def build(self, ctx: Check) -> Runner:
        """Export the model, write it under ``ctx.workdir``, load it back; return a runner.

        Wrap each step in ``with ctx.stage("export" | "save" | "load" | ...)`` so failures name it.
        """
        raise NotImplementedError

    def verify(self, ctx: Check) -> None:
        """The whole check. The default builds once and runs every generated example; backends whose
        check is not 'run the artifact on inputs' (checkpoint) override this."""
        runner = self.build(ctx)
        ctx.run_examples(runner)

    def localize(self, ctx: Check, args: tuple, deadline: float) -> Finding:
        """Where the check's failure on ``args`` (its shrunk failing input) starts: the first module whose output
        diverges from eager PyTorch while its inputs agree. Called only after a failure at compare or branches,
        with ``ctx.runner`` the runner that failed; stop at ``time.perf_counter() > deadline`` with the best
        finding so far. The shared machinery is in :mod:`pytest_deploy.localize`. Raise
        :class:`~pytest_deploy.localize.LocalizationError` saying why where the backend cannot localise."""
        raise LocalizationError(f"{self.name}: pytest-deploy cannot look inside this backend's artifact to find "
                                "where its outputs start to differ")


def spawned_runtime(ctx: Check, label: str, factory: str, config: dict) -> Any:
    """A runtime opened in a fresh interpreter (:class:`pytest_deploy.worker.Runtime`): ``factory``
    (``"package.module:Class"``) is called there with ``config`` (plain data) and must return an object with
    ``run(args) -> [(path, tensor)]`` and an ``info`` dict (and may have ``close()``, called in the worker when it
    is closed). The worker is closed when the check ends; a crash in it
    fails this check at the stage it happened in. Call it inside ``ctx.stage(...)``."""
    from ..worker import Runtime

    runtime = Runtime(label, ctx.timeout)
    ctx.cleanup.callback(runtime.close)
    runtime.open(factory, config)
    return runtime


@contextlib.contextmanager
def quiet_torch_logs():
    """Silence exporters' chatter (graph dumps on stderr, symbolic-shape log records) while they run;
    failures reach the user through the stage's message instead."""
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict) if name.startswith("torch")]
    states = [(lg, lg.disabled) for lg in loggers]
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    for lg in loggers:
        lg.disabled = True
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, state in states:
            lg.disabled = state
        logging.disable(previous)


# the source-location helpers live in pytest_deploy.sources; re-exported for third-party backends
__all__ = ["Backend", "Check", "Runner", "spawned_runtime", "user_frame", "short_path", "first_line", "cap", "is_user_file",
           "is_model_code", "quiet_torch_logs"]
