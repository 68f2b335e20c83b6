"""MetaSchedule tuning for the TVM backend, with the tuning database kept in the artifact cache.

``--deploy-tvm-tune=TRIALS`` tunes the model's kernels (MetaSchedule, today's TVM auto-tuner) and
keeps the database (MetaSchedule's JSON records) in the deploy cache, keyed by the model's exported
program, the target, the search settings, the TVM and xgboost versions and the machine. The next run
finds it and compiles with it directly, so tuning is paid once. MetaSchedule tunes static-shape kernels only: a kernel with a
symbolic dim is left to TVM's default schedule.

The search is MetaSchedule's evolutionary search guided by its XGBoost cost model (the random model when
xgboost is not importable; the ``tvm_tuning`` note says which ran), sized for a few CPU cores (``EVOLUTION``,
``PER_BATCH``, ``XGB_WARMUP``). The settings are part of the database's cache key.

Before tuning, ``tvm.s_tir.tensor_intrin`` is imported with a cheap ``inspect.stack``: MetaSchedule imports it
for its first task, and it parses some 250 TVMScript functions whose decorator calls ``inspect.stack()``, whose
cost grows with the number of loaded modules: 53 s here (2 cores) in a plain script, 224 s with a test session's
2,900 modules loaded, 7 s with the cheap one; more than the search itself. MetaSchedule's builder imports it again
in each worker it starts, one per batch of candidates, so the workers get the cheap import too.
"""

from __future__ import annotations

import importlib.util
import os
import re
import tempfile
from types import FrameType

from ..errors import StageError
from ..sources import first_line
from .base import quiet_torch_logs

DB_FILES = ("database_workload.json", "database_tuning_record.json")

#: MetaSchedule's evolutionary search, sized for CPU CI (TVM's defaults in brackets, sized for a server with the
#: thousands of trials of a production tuning). Each round samples ``population_size`` schedules, of which
#: ``init_measured_ratio`` come from the best measured ones (at least ``init_min_unmeasured`` fresh ones), evolves
#: them ``genetic_num_iters`` times (mutating with ``genetic_mutate_prob``), scoring the whole population with the
#: cost model each time, and sends the best-scored (and ``eps_greedy`` random ones) to be measured.
EVOLUTION = {
    "population_size": 128,  # [512] scoring 512 candidates 4 times a round is most of a round's search on 2 cores
    "init_measured_ratio": 0.2,  # [0.2]
    "init_min_unmeasured": 32,  # [50]
    "max_fail_count": 5,  # [5]
    "genetic_num_iters": 3,  # [4]
    "genetic_mutate_prob": 0.85,  # [0.85]
    "genetic_max_fail_count": 10,  # [10]
    "eps_greedy": 0.05,  # [0.05]
}
#: candidates measured per round [64]: MetaSchedule's LocalBuilder starts a fresh worker process (importing TVM,
#: seconds) for every batch, so small batches pay that many times; large ones leave a small budget one round
PER_BATCH = 16
#: the XGBoost model predicts at random until it has seen this many measured candidates [100, more than a CI
#: budget of trials]; then it is retrained after every batch
XGB_WARMUP = 16
#: the search's seed: the same model, budget and settings search the same way
SEED = 0


def fuse(module, target):
    """The passes before task extraction, exactly those ``compile_relax`` runs before it looks kernels up in the
    database: library dispatch, lower to TIR, fold constants (the weights' transposes), fuse. Any difference and
    the database's kernels match none of the compiled module's, which then keeps TVM's default schedules."""
    import tvm
    from tvm import relax
    from tvm.relax import pipeline

    try:
        dispatch = list(pipeline.library_dispatch_passes(target))
    except (ValueError, AttributeError):  # as compile_relax: a target the pipeline dispatcher does not know
        dispatch = []
    passes = [*dispatch, relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
              relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR()]
    with target, tvm.transform.PassContext(opt_level=3):
        return tvm.transform.Sequential(passes)(module)


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

    target = with_cores(target)
    with ctx.cache.lock(key):
        entry = ctx.cache.lookup(key)
        if entry is not None:
            ctx.note("tvm_tuning", f"database reused from the cache ({trials} trials)")
            ctx.result.cached = True
            return _compile(ctx, ms, _database(ms, entry), module, target)
        try:
            tasks = ms.relax_integration.extract_tasks(fuse(module, target), target)
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
                database = _tune(ms, tasks, work, trials)
            except Exception as exc:
                raise StageError("compile", f"MetaSchedule tuning fails: {first_line(exc, 600)}") from None
        ctx.note("tvm_tuning", f"tuned {len(tasks)} task(s) with {trials} trials ({search_name()}); database "
                               + ("kept in the cache" if ctx.cache.enabled else "not kept (no cache)"))
        ctx.cache.store(key, {name: os.path.join(work, name) for name in DB_FILES})
        return _compile(ctx, ms, database, module, target)


