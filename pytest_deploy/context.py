"""The context one check runs in: :class:`CheckContext`, what a backend sees while it builds and runs (the model,
the input space, a work directory, stages, notes, the artifact cache, eager runs); backends use it through the
``backends.base.Check`` Protocol. The example loop it starts is :mod:`pytest_deploy.examples`, the recorded
decisions and the branch search :mod:`pytest_deploy.search`; :mod:`pytest_deploy.check` makes one per check.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import isolation
from .branches import BranchAnalysis
from .cache import ArtifactCache
from .checkoptions import CheckOptions
from .compare import Tolerance
from .decisions import needs_line_tracing
from .errors import BackendUnavailable, DeployFailure, InternalError, SpecError, StageError
from .examples import ExampleFailed, ExampleRunner
from .fingerprint import content_key, identity_key
from .internal import internal_error
from .modeltest import ModelState, Work
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
        #: at int8: the calibration inputs ``calibration=`` gave (read by run_check), or None: generated ones
        self.calibration = opts.calibration
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
        require_module(fresh, "the factory")
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
            note_state_changes(self.result, self.state.reset(self.model))

    def run_examples(self, runner: Callable[[tuple], Any], *, reference: Callable[[tuple], Any] | None = None,
                     record: bool = True) -> None:
        """Run ``runner`` on the canonical example and ``examples - 1`` generated ones; compare each with eager
        (``reference``, default :meth:`recorded_eager`); with ``record`` the branch search runs first and its finds
        are examples too: see :meth:`examples.ExampleRunner.run_examples`."""
        self.example_runner.run_examples(runner, reference=reference, record=record)


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


def note_state_changes(result: Result, changes: list[str]) -> None:
    """Keep what ``forward`` changed in the model (``details.model_state_changed``), for the one warning."""
    if changes:
        kept = result.details.setdefault("model_state_changed", [])
        kept.extend(c for c in changes if c not in kept)


def require_module(obj, who: str) -> None:
    import torch

    if not isinstance(obj, torch.nn.Module):
        raise SpecError(
            f"{who} returned {type(obj).__module__}.{type(obj).__qualname__}, not a torch.nn.Module; return the model "
            "(or (model, example_inputs)) from a @deployable test"
        )
    from .validate import require_materialised

    require_materialised(obj, who)
