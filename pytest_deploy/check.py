"""One check: model + input space → backend artifact on disk → run on generated examples → compare.

``run_check`` is what the ``@deployable`` items, the ``deploy`` fixture and ``verify`` all call. A backend works in
a :class:`CheckContext`; the example loop it starts (``ctx.run_examples``) is :mod:`pytest_deploy.examples`, the
recorded decisions and the branch search are :mod:`pytest_deploy.search`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import isolation
from .branches import BranchAnalysis
from .cache import ArtifactCache
from .checkoptions import CheckOptions
from .compare import Tolerance, compare_outputs, resolve_tolerance, widen_for_precision
from .decisions import needs_line_tracing
from .errors import INTERNAL, BackendUnavailable, DeployFailure, InternalError, SpecError, StageError
from .examples import ExampleFailed, ExampleRunner
from .fingerprint import content_key, identity_key
from .internal import internal_error
from .modeltest import ModelState, ModelTest, Work
from .results import Result
from .search import BranchSearch
from .sources import add_model_files, describe_exception, torchscript_error
from .spec import Example, InputSpace
from .tensors import clone_args

#: Stage name → the timing bucket it counts towards in the report.
_TIMING_BUCKET = {"export": "build", "check": "build", "simplify": "build", "compile": "build", "save": "build",
                  "load": "load", "run": "run", "compare": "run", "branches": "run", "reference": "run",
                  "latency": "latency"}



class CheckContext:
    """What a backend sees while it builds and runs: the model, the inputs, a work directory, stages."""

    def __init__(self, *, model, backend: str, space: InputSpace, tol: Tolerance, opts: CheckOptions, workdir: Path,
                 factory: Callable[[], Any] | None, result: Result):
        self.model = model
        self.backend = backend
        self.space = space
        self.tol = tol
        #: everything the check was told (read the settings below from it; they are copied for the backends)
        self.opts = opts
        self.examples = opts.examples
        self.seed = opts.seed
        self.workdir = workdir
        self.factory = factory
        #: the backend's options (``opts.backend_options``, normalised by run_check): what backends read
        self.options = dict(opts.backend_options)
        self.result = result
        self._canonical: Example | None = None
        #: callbacks run when the check ends (close worker processes, ...)
        self.cleanup = contextlib.ExitStack()
        #: where built artifacts are kept between runs (a disabled cache unless one is given)
        self.cache = opts.cache if opts.cache is not None else ArtifactCache(None)
        #: data-dependent decisions seen while eager PyTorch ran (and, for tracing backends, while tracing)
        self.analysis = BranchAnalysis()
        self.freezes_decisions = False
        # the model's files count as user code from here on (an installed package's too, such as transformers'):
        # registered before the line-tracing decision reads them, so that decision does not depend on which
        # check of the session came first
        add_model_files(model)
        self.line_tracing = needs_line_tracing(model)
        #: seconds one stage may take (--deploy-timeout), or None
        self.timeout: float | None = opts.timeout
        #: the backend's runtime runs in a spawned worker process (a CUDA check, or backend option spawn_runtime)
        self.spawn_runtime = False
        #: the artifact's files by name, for --deploy-keep-artifacts (backends register files kept elsewhere,
        #: such as cache entries; the work directory is kept whole)
        self.artifacts: dict[str, str] = {}
        #: NaN/Inf in eager outputs are intended (allow_nonfinite=True): not refused
        self.allow_nonfinite = bool(opts.allow_nonfinite)
        #: source files the model's construction depends on besides its classes' (the test file)
        self.source_files: tuple[str, ...] = opts.source_files
        #: set by run_examples: the runner and, after a failure, the failing example
        self.runner: Callable[[tuple], Any] | None = None
        #: what --deploy-latency times, when not ``runner`` (a backend whose runner runs more than the artifact users
        #: ship, such as ONNX's raw and simplified graphs together)
        self.latency_runner: Callable[[tuple], Any] | None = None
        #: other builds of the artifact --deploy-latency times beside it (a TVM module without its tuning)
        self.latency_variants: dict[str, Callable[[tuple], Any]] = {}
        self.failed_example: Example | None = None
        #: compare every output position, also where a mask() input marks padding (compare_masked=True)
        self.compare_masked = bool(opts.compare_masked)
        #: eager outputs (near) zero on every example are allowed (allow_vacuous=True)
        self.allow_vacuous = bool(opts.allow_vacuous)
        #: work shared with the other backends of the model test (modeltest.Work), or None
        self.shared: Work | None = None
        #: the model's state when its model test's first check began (put back before each eager run and build)
        self.state: ModelState | None = None

    # -- helpers for backends -------------------------------------------------------------------

    @property
    def canonical(self) -> Example:
        """The example artifacts are built (traced, exported) from."""
        if self._canonical is None:
            self._canonical = self.space.canonical()
        return self._canonical

    def path(self, name: str) -> str:
        return str(self.workdir / name)

    def call(self, fn: Callable[..., Any], args: tuple) -> Any:
        """``fn`` called on one example's inputs as forward takes them: positionally, or by keyword for
        inputs declared as a dict."""
        return self.space.call(fn, args)

    def warn(self, text: str) -> None:
        """A one-line warning, shown in pytest's warnings summary (also from a worker process) and kept in
        the report's ``details.warnings``."""
        warnings = self.result.details.setdefault("warnings", [])
        if text not in warnings:
            warnings.append(text)

    def note(self, key: str, value: Any) -> None:
        """Record a backend-specific fact in the report (``details``)."""
        self.result.details[key] = value

    def cached_files(self, kind: str, parts: Any, names: list[str], build: Callable[[], None]) -> Path:
        """The directory holding the artifact files ``names``: a cache entry when one exists for this model
        and ``parts``, else the work directory after ``build()`` wrote them there (then stored in the cache).

        The key covers ``kind``, ``parts`` (the backend's options, its target), the model's code, structure
        and weights, the input space, library versions and the machine. One process builds a key at a
        time (a file lock): a second pytest-xdist worker waits and then loads what the first built.
        """
        from .cache import make_key
        from .fingerprint import environment, stable

        if not self.cache.enabled:  # nothing to look up or store: no key, so no hashing of the weights
            build()
            return self.workdir
        key = make_key("artifact", kind, stable(parts), self.content_key, environment())
        self.note("cache_key", key[:16])
        try:
            with self.cache.lock(key):
                entry = self.cache.lookup(key)
                if entry is not None:
                    self.result.cached = True
                    for name in names:
                        self.artifact(name, str(entry / name))
                    return entry
                build()
                self.cache.store(key, {name: self.path(name) for name in names})
            return self.workdir
        finally:
            if self.cache.events:
                self.note("cache_events", list(self.cache.events))
            if self.cache.remote_error:  # found in this (maybe worker) process: the session stops using the store
                self.note("shared_cache_error", self.cache.remote_error)

    @functools.cached_property
    def content_key(self) -> str:
        """Hash of what an artifact built from this check is made of (:func:`fingerprint.content_key`); computed
        once per model test (the backends share it); artifact and exported-program keys start from it."""
        return content_key(self.model, self.space, lambda: self.canonical.args, self.source_files, self.shared)

    @property
    def model_key(self) -> str:
        """A key of the model's current state and the input space, for sharing work within this process (one
        ``torch.export`` for every backend that starts from it): :attr:`content_key` when the cache is on (it
        is computed for the artifact keys anyway); without a cache, no byte is hashed: the model object itself,
        each parameter's and buffer's storage and version counter (bumped by every in-place change, an
        optimizer step or ``load_state_dict`` included)."""
        if self.cache.enabled:
            return self.content_key
        return self._identity_key

    @functools.cached_property
    def _identity_key(self) -> str:
        return identity_key(self.model, self.space, self.canonical.args)

    def artifact(self, name: str, path: str) -> None:
        """Register a file the backend built outside the work directory (a cache entry's) for --deploy-keep-artifacts."""
        self.artifacts[name] = str(path)

    @contextlib.contextmanager
    def stage(self, name: str, hint: str | None = None) -> Iterator[None]:
        """Time a stage; turn any exception inside it into a :class:`StageError` naming the stage.

        Under ``--deploy-timeout`` a stage that runs too long fails with ``timed out``."""
        start = time.perf_counter()
        try:
            with isolation.guard(name, self.timeout):
                yield
        except (StageError, ExampleFailed, DeployFailure, BackendUnavailable, InternalError, KeyboardInterrupt,
                SystemExit):
            raise
        except BaseException as exc:
            internal = internal_error(exc, staged=True)
            if internal is not None:
                raise internal from exc
            full = torchscript_error(exc)
            if full is not None:  # the message keeps the cause; the report keeps the interpreter's whole text
                self.note("error_text", full)
            raise StageError(name, describe_exception(exc, hint), cause=exc) from exc
        finally:
            bucket = _TIMING_BUCKET.get(name, "build")
            self.result.timings[bucket] = self.result.timings.get(bucket, 0.0) + time.perf_counter() - start

    # -- the decisions (search.py) and the example loop (examples.py) ------------------------------------

    @functools.cached_property
    def search(self) -> BranchSearch:
        """The check's decisions: eager runs recorded, the branch search, what a trace lost."""
        return BranchSearch(self)

    @functools.cached_property
    def example_runner(self) -> ExampleRunner:
        """The check's example loop (:meth:`run_examples`)."""
        return ExampleRunner(self)

    def traced_decisions(self, retrace: Callable[[tuple], Any] | None = None) -> None:
        """Called by a backend whose artifact follows the path of the input it was built from (torch.jit.trace):
        see :meth:`search.BranchSearch.traced_decisions`."""
        self.search.traced_decisions(retrace)

    def recorded_eager(self, args: tuple, *, track: bool = False):
        """Eager reference outputs, with the decisions taken on the way counted into the analysis, shared by the
        backends of one model test: see :meth:`search.BranchSearch.recorded_eager`."""
        return self.search.recorded_eager(args, track=track)

    def count(self, what: str) -> None:
        """Count shared work in ``details.model_test`` (what this check took from its model test, what it did)."""
        counts = self.result.details.setdefault("model_test", {})
        counts[what] = counts.get(what, 0) + 1

    def fresh_model(self):
        """A new instance from the factory (the decorated test, or ``factory=``), in the same mode, built with
        the RNGs seeded from another seed than the model's (:func:`fresh_seed`): a serving process builds its own
        instance, so what construction draws at random and the saved state does not carry (a non-persistent
        buffer from ``torch.randn``) differs there, and must differ here too."""
        if self.factory is None:
            raise StageError(
                "load",
                f"{self.backend} needs a fresh instance of the model to load into; pass factory=<zero-argument "
                "callable returning a new model> to deploy()/verify()",
            )
        fresh = seeded_call(self.factory, fresh_seed(self.seed))
        if isinstance(fresh, tuple):
            fresh = fresh[0]
        _require_module(fresh, "the factory")
        fresh.train(self.model.training)
        return fresh

    def eager(self, args: tuple, model=None):
        """Reference outputs: eager PyTorch on a copy of the inputs, without autograd."""
        import torch

        model = self.model if model is None else model
        if model is self.model:
            self.reset_state()  # a reference depends on the input only, whichever runs came before
        with torch.no_grad():
            return self.call(model, clone_args(args))

    def reset_state(self) -> None:
        """Put the model back in the state its model test's first check began with, noting what changed."""
        if self.state is not None:
            _note_state_changes(self.result, self.state.reset(self.model))

    def run_examples(self, runner: Callable[[tuple], Any], *, reference: Callable[[tuple], Any] | None = None,
                     record: bool = True) -> None:
        """Run ``runner`` on the canonical example and ``examples - 1`` generated ones; compare each with eager
        (``reference``, default :meth:`recorded_eager`); with ``record`` the branch search runs first and its finds
        are examples too: see :meth:`examples.ExampleRunner.run_examples`."""
        self.example_runner.run_examples(runner, reference=reference, record=record)