def have_xgboost() -> bool:
    return importlib.util.find_spec("xgboost") is not None


def search_name() -> str:
    """What searches: the tvm_tuning note's words."""
    model = "XGBoost cost model" if have_xgboost() else "random cost model: xgboost is not installed"
    return f"evolutionary search, {model}"


def search_settings() -> dict:
    """Everything that decides how the search goes, for the database's cache key."""
    return {"strategy": "evolutionary", **EVOLUTION, "per_batch": PER_BATCH, "seed": SEED,
            "cost_model": f"xgb warmup={XGB_WARMUP}" if have_xgboost() else "random"}


def _tune(ms, tasks, work: str, trials: int):
    """MetaSchedule's evolutionary search over ``tasks`` for ``trials`` measured candidates in all."""
    contexts, weights = [], []
    importer = _intrinsics_importer()
    importer()  # before MetaSchedule's first task imports it with the full inspect.stack
    for i, task in enumerate(tasks):  # one strategy object per task: a search strategy holds its task's state
        strategy = ms.search_strategy.EvolutionarySearch(**EVOLUTION)
        context, weight = ms.relax_integration.extracted_tasks_to_tune_contexts([task], work, strategy=strategy,
                                                                                seed=SEED + i)
        contexts += context
        weights += weight
    cores = contexts[0].num_threads
    if have_xgboost():
        cost_model = ms.cost_model.XGBModel(num_warmup_samples=XGB_WARMUP, num_tuning_cores=cores)
    else:
        cost_model = ms.cost_model.RandomModel()
    builder = ms.builder.LocalBuilder(max_workers=1, timeout_sec=120, initializer=importer)
    return ms.tune.tune_tasks(tasks=contexts, task_weights=weights, work_dir=work, max_trials_global=trials,
                              num_trials_per_iter=min(trials, PER_BATCH), builder=builder,
                              runner=ms.runner.LocalRunner(timeout_sec=60), database="json", cost_model=cost_model)


def _intrinsics_importer(module: str = "tvm.s_tir.tensor_intrin"):
    """A function importing ``module`` (TVM's tensor intrinsics) with a cheap ``inspect.stack``: one without the source
    lookups behind each frame (``inspect.getmodule`` scans every loaded module for each frame whose file is not on
    disk). The first three frames keep their line of code, which is all TVMScript's decorators read (whether the
    function is defined in a class). Nested, so that cloudpickle sends it by value to MetaSchedule's builder
    workers (which import tensor_intrin for every candidate batch), without their importing pytest-deploy."""

    def import_tensor_intrinsics() -> None:
        import importlib
        import inspect
        import linecache
        import sys

        def stack(context: int = 1) -> list[inspect.FrameInfo]:
            frames: list[inspect.FrameInfo] = []
            frame: FrameType | None = sys._getframe(1)
            while frame is not None:
                code = frame.f_code
                line = linecache.getline(code.co_filename, frame.f_lineno) if len(frames) < 3 and context else ""
                frames.append(inspect.FrameInfo(frame, code.co_filename, frame.f_lineno, code.co_name,
                                                [line] if line else None, 0 if line else None))
                frame = frame.f_back
            return frames

        original, inspect.stack = inspect.stack, stack
        try:
            importlib.import_module(module)
        finally:
            inspect.stack = original

    return import_tensor_intrinsics


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
