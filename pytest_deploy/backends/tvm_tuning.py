"""MetaSchedule tuning for the TVM backend, with the tuning database kept in the artifact cache.

``--deploy-tvm-tune=TRIALS`` tunes the model's kernels (MetaSchedule, today's TVM auto-tuner) and
keeps the database (MetaSchedule's JSON records) in the deploy cache, keyed by the model's exported
program, the target, the TVM version and the machine. The next run finds it and compiles with it
directly, so tuning is paid once. MetaSchedule tunes static-shape kernels only: a kernel with a
symbolic dim is left to TVM's default schedule.
"""

from __future__ import annotations

import os
import re
import tempfile

from ..errors import StageError
from ..sources import first_line
from .base import quiet_torch_logs

DB_FILES = ("database_workload.json", "database_tuning_record.json")


def fuse(module):
    """The passes before task extraction: lower to TIR and fuse, as ``tvm.compile`` would."""
    from tvm import relax

    for transform in (relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                      relax.transform.FuseOps(), relax.transform.FuseTIR()):
        module = transform(module)
    return module


def with_cores(target):
    """MetaSchedule needs the CPU target's core count; take this machine's when the target has none."""
    import tvm

    if target.kind.name != "llvm" or "num-cores" in target.attrs:
        return target
    config = dict(target.export())
    config["num-cores"] = os.cpu_count() or 1
    return tvm.target.Target(config)


def tuned_executable(ctx, module, target, trials: int, key: str):
    """Compile ``module`` with a tuning database: from the cache when one is kept, else tuned now."""
    from tvm.s_tir import meta_schedule as ms

    module = fuse(module)
    target = with_cores(target)
    with ctx.cache.lock(key):
        entry = ctx.cache.lookup(key)
        if entry is not None:
            ctx.note("tvm_tuning", f"database reused from the cache ({trials} trials)")
            ctx.result.cached = True
            return _compile(ctx, ms, _database(ms, entry), module, target)
        try:
            tasks = ms.relax_integration.extract_tasks(module, target)
        except Exception as exc:
            raise StageError("compile", f"MetaSchedule cannot extract tuning tasks: {first_line(exc)}") from None
        tasks = [t for t in tasks if all(_is_static(f) for f in t.dispatched[0].functions.values())]
        if not tasks:
            ctx.note("tvm_tuning", "nothing to tune: MetaSchedule tunes static-shape kernels only, and every kernel "
                                   "here has a symbolic dim")
            return None
        work = tempfile.mkdtemp(prefix="tvm-tune-", dir=ctx.workdir)
        with ctx.stage("compile"), quiet_torch_logs():
            try:
                database = ms.relax_integration.tune_relax(
                    module, {}, target, work, max_trials_global=trials, num_trials_per_iter=min(trials, 4),
                    op_names=[t.task_name for t in tasks],
                    builder=ms.builder.LocalBuilder(max_workers=1, timeout_sec=120),
                    runner=ms.runner.LocalRunner(timeout_sec=60), cost_model="random", strategy="replay-trace",
                )
            except Exception as exc:
                raise StageError("compile", f"MetaSchedule tuning fails: {first_line(exc, 600)}") from None
        ctx.note("tvm_tuning", f"tuned {len(tasks)} task(s) with {trials} trials; database "
                               + ("kept in the cache" if ctx.cache.enabled else "not kept (no cache)"))
        ctx.cache.store(key, {name: os.path.join(work, name) for name in DB_FILES})
        return _compile(ctx, ms, database, module, target)


_SHAPE = re.compile(r"T\.Buffer\(\((.*?)\),\s*\"")
_STATIC_DIM = re.compile(r"\s*(T\.int(32|64)\(\d+\)|\d+)\s*")


def _is_static(func) -> bool:
    """Whether every buffer in a kernel's signature has a constant shape (MetaSchedule cannot tune others)."""
    script = func.script()
    signature = script[script.find("def "):script.find("):")]
    shapes = _SHAPE.findall(signature)
    if "T.handle" in signature:  # a symbolic buffer is passed as a handle and matched inside
        return False
    return bool(shapes) and all(_STATIC_DIM.fullmatch(d) for shape in shapes for d in shape.split(",") if d.strip())


def _database(ms, entry):
    return ms.database.JSONDatabase(path_workload=str(entry / DB_FILES[0]), path_tuning_record=str(entry / DB_FILES[1]),
                                    allow_missing=False)


def _compile(ctx, ms, database, module, target):
    with ctx.stage("compile"), quiet_torch_logs():
        try:
            return ms.relax_integration.compile_relax(database, module, target, params=None)
        except Exception as exc:
            raise StageError("compile", f"compiling with the tuning database fails: {first_line(exc, 600)}") from None