# ------------------------------------------------------------------------------------ run_check


def _bugs_fail_the_check(run: Callable[..., Result]) -> Callable[..., Result]:
    """``run_check`` failing at stage ``internal`` where pytest-deploy's own code raises outside the check proper
    (reading the declaration, the cache): a :class:`DeployFailure` whose result says it is a pytest-deploy bug."""

    @functools.wraps(run)
    def checked(model, backend: str, opts: CheckOptions | None = None, **kwargs: Any) -> Result:
        try:
            return run(model, backend, opts, **kwargs)
        except Exception as exc:
            bug = internal_error(exc, staged=True)
            if bug is None:
                raise
            told = opts if opts is not None else CheckOptions()
            result = Result(test=told.test_id, backend=str(backend), seed=told.seed, outcome="failed", stage=INTERNAL,
                            message=f"{backend}: stage {INTERNAL}: {bug.message}")
            result.details["internal_traceback"] = bug.traceback
            raise DeployFailure(result.message or "", result) from None

    return checked


@_bugs_fail_the_check
def run_check(model, backend: str, opts: CheckOptions | None = None, *, factory=None, example_inputs=None,
              workdir: str | os.PathLike | None = None, shared: ModelTest | None = None) -> Result:
    """Check ``model`` against one backend, as ``opts`` (a :class:`CheckOptions`) says. Returns the passing
    :class:`Result`.

    Raises :class:`DeployFailure` when the backend does not reproduce eager PyTorch,
    :class:`BackendUnavailable` when it cannot run here and :class:`SpecError` for bad declarations.

    ``factory`` makes a fresh model (state_dict, checkpoint); ``example_inputs`` are the inputs the test returned
    beside the model. ``opts.cache`` keeps built artifacts and passing results: a check whose key (see
    :mod:`pytest_deploy.fingerprint`) passed before is not run again unless ``opts.recheck``. ``opts.isolate``
    decides whether the check runs in a worker process; ``opts.timeout`` bounds each stage. ``opts.precision`` (a
    marker's or call's) wins over ``opts.backend_options["precision"]`` (the command line's). A ``workdir`` given is
    removed when the check passes unless ``opts.keep_passing``; without one the check makes (and removes) its own.
    ``shared`` (a :class:`modeltest.ModelTest`) holds the work the backends of one model test share: eager
    references, the branch search, the reference check, the content key. With ``opts.latency`` the artifact is
    timed beside eager once it passed (:mod:`pytest_deploy.latency`); such a check is always run (never answered
    from the result cache).
    """
    from .backends import canonical_name, get_backend

    opts = opts if opts is not None else CheckOptions()
    name = canonical_name(backend)
    impl = get_backend(name)
    result = Result(test=opts.test_id, backend=name, seed=opts.seed)
    opts, tol = _normalised(opts, name)
    result.atol, result.rtol = tol.float32
    _require_module(model, "the test")
    add_model_files(model)  # before anything reads which files are the user's: the cache key, the line tracer
    in_worker = isolation.isolated(opts.isolate, getattr(impl, "native", False))
    count = len(opts.inputs) if isinstance(opts.inputs, (list, tuple)) else len(example_inputs) if isinstance(
        example_inputs, (list, tuple)) else 0
    space = InputSpace.resolve(opts.inputs, opts.dims, example_inputs, names=_forward_arg_names(model, count),
                               parameters=_keyword_parameters(model))
    reason = impl.precision_reason(opts.precision or "fp32") or impl.unavailable_reason(opts.backend_options)
    if reason:
        raise BackendUnavailable(reason)
    # CUDA cannot start in a forked child: a CUDA check is not forked, its runtime is spawned (fresh interpreter)
    on_gpu = in_worker and impl.uses_cuda(opts.backend_options)
    spawn = (on_gpu or bool(opts.backend_options.get("spawn_runtime"))) and getattr(impl, "spawns_runtime", False)
    cache = opts.cache

    key = None
    # every backend starts from the state the model was built with, also when an earlier check's eager runs
    # filled a cache in it (restored before anything hashes or runs the model)
    state = shared.model_state(model) if shared is not None else ModelState(model)
    work = shared.work(model, space, bool(opts.allow_nonfinite)) if shared is not None else None
    if cache.enabled:
        from .fingerprint import check_key

        key = check_key(model, name, declared=opts.declared, options=opts.backend_options, files=opts.source_files,
                        digest=work.model_digest(model) if work is not None else None)
    opts = opts.replace(backend_options={"reproduce": opts.reproduce or f"seed={opts.seed}", **opts.backend_options})

    # a work directory of our own is made (and removed) here, in pytest's process: a worker killed mid-check
    # (a crash, a timeout) cannot remove it itself
    owned = workdir is None
    cleanup_owned = contextlib.ExitStack()
    if workdir is None:
        workdir = tempfile.mkdtemp(prefix=f"pytest-deploy-{name}-")
        cleanup_owned.callback(shutil.rmtree, workdir, True)
    run = _Run(model=model, impl=impl, opts=opts, space=space, tol=tol, workdir=Path(workdir), owned=owned,
               factory=factory, work=work, state=state, spawn_runtime=spawn)

    def execute() -> tuple[str, Result]:
        outcome, res = _execute(run, result)
        if cache.pending_warnings:  # shown by pytest's process (this may be a worker's)
            res.details["cache_warnings"] = list(cache.pending_warnings)
        return outcome, res

    def execute_in_worker() -> tuple[str, Result, bytes | None]:
        """In the worker: the check, and what it added to the model test's shared work (sent back with it)."""
        if work is not None:
            work.mark()
        outcome, res = execute()
        return outcome, res, work.added() if work is not None else None

    earlier = None if work is None else work.reference_failed.get("all") or work.reference_failed.get(
        repr(_reference_kind(name)))
    if earlier is not None:  # eager PyTorch itself failed for another backend: said once, not run again
        first, stage, text = earlier
        result.outcome, result.stage = "failed", stage
        result.details["same_failure_as"] = first
        result.message = (f"{name}: stage {stage}: fails for the same reason as this model test's {first} check, "
                          f"before any backend runs (its message has the whole text): {text.splitlines()[0]}")
        raise DeployFailure(result.message, result)

    # one check at a time per key: a second pytest-xdist worker with the same check waits, then reuses the result
    with cleanup_owned, cache.lock(key) if key is not None else contextlib.nullcontext():
        if key is not None and not opts.recheck:
            reused = cache.load_result(key)
            if reused is not None:
                reused.test, reused.cached = opts.test_id, True
                # nothing was built or run this time; what the original run took stays in the details
                reused.details["original_timings"] = reused.timings
                reused.timings = {"build": 0.0, "load": 0.0, "run": 0.0}
                reused.details["reused"] = ("this check passed before with the same model code, weights, inputs, "
                                            "options and library versions; --deploy-recheck runs it again")
                _emit_warnings(reused, work)
                warn_cache(cache)
                return reused
        if spawn:
            result.details["isolated"] = ("spawned worker process for the backend's runtime (CUDA cannot start in a "
                                          "forked one); export and comparison in pytest's process")
        elif on_gpu:
            result.details["isolated"] = (f"no: the check uses CUDA, which a forked worker process cannot initialise, "
                                          f"and {name} has no spawned runtime; it runs in pytest's process")
        if in_worker and not (spawn or on_gpu):
            result.details["isolated"] = "worker process"
            impl.prepare()
            try:
                outcome, result, added = isolation.run_in_worker(execute_in_worker, label=name, timeout=opts.timeout)
            except isolation.WorkerCrash as crash:
                result.outcome, result.stage = "failed", crash.stage
                result.message = f"{name}: stage {crash.stage}: {crash.message}"
                raise DeployFailure(result.message, result) from None
            if work is not None:
                work.merge(added)
        else:
            outcome, result = execute()
        changed = result.details.get("model_state_changed")
        if changed and (shared is None or not shared.state_reported):
            if shared is not None:
                shared.state_reported = True
            result.details.setdefault("warnings", []).append(
                f"forward changes the model's state: {', '.join(changed[:8])}"
                f"{f' and {len(changed) - 8} more' if len(changed) > 8 else ''}; every backend's check starts from "
                "the state the model was built with (restored before each check and before each build)")
        _emit_warnings(result, work)
        for text in result.details.get("cache_warnings", ()):
            cache.warn(text)
        gone = result.details.get("shared_cache_error")
        if gone and cache.remote_error is None:  # a worker process found the shared store gone: stop using it
            cache.remote, cache.remote_error = None, gone
        if outcome == "failed":
            scope = result.details.get("reference_failed")
            if work is not None and scope:
                text = (result.message or "").removeprefix(f"{name}: stage {result.stage}: ")
                work.reference_failed["all" if scope == "all" else repr(_reference_kind(name))] = (
                    name, result.stage or "run", text)
            warn_cache(cache)
            assert result.message is not None  # _execute sets it with the outcome
            raise DeployFailure(result.message, result)
        if key is not None and opts.latency is None:
            cache.store_result(key, result)
        warn_cache(cache)
    return result


