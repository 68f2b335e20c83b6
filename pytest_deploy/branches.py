"""Trace-lost decisions: each example's recorded decisions compared with the trace's, and the texts that tell of them.

:class:`BranchAnalysis` folds the :class:`~pytest_deploy.decisions.Run` of every example into per-site statistics
(:class:`SiteStats`: outcomes seen, the traced outcome, lost, never reached, fixed by the spec) and lists where an
example left the traced path (:class:`Divergence`). :func:`describe_divergence`, :func:`describe_frozen_number` and
:func:`fix_for` are the message lines and the fix for one, by the decision's kind.

Recording the decisions (:class:`~pytest_deploy.decisions.Recorder`, the dispatch mode that follows which inputs
feed them, the line tracer) is in :mod:`pytest_deploy.decisions`.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass, field
from typing import Any

from .decisions import Run, Site
from .sources import RNG_CALL, short_path


@dataclass
class SiteStats:
    site: Site
    kind: str
    outcomes: dict[str, int] = field(default_factory=dict)
    traced: str | None = None
    traced_outcomes: set[str] = field(default_factory=set)
    lost: bool = False
    diverged: bool = False
    #: an if/while whose test never converted a tensor / any site whose path differed between runs
    plain: bool = True
    varied: bool = False
    path: tuple[str, ...] | None = None
    #: whether every tracked run found it independent of the inputs the spec lets vary (None: no run tracked it)
    fixed: bool | None = None
    #: the varying inputs that fed it in any tracked run (a bit mask of their positions; -1: cannot tell)
    sources: int = 0

    @property
    def is_branch(self) -> bool:
        return self.kind in ("branch", "bool")

    @property
    def is_decision(self) -> bool:
        """Value conversions always are. An if/while is when a tensor steered its test or another input
        took another path; ``len(t)`` (a shape read) when another input gave another length."""
        if self.kind == "branch":
            return not self.plain or self.varied or self.lost
        return self.kind != "len" or self.varied or self.lost

    def note_path(self, path: tuple[str, ...]) -> None:
        if self.path is None:
            self.path = path
        elif path != self.path:
            self.varied = True

    @property
    def uncovered(self) -> list[str]:
        """Outcomes of a branch that neither the traced input nor any example reached."""
        if not self.is_branch:
            return []
        return [o for o in ("True", "False") if o not in self.outcomes and o not in self.traced_outcomes]

    def to_json(self) -> dict[str, Any]:
        return {
            "file": short_path(self.site.file),
            "line": self.site.line,
            "source": self.site.source,
            "kind": self.kind,
            "outcomes": dict(self.outcomes),
            "traced": self.traced,
            "lost": self.lost,
            "diverged": self.diverged,
            "uncovered": self.uncovered,
        }


@dataclass
class Divergence:
    """The first decision where an example left the traced path."""

    site: Site
    occurrence: int
    kind: str
    traced: str | None  # None: the trace never reached it
    example: str | None  # None: the example never reached it


class BranchAnalysis:
    """Compares each example's decisions with those recorded when the artifact was traced."""

    def __init__(self, traced: Run | None = None) -> None:
        self.traced = traced.decisions() if traced is not None else {}
        #: sites eager PyTorch reached. Decisions seen only while tracing are left out: tracing itself
        #: makes some (shape reads become tensors, modules take their tracing paths).
        self.sites: dict[Site, SiteStats] = {}
        self._traced_sites: dict[Site, list[str]] = {}
        for (site, _), (_, outcome) in self.traced.items():
            self._traced_sites.setdefault(site, []).append(outcome)

    def _stats(self, site: Site, kind: str) -> SiteStats:
        stats = self.sites.get(site)
        if stats is None:
            stats = self.sites[site] = SiteStats(site, kind)
            traced = self._traced_sites.get(site)
            if traced:
                stats.traced = traced[0]
                stats.traced_outcomes.update(traced)
                stats.path = tuple(traced)
        return stats

    def observe(self, run: Run) -> list[Divergence]:
        """Count the run's outcomes; return where it left the traced path (first divergence first)."""
        paths: dict[Site, list[str]] = {}
        for (site, _), (kind, outcome) in run.decisions().items():  # in execution order
            stats = self._stats(site, kind)
            stats.outcomes[outcome] = stats.outcomes.get(outcome, 0) + 1
            paths.setdefault(site, []).append(outcome)
        fixed = run.fixed_sites()
        self._note_sources(run)
        for site, path in paths.items():
            stats = self.sites[site]
            stats.note_path(tuple(path))
            stats.plain = stats.plain and site in run.plain_tests
            if fixed is not None:
                stats.fixed = stats.fixed is not False and site in fixed
        divergences = self.divergences(run)
        for d in divergences:
            self._stats(d.site, d.kind).lost = True
        return divergences

    def note_fixed(self, run: Run) -> None:
        """Fold in which of the run's decisions depended on a varying input, without counting its outcomes."""
        fixed = run.fixed_sites()
        if fixed is None:
            return
        self._note_sources(run)
        for site in {s for s, _, _, _ in run.events}:
            stats = self.sites.get(site)
            if stats is not None:
                stats.fixed = stats.fixed is not False and site in fixed

    def _note_sources(self, run: Run) -> None:
        for site, mask in run.sources().items():
            stats = self.sites.get(site)
            if stats is not None:
                stats.sources |= mask

    def missing_sources(self) -> int:
        """The varying inputs (a bit mask of positions) that feed a decision with an outcome no run reached."""
        return functools.reduce(operator.or_, (s.sources for s in self.sites.values()
                                               if s.is_decision and s.uncovered and s.fixed is not True), 0)

    def divergences(self, run: Run) -> list[Divergence]:
        """Decisions of ``run`` whose outcome differs from the traced one, in execution order."""
        if not self.traced:
            return []
        decisions = run.decisions()
        reached = {site for site, _ in decisions}
        out = []
        # traced decisions the run never made count only at sites the run reached (a loop that ran
        # fewer times); a site eager never reaches is the other side of a divergence already listed
        for key in list(decisions) + [k for k in self.traced if k not in decisions and k[0] in reached]:
            mine = decisions.get(key)
            theirs = self.traced.get(key)
            if (mine and mine[1]) != (theirs and theirs[1]):
                decision = mine or theirs
                assert decision is not None  # the key came from one of the two
                out.append(Divergence(key[0], key[1], decision[0], theirs and theirs[1], mine and mine[1]))
        return out

    def seen(self) -> set[tuple[Site, str]]:
        return {(s.site, o) for s in self.sites.values() for o in (*s.outcomes, *s.traced_outcomes)}

    def add_frozen(self, site: Site, traced: str, value: str) -> None:
        """A Python number computed from a shape at ``site`` that the trace froze at ``traced`` and another input
        gives ``value``: a lost decision of kind ``shape`` that changed the outputs."""
        stats = self._stats(site, "shape")
        stats.kind = "shape"
        stats.traced = traced
        stats.traced_outcomes.add(traced)
        for outcome in (traced, value):
            stats.outcomes[outcome] = stats.outcomes.get(outcome, 0) + 1
        stats.lost = stats.diverged = True

    def mark_diverged(self, site: Site) -> None:
        if site in self.sites:
            self.sites[site].diverged = True

    def reported(self) -> list[SiteStats]:
        """The decisions, by file and line: if/while statements that no tensor steered are left out."""
        return sorted((s for s in self.sites.values() if s.is_decision), key=lambda s: (s.site.file, s.site.line))

    def summary(self) -> dict[str, int]:
        sites = self.reported()
        return {
            "branches": len(sites),
            "lost": sum(s.lost for s in sites),
            "uncovered": sum(bool(s.uncovered) for s in sites),
        }

    def to_json(self) -> list[dict[str, Any]]:
        return [s.to_json() for s in self.reported()]

    def missing_outcomes(self, candidates: bool = False, fixed: bool = True) -> set[tuple[Site, str]]:
        """Outcomes no run reached, of the decisions; ``candidates``: of every if/while seen (shape
        branches read no tensor: they become decisions once some input size takes the other way);
        ``fixed=False``: not of the decisions no declared input can change (:attr:`SiteStats.fixed`)."""
        return {(s.site, o) for s in self.sites.values() if (candidates or s.is_decision)
                and (fixed or s.fixed is not True) for o in s.uncovered}

    def fixed_uncovered(self) -> list[SiteStats]:
        """The reported decisions with an outcome no input reached that no declared input can change."""
        return [s for s in self.reported() if s.fixed is True and s.uncovered]



