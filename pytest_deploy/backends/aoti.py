"""AOTInductor: ``torch.export`` with the dims → compiled C++ package (``.pt2``) → load → run.

Compiling takes tens of seconds even for a tiny model, so the package is kept in the artifact cache,
keyed by the exported program's content, the torch version and the machine: the next run loads it.
"""

from __future__ import annotations

import shutil

from ..errors import StageError
from ..sources import first_line
from .base import Backend, quiet_torch_logs
from .export import export_program

PACKAGE = "model.pt2"


class AotiBackend(Backend):
    name = "aoti"
    native = True
    preload = ("torch.export", "torch._inductor")
    aliases = ("aotinductor",)
    description = "torch.export (dims as Dim) → AOTInductor package (.pt2, cached) → aoti_load_package → run"

    def unavailable_reason(self, options=None) -> str | None:
        reason = super().unavailable_reason(options)
        if reason:
            return reason
        if not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
            return "aoti: AOTInductor compiles C++ and no C++ compiler (g++, c++, clang++) is on PATH; install one"
        return None

    def build(self, ctx):
        import torch

        from ..cache import library_versions, machine, make_key, program_fingerprint

        program = export_program(ctx)
        # without a cache there is nothing to look up: the program's weights are not hashed
        key = make_key("aoti", program_fingerprint(program), library_versions(["torch"]), machine()) \
            if ctx.cache.enabled else "uncached"
        if ctx.cache.enabled:
            ctx.note("cache_key", key[:16])
        with ctx.cache.lock(key):
            entry = ctx.cache.lookup(key)
            if entry is not None:
                path = str(entry / PACKAGE)
                ctx.result.cached = True
            else:
                path = ctx.path(PACKAGE)
                with ctx.stage("compile"), quiet_torch_logs():
                    try:
                        torch._inductor.aoti_compile_and_package(program, package_path=path)
                    except Exception as exc:
                        raise StageError("compile", f"AOTInductor fails to compile the exported program: "
                                                    f"{first_line(exc, 600)}") from None
                ctx.cache.store(key, {PACKAGE: path})
        if ctx.cache.events:
            ctx.note("cache_events", list(ctx.cache.events))
        ctx.artifact(PACKAGE, path)
        with ctx.stage("load"), quiet_torch_logs():
            runner = torch._inductor.aoti_load_package(path)
        return lambda args: ctx.call(runner, args)

    def localize(self, ctx, args, deadline):
        from ..localize import LocalizationError

        raise LocalizationError("aoti: the compiled package runs as one sequence of generated kernels, with no "
                                "intermediate values or submodules to compare; the export backend checks the same "
                                "exported program uncompiled and locates divergences in it")
