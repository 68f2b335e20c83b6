"""One check: model + input space → backend artifact on disk → run on generated examples → compare.

``run_check`` is what the ``@deployable`` items, the ``deploy`` fixture and ``verify`` all call.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import isolation
from .branches import BranchAnalysis, Divergence, describe_divergence, describe_frozen_number, fix_for
from .cache import ArtifactCache
from .checkoptions import CheckOptions
from .compare import (
    Comparison,
    Leaves,
    Tolerance,
    UnsupportedOutput,
    compare_outputs,
    flatten,
    format_number,
    resolve_tolerance,
    widen_for_precision,
)
from .decisions import Recorder, needs_line_tracing, record
from .errors import INTERNAL, BackendUnavailable, DeployFailure, InternalError, SpecError, StageError
from .localize import LocalizationError
from .modeltest import ModelState, ModelTest, Work
from .results import Result
from .sources import (
    PACKAGE_DIR,
    add_model_files,
    describe_exception,
    first_line,
    is_model_code,
    origin_frame,
    package_frame,
    package_path,
    torchscript_error,
)
from .spec import SPECIAL_LABEL, Example, InputSpace
from .tensors import clone_args, is_tensor

#: Stage name → the timing bucket it counts towards in the report.
_TIMING_BUCKET = {"export": "build", "check": "build", "simplify": "build", "compile": "build", "save": "build",
                  "load": "load", "run": "run", "compare": "run", "branches": "run", "reference": "run",
                  "latency": "latency"}

#: After the first failing example, at most this many further runs are spent shrinking it.
SHRINK_BUDGET = 150

#: A failing special-pattern example gets at most this many runs to shrink its dims.
DIM_SHRINK_RUNS = 24

#: Outputs whose magnitude never exceeds the check's atol (or this) on any example make a vacuous check.
VACUOUS_FLOOR = 1e-30

#: Targeted search for the other outcome of each recorded decision: at most this many eager runs
#: and this many seconds per check.
EXPLORE_RUNS = 48
EXPLORE_SECONDS = 5.0
#: Within those bounds the budget follows the model's cost: as many runs as this many seconds of recorded
#: eager runs on the canonical example allow, but never fewer than EXPLORE_MIN_RUNS (the systematic plan's
#: first patterns at every corner of the dims).
EXPLORE_COST_SECONDS = 2.0
EXPLORE_MIN_RUNS = 12

#: a failing trace check traces the model twice more to find the numbers computed from shapes that the trace froze
#: (:meth:`CheckContext._frozen_shape_numbers`); not when building the artifact took longer than this
RETRACE_BUDGET_S = 20.0


@dataclass
class _RunCounts:
    """What run_examples counts while hypothesis runs the examples."""

    runs: int = 0
    failed_keys: set[tuple] = field(default_factory=set)  # _example_key of each failing example
    after_failure: int = 0  # runs since the first failure: the shrink budget spent
    passed: int = 0


@dataclass
class _ReferenceStats:
    """What the eager outputs looked like over the examples (see CheckContext._observe_reference)."""

    floats: int = 0  # float outputs seen
    largest: float = 0.0  # the largest float magnitude, and where
    largest_path: str | None = None
    others: bool = False  # a non-empty output that is not floating point
    shapes: dict[tuple, list] = field(default_factory=dict)  # output signature -> the first example's outputs
    compared: int = 0  # examples compared with an earlier one of the same signature
    varies: bool = False  # whether any of them differed
    examples: int = 0


class _ExampleFailed(Exception):
    """Raised inside the hypothesis loop; carries the example and what went wrong with it."""

    def __init__(self, example: Example, stage: str, text: str, comparison: Comparison | None = None):
        super().__init__(text)
        self.example = example
        self.stage = stage
        self.text = text
        self.comparison = comparison


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
        #: for a tracing backend: trace the model on given inputs (the artifact is thrown away), to read the Python
        #: numbers the tracer froze (:meth:`_frozen_shape_numbers`)
        self._retrace: Callable[[tuple], Any] | None = None
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
        #: output path -> index of the mask() input whose dims lead that output (decided on the first example)
        self._masked_paths: dict[str, int] | None = None
        #: what the eager outputs looked like over the examples: the largest float magnitude, whether any changed
        self._reference = _ReferenceStats()
        #: work shared with the other backends of the model test (modeltest.Work), or None
        self.shared: Work | None = None
        #: the model's state when its model test's first check began (put back before each eager run and build)
        self.state: ModelState | None = None
        #: the branch search's steps, kept for the other backends while it runs: ("observe" | "note_fixed", run)
        self._search_steps: list[tuple[str, Any]] | None = None
        #: the model fails under the dispatch mode that tracks which decisions the inputs steer
        self._untrackable = False

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
        """Hash of what an artifact built from this check is made of: the model's structure and weights,
        the user source files it reaches (and the test file), the input space and the canonical example.
        Computed once per model test (the backends share it); artifact and exported-program keys start from it."""
        from .cache import make_key
        from .fingerprint import files_digest, model_digest, reachable_files, stable

        if self.shared is not None and self.shared.content_key is not None:
            return self.shared.content_key
        files: set[str] = set(self.source_files)
        space = stable({"specs": self.space.specs, "dims": self.space.dims, "strategy": self.space.strategy_override,
                        "canonical": list(self.canonical.args)}, files)
        digest = self.shared.model_digest(self.model) if self.shared is not None else model_digest(self.model)
        key = make_key(digest, files_digest(reachable_files(self.model, files)), space)
        if self.shared is not None:
            self.shared.content_key = key
        return key

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
        from .cache import make_key
        from .fingerprint import identity, stable

        space = stable({"specs": self.space.specs, "dims": self.space.dims, "strategy": self.space.strategy_override,
                        "canonical": list(self.canonical.args)})
        return make_key("identity", identity(self.model), space)

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
        except (StageError, _ExampleFailed, DeployFailure, BackendUnavailable, InternalError, KeyboardInterrupt,
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

    def traced_decisions(self, retrace: Callable[[tuple], Any] | None = None) -> None:
        """Called by a backend whose artifact follows the path of the input it was built from
        (torch.jit.trace): decisions whose outcome differs from that path's are trace-lost, and a
        mismatch on such an example fails at stage branches. ``retrace(args)``: trace the model again on
        ``args`` (run only when a check fails, to find the Python numbers computed from shapes that the trace
        froze).

        The path is recorded from eager PyTorch on the same input, not while tracing: under the tracer
        shape reads are tensors (``len(x)`` and ``range(x.shape[1])`` convert them) and library modules
        take their tracing branches, decisions no eager run makes."""
        run = self.shared.traced_run if self.shared is not None else None
        if run is None:
            _, run = record(self.eager, self.canonical.args, lines=self.line_tracing)
            if self.shared is not None:
                self.shared.traced_run = run
        self.analysis = BranchAnalysis(run)
        self.freezes_decisions = True
        self._retrace = retrace

    def varying_inputs(self, args: tuple) -> list | None:
        """Each input tensor of ``args`` whose values the spec lets vary, None in the place of one it holds
        constant (a decision's sources are these positions); None when the spec does not say (a hypothesis
        strategy, example inputs only)."""
        if self.space.strategy_override is not None or len(self.space.specs) != len(args) or self._untrackable:
            return None
        return [a if is_tensor(a) and not spec.holds_constant() else None for a, spec in zip(args, self.space.specs)]

    def recorded_eager(self, args: tuple, *, track: bool = False):
        """Eager reference outputs, with the decisions taken on the way counted into the analysis; ``track``:
        also which decisions depend on the inputs the spec lets vary (:class:`decisions.Taint`).

        The backends of one model test share them: an example another backend's check ran gives its outputs
        (as :class:`compare.Leaves`) and its recorded decisions without running eager PyTorch again."""
        shared = self.shared if not track else None
        hit = shared.reference(args) if shared is not None else None
        if hit is not None:
            leaves, run, mode = hit
            self.analysis.observe(run)
            self.result.details["branch_recording"] = mode
            self._count("references_reused")
            return leaves
        varying = self.varying_inputs(args) if track else None
        try:
            with isolation.guard("reference", self.timeout), Recorder(self.line_tracing, varying) as rec:
                out = self.eager(args)
        except (StageError, KeyboardInterrupt):
            raise
        except Exception:
            if varying is None:
                raise
            # a model that does not run under the dispatch mode that tracks the inputs: recorded without it (its
            # decisions are then all chased, as they were before the tracking), and the search does without it too
            self._untrackable = True
            with isolation.guard("reference", self.timeout), Recorder(self.line_tracing) as rec:
                out = self.eager(args)
        self.analysis.observe(rec.run)
        if self._search_steps is not None and track:
            self._search_steps.append(("observe", rec.run))
        mode = self.result.details["branch_recording"] = (
            "tensor conversions and if/while outcomes" if rec.line_tracing
            else "tensor conversions only (the model's code has no if/while)" if not self.line_tracing
            else "tensor conversions only (another tracer, e.g. coverage or a debugger, owns sys.settrace)")
        if shared is not None:
            self._count("references_computed")
            with contextlib.suppress(Exception):  # an output compare cannot flatten is reported by the loop
                shared.keep_reference(args, Leaves(flatten(out)), rec.run, mode)
        return out

    def _count(self, what: str) -> None:
        """Count shared work in ``details.model_test`` (what this check took from its model test, what it did)."""
        counts = self.result.details.setdefault("model_test", {})
        counts[what] = counts.get(what, 0) + 1

    def explore(self, run_seconds: float = 0.0) -> list[Example]:
        """Search for inputs reaching the outcomes no input has reached yet; return those that did.

        Only eager PyTorch runs here (it is cheap); the examples found are then run through the
        backend like any other. Stops when every recorded branch has both outcomes, or the budget ends:
        EXPLORE_COST_SECONDS of runs at ``run_seconds`` each (one recorded eager run on the canonical
        example), between EXPLORE_MIN_RUNS and EXPLORE_RUNS runs, and never past EXPLORE_SECONDS.

        A decision that no declared input can change (it read only the weights, inputs the spec holds
        constant such as an all-ones mask, and shapes: :class:`decisions.Taint`) is chased only at the
        corners of the dims, where a shape can still flip it; after that it stays uncovered, and is said to.
        """
        if self.space.strategy_override is not None or not self.analysis.sites:
            return []
        found: list[Example] = []
        start = time.perf_counter()
        budget = EXPLORE_RUNS if run_seconds <= 0 else \
            max(EXPLORE_MIN_RUNS, min(EXPLORE_RUNS, int(EXPLORE_COST_SECONDS / run_seconds)))
        candidates = self.space.exploration()
        # the search starts at each corner of the dims: there, an if/while that read no tensor (a branch
        # on a shape) is given its chance to go the other way and so become a decision
        corners = len(self.space.dim_corners()) if any(lo != hi for lo, hi in self.space.dims.values()) else 0
        # then, before the rest of the plan, the constant corners (all zero, all at an end of the range) of the
        # integer inputs that feed a decision with an outcome not reached yet: flags and ids take them in real use
        cornered: set[int] = set()
        queue: list[Example] = []
        runs = 0
        for i in range(budget):
            missing = self.analysis.missing_outcomes(candidates=i < corners, fixed=i < corners)
            if not missing or time.perf_counter() - start > EXPLORE_SECONDS:
                break
            if i >= corners:
                feeding = self.analysis.missing_sources()
                todo = [k for k in range(len(self.space.specs)) if feeding >> k & 1 and k not in cornered]
                cornered.update(todo)
                queue.extend(self.space.corner_examples(todo))
            ex = queue.pop(0) if queue and i >= corners else next(candidates)
            seen = self.analysis.seen()
            runs += 1
            try:
                _, run = record(self.eager, ex.args, lines=self.line_tracing, varying=self.varying_inputs(ex.args))
            except Exception:  # a failing input is for the example loop to report, not the search
                continue
            new = {(site, outcome) for (site, _), (_, outcome) in run.decisions().items()} - seen
            step = "observe" if new else "note_fixed"  # note_fixed: a decision this input steers is chased again
            getattr(self.analysis, step)(run)
            if self._search_steps is not None:
                self._search_steps.append((step, run))
            if new:
                ex.label = "found by the branch search"
                found.append(ex)
        self.result.details["branch_search_runs"] = len(found)
        fixed = self.analysis.fixed_uncovered()
        self.result.details["branch_search"] = {
            "runs": runs, "budget": budget,
            "not_chased": [f"{s.site.describe()}: no declared input can change it (it reads only weights, shapes "
                           "and inputs the spec holds constant)" for s in fixed]}
        return found

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

    # -- the example loop --------------------------------------------------------------------------

    def run_examples(self, runner: Callable[[tuple], Any], *, reference: Callable[[tuple], Any] | None = None,
                     record: bool = True) -> None:
        """Run ``runner`` on the canonical example and ``examples - 1`` generated ones; compare each with eager.

        Hypothesis generates the examples and shrinks the first failure; the artifact is built once
        by the caller and reused for all. ``reference`` defaults to :meth:`recorded_eager`; with
        ``record`` the branch search runs first and its finds are examples too.
        """
        from hypothesis import HealthCheck, Phase, Verbosity, given, settings
        from hypothesis import example as explicit_example
        from hypothesis import seed as hypothesis_seed
        from hypothesis.errors import Flaky

        reference = reference or self.recorded_eager
        self.runner = runner
        found: list[Example] = []
        if record:
            found = self._branch_search()
        state = _RunCounts()

        def one(ex: Example) -> None:
            key = _example_key(ex)
            if state.failed_keys:
                state.after_failure += 1
                if state.after_failure > SHRINK_BUDGET and key not in state.failed_keys:
                    return  # shrink budget spent: stop exploring, keep the smallest failure found
            state.runs += 1
            try:
                self._run_one(ex, runner, reference)
            except _ExampleFailed:
                if key is not None:
                    state.failed_keys.add(key)
                raise
            if not state.failed_keys:
                state.passed += 1

        test = given(self.space.strategy())(one)
        # ``examples`` counts every example run: the canonical one, the special patterns every input is
        # guaranteed (as many as half the rest of the budget allows), then generated ones; the branch search's finds come on top.
        special = self.space.special_examples((self.examples - 1) // 2)  # at most half: the rest explores dims
        for ex in reversed([*special, *found]):
            test = explicit_example(ex)(test)
        test = explicit_example(self.canonical)(test)
        generated = self.examples - 1 - len(special)
        generate = (Phase.generate, Phase.shrink) if generated > 0 else (Phase.shrink,)
        test = settings(
            max_examples=max(1, generated),
            deadline=None,
            database=None,
            derandomize=False,
            suppress_health_check=list(HealthCheck),
            phases=(Phase.explicit, *generate),
            report_multiple_bugs=False,
            print_blob=False,
            verbosity=Verbosity.quiet,
        )(test)
        test = hypothesis_seed(self.seed)(test)
        try:
            test()
        except _ExampleFailed as failure:
            if failure.example.label == SPECIAL_LABEL:  # explicit examples are not shrunk by hypothesis
                failure = self._shrink_dims(failure, runner, reference)
            self.failed_example = failure.example
            self.result.examples = state.passed + 1
            stage, text = failure.stage, self._failure_text(failure, shrunk=state.runs > 1)
            if failure.comparison is not None:
                lost = self._lost_branch_text(failure)
                if lost:
                    stage, text = "branches", lost + "\n" + text
            elif stage == "run" and self.freezes_decisions:  # a frozen shape number can break the run itself
                frozen = self._frozen_shape_numbers(failure.example)
                if frozen:
                    text += "\n" + describe_frozen_number(frozen[0], "the failing input") + f"\n  fix: {fix_for(frozen[0])}"
            from .divergence import locate

            text += locate(self, failure.example.args, stage)  # where it broke; never raises
            raise StageError(stage, text, comparison=failure.comparison) from None
        except Flaky as exc:
            bug = next((e for e in getattr(exc, "exceptions", ()) or () if isinstance(e, InternalError)), None)
            if bug is not None:
                raise bug from None
            inner = _first_example_failure(exc)
            text = (
                f"{self.backend}: a failure did not reproduce when hypothesis replayed the same input, so the model "
                "or the backend is nondeterministic (dropout left on? randomness in forward?)"
            )
            if inner is not None:
                self.failed_example = inner.example
                text += "\n  first failure: " + inner.text.replace("\n", "\n  ")
            raise StageError(inner.stage if inner else "run", text) from None
        finally:
            self.result.branches = self.analysis.to_json()
            if self.result.branches:
                self.result.details["branch_summary"] = self.analysis.summary()
        self.result.examples = state.passed
        self._judge_reference()

    def _branch_search(self) -> list[Example]:
        """Record the canonical example and search for the decisions' other outcomes, once per model test:
        a check whose model test already searched folds the recorded runs into its own analysis instead."""
        done = self.shared.search if self.shared is not None else None
        if done is not None:
            for step, run in done.steps:
                getattr(self.analysis, step)(run)
            self.result.details.update(done.details)
            self.result.details.setdefault("model_test", {})["branch_search"] = "shared"
            return list(done.found)
        self._search_steps = [] if self.shared is not None else None
        began = time.perf_counter()
        self.recorded_eager(self.canonical.args, track=True)  # the sites to search from
        with isolation.guard("reference", self.timeout):
            found = self.explore(time.perf_counter() - began)
        if self.shared is not None and self._search_steps is not None:
            from .modeltest import Search

            keys = ("branch_recording", "branch_search_runs", "branch_search")
            self.shared.search = Search(list(found), self._search_steps,
                                        {k: self.result.details[k] for k in keys if k in self.result.details})
            self._search_steps = None
            self.result.details.setdefault("model_test", {})["branch_search"] = "ran"
        return found

    def _shrink_dims(self, failure: _ExampleFailed, runner, reference) -> _ExampleFailed:
        """A failing special-pattern example with its dims made as small as still fails (each dim in turn,
        by bisection towards its lower bound), its recipes unchanged."""
        best = failure
        recipes = failure.example.recipes  # every smaller candidate is built from these too
        assert recipes is not None  # special-pattern examples are built from recipes
        runs = 0
        for name in sorted(self.space.dims):
            low, high = self.space.dims[name][0], best.example.dims.get(name, 0)
            first = True
            while low < high and runs < DIM_SHRINK_RUNS:
                mid = low if first else (low + high) // 2  # the lower bound first: failures need not be monotonic
                first = False
                candidate = self.space.build({**best.example.dims, name: mid}, recipes)
                candidate.label = SPECIAL_LABEL
                runs += 1
                try:
                    self._run_one(candidate, runner, reference)
                except _ExampleFailed as smaller:
                    best, high = smaller, mid
                except Exception:
                    low = mid + 1
                else:
                    low = mid + 1
        if best is not failure:
            best.example.label = SPECIAL_LABEL + ", dims shrunk"
        return best

    def _lost_branch_text(self, failure: _ExampleFailed) -> str | None:
        """When a tracing backend's mismatch comes with a trace-lost decision, say where it is: a Python number
        computed from a shape that the trace froze (:meth:`_frozen_shape_numbers`) first, as the decisions that
        differ after it are mostly its symptoms."""
        if not self.freezes_decisions:
            return None
        frozen = self._frozen_shape_numbers(failure.example)
        try:
            _, run = record(self.eager, failure.example.args, lines=self.line_tracing)
        except Exception:
            run = None
        divergences = self.analysis.divergences(run) if run is not None else []
        if not divergences and not frozen:
            return None
        if failure.comparison is not None:
            worst = max(failure.comparison.errors, key=lambda e: e.max_abs)
            atol, _ = self.tol.for_dtype(worst.dtype)
            error = f"; max abs error {format_number(worst.max_abs)} > atol {atol:g}"
        else:
            error = ""
        if frozen:
            text = describe_frozen_number(frozen[0], "the failing input") + f"{error}\n  fix: {fix_for(frozen[0])}"
            others = [d.site.where for d in (*frozen[1:], *divergences)]
        else:
            first = divergences[0]
            self.analysis.mark_diverged(first.site)
            stats = self.analysis.sites.get(first.site)
            fix = fix_for(first, plain=stats is not None and stats.plain)
            text = describe_divergence(first, "the failing input") + f"{error}\n  fix: {fix}"
            others = [d.site.where for d in divergences[1:] if d.site != first.site]
        others = list(dict.fromkeys(others))
        if others:
            text += "\n  the failing input also leaves the traced path at: " + ", ".join(others[:5])
        return text

    def _frozen_shape_numbers(self, example: Example) -> list[Divergence]:
        """Python numbers computed from a tensor's shape (``float(w - 1) / 2``, ``int(x.shape[-1] * 0.5)``) that
        the trace froze and that ``example`` gives another value: kind ``shape``, at the line that converts.

        Eager PyTorch converts no tensor there (a shape is a Python int), so the recorder cannot see them; the
        tracer does (a shape is a tensor under it, and it warns when converting one). Where it warned at a line
        of the user's that eager converts nothing at, the model is traced again on the canonical example and on
        ``example`` with the conversions recorded, and the values compared. Never raises."""
        if self._retrace is None or self.result.timings.get("build", 0.0) > RETRACE_BUDGET_S:
            return []
        eager_sites = {site.where for site, _ in self.analysis.traced}
        warned = {f"{w['file']}:{w['line']}" for w in self.result.details.get("tracer_warnings") or []
                  if re.match(r"Converting a tensor to a Python (?:float|integer|number|index)", str(w.get("message")))}
        if not warned - eager_sites:
            return []
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _, traced = record(self._retrace, self.canonical.args, lines=False)
                _, other = record(self._retrace, example.args, lines=False)
        except Exception:
            return []
        theirs = {(site, n): (kind, value) for site, n, kind, value in other.events}
        found: list[Divergence] = []
        for site, n, kind, value in traced.events:
            where = site.where
            if kind in ("bool", "tolist") or where in eager_sites or where not in warned:
                continue
            mine = theirs.get((site, n))
            if mine is not None and mine[1] != value and all(d.site != site for d in found):
                found.append(Divergence(site, n, "shape", value, mine[1]))
                self.analysis.add_frozen(site, value, mine[1])
        return found

    def _run_one(self, ex: Example, runner, reference) -> None:
        try:
            expected = reference(ex.args)
        except StageError as err:
            raise _ExampleFailed(ex, err.stage, err.message) from None
        except InternalError:
            raise
        except Exception as exc:  # the reference itself fails: the spec does not fit forward
            internal = internal_error(exc, staged=True)
            if internal is not None:
                raise internal from exc
            raise _ExampleFailed(ex, "run", "eager PyTorch (the reference) fails on this input: " + describe_exception(
                exc, "check that inputs= matches forward's arguments (count, dtypes, shapes)")) from None
        try:
            with self.stage("run"):
                got = runner(clone_args(ex.args))
        except StageError as err:
            raise _ExampleFailed(ex, "run", err.message) from None
        try:
            with self.stage("compare"):
                leaves = expected if isinstance(expected, Leaves) else Leaves(flatten(expected))  # flattened once
                keep = self._keep_masks(ex, leaves)
                self._observe_reference(ex, leaves, keep)
                cmp = compare_outputs(leaves, got, self.tol, keep=keep)
        except StageError as err:
            raise _ExampleFailed(ex, "compare", err.message) from None
        self._update_errors(cmp)
        if not cmp.ok:
            raise _ExampleFailed(ex, "compare", "", cmp)

    # -- masks and the eager outputs themselves -------------------------------------------------------

    def _keep_masks(self, ex: Example, leaves: Leaves) -> dict[str, Any] | None:
        """For outputs led by a mask() input's dims (decided once, :meth:`_decide_masked`): path -> where the
        mask is valid. None when nothing is masked."""
        from .spec import MaskSpec

        masks = [i for i, s in enumerate(self.space.specs) if isinstance(s, MaskSpec)]
        if not masks or self.compare_masked or ex.specs is None:
            return None
        if self._masked_paths is None:
            self._masked_paths = self._decide_masked(ex, leaves, masks)
        keep = {}
        for path, value in leaves:
            index = self._masked_paths.get(path)
            if index is None or not is_tensor(value):
                continue
            m = ex.args[index]
            if tuple(value.shape[:m.dim()]) == tuple(m.shape):
                keep[path] = m.bool()
        if keep:
            counts = self.result.details.setdefault("masked_positions", {"compared": 0, "left_out": 0})
            values = dict(leaves)
            for path, m in keep.items():
                per = math.prod(values[path].shape[m.dim():])
                counts["compared"] += int(m.sum()) * per
                counts["left_out"] += int((~m).sum()) * per
        return keep or None

    def _decide_masked(self, ex: Example, leaves: Leaves, masks: list[int]) -> dict[str, int]:
        """Which outputs are per-token: path -> the mask() input whose dims lead it on ``ex`` (the first
        example) and on a probe whose masks have other sizes (:meth:`InputSpace.mask_probe`, run in eager
        PyTorch once per model test). An output whose leading dims equal a mask's on one example only (logits
        of 3 classes beside a mask 3 long) is compared in full; so is every output beside a mask whose last
        dim cannot vary. Notes both in ``details``."""
        candidates: dict[str, int] = {}
        for path, value in leaves:
            for i in masks:
                m = ex.args[i]
                if is_tensor(value) and value.dim() >= m.dim() and tuple(value.shape[:m.dim()]) == tuple(m.shape):
                    candidates[path] = i
                    break
        if not candidates:
            return {}
        probe_masks, shapes, error, static = self._mask_probe(ex, sorted(set(candidates.values())))
        names = self.space.names

        def name(i: int) -> str:
            return names[i] if i < len(names) else f"input {i}"

        decided: dict[str, int] = {}
        ruled_out: dict[str, str] = {}
        for path, i in candidates.items():
            m_shape = probe_masks.get(i)
            shape = shapes.get(path)
            if shape is None:  # a backend's own copy of an output ("simplified output[...]" for onnx)
                shape = next((s for p, s in shapes.items() if path.endswith(" " + p)), None)
            if i in static:
                ruled_out[path] = f"mask {name(i)!r}: {static[i]}"
            elif error is not None:
                ruled_out[path] = f"eager PyTorch failed on other sizes of mask {name(i)!r}'s dims: {error}"
            elif m_shape is None or shape is None or tuple(shape[:len(m_shape)]) != tuple(m_shape):
                ruled_out[path] = (f"its leading dims do not follow mask {name(i)!r}'s dims: "
                                   f"{_shape_text(shape)} beside mask {_shape_text(m_shape)} on another example")
            else:
                decided[path] = i
        if decided:
            self.result.details["masked_outputs"] = {p: name(i) for p, i in decided.items()}
        if ruled_out:
            self.result.details["unmasked_outputs"] = ruled_out
        return decided

    def _mask_probe(self, ex: Example, masks: list[int]) -> tuple[dict[int, tuple], dict[str, tuple], str | None,
                                                                   dict[int, str]]:
        """The probe's mask shapes by input position, its eager output shapes by path, the error eager PyTorch
        raised on it (or None), and the masks that cannot vary with the reason; shared by the model test."""
        key = (tuple(tuple(ex.args[i].shape) for i in masks), tuple(masks))
        shared = self.shared.mask_probes if self.shared is not None else {}
        if key not in shared:
            probe, static = self.space.mask_probe(ex, masks)
            probe_masks: dict[int, tuple] = {}
            shapes: dict[str, tuple] = {}
            error = None
            if probe is not None:
                probe_masks = {i: tuple(probe.args[i].shape) for i in masks if i not in static}
                try:
                    with isolation.guard("reference", self.timeout):
                        out = self.eager(probe.args)
                    shapes = {p: tuple(v.shape) for p, v in flatten(out) if is_tensor(v)}
                except StageError:
                    raise
                except Exception as exc:
                    error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
            shared[key] = (probe_masks, shapes, error, static)
            if self.shared is not None:
                self._count("mask_probe_runs")
        return shared[key]

    def _observe_reference(self, ex: Example, leaves: Leaves, keep) -> None:
        """Track the eager outputs over the examples: their largest float magnitude (a check whose outputs are
        all (near) zero compares nothing) and whether they ever change with the input."""
        ref = self._reference
        ref.examples += 1
        signature = []
        for path, value in leaves:
            if not is_tensor(value):
                continue
            signature.append((path, tuple(value.shape), str(value.dtype)))
            if not value.is_floating_point() or value.numel() == 0:
                ref.others = ref.others or value.numel() > 0
                continue
            shown = value.detach()
            if keep and path in keep:
                valid = keep[path].reshape(*keep[path].shape, *([1] * (shown.dim() - keep[path].dim())))
                shown = torch_where(valid, shown)
            largest = float(shown.abs().nan_to_num(0.0, 0.0, 0.0).max()) if shown.numel() else 0.0
            ref.floats += 1
            if largest >= ref.largest:
                ref.largest, ref.largest_path = largest, path
        key = tuple(signature)
        values = [v for _, v in leaves if is_tensor(v)]
        previous = ref.shapes.get(key)
        if previous is None:
            if len(ref.shapes) < 8:
                ref.shapes[key] = [v.detach().clone() for v in values]
        else:
            ref.compared += 1
            if not all(_equal(a, b) for a, b in zip(previous, values)):
                ref.varies = True

    def _judge_reference(self) -> None:
        """After every example passed: fail a vacuous check, warn about outputs no input changes."""
        ref = self._reference
        if not ref.floats or ref.others or ref.examples == 0:
            return
        atol, _ = self.tol.float32
        largest = ref.largest
        if largest <= max(atol, VACUOUS_FLOOR) and not self.allow_vacuous:
            raise StageError(
                "reference",
                f"vacuous check: eager PyTorch's outputs are (near) zero on every example (largest magnitude "
                f"{format_number(largest)} at {ref.largest_path}, within atol {atol:g} of zero), so any backend "
                "returning zeros would pass and the comparison proves nothing\n"
                "  fix: initialise the weights (a library's default init can let the signal vanish, e.g. "
                "model.apply(init_fn) or a seeded torch.nn.init.normal_ on each weight), or pass "
                "allow_vacuous=True when near-zero outputs are what the model should give")
        if ref.compared and not ref.varies:
            self.warn(f"{self.backend}: eager outputs were identical for every example ({ref.examples} inputs); "
                      "the model may ignore its inputs (a dead signal), so the comparison proves little")

    def _update_errors(self, cmp: Comparison) -> None:
        r = self.result
        r.max_abs_error = cmp.max_abs if r.max_abs_error is None else max(r.max_abs_error, cmp.max_abs)
        r.max_rel_error = cmp.max_rel if r.max_rel_error is None else max(r.max_rel_error, cmp.max_rel)

    def _failure_text(self, failure: _ExampleFailed, shrunk: bool) -> str:
        label = failure.example.label
        which = "failing input" + (" (shrunk by hypothesis)" if shrunk and label == "generated"
                                   else f" ({label})" if label != "generated" else "")
        lines = []
        if failure.comparison is not None:
            cmp = failure.comparison
            lines.append("outputs differ from eager PyTorch")
            for err in cmp.errors[:5]:
                lines.append("  " + err.text)
                if err.reason in ("values", "nan") and err.needed_atol is not None:
                    atol, rtol = self.tol.for_dtype(err.dtype)
                    # rounded up: a tolerance copied from the message must pass
                    need_atol = format_number(err.needed_atol, round_up=True)
                    need_rtol = format_number(err.needed_rtol, round_up=True)
                    lines.append(
                        f"  max abs error {format_number(err.max_abs)}, max rel error {format_number(err.max_rel)}; "
                        f"smallest tolerance that passes: atol={need_atol} (at rtol {rtol:g})"
                        + (f" or rtol={need_rtol} (at atol {atol:g})" if err.needed_rtol is not None
                           and not math.isinf(err.needed_rtol) else "")
                    )
            if len(cmp.errors) > 5:
                lines.append(f"  ... and {len(cmp.errors) - 5} more outputs differ")
            worst, here = self.result.max_abs_error, cmp.max_abs
            if worst is not None and format_number(worst) != format_number(here):
                # the reports' figure is the worst over the run; this input (often shrunk) can differ from it
                lines.append(f"  the errors above are this input's; the worst over every example run is max abs "
                             f"error {format_number(worst)}, the figure the reports show")
        else:
            lines.append(failure.text)
        lines.append(f"  {which}:")
        lines.extend("    " + ln for ln in failure.example.describe(self.space.names).splitlines())
        lines.append(f"  reproduce: {self.options.get('reproduce', f'seed={self.seed}')}")
        return "\n".join(lines)


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


#: Exceptions pytest-deploy raises on purpose: verdicts, bad declarations, an unavailable backend. Never a bug.
_DELIBERATE = (StageError, DeployFailure, BackendUnavailable, SpecError, InternalError, Warning)
#: Exceptions a stage meets through no fault of pytest-deploy's code, even raised in a frame of it: errors from the
#: compiled functions of torch and the runtimes it calls (RuntimeError, TVM's and torch's), the machine's (OSError,
#: MemoryError), and its own explanations that a stage turns into the verdict's message.
_NOT_A_BUG_IN_A_STAGE = (RuntimeError, OSError, MemoryError, UnsupportedOutput, LocalizationError)


def internal_error(exc: BaseException, *, staged: bool) -> InternalError | None:
    """``exc`` as a pytest-deploy bug, or None when it is not one.

    Inside a stage (``staged``), it is one when pytest-deploy's own code raised it (the innermost frame outside
    the standard library is in the package; ``_NOT_A_BUG_IN_A_STAGE`` excepted); raised in torch, a backend's
    library or the model, it is the backend's verdict. An exception that escaped every stage and handler of the
    check is one unless the model's code raised it. What pytest-deploy raises on purpose never is."""
    if not isinstance(exc, Exception) or isinstance(exc, _DELIBERATE):
        return None
    origin = origin_frame(exc.__traceback__)
    if staged and (origin is None or not origin[0].startswith(PACKAGE_DIR) or isinstance(exc, _NOT_A_BUG_IN_A_STAGE)):
        return None
    if not staged and origin is not None and is_model_code(origin[0]):
        return None
    import traceback

    where = package_frame(exc.__traceback__)
    text = "pytest-deploy failed inside itself: " + first_line(exc)
    if where is not None:
        text += f"\n  at {package_path(where[0])}:{where[1]} in {where[2]}"
    text += ("\n  this is a bug in pytest-deploy, not a verdict on the model or the backend; please report it: open "
             "an issue with this message and the JSON report's details.internal_traceback (--deploy-report=PATH)")
    return InternalError(text, "".join(traceback.format_exception(exc)))


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


def _equal(a, b) -> bool:
    import torch

    return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a.detach(), b.detach()))


def torch_where(valid, value):
    """``value`` with the positions where ``valid`` is False set to zero."""
    import torch

    return torch.where(valid, value, torch.zeros((), dtype=value.dtype))


def _example_key(ex: Example):
    if ex.recipes is None:
        return None
    return (tuple(sorted(ex.dims.items())), ex.recipes)


def _first_example_failure(exc: BaseException) -> _ExampleFailed | None:
    for sub in getattr(exc, "exceptions", ()) or ():
        if isinstance(sub, _ExampleFailed):
            return sub
    return exc.__cause__ if isinstance(exc.__cause__, _ExampleFailed) else None


def _shape_text(shape: tuple | None) -> str:
    return "(" + ", ".join(map(str, shape)) + ")" if shape is not None else "(no such output)"
