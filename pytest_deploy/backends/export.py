"""``torch.export``: the spec's named dims become ``Dim``s; saved and loaded as ``.pt2``."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import time
import warnings
from collections import OrderedDict
from typing import Any

from ..errors import StageError
from ..localize import ModuleRunner
from ..sources import first_line, frame_from_stack, short_path, user_frame
from .base import Backend, quiet_torch_logs

PROGRAM = "model.pt2"

_COND_FIX = ("torch.export cannot follow Python control flow that depends on tensor values; rewrite the branch "
             "with torch.cond (or torch.where when both sides are cheap)")


def dynamic_shapes(space):
    """``dynamic_shapes`` for ``torch.export.export``: one ``Dim`` per named dim whose bounds vary."""
    import torch

    if not space.specs:
        return None
    dims = {}
    for name, (lo, hi) in space.dims.items():
        if lo != hi:
            dims[name] = torch.export.Dim(name, min=lo, max=hi)
    if not dims:
        return None
    per_input = [{axis: dims[d] for axis, d in enumerate(s.shape) if isinstance(d, str) and d in dims} or None
                 for s in space.specs]
    if space.keywords:
        return dict(zip(space.names, per_input))
    return tuple(per_input)


def explain_export_error(exc: BaseException, guard: dict | None = None, space=None) -> str:
    """A message that names the user's source line and the fix, instead of an exporter traceback. ``guard``: where
    torch.export added the guard that specialised a dynamic dim (:func:`guard_site`); ``space``: the input space,
    for the dims' declared ranges."""
    text = str(exc)
    kind = type(exc).__name__
    # torch's own traceback of the user's code (``from user code:``, ``Original traceback:``) names the frame
    # being traced when it failed; the exception's Python traceback runs through the tracer, not the model
    where = frame_from_stack(text) or user_frame(exc.__traceback__)
    at = f"\n  at {short_path(where[0])}:{where[1]}  `{where[2]}`" if where else ""
    if "data-dependent" in text or "GuardOnDataDependent" in kind:
        return f"torch.export refuses data-dependent control flow{at}\n  fix: {_COND_FIX}"
    if is_constraint_violation(exc):
        return _explain_specialisation(exc, guard, space, at)
    return f"torch.export failed: {first_line(exc)}{at}"


def is_constraint_violation(exc: BaseException) -> bool:
    """torch.export's refusal of a dynamic dim the model's code specialised or constrained."""
    return "Constraints violated" in str(exc) or "ConstraintViolation" in type(exc).__name__


#: torch's advice in a constraint violation that is for its own API (mark_dynamic, Dim.DYNAMIC, TORCH_LOGS), not for
#: a pytest-deploy user, who declares dims in the spec
_TORCH_ADVICE = re.compile(r"\s*(?:If you're using (?:mark_dynamic|Dim\.DYNAMIC)[^.]*\.|Specializations unexpectedly "
                           r"required \([^)]*\)!|For more information, run with TORCH_LOGS=\S+)")


def _explain_specialisation(exc: BaseException, guard: dict | None, space, at: str) -> str:
    """torch.export specialised (or constrained) a dim the spec declares dynamic: which dim, to what, the line that
    added the guard when torch.export.draft_export found it, and the fix in pytest-deploy's terms (the spec's dims),
    without torch's suggestions for its own API (``batch = 2``, ``mark_dynamic``, ``Dim.DYNAMIC``)."""
    text = str(exc)
    dims = dict(getattr(space, "dims", {}) or {})
    sources = dict(re.findall(r"\b(\w+) = (L\[[^\]]+\](?:\.size\(\)\[\d+\])?)", text))
    findings: list[str] = []
    names: list[str] = []

    def declared(name: str) -> str:  # the declared range, at a dim's first mention only
        first = name in dims and name not in names
        names.append(name)
        return f" (declared {dims[name][0]} to {dims[name][1]} in dims=)" if first else ""

    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("- "):
            continue
        line = _TORCH_ADVICE.sub("", line[2:]).strip()
        m = re.match(r"You marked (\w+) as dynamic but your code specialized it to be a constant \((-?\d+)\)", line)
        n = re.match(r"Not all values of (\w+) = \S+ in the specified range .*? satisfy the generated guard (.+?)\.?$",
                     line)
        if m:
            findings.append(f"{m.group(1)}{declared(m.group(1))} is fixed to {m.group(2)}")
        elif n:
            findings.append(f"not every {n.group(1)}{declared(n.group(1))} satisfies the guard "
                            f"{_readable(n.group(2), sources)}")
        elif line:
            findings.append(line)
    m = re.search(r"solving the guards generated for (\w+) = .*? resulted in a specialized value of (-?\d+)", text)
    if m and m.group(1) not in names:
        findings.append(f"{m.group(1)}{declared(m.group(1))} is fixed to {m.group(2)}")
    names = list(dict.fromkeys(names))
    msg = "torch.export specialised a dim declared dynamic: " + ("; ".join(dict.fromkeys(findings)) or first_line(exc))
    source = ""
    if guard is not None:
        source = guard["source"]
        expr = _readable(guard["guard"], sources, _symbol_names(guard.get("symbols") or {}, space))
        said = "the guard is" if "satisfies the guard" in msg else f"the guard {expr} is"
        msg += f"\n  at {short_path(guard['file'])}:{guard['line']}  `{source}`  ({said} added there, as " \
               "torch.export.draft_export reports)"
        where = "that line"
    else:
        msg += at
        where = "forward"
    dim = names[0] if len(names) == 1 else "the dim"
    fixed = re.search(r"is fixed to (-?\d+)", msg)
    size = fixed.group(1) if fixed and len(names) == 1 else None
    static = f" (dims={{{dim!r}: ({size}, {size})}}) if the model supports only that size" if size else \
        " (one size, low equal to high) if the model supports only one"
    if re.search(r"\b(?:float|int)\(", source):  # a Python number computed from a shape
        how = ("keep the number on the shape, without float()/int() (`(w - 1) / 2` instead of `float(w - 1) / 2`, "
               "`w // 2` instead of `int(w * 0.5)`)")
    else:
        how = (f"make {where} work for every size of {dim} in dims= (no size written into a view or reshape, no "
               "branch on it)")
    return msg + f"\n  fix: {how}, or declare {dim} static in the spec{static}"


