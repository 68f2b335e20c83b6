"""--deploy-latency: its cost per backend, and how stable its speedups are from run to run (issue 27).

    python benchmarks/bench_latency.py --repeat 5

Runs the examples' small CNN and small transformer (``examples/test_examples.py``) against trace, script, export,
aoti, onnx and tvm, ``--repeat`` times with ``--deploy-latency``, each run a fresh pytest process sharing one artifact
cache (so only the first run compiles), plus one run without it (``--deploy-recheck``: the checks run, the
artifacts come from the cache). Prints Markdown tables:

- per check and timed shape: the speedup over eager in each run, its median, and the spread ((max - min) / median);
  the p50 of the artifact;
- per backend: the time the timing itself took (``timings.latency``, mean over the runs and checks) and the whole
  run's wall time with and without --deploy-latency.

The spread is what --deploy-latency-tolerance must sit above for an unchanged model never to fail its baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = "trace,script,export,aoti,onnx,tvm"


def pytest_run(out: Path, cache: Path, *extra: str) -> tuple[float, list[dict]]:
    report = out.with_suffix(".json")
    command = [sys.executable, "-m", "pytest", "examples/test_examples.py", "-k", "cnn or transformer", "-q",
               "-p", "no:cacheprovider", f"--deploy-backends={BACKENDS}", f"--deploy-cache-dir={cache}",
               f"--deploy-report={report}", *extra]
    start = time.perf_counter()
    with open(out, "w") as log:
        subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - start
    return seconds, json.loads(report.read_text())["results"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--budget", type=float, default=2.0)
    parser.add_argument("--cache", help="an artifact cache to reuse (default: a fresh one; the first run compiles)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    cache = Path(args.cache) if args.cache else work / "cache"
    pytest_run(work / "warm.log", cache)  # compile once: the timed runs below load from the cache
    walls, runs = [], []
    for i in range(args.repeat):
        seconds, results = pytest_run(work / f"run{i}.log", cache, "--deploy-latency",
                                      f"--deploy-latency-budget={args.budget}")
        walls.append(seconds)
        runs.append(results)
        print(f"run {i + 1}/{args.repeat}: {seconds:.1f} s", file=sys.stderr)
    plain, _ = pytest_run(work / "plain.log", cache, "--deploy-recheck")

    speedups: dict[tuple[str, str, str], list[float]] = {}
    p50: dict[tuple[str, str, str], list[float]] = {}
    cost: dict[str, list[float]] = {}
    for results in runs:
        for r in results:
            lat = r.get("latency")
            if not lat or not lat.get("shapes"):
                continue
            cost.setdefault(r["backend"], []).append(r["timings"].get("latency", 0.0))
            for s in lat["shapes"]:
                key = (r["test"].split("::")[-1], r["backend"], f"{s['label']} {s['dims']}")
                speedups.setdefault(key, []).append(s["speedup"])
                p50.setdefault(key, []).append(s["p50_ms"])
    print("| model test | backend | shape | speedup per run | median | spread | p50 ms (median) |")
    print("| --- | --- | --- | --- | ---: | ---: | ---: |")
    spreads = []
    for key, values in speedups.items():
        med = statistics.median(values)
        spread = (max(values) - min(values)) / med
        spreads.append(spread)
        print(f"| {key[0]} | {key[1]} | {key[2]} | {' '.join(f'{v:.2f}' for v in values)} | {med:.2f} | "
              f"{100 * spread:.0f}% | {statistics.median(p50[key]):.3f} |")
    if spreads:
        print(f"\nspread over checks: median {100 * statistics.median(spreads):.0f}%, "
              f"max {100 * max(spreads):.0f}%")
        # the worst fall below the median speedup: what a baseline taken from a median run would see
        falls = [max(0.0, 1 - min(v) / statistics.median(v)) for v in speedups.values()]
        print(f"largest fall below a check's median speedup: {100 * max(falls):.0f}%")
    print("\n| backend | timing per check, s (mean) |")
    print("| --- | ---: |")
    for backend, values in cost.items():
        print(f"| {backend} | {statistics.fmean(values):.2f} |")
    print(f"\nwhole run: {statistics.median(walls):.1f} s with --deploy-latency (median of {len(walls)}), "
          f"{plain:.1f} s without (--deploy-recheck, artifacts from the cache)")


if __name__ == "__main__":
    main()
