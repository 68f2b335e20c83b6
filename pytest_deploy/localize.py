"""Where it broke: the first module whose output diverges from eager PyTorch while its inputs still agree.

Only a check that failed at ``compare`` or ``branches`` pays for this, on its (shrunk) failing input. Two
ways to find the place, both ending in the same :class:`Finding`:

- **replay** (trace, script): eager PyTorch runs once with forward hooks on every submodule, recording what
  each call received and returned. Each call of the root's children is then replayed through the loaded
  artifact's submodule of the same path, on the inputs eager gave it (so its inputs agree exactly), outermost
  first; the first call whose output diverges is descended into. A call none of whose children diverge is
  where it broke: the divergence is in its own code.
- **graph** (onnx): the exported program is the common root. Eager values of every node come from running the
  program node by node (:func:`program_values`); the backend gives values for the same node names; the first
  node (in execution order) that diverges while the nodes it reads agree is where it broke, and its
  ``nn_module_stack`` and ``stack_trace`` name the module and the user's line.

The cost is bounded by a deadline that each step checks: when it passes, the best finding so far is
reported with ``budget_exhausted``.
"""

from __future__ import annotations

import inspect
import linecache
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .sources import frame_from_stack, is_model_code, short_path
from .tensors import elementwise_error, is_tensor

#: Entries of the per-node table kept in the result (``details.node_errors``), around the divergence.
TABLE_ROWS = 200


class LocalizationError(Exception):
    """Localisation cannot run (or cannot go finer) here; the text says why."""


@dataclass
class Entry:
    """One compared place: a module call (replay) or a graph node (graph), in execution order."""

    module: str  #: module path ("" for the model itself)
    type: str  #: the module's class name
    node: str  #: unique label: the graph node's name, or ``path`` (``path#2`` for a module's third call)
    max_abs_error: float
    input_max_abs_error: float
    diverges: bool
    call: int = 0  #: which call of the module (0: the first), for modules called several times
    file: str | None = None
    line: int | None = None
    code: str | None = None

    def row(self) -> dict[str, Any]:
        return {"module": self.module, "node": self.node, "max_abs_error": _finite(self.max_abs_error),
                "input_max_abs_error": _finite(self.input_max_abs_error)}