def _symbol_names(symbols: dict, space) -> dict:
    """torch's symbols (``s77``) → the spec's dim names, through their sources (``L['x'].size()[0]``)."""
    out = {}
    params = list(getattr(space, "names", None) or [])
    for symbol, source in symbols.items():
        m = re.match(r"L\['(\w+)'\]\.size\(\)\[(\d+)\]$", str(source))
        if m and m.group(1) in params and space is not None:
            i, axis = params.index(m.group(1)), int(m.group(2))
            specs = getattr(space, "specs", [])
            if i < len(specs) and axis < len(specs[i].shape) and isinstance(specs[i].shape[axis], str):
                out[symbol] = specs[i].shape[axis]
                continue
        out[symbol] = str(source)
    return out


def _readable(expr: str, sources: dict, symbols: dict | None = None) -> str:
    """A guard in the dims' names: ``Eq(s77, 2)`` → ``batch == 2``. ``sources``: dim name → torch's source of it
    (``L['x'].size()[0]``); ``symbols``: torch's symbol (``s77``) → dim name."""
    out = str(expr)
    for name, source in sources.items():
        out = out.replace(source, name)
    for symbol, name in (symbols or {}).items():
        out = re.sub(rf"\b{re.escape(symbol)}\b", name, out)
    m = re.fullmatch(r"(Eq|Ne)\((.+), (.+)\)", out)
    if m:
        out = f"{m.group(2)} {'==' if m.group(1) == 'Eq' else '!='} {m.group(3)}"
    return out


#: draft_export costs about two exports; it is tried only when the export that failed took at most this long
DRAFT_EXPORT_BUDGET_S = 20.0


def guard_site(model, args: tuple, kwargs: dict | None, shapes) -> dict | None:
    """Where the model's code added the guard that specialised a dynamic dim, from torch's own tooling:
    ``torch.export.draft_export`` reports each guard it added with the user's stack. The innermost frame of the
    model's code of the first such guard (an equality first: a specialisation): file, line, source, the guard and
    its symbols' sources. None when draft_export is missing, fails or finds none; never raises."""
    import linecache

    import torch

    from ..sources import is_model_code

    draft = getattr(torch.export, "draft_export", None)
    if draft is None:
        return None
    try:
        import torch._logging.structured as structured
        import torch.export._draft_export  # its logger exists from here on, to be quieted below

        sink = io.StringIO()
        # torch's loggers quiet, as quiet_torch_logs has them, but for the structured trace draft_export reads
        # (logging.disable, which quiet_torch_logs uses, would silence that too)
        loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
                   if name.startswith("torch") and "__trace" not in name]
        states = [(lg, lg.disabled) for lg in loggers]
        # the structured trace's records go to draft_export's own handler only: pytest attaches its log capture to
        # that logger too (it does not propagate), and a failure would show them as "Captured log call"
        trace_log = logging.getLogger("torch.__trace")
        handlers = list(trace_log.handlers)
        try:
            trace_log.handlers = []
            for lg in loggers:
                lg.disabled = True
            with warnings.catch_warnings(), contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
                warnings.simplefilter("ignore")
                program = draft(model, args, kwargs or None, dynamic_shapes=shapes)
        finally:
            trace_log.handlers = handlers
            for lg, state in states:
                lg.disabled = state
        report = getattr(program, "_report", None)
        files = {v: k for k, v in getattr(structured, "INTERN_TABLE", {}).items()}
        files.update(getattr(report, "str_to_filename", {}) or {})
        failures = [f for f in getattr(report, "failures", []) if str(f.failure_type) == "GUARD_ADDED"]
        failures.sort(key=lambda f: not str(f.data.get("expr", "")).startswith("Eq("))
        for failure in failures:
            for frame in reversed(failure.data.get("user_stack") or []):
                filename = files.get(frame.get("filename"))
                if filename and is_model_code(filename):
                    line = int(frame["line"])
                    return {"file": filename, "line": line,
                            "source": (frame.get("loc") or linecache.getline(filename, line)).strip(),
                            "guard": str(failure.data.get("expr", "")),
                            "symbols": dict(failure.data.get("symbol_to_sources") or {})}
    except Exception:  # a clear verdict must never turn into a crash: the message goes without the line
        return None
    return None


