"""One check: model + input space → backend artifact on disk → run on generated examples → compare.

``run_check`` is what the ``@deployable`` items, the ``deploy`` fixture and ``verify`` all call: it resolves the
check (:class:`CheckOptions` normalised, the input space, the keys), answers it from the result cache or runs it
(in this process or a worker) and folds the outcome into a :class:`Result`. The check itself runs in a
:class:`pytest_deploy.context.CheckContext`: eager PyTorch first (:mod:`pytest_deploy.reference`), then the backend,
whose example loop is :mod:`pytest_deploy.examples` and whose recorded decisions are :mod:`pytest_deploy.search`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import isolation
from .cache import ArtifactCache
from .checkoptions import CheckOptions
from .compare import Tolerance, resolve_tolerance, widen_for_precision
from .context import CheckContext, require_module
from .errors import INTERNAL, BackendUnavailable, DeployFailure, InternalError, StageError
from .internal import internal_error
from .modeltest import ModelState, ModelTest, Work
from .reference import check_reference, forward_arg_names, input_warnings, keyword_parameters, reference_kind
from .results import Result
from .sources import add_model_files
from .spec import InputSpace

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
    require_module(model, "the test")
    add_model_files(model)  # before anything reads which files are the user's: the cache key, the line tracer
    in_worker = isolation.isolated(opts.isolate, getattr(impl, "native", False))
    count = len(opts.inputs) if isinstance(opts.inputs, (list, tuple)) else len(example_inputs) if isinstance(
        example_inputs, (list, tuple)) else 0
    space = InputSpace.resolve(opts.inputs, opts.dims, example_inputs, names=forward_arg_names(model, count),
                               parameters=keyword_parameters(model))
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
        repr(reference_kind(name)))
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
                work.reference_failed["all" if scope == "all" else repr(reference_kind(name))] = (
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
    if precision == "fp16" and opts.fp16_block_list:
        options["fp16_block_list"] = list(opts.fp16_block_list)
    cache = opts.cache if opts.cache is not None else ArtifactCache(None)
    calibration = _quantization_options(opts, precision, options)
    return opts.replace(precision=precision, latency=latency, recheck=opts.recheck or latency is not None,
                        backend_options=options, cache=cache, calibration=calibration), tol


def _quantization_options(opts: CheckOptions, precision: str, options: dict[str, Any]) -> list | None:
    """At int8: the agreement gate (parsed) and what calibrates (the calibration inputs' digest, or how many generated
    examples) among the backend options, so both keys see them; returns the calibration inputs read (or None).
    Other precisions keep the options they had before int8 existed."""
    from .names import PRECISIONS

    if PRECISIONS[precision] != "int8":
        return None
    from .agreement import parse_agreement
    from .validate import calibration_digest, read_calibration

    gate = parse_agreement(opts.agreement)
    if gate is not None:
        options["agreement"] = gate
    if precision != "int8":  # int8-dynamic: nothing calibrates
        return None
    if opts.int8_exclude:
        options["int8_exclude"] = list(opts.int8_exclude)
    if opts.calibration is None:
        options["calibration_examples"] = opts.calibration_examples
        return None
    calibration = read_calibration(opts.calibration)
    options["calibration"] = calibration_digest(calibration)
    return calibration


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
    for text in input_warnings(run.space):
        ctx.warn(text)
    inductor_home = _inductor_home(opts.cache)
    try:
        with _temporary_files_in(path / "tmp", inductor_home), isolation.guard("reference", opts.timeout):
            kind = reference_kind(impl.name)
            if shared is None or kind not in shared.reference_checked:  # once per model test and kind of backend
                try:
                    check_reference(ctx)
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


def warn_cache(cache: ArtifactCache) -> None:
    """The one warning of a session whose shared cache cannot be used, and one for each cache entry that could not
    be trusted (a bad manifest), found in this process or (``details.cache_warnings``) a worker's."""
    from .errors import CacheWarning, warn

    if cache.remote_error and not cache.remote_warned:
        cache.remote_warned = True
        warn(CacheWarning(cache.remote_error))
    while cache.pending_warnings:
        warn(CacheWarning(cache.pending_warnings.pop(0)))


def _emit_warnings(result: Result, work: Work | None) -> None:
    """The check's warnings, at the model test; each said once per model test (every backend sees the same
    declaration), though every result keeps its own in ``details.warnings``."""
    from .errors import InputWarning, warn

    for text in result.details.get("warnings", ()):
        if work is None or text not in work.warned:
            warn(InputWarning(text))
        if work is not None:
            work.warned.add(text)