@dataclass
class Finding:
    """What localisation found: the divergence (or None) and the table of every compared place."""

    culprit: Entry | None = None
    entries: list[Entry] = field(default_factory=list)
    error: str | None = None  #: why it could not be located, or could not go finer
    budget_exhausted: bool = False
    how: str = ""  #: "replay" or "graph"

    def divergence(self) -> dict[str, Any] | None:
        """The ``divergence`` record of the JSON report (field names in API.md)."""
        c = self.culprit
        if c is None:
            return None
        out: dict[str, Any] = {"module": c.module, "type": c.type, "file": short_path(c.file) if c.file else None,
                               "line": c.line, "node": c.node, "max_abs_error": _finite(c.max_abs_error),
                               "input_max_abs_error": _finite(c.input_max_abs_error), "call": c.call,
                               "method": self.how}
        if self.budget_exhausted:
            out["budget_exhausted"] = True
        return out

    def table(self) -> list[dict[str, Any]]:
        """At most :data:`TABLE_ROWS` rows of the per-place table, centred on the culprit."""
        rows = [e.row() for e in self.entries]
        if len(rows) <= TABLE_ROWS:
            return rows
        at = self.entries.index(self.culprit) if self.culprit in self.entries else 0
        start = max(0, min(at - TABLE_ROWS // 2, len(rows) - TABLE_ROWS))
        return rows[start:start + TABLE_ROWS]

    def message(self, atol: float) -> str:
        """The failure message's lines: ``diverges first at ...``, or why it was not located."""
        c = self.culprit
        if c is None:
            return f"diverges first at: not located ({self.error or 'no compared place diverges'})"
        name = c.module or "the model itself"
        call = f", call {c.call + 1}" if c.call else ""
        where = f" at {short_path(c.file)}:{c.line}" if c.file else ""
        node = f", node {c.node}" if self.how == "graph" else ""
        lines = [f"diverges first at {name} ({c.type}{call}{node}){where}"]
        if c.code:
            lines.append(f"  `{c.code}`")
        lines.append(f"  max abs error {_fmt(c.max_abs_error)} at its output (atol {atol:g}), "
                     f"{_fmt(c.input_max_abs_error)} at its inputs")
        if self.error:
            lines.append(f"  ({self.error})")
        if self.budget_exhausted:
            lines.append("  (the localisation time budget ran out: this is the first divergence found so far; "
                         "--deploy-localize-budget gives it more)")
        return "\n".join(lines)


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else (x if math.isfinite(x) else float("inf"))


def _fmt(x: float) -> str:
    return "inf (shapes differ)" if math.isinf(x) else f"{x:.3g}"


# ------------------------------------------------------------------------------ comparing values


def leaves(value: Any) -> list[Any]:
    """Tensor leaves of a module's output (tuples, lists, dicts, dataclass-like outputs registered as pytrees)."""
    import torch.utils._pytree as pytree

    if isinstance(value, list) and type(value) is not list:  # compare.Leaves: [(path, tensor), ...] from a runtime
        value = list(value)
    return [leaf for leaf in pytree.tree_leaves(value) if is_tensor(leaf)]


def error(expected: Any, actual: Any, tol) -> tuple[float, bool]:
    """(max abs error, within tolerance) between two values' tensor leaves; a different structure or shape is an
    infinite error. ``tol`` answers ``for_dtype(dtype) -> (atol, rtol)`` (:class:`pytest_deploy.compare.Tolerance`)."""
    import torch

    want, got = leaves(expected), leaves(actual)
    if len(want) != len(got):
        return math.inf, False
    worst, ok = 0.0, True
    for a, b in zip(want, got):
        if tuple(a.shape) != tuple(b.shape):
            return math.inf, False
        if a.numel() == 0:
            continue
        a, b = a.detach().cpu(), b.detach().cpu().to(a.dtype) if b.dtype != a.dtype else b.detach().cpu()
        if not (a.is_floating_point() or a.is_complex()):
            diff = (a.to(torch.float64) - b.to(torch.float64)).abs()
            worst = max(worst, float(diff.max()))
            ok = ok and bool(torch.equal(a, b))
            continue
        atol, rtol = tol.for_dtype(str(a.dtype).replace("torch.", ""))
        diff = elementwise_error(a, b)  # as compare measures it: equal infinities and NaNs match
        worst = max(worst, float(diff.max()))
        ok = ok and bool((diff <= atol + rtol * a.abs().to(torch.float64).nan_to_num(0.0, 0.0, 0.0)).all())
    return worst, ok


def _clone(value: Any) -> Any:
    import torch.utils._pytree as pytree

    return pytree.tree_map(lambda v: v.detach().clone() if is_tensor(v) else v, value)


# ------------------------------------------------------------------------------ replay (trace, script)


class ModuleRunner:
    """A runner that keeps the module it runs, so that localisation can replay the module's submodules."""

    def __init__(self, call: Callable[[Callable, tuple], Any], module: Any, source: Any = None):
        self.call = call
        self.module = module
        #: what the module was loaded from (an ExportedProgram), for a backend that replays another view of it
        self.source = source

    def __call__(self, args: tuple) -> Any:
        return self.call(self.module, args)


@dataclass
class Call:
    """One call of a submodule during the eager run."""

    path: str
    type: str
    index: int  #: the module's how-manieth call (0 first)
    start: int  #: order of the pre-hook, and of the hook: a call's sub-calls lie between its start and end
    end: int
    args: tuple
    kwargs: dict
    output: Any
    site: tuple[str, int, str] | None = None  #: the model's line that made the call


def _call_site() -> tuple[str, int, str] | None:
    """The innermost frame of the model's code on the stack (the line calling the module being entered)."""
    frame = sys._getframe(2)
    while frame is not None:
        if is_model_code(frame.f_code.co_filename):
            name, line = frame.f_code.co_filename, frame.f_lineno
            return name, line, linecache.getline(name, line).strip()
        frame = frame.f_back  # type: ignore[assignment]
    return None


def record_calls(model, run: Callable[[], Any]) -> list[Call]:
    """Every submodule call (not the root's) while ``run()`` runs eager PyTorch, in the order they started."""
    import torch

    calls: list[Call] = []
    pending: dict[int, list[tuple[int, tuple, dict, Any]]] = {}
    counts: dict[str, int] = {}
    clock = iter(range(1 << 62))
    handles = []

    def pre(path):
        def hook(module, args, kwargs):
            pending.setdefault(id(module), []).append((next(clock), _clone(args), _clone(kwargs), _call_site()))
        return hook

    def post(path):
        def hook(module, args, kwargs, output):
            start, a, k, site = pending[id(module)].pop()
            index = counts.get(path, 0)
            counts[path] = index + 1
            calls.append(Call(path, type(module).__name__, index, start, next(clock), a, k, _clone(output), site))
        return hook

    try:
        for path, module in model.named_modules():
            if path:
                handles.append(module.register_forward_pre_hook(pre(path), with_kwargs=True))
                handles.append(module.register_forward_hook(post(path), with_kwargs=True))
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    calls.sort(key=lambda c: c.start)
    return calls


def _children_calls(calls: list[Call], parent: Call | None) -> list[Call]:
    """The calls made directly inside ``parent`` (the whole run for None), in order."""
    inside = [c for c in calls if parent is None or parent.start < c.start and c.end < parent.end]
    return [c for c in inside if not any(o is not c and o.start < c.start and c.end < o.end for o in inside)]


def _repeated_children(calls: list[Call], parent: Call | None) -> list[str]:
    """``"gate (2 calls)"`` for each child of ``parent`` called more than once inside it."""
    counts: dict[str, int] = {}
    for c in _children_calls(calls, parent):
        counts[c.path] = counts.get(c.path, 0) + 1
    return [f"{path} ({n} calls)" for path, n in counts.items() if n > 1]


def module_source(module, site: tuple[str, int, str] | None = None) -> tuple[str | None, int | None, str | None]:
    """Where to point for a diverging module: its forward when that is the model's code (the divergence is in
    there), else the model's line that called it (``site``: a library module such as Conv2d)."""
    try:
        forward = type(module).forward
        file = inspect.getsourcefile(forward)
        if file and is_model_code(file) or site is None:
            lines, line = inspect.getsourcelines(forward)
            return file, line, lines[0].strip()
    except (TypeError, OSError, AttributeError):
        pass
    return site if site is not None else (None, None, None)


def submodule_at(root, path: str):
    """The child of ``root`` (a loaded module: TorchScript, an unflattened exported program) at the dotted
    ``path`` eager's ``named_modules`` gives, by its named children; None when the artifact has no such child."""
    module = root
    for part in path.split("."):
        module = dict(module.named_children()).get(part)
        if module is None:
            return None
    return module


def replay(model, args_call: Callable[[], Any], loaded_output: Any, resolve: Callable[[str], Callable | None],
           tol, deadline: float) -> Finding:
    """Locate by replaying each submodule call of the artifact on the inputs eager gave it (see the module doc).

    ``args_call`` runs eager PyTorch on the failing input; ``loaded_output`` is the artifact's whole output on
    it (compared with eager's to start from the model itself); ``resolve(path)`` gives the artifact's submodule
    at ``path``, or None when it has none (then that call cannot be replayed and is skipped)."""
    finding = Finding(how="replay")
    modules = dict(model.named_modules())
    expected: list[Any] = []
    calls = record_calls(model, lambda: expected.append(args_call()))
    file, line, code = module_source(model)
    worst, ok = error(expected[0], loaded_output, tol)
    root = Entry("", type(model).__name__, "(model)", worst, 0.0, not ok, file=file, line=line, code=code)
    finding.entries.append(root)
    culprit: Entry = root
    parent: Call | None = None
    skipped: list[str] = []
    while True:
        found = None
        for c in _children_calls(calls, parent):
            if time.perf_counter() > deadline:
                finding.budget_exhausted = True
                break
            fn = resolve(c.path)
            if fn is None:
                skipped.append(f"{c.path}, which is not in the artifact")
                continue
            try:
                out = fn(*c.args, **c.kwargs)
            except AttributeError:  # resolved lazily: the loaded artifact has no submodule at that path
                skipped.append(f"{c.path}, which is not in the artifact")
                continue
            except Exception as exc:  # the artifact's submodule refuses the eager inputs: say so, go on
                skipped.append(f"{c.path}, which refuses eager's inputs ({type(exc).__name__})")
                continue
            worst, ok = error(c.output, out, tol)
            file, line, code = module_source(modules[c.path], c.site)
            entry = Entry(c.path, c.type, c.path + (f"#{c.index}" if c.index else ""), worst, 0.0, not ok,
                          call=c.index, file=file, line=line, code=code)
            finding.entries.append(entry)
            if not ok:
                found = (c, entry)
                break
        if found is None or finding.budget_exhausted:
            break
        parent, culprit = found
    if culprit.diverges:
        finding.culprit = culprit
        repeated = _repeated_children(calls, parent)
        if repeated:
            finding.error = (f"none of its submodules diverges when replayed alone; {', '.join(repeated)} "
                             "called several times here, and an artifact that keeps one compiled forward per "
                             "submodule (torch.jit.trace records one call's path) may run another call differently "
                             "than that submodule replays")
    else:
        finding.error = "no submodule diverges when replayed on eager's inputs, and neither does the whole model"
    if skipped:
        note = ("could not replay " + "; ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")
                + ("; a traced artifact keeps only the submodules its traced path called"
                   if any(x.endswith("which is not in the artifact") for x in skipped) else ""))
        finding.error = f"{finding.error}; {note}" if finding.error else note
    return finding


# ------------------------------------------------------------------------------ graph (exported program)


@dataclass
class Node:
    """One call_function node of an exported program, with where it came from."""

    name: str
    inputs: list[str]
    module: str
    type: str
    call: int
    file: str | None
    line: int | None
    code: str | None


def program_nodes(program) -> list[Node]:
    """The exported program's call_function nodes in execution order, each with its innermost module (path,
    class, which call: torch.export keys a module's later calls ``name@1``, ...) and the user's source line."""
    out = []
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        stack = node.meta.get("nn_module_stack") or {}
        module, kind, call = "", "", 0
        if stack:
            key, (path, cls) = list(stack.items())[-1]
            module, kind = path, (cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls)))
            kind = kind.rsplit(".", 1)[-1]
            if "@" in key and key.rsplit("@", 1)[-1].isdigit():
                call = int(key.rsplit("@", 1)[-1])
        where = frame_from_stack(node.meta.get("stack_trace") or "")
        out.append(Node(node.name, [n.name for n in node.all_input_nodes], module, kind, call,
                        *(where if where else (None, None, None))))
    return out


