"""Whole-run overhead of pytest-deploy on a fixed workload, against a hand-written script doing the same work.

    python benchmarks/bench_overhead.py [--repeat N] [--workers 2] [--threads N] [--quick] [--pytest-args "..."]

The workload (``benchmarks/workload/``): a CNN (batch 1-8 of 3x32x32), a 2-layer transformer encoder
(batch 1-8, seq 2-16, d_model 32) and an MLP (batch 1-8 of 64 features), each against trace, script,
export, onnx and tvm with 20 examples: 15 checks. Each repeat runs, each as its own fresh process:

(a) ``benchmarks/handwritten.py``: the same exports, saves, loads, compiles, runs and comparisons written by hand;
(b) ``pytest <workload> -p no:cacheprovider --deploy-cache-dir=<fresh empty dir>``: cold;
(c) the same command again with the same cache dir: warm (what a second CI run or a local rerun sees);
(d) (b) with ``-n WORKERS`` (pytest-xdist) and another fresh cache dir, against (b): skipped with --workers 0.

The time is the wall time of the whole subprocess, start to exit: interpreter start-up, imports (torch,
onnx, onnxruntime, onnxsim, tvm; pytest and hypothesis for the plugin), collection, every check and the
reports. The workload is copied to a temporary directory first, so pytest runs there as in a user's
project (rootdir = that directory; no ini file or conftest of this repository). Before timing, the heavy
libraries are imported once so that no timed run pays for reading them from disk. Targets (issue):
cold <= 1.10x the hand-written script; warm <= 0.15x cold. xdist is reported, with no target.

Every run must pass (exit 0, 15 passed; 5 with --quick) or the table says FAILED and the log's tail is
printed. Exits 1 when a run failed or a target was missed. Run by hand on a quiet machine; nothing here
is timed inside the test suite.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchutil import BENCH, Run, bench_env, copy_workload, fmt_seconds, fresh_dir, machine, stats, timed, warm_up

COLD_TARGET = 1.10
WARM_TARGET = 0.15
BACKENDS = ("trace", "script", "export", "onnx", "tvm")
HEAVY = ("torch", "onnx", "onnxruntime", "onnxsim", "onnxscript", "tvm", "hypothesis", "pytest")


def count_passed(run: Run) -> int | None:
    text = run.log.read_text(errors="replace")
    m = re.findall(r"(\d+) passed", text)
    return int(m[-1]) if m else None


def cached_count(report: Path) -> str:
    """How many checks took their artifact (or their result) from the cache, from the JSON report."""
    try:
        data = json.loads(report.read_text())
    except (OSError, ValueError):
        return "?"
    results = data.get("results", [])
    return f"{sum(1 for r in results if r.get('cached'))}/{len(results)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--repeat", type=int, default=1, help="repeats of (a)-(d); medians are reported (default 1)")
    parser.add_argument("--workers", type=int, default=None,
                        help="xdist workers for (d); 0 skips it (default 2; 0 with --quick)")
    parser.add_argument("--threads", type=int, default=None,
                        help="set OMP_NUM_THREADS/MKL_NUM_THREADS for every run (default: leave torch's default)")
    parser.add_argument("--examples", type=int, default=20, help="examples per check (default 20)")
    parser.add_argument("--models", default="cnn,transformer,mlp", help="comma-separated subset of the workload")
    parser.add_argument("--pytest-args", default="", help="extra arguments for every pytest run, e.g. "
                        "'--deploy-isolate=none' (one shell-quoted string)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before a run is killed (default 1800)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, caches, reports)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 3 examples, the MLP only, no xdist unless --workers is given")
    args = parser.parse_args()
    if args.quick:
        args.examples, args.models = 3, "mlp"
    if args.workers is None:
        args.workers = 0 if args.quick else 2
    models = [m for m in args.models.split(",") if m]
    checks = len(models) * len(BACKENDS)
    python = sys.executable

    env = bench_env(WORKLOAD_EXAMPLES=str(args.examples))
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    tmp = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    logs = tmp / "logs"
    workload = copy_workload(tmp / "workload")
    select = ["-k", " or ".join(f"test_{m}" for m in models)] if len(models) < 3 else []
    extra = shlex.split(args.pytest_args)

    def pytest(cache: Path, report: Path, *more: str) -> list[str]:
        return [python, "-m", "pytest", str(workload), "-p", "no:cacheprovider", f"--deploy-cache-dir={cache}",
                f"--deploy-report={report}", *select, *more, *extra]

    handwritten = [python, str(BENCH / "handwritten.py"), "--examples", str(args.examples),
                   "--models", ",".join(models)]

    print("## pytest-deploy overhead: the workload vs a hand-written script\n")
    for line in machine(extra=("onnx", "onnxruntime", "onnxsim", "apache-tvm", "pytest-xdist")):
        print(f"- {line}")
    print(f"- workload: {', '.join(models)} x {', '.join(BACKENDS)}; {args.examples} examples per check; "
          f"{checks} checks; {args.repeat} repeat(s)" + (f"; extra pytest args: {args.pytest_args}" if extra else ""))
    print(flush=True)

    warm_up(python, HEAVY)
    # compile the workload's bytecode and assertion rewrites once, outside the timings
    timed("collect", [python, "-m", "pytest", str(workload), "-p", "no:cacheprovider", "--collect-only", "-q"],
          cwd=workload, logdir=logs, env=env)

    runs: dict[str, list[Run]] = {"hand": [], "cold": [], "warm": [], "xdist": []}
    cached: dict[str, list[str]] = {"cold": [], "warm": [], "xdist": []}
    for i in range(args.repeat):
        runs["hand"].append(timed("handwritten", handwritten, cwd=tmp, logdir=logs, env=env, timeout=args.timeout))
        cache = fresh_dir(tmp, "cache-")
        for kind in ("cold", "warm"):
            report = tmp / f"report-{kind}-{i}.json"
            runs[kind].append(timed(f"pytest {kind}", pytest(cache, report), cwd=workload, logdir=logs, env=env,
                                    timeout=args.timeout))
            cached[kind].append(cached_count(report))
        if args.workers:
            report = tmp / f"report-xdist-{i}.json"
            cmd = pytest(fresh_dir(tmp, "cache-"), report, "-n", str(args.workers))
            runs["xdist"].append(timed("pytest xdist", cmd, cwd=workload, logdir=logs, env=env, timeout=args.timeout))
            cached["xdist"].append(cached_count(report))
        done = ", ".join(f"{k} {r[-1].seconds:.1f}s{'' if r[-1].ok else ' FAILED'}" for k, r in runs.items() if r)
        print(f"repeat {i + 1}/{args.repeat}: {done}", file=sys.stderr, flush=True)

    failed = False
    for kind, rs in runs.items():
        for r in rs:
            want = None if kind == "hand" else checks
            if not r.ok or (want is not None and count_passed(r) != want):
                failed = True
                print(f"\n**{r.label} FAILED** (exit {r.returncode}, {count_passed(r)} passed, expected {want}); "
                      f"log {r.log}:\n```\n{r.tail()}\n```", file=sys.stderr)

    def med(kind: str) -> float | None:
        rs = runs[kind]
        return stats([r.seconds for r in rs])[0] if rs else None

    def status(kind: str) -> str:
        return "" if all(r.ok for r in runs[kind]) else " FAILED"

    hand, cold, warm, xdist = med("hand"), med("cold"), med("warm"), med("xdist")
    cold_ratio, warm_ratio = cold / hand, warm / cold
    missed = cold_ratio > COLD_TARGET or warm_ratio > WARM_TARGET
    secs = {k: fmt_seconds([r.seconds for r in rs]) for k, rs in runs.items()}
    print("| run | wall s | cached (report) | compared with | ratio | target | met |")
    print("| --- | ---: | ---: | --- | ---: | --- | --- |")
    print(f"| (a) hand-written script{status('hand')} | {secs['hand']} | - | | | | |")
    print(f"| (b) pytest-deploy, cold (fresh cache){status('cold')} | {secs['cold']} | {', '.join(cached['cold'])} "
          f"| (a) | {cold_ratio:.2f}x | <= {COLD_TARGET:.2f}x | {'yes' if cold_ratio <= COLD_TARGET else '**no**'} |")
    print(f"| (c) pytest-deploy, warm (same cache){status('warm')} | {secs['warm']} | {', '.join(cached['warm'])} "
          f"| (b) | {warm_ratio:.2f}x | <= {WARM_TARGET:.2f}x | {'yes' if warm_ratio <= WARM_TARGET else '**no**'} |")
    if xdist is not None:
        print(f"| (d) pytest-deploy -n {args.workers}, cold{status('xdist')} | {secs['xdist']} | "
              f"{', '.join(cached['xdist'])} | (b) | {xdist / cold:.2f}x | (reported) | |")
    print(f"\nWall time of the whole subprocess (start-up and imports included), "
          f"{'median (min-max) of ' + str(args.repeat) + ' runs' if args.repeat > 1 else 'one run each'}; "
          f"cold/warm = a fresh/the same --deploy-cache-dir; 'cached' counts the checks whose report says cached.")
    print(f"Logs: {logs}" if args.keep else "")
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed or missed else 0


if __name__ == "__main__":
    sys.exit(main())
