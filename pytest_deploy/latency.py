"""Latency and speedup of a deployed artifact, timed beside eager PyTorch in the process that holds it.

``--deploy-latency`` (ini ``deploy_latency``; ``latency=True`` or a dict on ``@deployable``/``deploy()``/``verify()``)
times a backend's loaded runner after it passed the parity check, in the process that holds it (the forked worker,
when the check runs in one), on fixed inputs: the canonical example and the dims' upper corner (every named dim at
its largest allowed size). Eager PyTorch runs on the same inputs in the same process, interleaved with the artifact
(eager, artifact, eager, artifact, ...), so the speedup is one ratio measured under the same conditions.

The stabilisation rule (docs/reports.md#latency): ``warmup`` runs of each side first, untimed; then pairs of timed
runs until, after at least ``min_runs`` pairs, the median of each side moved by less than ``stable`` (a fraction)
between two checks ``CHECK_EVERY`` pairs apart; or until the shape's share of ``budget`` seconds is spent, or
``max_runs`` pairs ran. Which rule ended it is reported (``stopped``: stable, budget, max_runs).

Statistics come from pyperf (its ``Benchmark``: median, percentiles, mean, standard deviation) when it is
installed (the ``[latency]`` extra), else from the standard library's ``statistics`` module (``quantiles`` with the
inclusive method); the report says which.

CPU threads are pinned the same way for both sides: ``torch.set_num_threads`` (eager, and TorchScript, torch.export
and AOTInductor artifacts), ONNX Runtime's ``intra_op_num_threads`` and ``TVM_NUM_THREADS`` all take the ``threads``
setting (default 1; a forked worker runs PyTorch on one thread in any case, see :mod:`pytest_deploy.isolation`).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .errors import SpecError, StageError

#: The settings a latency dict may hold, with their defaults.
DEFAULTS: dict[str, Any] = {
    "budget": 2.0,  # seconds of timed runs per backend (split between the shapes)
    "min_runs": 50,  # pairs (eager + artifact) before the median may be judged stable
    "max_runs": 5000,  # pairs at most per shape
    "warmup": 3,  # untimed runs of each side first
    "stable": 0.02,  # the median may move by at most this fraction between two checks
    "threads": 1,  # CPU threads for eager PyTorch and every runtime
    "min_speedup": None,  # gate: the artifact must be at least this many times faster than eager (every shape)
    "max_p99_ms": None,  # gate: p99 latency at most this many milliseconds (every shape)
    "slowdown": 0,  # TEST ONLY: run the artifact this many extra times in each timed call (a deliberately slow build)
    "baseline": None,  # {shape label: speedup} from a baseline file (--deploy-latency-baseline); set by the plugin
    # a speedup may fall this fraction below its baseline: above the largest run-to-run fall measured on the
    # development machine (38%, docs/benchmarks.md#latency-cost-and-stability)
    "tolerance": 0.40,
}

#: Pairs between two looks at the medians.
CHECK_EVERY = 10
#: Samples kept per side and shape in the report (for the HTML plots); every sample counts in the statistics.
KEPT_SAMPLES = 200

#: Result.details keys that are a backend's knobs worth naming beside a latency figure.
KNOB_KEYS = ("onnxruntime_provider", "onnxruntime_tf32", "onnxruntime_threads", "onnx_exporter", "precision", "onnx_simplified",
             "tvm_target", "tvm_tuning", "tvm_importer", "trt_builder", "trt_tf32", "trt_version", "exported_program")


def parse_settings(value: Any, where: str) -> dict[str, Any] | None:
    """``latency=`` (True, False/None, or a dict of :data:`DEFAULTS`' keys) -> the settings, or None when off.
    A bad value raises :class:`SpecError` naming ``where``, the key and what it must be."""
    if value is None or value is False:
        return None
    if value is True:
        return dict(DEFAULTS)
    if not isinstance(value, Mapping):
        raise SpecError(f"{where}: latency={value!r} must be True, False or a dict of settings "
                        f"({', '.join(DEFAULTS)})")
    unknown = sorted(set(value) - set(DEFAULTS))
    if unknown:
        raise SpecError(f"{where}: latency has unknown key(s) {', '.join(map(repr, unknown))}; known: "
                        f"{', '.join(DEFAULTS)}")
    out = dict(DEFAULTS)
    for key, given in value.items():
        out[key] = _check_setting(key, given, where)
    if out["max_runs"] < out["min_runs"]:
        raise SpecError(f"{where}: latency max_runs={out['max_runs']} is below min_runs={out['min_runs']}")
    return out


def _check_setting(key: str, value: Any, where: str) -> Any:
    def bad(what: str) -> SpecError:
        return SpecError(f"{where}: latency[{key!r}]={value!r} must be {what}")

    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if key in ("min_runs", "max_runs", "threads"):
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise bad("a whole number of at least 1")
    elif key in ("warmup", "slowdown"):
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            raise bad("a whole number, 0 or more")
    elif key == "budget":
        if not (number and value > 0):
            raise bad("a positive number of seconds")
    elif key in ("stable", "tolerance"):
        if not (number and 0 <= value < 1):
            raise bad("a fraction from 0 up to (not including) 1, e.g. 0.1 for 10%")
    elif key in ("min_speedup", "max_p99_ms"):
        if value is not None and not (number and value > 0):
            raise bad("a positive number, or None (no gate)")
    elif key == "baseline" and value is not None:
        if not (isinstance(value, Mapping) and all(isinstance(v, (int, float)) for v in value.values())):
            raise bad("a dict {shape label: speedup}")
        value = dict(value)
    return value


def merge_settings(session: dict[str, Any] | None, declared: Any, where: str) -> dict[str, Any] | None:
    """The check's settings: a marker's or call's ``latency=`` over the session's (command line over ini). A
    declared ``False`` turns it off; a declared dict changes only the keys it names."""
    if declared is False:
        return None
    if declared is None or declared is True:
        return dict(session) if session is not None else (dict(DEFAULTS) if declared else None)
    parsed = parse_settings(declared, where)
    assert parsed is not None  # a dict
    base = dict(session) if session is not None else dict(DEFAULTS)
    base.update({k: parsed[k] for k in declared})
    return base


# ------------------------------------------------------------------------------------- statistics


def statistics_library() -> str:
    """What computes the figures: pyperf (with its version) or the standard library."""
    try:
        import pyperf
    except ImportError:
        return "statistics (Python's standard library; pip install 'pytest-deploy[latency]' for pyperf's)"
    return f"pyperf {pyperf.__version__}"


def summarise(samples: list[float]) -> dict[str, float]:
    """p50, p90, p99, mean and standard deviation (milliseconds) of ``samples`` (seconds, at least two)."""
    try:
        import pyperf
    except ImportError:
        pyperf = None
    if pyperf is not None:
        values = [max(s, 1e-12) for s in samples]  # pyperf refuses a zero value
        run = pyperf.Run(values, metadata={"name": "latency", "unit": "second"}, collect_metadata=False)
        bench = pyperf.Benchmark([run])
        figures = {"p50": bench.median(), "p90": bench.percentile(90), "p99": bench.percentile(99),
                   "mean": bench.mean(), "stdev": bench.stdev()}
    else:
        import statistics

        cuts = statistics.quantiles(samples, n=100, method="inclusive")
        figures = {"p50": statistics.median(samples), "p90": cuts[89], "p99": cuts[98],
                   "mean": statistics.fmean(samples), "stdev": statistics.stdev(samples)}
    return {f"{k}_ms": v * 1e3 for k, v in figures.items()}


def paired_speedup(eager: list[float], artifact: list[float]) -> float | None:
    """The median over pairs of eager's time over the artifact's, each pair run back to back: a burst of load from
    elsewhere on the machine slows both runs of a pair and cancels out of its ratio, where it would shift one
    side's median more than the other's."""
    ratios = [e / a for e, a in zip(eager, artifact) if a > 0]
    return _median(ratios) if ratios else None


def _median(samples: list[float]) -> float:
    import statistics

    return statistics.median(samples)


# ------------------------------------------------------------------------------------- threads


@contextlib.contextmanager
def pinned_threads(settings: dict[str, Any] | None, in_worker: bool = False) -> Iterator[dict[str, Any]]:
    """Pin CPU threads for the whole check (eager, the artifact's own runtime) to ``settings["threads"]``;
    yield what was pinned. Nothing is changed when latency is off."""
    if settings is None:
        yield {}
        return
    import torch

    threads = int(settings["threads"])
    before = torch.get_num_threads()
    pinned: dict[str, Any] = {"requested": threads}
    if in_worker and threads > 1:
        # PyTorch's OpenMP pool does not survive fork: a forked worker runs PyTorch on one thread
        threads = 1
        pinned["note"] = "a forked worker runs PyTorch on one thread; every runtime pinned to 1 too"
    saved = os.environ.get("TVM_NUM_THREADS")
    torch.set_num_threads(threads)
    os.environ["TVM_NUM_THREADS"] = str(threads)
    pinned.update({"torch": threads, "onnxruntime_intra_op": threads, "TVM_NUM_THREADS": threads})
    try:
        yield pinned
    finally:
        torch.set_num_threads(before)
        if saved is None:
            os.environ.pop("TVM_NUM_THREADS", None)
        else:
            os.environ["TVM_NUM_THREADS"] = saved


# ------------------------------------------------------------------------------------- timing


def _sync() -> None:
    """Wait for queued GPU work, where this process uses CUDA, so a time covers the work and not its launch."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_pair(eager: Callable[[], Any], artifact: Callable[[], Any], settings: dict[str, Any],
              budget: float) -> dict[str, Any]:
    """Interleaved timings of ``eager`` and ``artifact`` under the stabilisation rule (module docstring)."""
    clock = time.perf_counter
    for _ in range(int(settings["warmup"])):
        eager()
        artifact()
    _sync()
    a: list[float] = []
    b: list[float] = []
    start = clock()
    stopped = "max_runs"
    last: tuple[float, float] | None = None
    for i in range(int(settings["max_runs"])):
        for side, fn in ((a, eager), (b, artifact)) if i % 2 == 0 else ((b, artifact), (a, eager)):
            t0 = clock()
            fn()
            _sync()
            side.append(clock() - t0)
        runs = i + 1
        if runs >= settings["min_runs"] and runs % CHECK_EVERY == 0:
            now = (_median(a), _median(b))
            if last is not None and all(abs(x - y) <= settings["stable"] * y for x, y in zip(now, last) if y > 0):
                stopped = "stable"
                break
            last = now
        if runs >= 2 and clock() - start > budget:
            stopped = "budget"
            break
    return {"eager": a, "artifact": b, "stopped": stopped, "seconds": clock() - start}


def latency_inputs(ctx) -> list[tuple[str, Any]]:
    """(label, example) to time: the canonical example, and the dims' upper corner when it differs."""
    canonical = ctx.canonical
    out = [("canonical", canonical)]
    space = ctx.space
    if space.dims and canonical.recipes is not None and not space.given:
        upper = space.dim_corners_bounds()[1]
        if upper != canonical.dims:
            example = space.build(upper, canonical.recipes)
            out.append(("upper", example))
    return out


def _shapes(args: tuple) -> list:
    return [list(a.shape) if hasattr(a, "shape") else type(a).__name__ for a in args]


def measure(ctx, settings: dict[str, Any], pinned: dict[str, Any]) -> dict[str, Any]:
    """Time the check's runner (``ctx.latency_runner`` when the backend names one, else ``ctx.runner``) beside
    eager on :func:`latency_inputs`; fill ``ctx.result.latency`` and apply the gates (a failing gate raises
    :class:`StageError` at stage ``latency`` with the figures and the backend's knobs)."""
    import torch

    runner = getattr(ctx, "latency_runner", None) or ctx.runner
    if runner is None:
        ctx.result.latency = {"skipped": f"{ctx.backend} has no runner to time (its check does not run an artifact)"}
        return ctx.result.latency
    extra = int(settings["slowdown"])
    inputs = latency_inputs(ctx)
    budget = float(settings["budget"]) / len(inputs)
    shapes: list[dict[str, Any]] = []
    skipped: list[str] = []
    for label, example in inputs:
        args = example.args

        def eager(args=args):
            with torch.no_grad():
                return ctx.call(ctx.model, args)

        def artifact(args=args):
            with torch.no_grad():
                for _ in range(extra):
                    runner(args)
                return runner(args)

        try:
            with ctx.stage("latency"):
                timed = time_pair(eager, artifact, settings, budget)
        except StageError as err:
            if label == "canonical":
                raise
            skipped.append(f"{label}: {err.message.splitlines()[0]}")
            continue
        mine, theirs = summarise(timed["artifact"]), summarise(timed["eager"])
        entry: dict[str, Any] = {"label": label, "dims": dict(example.dims), "shapes": _shapes(args), **mine,
                                 "runs": len(timed["artifact"]), "stopped": timed["stopped"],
                                 "seconds": round(timed["seconds"], 4),
                                 "eager": {**theirs, "runs": len(timed["eager"])},
                                 "speedup": paired_speedup(timed["eager"], timed["artifact"]),
                                 "samples_ms": [round(s * 1e3, 6) for s in timed["artifact"][:KEPT_SAMPLES]],
                                 "eager_samples_ms": [round(s * 1e3, 6) for s in timed["eager"][:KEPT_SAMPLES]]}
        shapes.append(entry)
    first = shapes[0]
    data: dict[str, Any] = {
        "p50_ms": first["p50_ms"], "p99_ms": first["p99_ms"], "speedup": first["speedup"],
        "eager_p50_ms": first["eager"]["p50_ms"], "shapes": shapes, "threads": pinned,
        "knobs": knobs(ctx, pinned), "statistics": statistics_library(),
        "rule": {k: settings[k] for k in ("budget", "min_runs", "max_runs", "warmup", "stable")},
    }
    variants = _variants(ctx, inputs, settings, budget, shapes)
    if variants:
        data["variants"] = variants
    if extra:
        data["slowdown"] = extra
    if getattr(ctx, "spawn_runtime", False):
        data["note"] = ("the runtime lives in a spawned worker process: each artifact run includes the pipe transfer "
                        "of its inputs and outputs")
    if skipped:
        data["not_timed"] = skipped
    ctx.result.latency = data
    failures = gate_failures(data, settings)
    if failures:
        data["gate"] = "failed"
        raise StageError("latency", gate_text(ctx.backend, failures, data))
    if settings.get("min_speedup") is not None or settings.get("max_p99_ms") is not None \
            or settings.get("baseline"):
        data["gate"] = "passed"
    return data


def _variants(ctx, inputs, settings: dict[str, Any], budget: float, shapes: list[dict[str, Any]]) -> dict[str, Any]:
    """Each of the backend's other builds (``ctx.latency_variants``, e.g. a TVM module without its tuning) timed
    beside eager on the same inputs: per shape its p50, p99, speedup over eager, and ``ratio``: its p50 over the
    checked artifact's (above 1: the checked artifact is faster)."""
    import torch

    out: dict[str, Any] = {}
    mine = {s["label"]: s for s in shapes}
    for name, other in (getattr(ctx, "latency_variants", None) or {}).items():
        per = {}
        for label, example in inputs:
            if label not in mine:
                continue
            args = example.args

            def eager(args=args):
                with torch.no_grad():
                    return ctx.call(ctx.model, args)

            def variant(args=args, other=other):
                with torch.no_grad():
                    return other(args)

            with ctx.stage("latency"):
                timed = time_pair(eager, variant, settings, budget)
            figures, theirs = summarise(timed["artifact"]), summarise(timed["eager"])
            per[label] = {"p50_ms": figures["p50_ms"], "p99_ms": figures["p99_ms"], "runs": len(timed["artifact"]),
                          "eager_p50_ms": theirs["p50_ms"], "speedup": theirs["p50_ms"] / figures["p50_ms"],
                          "ratio": figures["p50_ms"] / mine[label]["p50_ms"]}
        out[name] = per
    return out


def knobs(ctx, pinned: dict[str, Any]) -> dict[str, Any]:
    """The backend's settings that a latency figure depends on: threads, providers, target, tuning, precision."""
    out: dict[str, Any] = {"threads": pinned.get("torch")}
    details = ctx.result.details
    for key in KNOB_KEYS:
        if key in details and key != "exported_program":
            out[key] = details[key]
    if ctx.options.get("tvm_tune"):
        out["tvm_tune_trials"] = ctx.options["tvm_tune"]
    return out


def gate_failures(data: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """One line per gate a timed shape misses: min_speedup, max_p99_ms, and the baseline within its tolerance."""
    out = []
    baseline = settings.get("baseline") or {}
    tolerance = float(settings.get("tolerance") or 0.0)
    for shape in data["shapes"]:
        where = f"{shape['label']} ({_dims_text(shape)})"
        speedup = shape["speedup"]
        if settings.get("min_speedup") is not None and speedup is not None and speedup < settings["min_speedup"]:
            out.append(f"{where}: speedup ×{speedup:.3g} over eager is below min_speedup {settings['min_speedup']:g}")
        if settings.get("max_p99_ms") is not None and shape["p99_ms"] > settings["max_p99_ms"]:
            out.append(f"{where}: p99 {format_ms(shape['p99_ms'])} is above max_p99_ms {settings['max_p99_ms']:g} ms")
        before = baseline.get(shape["label"])
        if before is not None and speedup is not None and speedup < before * (1 - tolerance):
            out.append(f"{where}: speedup ×{speedup:.3g} fell {100 * (1 - speedup / before):.0f}% below the baseline's "
                       f"×{before:.3g} (tolerance {100 * tolerance:g}%, --deploy-latency-tolerance)")
    return out


def gate_text(backend: str, failures: list[str], data: dict[str, Any]) -> str:
    lines = [f"latency gate: {failures[0]}", *[f"  also {f}" for f in failures[1:]]]
    for shape in data["shapes"]:
        lines.append(f"  {shape['label']} ({_dims_text(shape)}): p50 {format_ms(shape['p50_ms'])}, p90 "
                     f"{format_ms(shape['p90_ms'])}, p99 {format_ms(shape['p99_ms'])} over {shape['runs']} runs "
                     f"({shape['stopped']}); eager p50 {format_ms(shape['eager']['p50_ms'])}; speedup "
                     f"{_speedup_text(shape['speedup'])}")
    knob_text = ", ".join(f"{k} {v}" for k, v in data["knobs"].items() if v is not None)
    lines.append(f"  {backend}'s knobs: {knob_text}")
    lines.append("  fix: speed the artifact up (threads, providers, opt level, tuning), or relax the gate in latency=")
    return "\n".join(lines)


def _dims_text(shape: dict[str, Any]) -> str:
    if shape.get("dims"):
        return ", ".join(f"{k}={v}" for k, v in sorted(shape["dims"].items()))
    return "shapes " + " ".join("x".join(map(str, s)) if isinstance(s, list) else str(s) for s in shape["shapes"])


def format_ms(value: float | None) -> str:
    """``1.8 ms``, ``240 µs``, ``12 s``: three significant digits at most."""
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value / 1000:.3g} s"
    if value >= 1:
        return f"{value:.3g} ms"
    return f"{value * 1000:.3g} µs"


def _speedup_text(speedup: float | None) -> str:
    return "-" if speedup is None else f"×{speedup:.2g}" if speedup < 10 else f"×{speedup:.0f}"


def cell_text(latency: dict[str, Any] | None) -> str:
    """The summary table's compact latency figure: ``1.8 ms ×2.4`` (p50 of the canonical example, speedup)."""
    if not latency or "p50_ms" not in latency:
        return ""
    return f"{format_ms(latency['p50_ms'])} {_speedup_text(latency.get('speedup'))}"


def facts_text(latency: dict[str, Any] | None) -> str:
    """One line per report card: each timed shape's p50/p99, eager's p50, the speedup; the threads."""
    if not latency or not latency.get("shapes"):
        return (latency or {}).get("skipped", "")
    parts = [f"{s['label']} ({_dims_text(s)}): p50 {format_ms(s['p50_ms'])}, p90 {format_ms(s['p90_ms'])}, p99 "
             f"{format_ms(s['p99_ms'])}, {s['runs']} runs ({s['stopped']}); eager p50 {format_ms(s['eager']['p50_ms'])}; "
             f"speedup {_speedup_text(s['speedup'])}" for s in latency["shapes"]]
    threads = (latency.get("threads") or {}).get("torch")
    return "; ".join(parts) + (f"; {threads} thread(s)" if threads else "")


def rows(results) -> list[tuple[Any, dict[str, Any]]]:
    """(result, timed shape) for every shape every result timed."""
    return [(r, s) for r in results for s in ((getattr(r, "latency", None) or {}).get("shapes") or [])]


def markdown_lines(results, names: Mapping[str, str], md: Callable[[str], str]) -> list[str]:
    """The Markdown summary's latency table: one row per check and timed shape (empty without latency figures)."""
    found = rows(results)
    if not found:
        return []
    out = ["", "### Latency", "",
           "| model test | backend | shape | p50 | p90 | p99 | mean | stdev | runs | eager p50 | speedup | threads |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r, s in found:
        out.append(f"| `{md(names.get(r.test, r.test))}` | {r.backend} | {s['label']} ({md(_dims_text(s))}) | "
                   f"{format_ms(s['p50_ms'])} | {format_ms(s['p90_ms'])} | {format_ms(s['p99_ms'])} | "
                   f"{format_ms(s['mean_ms'])} | {format_ms(s['stdev_ms'])} | {s['runs']} | "
                   f"{format_ms(s['eager']['p50_ms'])} | {_speedup_text(s['speedup'])} | "
                   f"{(r.latency.get('threads') or {}).get('torch', '-')} |")
    library = next((r.latency.get("statistics") for r, _ in found if r.latency.get("statistics")), None)
    if library:
        out += ["", f"Eager and artifact interleaved in one process; statistics: {md(library)}."]
    return out


# ------------------------------------------------------------------------------------- baselines


BASELINE_KIND = "pytest-deploy latency baseline"


def baseline_dict(results) -> dict[str, Any]:
    """A baseline file's content from results with latency figures: per check (``test::backend``), each timed
    shape's speedup over eager, with p50 for reference."""
    entries: dict[str, Any] = {}
    for r in results:
        latency = getattr(r, "latency", None)
        if not latency or not latency.get("shapes"):
            continue
        entries[f"{r.test}::{r.backend}"] = {
            "speedup": {s["label"]: s["speedup"] for s in latency["shapes"] if s.get("speedup") is not None},
            "p50_ms": {s["label"]: s["p50_ms"] for s in latency["shapes"]}}
    return {"kind": BASELINE_KIND, "version": 1, "entries": entries}


def write_baseline(path: str, results) -> None:
    """Written atomically (a temporary file, then renamed): a reader never sees half a baseline."""
    import json

    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(baseline_dict(results), indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def read_baseline(path: str, where: str) -> dict[str, dict[str, float]]:
    """``test::backend`` -> {shape label: speedup}; a missing or malformed file raises :class:`SpecError`."""
    import json

    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise SpecError(f"{where}={path}: no such file; write one first with --deploy-latency-save={path}") from None
    except (OSError, ValueError) as exc:
        raise SpecError(f"{where}={path}: cannot be read as JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("kind") != BASELINE_KIND or not isinstance(data.get("entries"), dict):
        raise SpecError(f"{where}={path}: not a latency baseline (written by --deploy-latency-save or "
                        "'pytest-deploy merge --latency-save')")
    out = {}
    for key, entry in data["entries"].items():
        speedups = entry.get("speedup") if isinstance(entry, dict) else None
        if isinstance(speedups, dict):
            out[key] = {k: float(v) for k, v in speedups.items() if isinstance(v, (int, float))}
    return out