@dataclass(frozen=True)
class _Run:
    """One check as run_check resolved it, handed to :func:`_execute` (in this process or a worker)."""

    model: Any
    impl: Any  # the backend (pytest_deploy.backends.base.Backend)
    opts: CheckOptions  # normalised: precision parsed, latency settings parsed, backend options complete
    space: InputSpace
    tol: Tolerance
    workdir: Path
    owned: bool  # the work directory is the check's own (no workdir was given): removed at the end
    factory: Callable[[], Any] | None = None
    work: Work | None = None  # what the model test's backends share
    state: ModelState | None = None  # the model's state when its model test's first check began
    spawn_runtime: bool = False


def _normalised(opts: CheckOptions, backend: str) -> tuple[CheckOptions, Tolerance]:
    """``opts`` with the precision parsed (the call's over the command line's; the ``trt_fp16`` alias), the latency
    settings parsed, the training recipe among the backend options and a cache; and the check's tolerance."""
    from .latency import parse_settings
    from .names import parse_precision

    options = {"train": opts.train, **opts.backend_options}
    if options.pop("trt_fp16", None) and not options.get("precision"):
        options["precision"] = "fp16"  # backend_options={"trt_fp16": True} from before precisions: its alias
    precision = parse_precision(opts.precision if opts.precision is not None else options.get("precision") or "fp32",
                                where="precision")
    options.pop("precision", None)
    if precision != "fp32":  # fp32 checks keep the keys they had before precisions existed
        options["precision"] = precision
    tol = resolve_tolerance(backend, opts.atol, opts.rtol, opts.tolerances)
    tol = widen_for_precision(tol, resolve_tolerance(backend), precision)
    latency = parse_settings(opts.latency, "latency=")
    if latency is not None:  # measured now, or not at all: a stored result's figures are another run's
        options["latency_threads"] = latency["threads"]
    cache = opts.cache if opts.cache is not None else ArtifactCache(None)
    return opts.replace(precision=precision, latency=latency, recheck=opts.recheck or latency is not None,
                        backend_options=options, cache=cache), tol


