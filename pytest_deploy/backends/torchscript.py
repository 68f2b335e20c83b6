"""TorchScript: ``torch.jit.trace`` and ``torch.jit.script``, each through ``jit.save``/``jit.load``."""

from __future__ import annotations

import warnings

from ..localize import LocalizationError, ModuleRunner, replay, submodule_at
from ..sources import numpy_sites, short_path
from ..tensors import clone_args
from .base import Backend, quiet_torch_logs

_SCRIPT_HINT = (
    "torch.jit.script compiles forward's Python source and rejects what TorchScript lacks; make forward "
    "TorchScript-compatible (type annotations, no unsupported builtins), or deploy with trace or export"
)


ARCHIVE = "model.pt"


def _save(ctx, scripted) -> None:
    import torch

    with ctx.stage("save"), quiet_torch_logs():
        torch.jit.save(scripted, ctx.path(ARCHIVE))


def _load_runner(ctx, path):
    import torch

    with ctx.stage("load"), quiet_torch_logs():
        loaded = torch.jit.load(str(path), map_location="cpu")
    return ModuleRunner(ctx.call, loaded)


def _localize(ctx, args: tuple, deadline: float):
    """Replay each submodule of the loaded TorchScript module on the inputs eager gave it (see localize.replay)."""
    import torch

    runner = ctx.runner
    if not isinstance(runner, ModuleRunner):
        raise LocalizationError(f"{ctx.backend}: the check's runner does not keep the loaded module")
    loaded = runner.module
    with torch.no_grad(), quiet_torch_logs():
        output = runner(clone_args(args))
    return replay(ctx.model, lambda: ctx.eager(args), output, lambda path: submodule_at(loaded, path), ctx.tol,
                  deadline)


class TraceBackend(Backend):
    name = "trace"
    aliases = ("torchscript-trace",)
    description = "torch.jit.trace → jit.save → jit.load"

    def build(self, ctx):
        import torch

        args, kwargs = ctx.space.split(ctx.canonical.clone_args())
        hint = "torch.jit.trace records the ops one input runs; use script or export if it cannot"

        def trace(args: tuple, kwargs: dict):
            if kwargs:
                return torch.jit.trace(ctx.model, example_kwarg_inputs=kwargs, check_trace=False, strict=False)
            return torch.jit.trace(ctx.model, args, check_trace=False, strict=False)

        def retrace(example_args: tuple) -> None:  # the frozen numbers of a failing check (search.BranchSearch)
            with torch.no_grad(), quiet_torch_logs():
                trace(*ctx.space.split(clone_args(example_args)))

        with ctx.stage("export", hint), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            traced = trace(args, kwargs)
        ctx.traced_decisions(retrace)
        tracer = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
        ctx.note("tracer_warnings", [
            {"file": short_path(w.filename), "line": w.lineno, "message": str(w.message).splitlines()[0]} for w in tracer
        ])
        _save(ctx, traced)
        return _load_runner(ctx, ctx.path(ARCHIVE))

    def localize(self, ctx, args, deadline):
        return _localize(ctx, args, deadline)


class ScriptBackend(Backend):
    name = "script"
    aliases = ("torchscript-script",)
    description = "torch.jit.script → jit.save → jit.load"

    def build(self, ctx):
        import torch

        from ..errors import StageError

        def script() -> None:
            with quiet_torch_logs():
                try:
                    scripted = torch.jit.script(ctx.model)
                except Exception as exc:  # TorchScript's own message already points at the source
                    raise StageError("export", _script_error_text(exc, numpy_sites(ctx.model))) from None
            _save(ctx, scripted)

        return _load_runner(ctx, ctx.cached_files("script", {}, [ARCHIVE], script) / ARCHIVE)

    def localize(self, ctx, args, deadline):
        return _localize(ctx, args, deadline)


def _script_error_text(exc: BaseException, numpy_calls: list[str] | None = None, max_lines: int = 14) -> str:
    lines = [ln.rstrip() for ln in str(exc).strip().splitlines() if ln.strip()]
    head = f"torch.jit.script cannot compile the model: {type(exc).__name__}: " + (lines[0] if lines else "")
    if numpy_calls and "numpy" in str(exc):  # TorchScript's error names no line for a numpy call: forward's source does
        return "\n".join([head, *(f"  at {where}" for where in numpy_calls),
                          "  TorchScript compiles torch ops only, not numpy calls",
                          "  fix: do it in torch: replace the numpy call with the torch op (np.abs -> torch.abs, .max() "
                          "on the tensor), which script, trace and export keep in the graph"])
    body = lines[1:max_lines]
    if len(lines) > max_lines:
        body.append("...")
    return "\n".join([head, *("  " + ln for ln in body), f"  fix: {_script_hint(str(exc))}"])


def _script_hint(text: str) -> str:
    """The fix for the usual refusals: a function TorchScript has no source for is mostly reached through a
    module attribute (a Hugging Face config object) rather than through forward's own code."""
    import re

    m = re.search(r"Failed to get source for <function ([\w.]+)", text)
    if m:
        owner = m.group(1).rsplit(".", 1)[0]
        return (f"TorchScript compiles every class the module reaches, its attributes included, and has no source "
                f"for {m.group(1)} (is a {owner} object, such as a model config, stored on the module?); "
                "Hugging Face models are not scriptable: deploy with trace or export")
    return _SCRIPT_HINT