def describe_frozen_number(d: Divergence, example_label: str) -> str:
    """A Python number computed from a shape that the trace froze (kind ``shape``)."""
    return (f"trace-frozen number at {d.site.describe()}: a Python number computed from a tensor's shape, which "
            f"torch.jit.trace records as a constant\n  traced with value {d.traced}; {example_label} gives {d.example}")


#: The fix for a trace-lost decision, per kind: what keeps the decision in the deployed graph for that kind.
_FIXES = {
    "value": ("keep it a tensor: drop the conversion ({call}) and compute with the tensor itself (tensor "
              "arithmetic, torch.where, torch.clamp), so the graph computes it for every input; export and "
              "torch.jit.script keep it too"),
    "numpy": ("do it in torch: replace the numpy call with the torch op (np.abs -> torch.abs, .max() on the tensor), "
              "which trace, script and export keep in the graph; numpy runs outside it, so trace records its result "
              "as a constant"),
    "len": ("read the size from the tensor: `x.size(0)` (or `x.shape[0]`) instead of `len(x)`; trace records "
            "len() as a constant but keeps size() following the input"),
    "tensor branch": ("compute both sides and pick with torch.where(condition, a, b), which every backend keeps; "
                      "or keep the `if` with torch.jit.script (or torch.cond under torch.export)"),
    "shape branch": ("a branch on a shape: torch.export decides it per dim range (declare the dims in the spec) and "
                     "torch.jit.script keeps it; under trace, make both sides one tensor expression"),
    # a Python number computed from a shape (kind ``shape``): checked to follow the input under trace (a shape is a
    # tensor there) and under torch.export (a symbol there)
    "shape": ("keep it on the shape, without float()/int(): `(w - 1) / 2` instead of `float(w - 1) / 2`, "
              "`w // 2` instead of `int(w * 0.5)`; under torch.jit.trace a shape is a tensor and under "
              "torch.export a symbol, so the number follows the input (torch.jit.script and torch.cond do "
              "not help here)"),
    "rng": ("randomness in forward: trace freezes the draw of Python's or numpy's RNG; draw with torch "
            "(torch.rand, which the graph keeps) and only in training, or move it out of forward"),
}