def _execute(run: _Run, result: Result) -> tuple[str, Result]:
    """Build, run and compare (in this process, or in a worker): ("passed" | "failed", result). The work
    directory is removed at the end when it is the check's own (``run.owned``), and when the check passed unless
    ``keep_passing``."""
    passed = False
    opts, impl, shared, latency = run.opts, run.impl, run.work, run.opts.latency
    path = run.workdir
    path.mkdir(parents=True, exist_ok=True)
    result.artifact = None if run.owned else str(path)
    ctx = CheckContext(model=run.model, backend=impl.name, space=run.space, tol=run.tol, opts=opts, workdir=path,
                       factory=run.factory, result=result)
    ctx.shared = shared
    ctx.state = run.state
    ctx.spawn_runtime = run.spawn_runtime
    for text in _input_warnings(run.space):
        ctx.warn(text)
    inductor_home = _inductor_home(opts.cache)
    try:
        with _temporary_files_in(path / "tmp", inductor_home), isolation.guard("reference", opts.timeout):
            kind = _reference_kind(impl.name)
            if shared is None or kind not in shared.reference_checked:  # once per model test and kind of backend
                try:
                    _check_reference(ctx)
                except StageError as err:  # eager PyTorch itself: the model test's failure, not this backend's
                    result.details["reference_failed"] = "kind" if getattr(err, "backend_kind_only", False) else "all"
                    raise
                if shared is not None:
                    shared.reference_checked.add(kind)
        ctx.reset_state()  # the eager runs so far may have changed it: the backend builds from the start state
        from .latency import measure, pinned_threads

        with _temporary_files_in(path / "tmp", inductor_home), pinned_threads(latency, isolation.in_worker()) as pinned:
            if latency is not None:  # the runtimes' own thread settings (ONNX Runtime's) follow what was pinned
                ctx.options["latency_threads"] = pinned["torch"]
            impl.verify(ctx)
            if latency is not None:  # parity passed: time the loaded artifact beside eager, here
                measure(ctx, latency, pinned)
    except StageError as err:
        result.outcome = "failed"
        result.stage = err.stage
        result.message = f"{impl.name}: stage {err.stage}: {err.message}"
        if opts.keep_artifacts:
            from .keep import keep_failure

            result.message += keep_failure(ctx, err, opts.keep_artifacts)
        return "failed", result
    except Exception as exc:
        bug = exc if isinstance(exc, InternalError) else internal_error(exc, staged=False)
        if bug is None:
            raise
        result.outcome, result.stage = "failed", INTERNAL
        result.message = f"{impl.name}: stage {INTERNAL}: {bug.message}"
        result.details["internal_traceback"] = bug.traceback
        return "failed", result
    else:
        passed = True
    finally:
        ctx.reset_state()
        ctx.cleanup.close()  # sessions, worker processes and open files first: then the files can go
        if run.owned or (passed and not opts.keep_passing):
            shutil.rmtree(path, ignore_errors=True)
            result.artifact = None
    return "passed", result


