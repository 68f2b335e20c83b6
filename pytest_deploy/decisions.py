"""Data-dependent decisions: record them while eager PyTorch runs, find the ones a trace lost.

A *decision* is a point where a tensor's value (or a varying shape) steers Python: ``bool(t)``,
``t.item()``, ``int(t)``, ``float(t)``, ``t.tolist()``, ``t.numpy()``, ``t.__index__()``, ``len(t)``, and the
outcome of an ``if``/``while`` statement in the user's code. ``torch.jit.trace`` records only the
path its one input took, so any decision whose outcome differs for another input is *lost*: the
deployed model silently does what the traced input did.

Recording:

* Tensor → Python conversions are caught by wrapping those few ``torch.Tensor`` methods for the
  duration of a run (cheap: nothing else is intercepted).
* ``if``/``while`` outcomes come from a line tracer active only in the user's own files (frames
  in torch, the stdlib and pytest-deploy are never traced), which sees which line runs after the
  statement's test. This also catches branches on shapes (``if x.shape[0] > 2:``).

Each decision is keyed by its site (file, line) and its occurrence within the run, so every loop
iteration is a decision of its own.

An ``if``/``while`` is reported only when it is data-dependent: a tensor was converted while its test
ran, or its path (outcomes in order) differed between inputs. One that goes the same way every time
without reading a tensor (``if self.training:``, ``while i < 3:``) is configuration, not a decision.
Likewise ``len(t)``, a shape read, only when its value changed between inputs.

A Python number computed from a shape (``float(w - 1) / 2`` with ``w = x.shape[-1]``) converts no tensor in
eager PyTorch, so it is not recorded here; torch.jit.trace freezes it all the same. The checker finds those when
a traced check fails, by tracing again (:meth:`BranchAnalysis.add_frozen`, kind ``shape``).
"""

from __future__ import annotations

import ast
import functools
import linecache
import operator
import sys
import types
from dataclasses import dataclass, field
from typing import Any

from .sources import RNG_CALL, is_user_file, short_path

_CONVERSIONS = ("__bool__", "item", "tolist", "__int__", "__float__", "__index__", "__len__", "numpy")


@dataclass(frozen=True)
class Site:
    file: str
    line: int

    @property
    def source(self) -> str:
        return linecache.getline(self.file, self.line).strip()

    @property
    def where(self) -> str:
        """``file:line``, the file as the messages show it."""
        return f"{short_path(self.file)}:{self.line}"

    def describe(self) -> str:
        return f"{self.where}  `{self.source}`"


@dataclass
class Run:
    """Decisions of one forward run, in execution order: ``(site, occurrence, kind, outcome)``."""

    events: list[tuple[Site, int, str, str]] = field(default_factory=list)
    #: if/while sites whose test converted no tensor, any time it ran (filled by a line-tracing Recorder)
    plain_tests: set[Site] = field(default_factory=set)
    #: per event, which inputs the spec lets vary its value may depend on, as a bit mask of their positions
    #: (:data:`EVERY_INPUT` when it cannot tell; 0: none, see :class:`Taint`); None when the run did not track that
    tainted: list[int] | None = None

    def fixed_sites(self) -> set[Site] | None:
        """Sites whose every decision in this run depended on nothing the declared inputs can change (the
        weights, inputs the spec holds constant, shapes); None when the run did not track it."""
        if self.tainted is None:
            return None
        varying = {e[0] for e, t in zip(self.events, self.tainted) if t}
        return {e[0] for e in self.events} - varying

    def sources(self) -> dict[Site, int]:
        """Per site, the varying inputs its decisions in this run may depend on (a bit mask of positions)."""
        out: dict[Site, int] = {}
        for e, t in zip(self.events, self.tainted or ()):
            out[e[0]] = out.get(e[0], 0) | t
        return out

    def decisions(self) -> dict[tuple[Site, int], tuple[str, str]]:
        """One outcome per (site, occurrence). A branch outcome wins over the conversions on its line."""
        out: dict[tuple[Site, int], tuple[str, str]] = {}
        branch_lines = {s for s, _, k, _ in self.events if k == "branch"}
        counts: dict[tuple[Site, str], int] = {}
        for site, _, kind, outcome in self.events:
            if kind != "branch" and site in branch_lines:
                continue
            group = "branch" if kind == "branch" else "value"
            n = counts.get((site, group), 0)
            counts[(site, group)] = n + 1
            out[(site, n)] = (kind, outcome)
        return out