_CALLS = {"item": "`.item()`", "tolist": "`.tolist()`", "int": "`int()`", "float": "`float()`",
          "index": "the index", "bool": "`bool()`"}


def fix_for(d: Divergence, plain: bool = False) -> str:
    """The fix line for the trace-lost decision ``d``, by its kind (``plain``: an if/while whose test converted
    no tensor, so it compares shapes or Python values)."""
    if d.kind == "shape":
        return _FIXES["shape"]
    if RNG_CALL.search(d.site.source):
        return _FIXES["rng"]
    if d.kind == "numpy":
        return _FIXES["numpy"]
    if d.kind == "len":
        return _FIXES["len"]
    if d.kind == "branch":
        return _FIXES["shape branch" if plain else "tensor branch"]
    if d.kind == "bool":
        return _FIXES["tensor branch"]
    return _FIXES["value"].format(call=_CALLS.get(d.kind, "the conversion"))


def describe_divergence(d: Divergence, example_label: str) -> str:
    what = "branch" if d.kind in ("branch", "bool") else "value"
    traced = "not reached when tracing" if d.traced is None else f"traced with outcome {d.traced}"
    took = "does not reach it" if d.example is None else f"takes {d.example}"
    loop = f" (occurrence {d.occurrence + 1})" if d.occurrence else ""
    return f"trace-lost {what} at {d.site.describe()}{loop}\n  {traced}; {example_label} {took}"