@contextlib.contextmanager
def _temporary_files_in(directory: Path, inductor_home: str | None = None) -> Iterator[None]:
    """Temporary files and directories made during the check (by Python's tempfile, TVM, compilers it runs)
    go to ``directory`` in the check's work directory: no other process's clean-up can remove them mid-check,
    and removing the work directory at the end leaves nothing behind.

    Inductor's caches (compiled kernels, and AOTInductor's precompiled headers: 283 MB) stay out of it, under
    ``inductor_home`` (the artifact cache's, so that they are reused and nothing is left in the system temp dir),
    else under inductor's own default; a TORCHINDUCTOR_CACHE_DIR the user set wins."""
    directory.mkdir(parents=True, exist_ok=True)
    saved_dir = tempfile.tempdir
    default = _inductor_cache_dir()
    saved_env = {k: os.environ.get(k) for k in ("TMPDIR", "TORCHINDUCTOR_CACHE_DIR")}
    # unset, or inductor's default (which inductor itself writes into the environment when it first looks)
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR") in (None, default):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = inductor_home or default
    headers = os.path.join(os.environ["TORCHINDUCTOR_CACHE_DIR"], "precompiled_headers")
    _point_inductor_headers(headers)
    tempfile.tempdir = str(directory)
    os.environ["TMPDIR"] = str(directory)
    try:
        yield
    finally:
        _point_inductor_headers(headers)  # imported during the check: fixed from the check's temp dir
        shutil.rmtree(directory, ignore_errors=True)  # before --deploy-keep-artifacts copies the work directory
        tempfile.tempdir = saved_dir
        for key, saved in saved_env.items():
            if saved is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = saved


