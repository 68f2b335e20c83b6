"""The branch search of one check: the decisions eager PyTorch takes, inputs that flip them, and what a trace lost.

A :class:`BranchSearch` belongs to one check (``CheckContext.search``). It records eager reference runs into the
check's :class:`decisions.BranchAnalysis` (shared with the other backends of the model test), searches for inputs
that reach each recorded decision's other outcome before the example loop runs (eager PyTorch only, within a
budget), and, for a tracing backend's failing example, names the decision the trace lost or the Python number
computed from a shape that it froze. The recorder itself is :mod:`pytest_deploy.decisions`.
"""

from __future__ import annotations

import contextlib
import re
import time
import warnings
from collections.abc import Callable
from typing import Any

from . import isolation
from .branches import BranchAnalysis, Divergence, describe_divergence, describe_frozen_number, fix_for
from .compare import Comparison, Leaves, flatten, format_number
from .decisions import Recorder, record
from .errors import StageError
from .spec import Example
from .tensors import is_tensor

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
#: (:meth:`BranchSearch.frozen_shape_numbers`); not when building the artifact took longer than this
RETRACE_BUDGET_S = 20.0


class BranchSearch:
    """One check's decisions: eager runs recorded, the search for their other outcomes, what a trace lost."""

    def __init__(self, ctx: Any) -> None:
        #: the check (``check.CheckContext``): its model, input space, analysis, result and shared work
        self.ctx = ctx
        #: for a tracing backend: trace the model on given inputs (the artifact is thrown away), to read the Python
        #: numbers the tracer froze (:meth:`frozen_shape_numbers`)
        self.retrace: Callable[[tuple], Any] | None = None
        #: the search's steps, kept for the other backends while it runs: ("observe" | "note_fixed", run)
        self.steps: list[tuple[str, Any]] | None = None
        #: the model fails under the dispatch mode that tracks which decisions the inputs steer
        self.untrackable = False

    def traced_decisions(self, retrace: Callable[[tuple], Any] | None = None) -> None:
        """Called by a backend whose artifact follows the path of the input it was built from
        (torch.jit.trace): decisions whose outcome differs from that path's are trace-lost, and a
        mismatch on such an example fails at stage branches. ``retrace(args)``: trace the model again on
        ``args`` (run only when a check fails, to find the Python numbers computed from shapes that the trace
        froze).

        The path is recorded from eager PyTorch on the same input, not while tracing: under the tracer
        shape reads are tensors (``len(x)`` and ``range(x.shape[1])`` convert them) and library modules
        take their tracing branches, decisions no eager run makes."""
        ctx = self.ctx
        run = ctx.shared.traced_run if ctx.shared is not None else None
        if run is None:
            _, run = record(ctx.eager, ctx.canonical.args, lines=ctx.line_tracing)
            if ctx.shared is not None:
                ctx.shared.traced_run = run
        ctx.analysis = BranchAnalysis(run)
        ctx.freezes_decisions = True
        self.retrace = retrace

    def varying_inputs(self, args: tuple) -> list | None:
        """Each input tensor of ``args`` whose values the spec lets vary, None in the place of one it holds
        constant (a decision's sources are these positions); None when the spec does not say (a hypothesis
        strategy, example inputs only)."""
        ctx = self.ctx
        if ctx.space.strategy_override is not None or len(ctx.space.specs) != len(args) or self.untrackable:
            return None
        return [a if is_tensor(a) and not spec.holds_constant() else None for a, spec in zip(args, ctx.space.specs)]

    def recorded_eager(self, args: tuple, *, track: bool = False):
        """Eager reference outputs, with the decisions taken on the way counted into the analysis; ``track``:
        also which decisions depend on the inputs the spec lets vary (:class:`decisions.Taint`).

        The backends of one model test share them: an example another backend's check ran gives its outputs
        (as :class:`compare.Leaves`) and its recorded decisions without running eager PyTorch again."""
        ctx = self.ctx
        shared = ctx.shared if not track else None
        hit = shared.reference(args) if shared is not None else None
        if hit is not None:
            leaves, run, mode = hit
            ctx.analysis.observe(run)
            ctx.result.details["branch_recording"] = mode
            ctx.count("references_reused")
            return leaves
        varying = self.varying_inputs(args) if track else None
        try:
            with isolation.guard("reference", ctx.timeout), Recorder(ctx.line_tracing, varying) as rec:
                out = ctx.eager(args)
        except (StageError, KeyboardInterrupt):
            raise
        except Exception:
            if varying is None:
                raise
            # a model that does not run under the dispatch mode that tracks the inputs: recorded without it (its
            # decisions are then all chased, as they were before the tracking), and the search does without it too
            self.untrackable = True
            with isolation.guard("reference", ctx.timeout), Recorder(ctx.line_tracing) as rec:
                out = ctx.eager(args)
        ctx.analysis.observe(rec.run)
        if self.steps is not None and track:
            self.steps.append(("observe", rec.run))
        mode = ctx.result.details["branch_recording"] = (
            "tensor conversions and if/while outcomes" if rec.line_tracing
            else "tensor conversions only (the model's code has no if/while)" if not ctx.line_tracing
            else "tensor conversions only (another tracer, e.g. coverage or a debugger, owns sys.settrace)")
        if shared is not None:
            ctx.count("references_computed")
            with contextlib.suppress(Exception):  # an output compare cannot flatten is reported by the loop
                shared.keep_reference(args, Leaves(flatten(out)), rec.run, mode)
        return out

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
        ctx = self.ctx
        if ctx.space.strategy_override is not None or not ctx.analysis.sites:
            return []
        found: list[Example] = []
        start = time.perf_counter()
        budget = EXPLORE_RUNS if run_seconds <= 0 else \
            max(EXPLORE_MIN_RUNS, min(EXPLORE_RUNS, int(EXPLORE_COST_SECONDS / run_seconds)))
        candidates = ctx.space.exploration()
        # the search starts at each corner of the dims: there, an if/while that read no tensor (a branch
        # on a shape) is given its chance to go the other way and so become a decision
        corners = len(ctx.space.dim_corners()) if any(lo != hi for lo, hi in ctx.space.dims.values()) else 0
        # then, before the rest of the plan, the constant corners (all zero, all at an end of the range) of the
        # integer inputs that feed a decision with an outcome not reached yet: flags and ids take them in real use
        cornered: set[int] = set()
        queue: list[Example] = []
        runs = 0
        for i in range(budget):
            missing = ctx.analysis.missing_outcomes(candidates=i < corners, fixed=i < corners)
            if not missing or time.perf_counter() - start > EXPLORE_SECONDS:
                break
            if i >= corners:
                feeding = ctx.analysis.missing_sources()
                todo = [k for k in range(len(ctx.space.specs)) if feeding >> k & 1 and k not in cornered]
                cornered.update(todo)
                queue.extend(ctx.space.corner_examples(todo))
            ex = queue.pop(0) if queue and i >= corners else next(candidates)
            seen = ctx.analysis.seen()
            runs += 1
            try:
                _, run = record(ctx.eager, ex.args, lines=ctx.line_tracing, varying=self.varying_inputs(ex.args))
            except Exception:  # a failing input is for the example loop to report, not the search
                continue
            new = {(site, outcome) for (site, _), (_, outcome) in run.decisions().items()} - seen
            step = "observe" if new else "note_fixed"  # note_fixed: a decision this input steers is chased again
            getattr(ctx.analysis, step)(run)
            if self.steps is not None:
                self.steps.append((step, run))
            if new:
                ex.label = "found by the branch search"
                found.append(ex)
        ctx.result.details["branch_search_runs"] = len(found)
        fixed = ctx.analysis.fixed_uncovered()
        ctx.result.details["branch_search"] = {
            "runs": runs, "budget": budget,
            "not_chased": [f"{s.site.describe()}: no declared input can change it (it reads only weights, shapes "
                           "and inputs the spec holds constant)" for s in fixed]}
        return found

    def branch_search(self) -> list[Example]:
        """Record the canonical example and search for the decisions' other outcomes, once per model test:
        a check whose model test already searched folds the recorded runs into its own analysis instead."""
        ctx = self.ctx
        done = ctx.shared.search if ctx.shared is not None else None
        if done is not None:
            for step, run in done.steps:
                getattr(ctx.analysis, step)(run)
            ctx.result.details.update(done.details)
            ctx.result.details.setdefault("model_test", {})["branch_search"] = "shared"
            return list(done.found)
        self.steps = [] if ctx.shared is not None else None
        began = time.perf_counter()
        self.recorded_eager(ctx.canonical.args, track=True)  # the sites to search from
        with isolation.guard("reference", ctx.timeout):
            found = self.explore(time.perf_counter() - began)
        if ctx.shared is not None and self.steps is not None:
            from .modeltest import Search

            keys = ("branch_recording", "branch_search_runs", "branch_search")
            ctx.shared.search = Search(list(found), self.steps,
                                       {k: ctx.result.details[k] for k in keys if k in ctx.result.details})
            self.steps = None
            ctx.result.details.setdefault("model_test", {})["branch_search"] = "ran"
        return found

    def lost_branch_text(self, example: Example, comparison: Comparison | None) -> str | None:
        """When a tracing backend's mismatch on ``example`` comes with a trace-lost decision, say where it is: a
        Python number computed from a shape that the trace froze (:meth:`frozen_shape_numbers`) first, as the
        decisions that differ after it are mostly its symptoms."""
        ctx = self.ctx
        if not ctx.freezes_decisions:
            return None
        frozen = self.frozen_shape_numbers(example)
        try:
            _, run = record(ctx.eager, example.args, lines=ctx.line_tracing)
        except Exception:
            run = None
        divergences = ctx.analysis.divergences(run) if run is not None else []
        if not divergences and not frozen:
            return None
        if comparison is not None:
            worst = max(comparison.errors, key=lambda e: e.max_abs)
            atol, _ = ctx.tol.for_dtype(worst.dtype)
            error = f"; max abs error {format_number(worst.max_abs)} > atol {atol:g}"
        else:
            error = ""
        if frozen:
            text = describe_frozen_number(frozen[0], "the failing input") + f"{error}\n  fix: {fix_for(frozen[0])}"
            others = [d.site.where for d in (*frozen[1:], *divergences)]
        else:
            first = divergences[0]
            ctx.analysis.mark_diverged(first.site)
            stats = ctx.analysis.sites.get(first.site)
            fix = fix_for(first, plain=stats is not None and stats.plain)
            text = describe_divergence(first, "the failing input") + f"{error}\n  fix: {fix}"
            others = [d.site.where for d in divergences[1:] if d.site != first.site]
        others = list(dict.fromkeys(others))
        if others:
            text += "\n  the failing input also leaves the traced path at: " + ", ".join(others[:5])
        return text

    def frozen_shape_numbers(self, example: Example) -> list[Divergence]:
        """Python numbers computed from a tensor's shape (``float(w - 1) / 2``, ``int(x.shape[-1] * 0.5)``) that
        the trace froze and that ``example`` gives another value: kind ``shape``, at the line that converts.

        Eager PyTorch converts no tensor there (a shape is a Python int), so the recorder cannot see them; the
        tracer does (a shape is a tensor under it, and it warns when converting one). Where it warned at a line
        of the user's that eager converts nothing at, the model is traced again on the canonical example and on
        ``example`` with the conversions recorded, and the values compared. Never raises."""
        ctx = self.ctx
        if self.retrace is None or ctx.result.timings.get("build", 0.0) > RETRACE_BUDGET_S:
            return []
        eager_sites = {site.where for site, _ in ctx.analysis.traced}
        warned = {f"{w['file']}:{w['line']}" for w in ctx.result.details.get("tracer_warnings") or []
                  if re.match(r"Converting a tensor to a Python (?:float|integer|number|index)", str(w.get("message")))}
        if not warned - eager_sites:
            return []
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _, traced = record(self.retrace, ctx.canonical.args, lines=False)
                _, other = record(self.retrace, example.args, lines=False)
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
                ctx.analysis.add_frozen(site, value, mine[1])
        return found
