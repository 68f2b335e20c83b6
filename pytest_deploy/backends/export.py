"""``torch.export``: the spec's named dims become ``Dim``s; saved and loaded as ``.pt2``."""

from __future__ import annotations

import re
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


def explain_export_error(exc: BaseException) -> str:
    """A message that names the user's source line and the fix, instead of an exporter traceback."""
    text = str(exc)
    kind = type(exc).__name__
    # torch's own traceback of the user's code (``from user code:``, ``Original traceback:``) names the frame
    # being traced when it failed; the exception's Python traceback runs through the tracer, not the model
    where = frame_from_stack(text) or user_frame(exc.__traceback__)
    at = f"\n  at {short_path(where[0])}:{where[1]}  `{where[2]}`" if where else ""
    if "data-dependent" in text or "GuardOnDataDependent" in kind:
        return f"torch.export refuses data-dependent control flow{at}\n  fix: {_COND_FIX}"
    if "Constraints violated" in text or "ConstraintViolation" in kind:
        fixes = re.findall(r"^\s*(\w+ = .+)$", text.split("Suggested fixes:")[-1], re.M) if "Suggested fixes" in text else []
        reasons = [ln.strip("- ").strip() for ln in text.splitlines() if ln.strip().startswith("- ")][:3]
        msg = "torch.export specialised a dim declared dynamic: " + ("; ".join(reasons) or first_line(exc))
        if fixes:
            msg += "\n  torch.export suggests: " + "; ".join(fixes[:3])
        return msg + at + "\n  fix: make forward work for every size in dims=, or narrow dims= to the sizes it supports"
    return f"torch.export failed: {first_line(exc)}{at}"


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
    with ctx.stage("export"), quiet_torch_logs():
        try:
            args, kwargs = ctx.space.split(ctx.canonical.clone_args())
            program = torch.export.export(ctx.model, args, kwargs or None, dynamic_shapes=dynamic_shapes(ctx.space))
        except Exception as exc:
            raise StageError("export", explain_export_error(exc), cause=exc) from None
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