def _format_value(value: Any) -> str:
    """A decision's outcome as text, equal for equal values only: long ones end in a digest of the whole value
    (a numpy array's repr elides its middle, so its bytes are hashed)."""
    import hashlib

    if isinstance(value, float):
        return f"{value:.6g}"
    if hasattr(value, "tobytes") and hasattr(value, "shape"):  # a numpy array (Tensor.numpy)
        digest = hashlib.sha1(value.tobytes() + str((value.dtype, value.shape)).encode()).hexdigest()[:10]
        return f"array{list(value.shape)} #{digest}"
    text = repr(value)
    if len(text) <= 80:
        return text
    return text[:64] + "... #" + hashlib.sha1(text.encode()).hexdigest()[:10]


class Recorder:
    """Context manager recording the decisions of the code run inside it (main thread only)."""

    def __init__(self, lines: bool = True, varying: list | None = None) -> None:
        """``lines=False`` records tensor conversions only (no line tracer: no cost in Python calls).
        ``varying``: the input tensors whose values the spec lets vary; given, each decision is marked with
        whether its value may depend on them (:class:`Taint`)."""
        self.run = Run()
        self._lines = lines
        self._taint = Taint(varying) if varying is not None else None
        if self._taint is not None:
            self.run.tainted = []
        self._occurrence: dict[Site, int] = {}
        self._saved: dict[str, Any] = {}
        self.line_tracing = True
        self._files: dict[str, dict[int, _Branch] | None] = {}  # file → its if/while lines; None: not traced
        self._steered: set[Site] = set()  # if/while sites whose test converted a tensor

    # -- conversions ---------------------------------------------------------------------------

    def _user_site(self) -> Site | None:
        frame: types.FrameType | None = sys._getframe(2)
        while frame is not None:
            if _is_user(frame.f_code.co_filename):
                return Site(frame.f_code.co_filename, frame.f_lineno)
            frame = frame.f_back
        return None

    def _record(self, site: Site, kind: str, outcome: str, tainted: int = -1) -> None:
        n = self._occurrence.get(site, 0)
        self._occurrence[site] = n + 1
        self.run.events.append((site, n, kind, outcome))
        if self.run.tainted is not None:
            self.run.tainted.append(tainted)

    def _wrap(self, name: str, original):
        recorder = self
        kind = name.strip("_")

        def wrapper(tensor, *args, **kwargs):
            taint = recorder._taint
            tainted = EVERY_INPUT if taint is None else taint.tainted(tensor)
            value = original(tensor, *args, **kwargs)
            if tainted and taint is not None:
                taint.leaked |= tainted  # a Python value from a varying input: whatever follows may depend on it
            site = recorder._user_site()
            if site is not None:
                recorder._record(site, kind, str(bool(value)) if kind == "bool" else _format_value(value), tainted)
            return value

        # not functools.wraps: on a builtin method it raises and catches AttributeErrors (no __module__,
        # no __dict__), a noticeable cost at 7 wrappers per recorded example
        wrapper.__name__ = name
        wrapper.__qualname__ = f"Tensor.{name}"
        wrapper.__dict__["__wrapped__"] = original  # = wrapper.__wrapped__, an attribute mypy's function type lacks
        return wrapper

    # -- branches ------------------------------------------------------------------------------

    def _global_trace(self, frame, event, arg):
        # Called on every Python call while recording (the event is always "call"), torch.nn's own
        # included: keep the common case, a file that is not traced, to one dict lookup (and no closure
        # cells to allocate: those are _local_trace's).
        filename = frame.f_code.co_filename
        try:
            branches = self._files[filename]
        except KeyError:
            branches = self._files[filename] = _branch_lines(filename) if _is_user(filename) else None
        if branches:
            return self._local_trace(branches)
        frame.f_trace_lines = False  # its lines are never traced: spare the interpreter their line events
        return None

    def _local_trace(self, branches: dict[int, _Branch]):
        """The trace function of one frame in a user file with ``if``/``while`` statements."""
        state = {"pending": None, "taken": False, "mark": 0}
        recorder = self
        events = self.run.events

        def local(frame, event, arg):
            pending = state["pending"]
            line = frame.f_lineno
            if pending is not None:
                info = branches[pending]
                if event == "opcode":  # a body on the test's line (`if c: y = x`) makes no line event of its own
                    state["taken"] = state["taken"] or _in_inline_body(frame, info)
                    return local
                if event == "line" and info.test_start <= line <= info.test_end:
                    return local  # still evaluating a multi-line condition
                if event in ("line", "return"):
                    taken = state["taken"] or (event == "line" and info.body_start <= line <= info.body_end)
                    site = Site(frame.f_code.co_filename, pending)
                    steered = any(e[2] != "branch" for e in events[state["mark"]:])
                    if steered:
                        recorder._steered.add(site)  # the test converted a tensor
                    flags = recorder.run.tainted
                    # a branch no conversion steered may follow any Python value: counted as varying
                    tainted = EVERY_INPUT if not steered or flags is None else \
                        functools.reduce(operator.or_, flags[state["mark"]:], 0)
                    recorder._record(site, "branch", str(taken), tainted)
                    state["pending"] = None
                    frame.f_trace_opcodes = False
            if event == "line" and line in branches:
                state["pending"], state["taken"], state["mark"] = line, False, len(events)
                frame.f_trace_opcodes = branches[line].inline_col is not None
            return local

        return local

    # -- context -------------------------------------------------------------------------------

    def __enter__(self) -> Recorder:
        import torch

        if self._taint is not None:
            self._taint.__enter__()
        for name in _CONVERSIONS:
            original = getattr(torch.Tensor, name)
            self._saved[name] = torch.Tensor.__dict__.get(name, _MISSING)
            setattr(torch.Tensor, name, self._wrap(name, original))
        if sys.gettrace() is None and self._lines:
            sys.settrace(self._global_trace)
        else:  # not wanted, or a debugger or coverage owns the tracer: record conversions only
            self.line_tracing = False
        return self

    def __exit__(self, *exc) -> None:
        import torch

        if self.line_tracing:
            sys.settrace(None)
            self.run.plain_tests = {s for s, _, k, _ in self.run.events if k == "branch"} - self._steered
        for name, saved in self._saved.items():
            if saved is _MISSING:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, saved)
        if self._taint is not None:
            self._taint.__exit__(*exc)