#: Exported programs of this process by model key (``Check.model_key``: content, or without a cache the model
#: object's identity, then kept with a weak reference to it) and inputs, newest last: the backends that start
#: from torch.export (export, aoti, onnx, tvm) export a model test's model once. Forked check workers inherit it.
_PROGRAMS: OrderedDict[str, tuple[Any, Any]] = OrderedDict()
_PROGRAMS_KEPT = 4


def export_program(ctx):
    """``torch.export`` of the model on the canonical example, the spec's varying dims as ``Dim``s;
    a refusal fails at stage export with the user's line and the fix. Shared by every backend that
    starts from the exported program (export, aoti, onnx, tvm); a program exported earlier in this
    process from the same model content and inputs is reused (the consumers derive new programs from
    it and never change it)."""
    import weakref

    import torch

    key = ctx.model_key
    kept = _PROGRAMS.get(key)
    if kept is not None and (kept[0] is None or kept[0]() is ctx.model):  # an identity key: that very model
        _PROGRAMS.move_to_end(key)
        ctx.note("exported_program", "reused: exported earlier in this session from the same model and inputs")
        return kept[1]
    with ctx.stage("export"):
        start = time.perf_counter()
        try:
            with quiet_torch_logs():
                args, kwargs = ctx.space.split(ctx.canonical.clone_args())
                program = torch.export.export(ctx.model, args, kwargs or None, dynamic_shapes=dynamic_shapes(ctx.space))
        except Exception as exc:
            guard = None
            if is_constraint_violation(exc):
                if time.perf_counter() - start <= DRAFT_EXPORT_BUDGET_S:
                    args, kwargs = ctx.space.split(ctx.canonical.clone_args())
                    guard = guard_site(ctx.model, args, kwargs, dynamic_shapes(ctx.space))
                ctx.note("export_guard", {k: v for k, v in guard.items() if k != "symbols"} if guard else
                         "not found (torch.export.draft_export found no guard in the model's code, failed, or the "
                         f"export took over {DRAFT_EXPORT_BUDGET_S:g} s)")
            raise StageError("export", explain_export_error(exc, guard, ctx.space), cause=exc) from None
    _PROGRAMS[key] = (None if ctx.cache.enabled else weakref.ref(ctx.model), program)
    while len(_PROGRAMS) > _PROGRAMS_KEPT:
        _PROGRAMS.popitem(last=False)
    return program


class ExportBackend(Backend):
    name = "export"
    aliases = ("torch.export",)
    description = "torch.export.export (named dims as Dim) → torch.export.save → torch.export.load"

    def build(self, ctx):
        import torch

        def save() -> None:
            program = export_program(ctx)
            with ctx.stage("save"), quiet_torch_logs():
                torch.export.save(program, ctx.path(PROGRAM))

        path = ctx.cached_files("export", {}, [PROGRAM], save) / PROGRAM
        with ctx.stage("load"), quiet_torch_logs():
            loaded = torch.export.load(str(path))
            module = loaded.module()
        return ModuleRunner(ctx.call, module, source=loaded)

    def localize(self, ctx, args, deadline):
        """Replay (:func:`pytest_deploy.localize.replay`) through ``torch.export.unflatten`` of the loaded program:
        one graph module per submodule of the original, each run on the inputs eager gave that submodule."""
        import torch

        from ..localize import LocalizationError, replay, submodule_at
        from ..tensors import clone_args

        runner = ctx.runner
        if not isinstance(runner, ModuleRunner) or runner.source is None:
            raise LocalizationError("export: the check's runner does not keep the loaded program")
        with quiet_torch_logs():
            unflat = torch.export.unflatten(runner.source)
        with torch.no_grad(), quiet_torch_logs():
            output = runner(clone_args(args))
            return replay(ctx.model, lambda: ctx.eager(args), output, lambda path: submodule_at(unflat, path), ctx.tol,
                          deadline)


def op_source(program, op: str):
    """The user's line for the first node in ``program`` calling ``op`` (from the node's stack trace)."""
    key = op.replace("::", ".").split(".default")[0]
    for node in program.graph.nodes:
        target = str(getattr(node, "target", ""))
        if node.op == "call_function" and (target == op or target.startswith(key)):
            where = frame_from_stack(node.meta.get("stack_trace") or "")
            if where:
                return where
    return None