def program_values(program, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Every node's value when the exported program runs on ``args``/``kwargs``, node by node (eager kernels)."""
    import torch
    import torch.fx
    import torch.utils._pytree as pytree

    module = program.module()
    values: dict[str, Any] = {}

    class Recording(torch.fx.Interpreter):
        def run_node(self, n):
            result = super().run_node(n)
            if n.op == "call_function":
                values[n.name] = _clone(result)
            return result

    flat = pytree.tree_leaves((args, kwargs))
    with torch.no_grad():
        Recording(module).run(*flat)
    return values


def representatives(derived, root_names: set[str]) -> dict[str, str]:
    """For a program derived from another (decomposed for ONNX): derived node name -> the root program's node whose
    output it computes. Each root node's derived nodes (``meta["from_node"]`` provenance) end in one whose value
    leaves the group (read by another group's node, or returned): that one carries the root node's output."""
    origin: dict[str, str] = {}
    for node in derived.graph.nodes:
        if node.op != "call_function":
            continue
        source = _origin(node.meta.get("from_node") or [], root_names)
        if source is None and node.name in root_names:
            source = node.name
        if source is not None:
            origin[node.name] = source
    out: dict[str, str] = {}
    for node in derived.graph.nodes:
        group = origin.get(node.name)
        if group is None:
            continue
        if any(user.op == "output" or origin.get(user.name) != group for user in node.users):
            out = {k: v for k, v in out.items() if v != group}  # the last such node of the group wins
            out[node.name] = group
    return out


def _origin(sources: list, root_names: set[str]) -> str | None:
    """The nearest name in a ``from_node`` provenance chain that is a node of the root program."""
    for source in sources:
        name = getattr(source, "name", None)
        if name in root_names:
            return name
        deeper = _origin(list(getattr(source, "from_node", None) or []), root_names)
        if deeper is not None:
            return deeper
    return None


def first_divergence(nodes: list[Node], expected: dict[str, Any], actual: dict[str, Any], tol,
                     deadline: float | None = None) -> Finding:
    """The first node, in execution order, whose value diverges while the nodes it reads agree. A node the
    backend has no value for (fused, renamed) passes on its inputs' worst error and whether they all agree;
    graph inputs and weights agree by construction."""
    finding = Finding(how="graph")
    errors: dict[str, float] = {}
    agrees: dict[str, bool] = {}
    for n in nodes:
        if deadline is not None and time.perf_counter() > deadline:
            finding.budget_exhausted = True
            break
        inputs = max((errors.get(i, 0.0) for i in n.inputs), default=0.0)
        inputs_ok = all(agrees.get(i, True) for i in n.inputs)
        if n.name not in actual or n.name not in expected:
            errors[n.name], agrees[n.name] = inputs, inputs_ok
            continue
        worst, ok = error(expected[n.name], actual[n.name], tol)
        errors[n.name], agrees[n.name] = worst, ok
        entry = Entry(n.module, n.type or "(model)", n.name, worst, inputs, not ok, call=n.call, file=n.file,
                      line=n.line, code=n.code)
        finding.entries.append(entry)
        if not ok and inputs_ok and finding.culprit is None:
            finding.culprit = entry
    if finding.culprit is None and not finding.error:
        finding.error = ("no node of the exported program diverges while its inputs agree"
                         if finding.entries else "the backend's graph keeps none of the exported program's node names")
    return finding