_MISSING = object()


#: A decision that may depend on any input (all bits set).
EVERY_INPUT = -1


class Taint:
    """Which tensors' values may depend on the inputs the spec lets vary, while a run is recorded.

    Every tensor op of the run passes through a ``TorchDispatchMode`` that marks its outputs' storages
    when any input's storage is marked (the varying inputs start marked; the weights, the inputs the spec
    holds constant and tensors made from shapes do not). Storages, not tensors, carry the mark, so a write
    into a view marks its base. A Python number taken from a marked tensor (``bool()``, ``.item()``, an op
    returning a Python scalar) can steer anything after it: from then on everything counts as marked by it.
    A mark is a bit mask of the varying inputs' positions in ``varying`` (None there: an input held constant),
    so a decision says which inputs feed it.
    What this misses is a value read without an op (``.numpy()``, ``.data_ptr()``); the search uses the
    marks only to leave alone decisions it cannot flip, never to report anything.
    """

    def __init__(self, varying: list) -> None:
        self.marked: dict[int, int] = {}
        self.leaked = 0  # the inputs a Python number taken so far came from
        self._mode: Any = None
        for i, tensor in enumerate(varying):
            if tensor is not None:
                key = _storage(tensor)
                self.marked[key] = self.marked.get(key, 0) | (1 << i)

    def tainted(self, tensor) -> int:
        key = _storage(tensor)
        # unseen: a weight, a constant
        return self.leaked | (EVERY_INPUT if key == -1 else self.marked.get(key, 0))

    def __enter__(self) -> Taint:
        self._mode = _taint_mode(self)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._mode is not None:
            self._mode.__exit__(*exc)
            self._mode = None


def _storage(tensor) -> int:
    """The address of a tensor's storage; -1 (unknown: counted as varying) where it has none."""
    try:
        return tensor.untyped_storage().data_ptr()
    except Exception:  # sparse, nested or a subclass without storage
        return -1


