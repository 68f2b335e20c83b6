"""Data-dependent decisions: record them while eager PyTorch runs.

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
a traced check fails, by tracing again (:meth:`~pytest_deploy.branches.BranchAnalysis.add_frozen`, kind ``shape``).

This module holds the recording: :class:`Recorder` (the wrapped conversions and the line tracer), :class:`Taint`
(the dispatch mode that follows which varying inputs feed each decision), the :class:`Run` they fill, and
:func:`needs_line_tracing`. Comparing runs with the trace to find the lost decisions, and the message and fix texts
for them, are in :mod:`pytest_deploy.branches`.
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

from .sources import is_user_file, short_path

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


def record(fn, *args, lines: bool = True, varying: list | None = None) -> tuple[Any, Run]:
    """Run ``fn(*args)`` under a :class:`Recorder`; return its result and the decisions."""
    with Recorder(lines, varying) as rec:
        value = fn(*args)
    return value, rec.run


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