def _point_inductor_headers(headers: str) -> None:
    """Inductor fixes where it keeps AOTInductor's precompiled headers when ``torch._inductor.codecache`` is first
    imported, from the temp dir of that moment (not from TORCHINDUCTOR_CACHE_DIR). Imported during a check, that
    is the check's work directory: later compiles would write 283 MB there, re-creating a directory removed."""
    codecache = sys.modules.get("torch._inductor.codecache")
    if codecache is not None and isinstance(getattr(codecache, "_HEADER_DIR", None), str):
        codecache._HEADER_DIR = headers  # type: ignore[attr-defined]
        codecache._HEADER_LOCK_DIR = os.path.join(headers, "locks")  # type: ignore[attr-defined]


def _inductor_home(cache) -> str | None:
    """Where inductor's caches go during checks: under the local artifact cache, when there is one."""
    root = getattr(cache, "root", None)
    return str(Path(root) / "inductor") if root else None


def _inductor_cache_dir() -> str:
    """Where inductor keeps compiled kernels when TORCHINDUCTOR_CACHE_DIR is not set (under the temp dir)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        return default_cache_dir()
    except (ImportError, AttributeError):  # older torch: its documented default
        import getpass

        return os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}")


def _check_reference(ctx: CheckContext) -> None:
    """Eager PyTorch must run on the canonical example and give the same outputs twice."""
    from .compare import UnsupportedOutput, flatten
    from .validate import (
        buffer_snapshot,
        check_buffers_unchanged,
        check_finite,
        check_inputs_unchanged,
        check_output_leaves,
        run_watching_inputs,
    )

    args = ctx.canonical.args
    example = ctx.canonical.describe(ctx.space.names)
    if ctx.space.keywords:
        _check_keywords(ctx.model, ctx.space.names)
    else:
        _check_arity(ctx.model, ctx.space.arity)
    buffers = buffer_snapshot(ctx.model)
    try:
        first, written = run_watching_inputs(lambda *xs: ctx.call(ctx.model, xs), args)
        second = ctx.eager(args)
    except Exception as exc:
        internal = internal_error(exc, staged=True)
        if internal is not None:
            raise internal from exc
        raise StageError("run", "eager PyTorch (the reference) fails on the first example: " + describe_exception(
            exc, "check that inputs= matches forward's arguments (count, dtypes, shapes)")
            + "\n  first example:\n    " + example.replace("\n", "\n    ")) from None
    check_inputs_unchanged(written, args, ctx.space.names)
    check_buffers_unchanged(ctx.model, buffers, ctx.backend)
    try:
        leaves = flatten(first)
    except UnsupportedOutput as exc:
        raise StageError("run", f"eager PyTorch returns an output pytest-deploy cannot compare: {exc}") from None
    try:
        check_output_leaves(leaves, ctx.backend)
    except StageError as err:
        err.backend_kind_only = True  # type: ignore[attr-defined]  # other kinds of backend take these outputs
        raise
    cmp = compare_outputs(first, second, Tolerance({}))
    if not cmp.ok:
        from .sources import rng_sites

        sites = [] if ctx.model.training else rng_sites(ctx.model)
        hint = ("call model.eval() to turn dropout off" if ctx.model.training else
                "draw random numbers only in training (`if self.training:`), or move the randomness out of forward; "
                "a deployed model (and trace, which freezes Python's and numpy's draws) needs the same output for "
                "the same input" if sites else "seed or remove randomness in forward")
        raise StageError(
            "run",
            "eager PyTorch is nondeterministic: two runs on the same input differ "
            f"({cmp.errors[0].text}); no backend can be compared against it"
            + "".join(f"\n  random draw at {where}" for where in sites) + f"\n  fix: {hint}",
        )
    if not ctx.allow_nonfinite:
        check_finite(leaves, example)




def _reference_kind(backend: str) -> tuple[bool, bool, bool]:
    """What the reference check asks of the eager outputs for ``backend``: a check that passed for one backend
    of a kind passed for every backend of that kind."""
    from .validate import TENSOR_GRAPH_BACKENDS, TENSOR_ONLY_OUTPUTS

    return backend in TENSOR_GRAPH_BACKENDS, backend in TENSOR_ONLY_OUTPUTS, backend == "checkpoint"


def _check_arity(model, arity: int | None) -> None:
    """forward must take the declared inputs positionally (``arity`` None: a strategy, count unknown)."""
    import inspect

    from .validate import check_keyword_arguments

    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return
    params = list(sig.parameters.values())
    check_keyword_arguments(model, params, arity)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if arity is None or any(p.kind == p.VAR_POSITIONAL for p in params):
        return
    required = [p for p in positional if p.default is p.empty]
    if arity > len(positional) or arity < len(required):
        names = ", ".join(p.name for p in positional) or "(none)"
        raise StageError(
            "run",
            f"inputs= declares {arity} input(s) but {type(model).__name__}.forward takes {len(required)}"
            + (f" to {len(positional)}" if len(positional) != len(required) else "")
            + f" positional argument(s) ({names}); make inputs= match forward",
        )


def _check_keywords(model, names) -> None:
    """Dict inputs: forward's required parameters must all be among them."""
    import inspect

    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return
    required = [p.name for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    missing = [n for n in required if n not in names]
    if missing:
        raise StageError(
            "run",
            f"{type(model).__name__}.forward requires {', '.join(map(repr, missing))}, which inputs= (a dict of "
            f"keyword arguments: {', '.join(names)}) does not give; add {'them' if len(missing) > 1 else 'it'} to inputs=")


def _keyword_parameters(model) -> list[str] | None:
    """Every parameter name of forward in order, for dict inputs; None when forward takes **kwargs (any name
    may be meant for it) or has no signature."""
    import inspect

    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError, AttributeError):
        return None
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind != p.VAR_POSITIONAL]