def _taint_mode(taint: Taint):
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class TaintMode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            marked = taint.marked
            any_marked = 0
            for leaf in tree_leaves((args, kwargs)):
                if isinstance(leaf, torch.Tensor):
                    key = _storage(leaf)
                    any_marked |= EVERY_INPUT if key == -1 else marked.get(key, 0)
            for leaf in tree_leaves(out):
                if isinstance(leaf, torch.Tensor):
                    # a new storage takes its inputs' mark; one written in place (or viewed) is among the
                    # inputs, so it keeps its own mark too
                    marked[_storage(leaf)] = any_marked
                elif any_marked and isinstance(leaf, (bool, int, float)):
                    taint.leaked |= any_marked
            return out

    return TaintMode()


_is_user = is_user_file  # cached there; the cache is cleared when a model's files are added


@dataclass(frozen=True)
class _Branch:
    test_start: int
    test_end: int
    body_start: int
    body_end: int
    #: the column of a body that starts on the test's last line (``if c: y = x``), else None
    inline_col: int | None = None


#: instruction positions (Python 3.11+) tell whether a one-line body ran; line events cannot
_POSITIONS = hasattr(types.CodeType, "co_positions")


@functools.lru_cache(maxsize=256)
def _branch_lines(filename: str) -> dict[int, _Branch]:
    """Line of each ``if``/``while`` statement in a file → where its test and body lie."""
    try:
        source = "".join(linecache.getlines(filename))
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return {}
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.If, ast.While)) and node.body:
            test_end = node.test.end_lineno or node.test.lineno
            first, last = node.body[0], node.body[-1]
            inline_col = first.col_offset if first.lineno == test_end else None
            if inline_col is not None and not _POSITIONS:
                continue  # its outcome cannot be told; a conversion in its test is still recorded
            out[node.lineno] = _Branch(node.test.lineno, test_end, first.lineno, last.end_lineno or last.lineno,
                                       inline_col)
    return out


@functools.lru_cache(maxsize=1024)
def _positions(code: types.CodeType) -> list:
    if sys.version_info < (3, 11):  # never called there (_POSITIONS is False); mypy checks against 3.10
        raise AttributeError("co_positions")
    return list(code.co_positions())


def _in_inline_body(frame, info: _Branch) -> bool:
    """Whether the instruction about to run belongs to the one-line body of ``info``."""
    lineno, _, col, _ = _positions(frame.f_code)[frame.f_lasti // 2]
    return (lineno or 0, col or 0) >= (info.body_start, info.inline_col)


# ------------------------------------------------------------------------------------- analysis


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


def record(fn, *args, lines: bool = True, varying: list | None = None) -> tuple[Any, Run]:
    """Run ``fn(*args)`` under a :class:`Recorder`; return its result and the decisions."""
    with Recorder(lines, varying) as rec:
        value = fn(*args)
    return value, rec.run


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


# ------------------------------------------------------------------------ does tracing lines pay?


def needs_line_tracing(model) -> bool:
    """Whether the model's own code has ``if``/``while`` statements (in its classes' methods, or in
    module-level functions they call by name). Without any, every decision is a tensor conversion,
    which the cheap method wrappers catch: the line tracer, the costly part, stays off."""
    return any(_class_has_branches(cls) for module in model.modules() for cls in type(module).__mro__
               if cls.__module__ in sys.modules and _is_user(getattr(sys.modules[cls.__module__], "__file__", "") or ""))


@functools.lru_cache(maxsize=1024)
def _class_has_branches(cls) -> bool:
    import inspect

    try:
        filename = inspect.getsourcefile(cls)
        if filename is None:
            return True  # no source file (linecache would give no lines, so no class node): trace lines
        tree = ast.parse("".join(linecache.getlines(filename)))
    except (TypeError, OSError, SyntaxError, ValueError):
        return True  # cannot tell: trace lines
    functions = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    node = next((n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls.__name__
                 and n.lineno == _first_line(cls)), None)
    if node is None:
        return True
    todo: list[ast.AST] = [node]
    seen = set()
    while todo:
        current = todo.pop()
        for sub in ast.walk(current):
            if isinstance(sub, (ast.If, ast.While)):
                return True
            if isinstance(sub, ast.Name) and sub.id in functions and sub.id not in seen:
                seen.add(sub.id)
                todo.append(functions[sub.id])
    return False


def _first_line(cls) -> int | None:
    import inspect

    try:
        return inspect.getsourcelines(cls)[1]
    except (TypeError, OSError):
        return None