#: Parameter names that say "padding mask": a plain random 0/1 tensor is a poor stand-in for one.
_MASK_NAME = re.compile(r"mask$")


def _input_warnings(space) -> list[str]:
    """A parameter named like a mask fed by a plain random 0/1 (or bool) tensor gets a warning naming mask()."""
    from .spec import MaskSpec

    out = []
    for name, spec in zip(space.names, space.specs):
        if isinstance(spec, MaskSpec) or not _MASK_NAME.search(name):
            continue
        if spec.torch_dtype.is_floating_point or spec.bounds() != (0, 2):  # bools give (0, 2) too
            continue
        out.append(f"input {name!r} looks like a padding mask but is declared as a random 0/1 tensor, which gives "
                   f"masks no real input has (rows without a valid position, holes); declare it "
                   f"mask({', '.join(repr(d) for d in spec.shape)})")
    return out


def warn_cache(cache: ArtifactCache) -> None:
    """The one warning of a session whose shared cache cannot be used, and one for each cache entry that could not
    be trusted (a bad manifest), found in this process or (``details.cache_warnings``) a worker's."""
    from .errors import CacheWarning, warn

    if cache.remote_error and not cache.remote_warned:
        cache.remote_warned = True
        warn(CacheWarning(cache.remote_error))
    while cache.pending_warnings:
        warn(CacheWarning(cache.pending_warnings.pop(0)))


def _note_state_changes(result: Result, changes: list[str]) -> None:
    """Keep what ``forward`` changed in the model (``details.model_state_changed``), for the one warning."""
    if changes:
        kept = result.details.setdefault("model_state_changed", [])
        kept.extend(c for c in changes if c not in kept)


def _emit_warnings(result: Result, work: Work | None) -> None:
    """The check's warnings, at the model test; each said once per model test (every backend sees the same
    declaration), though every result keeps its own in ``details.warnings``."""
    from .errors import InputWarning, warn

    for text in result.details.get("warnings", ()):
        if work is None or text not in work.warned:
            warn(InputWarning(text))
        if work is not None:
            work.warned.add(text)


def _forward_arg_names(model, count: int = 0) -> list[str]:
    """forward's positional parameter names; a ``*xs`` parameter names the rest of ``count`` inputs ``xs_0``,
    ``xs_1``, ... as the exporters do (torch.export, and the ONNX graph's inputs)."""
    import inspect

    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError, AttributeError):
        return []
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    var = next((p.name for p in params if p.kind == p.VAR_POSITIONAL), None)
    if var is not None:
        names += [f"{var}_{i}" for i in range(max(0, count - len(names)))]
    return names


def _require_module(obj, who: str) -> None:
    import torch

    if not isinstance(obj, torch.nn.Module):
        raise SpecError(
            f"{who} returned {type(obj).__module__}.{type(obj).__qualname__}, not a torch.nn.Module; return the model "
            "(or (model, example_inputs)) from a @deployable test"
        )
    from .validate import require_materialised

    require_materialised(obj, who)


def fresh_seed(seed: int) -> int:
    """The seed a fresh instance of the model is built with: always another than the model's ``seed`` (for torch's,
    numpy's and Python's RNGs alike), the same one on every run."""
    return seed ^ 0x5EED


def seeded_call(fn: Callable[[], Any], seed: int) -> Any:
    """``fn()`` with torch's, numpy's and Python's RNGs seeded from ``seed`` (a model factory: an unseeded
    model gets the same weights every time); the RNGs' previous states are restored afterwards."""
    import random

    import torch

    py_state = random.getstate()
    try:
        import numpy

        np_state = numpy.random.get_state()
    except ImportError:  # pragma: no cover - numpy is optional for torch
        np_state = None  # no numpy: its RNG is neither seeded nor restored
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            if np_state is not None:
                numpy.random.seed(seed % 2**32)
            return fn()
    finally:
        random.setstate(py_state)
        if np_state is not None:
            numpy.random.set_state(np_state)

