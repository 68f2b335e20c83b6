"""--deploy-tvm-tune: does MetaSchedule's tuning pay, and is it paid once? (issue 27 item 4)

    python benchmarks/bench_tvm_tune.py [--trials 64] [--sizes 256,1024] [--batch 32]

For each size, a matmul-heavy model (an MLP of Linear(size, size) layers at a fixed batch: static shapes, which
MetaSchedule tunes) is checked against tvm in a fresh pytest process with ``--deploy-tvm-tune=TRIALS
--deploy-latency``: the check tunes (MetaSchedule's evolutionary search), compiles with the tuning database, and
times the tuned module beside the same module compiled without it (``latency.variants.untuned``). Then a second
process with the same artifact cache (``--deploy-recheck``: the check runs again) must find the database in the
cache. Prints, per size, the tuned and untuned p50, their ratio, the tuning (build) time and the second run's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchutil import ROOT, bench_env, machine, timed

TEST_FILE = '''
import torch
from torch import nn

from pytest_deploy import deployable, tensor

BATCH = {batch}


def mlp(width, layers):
    torch.manual_seed(0)
    parts = []
    for _ in range(layers):
        parts += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*parts[:-1]).eval()

{tests}
'''

TEST = '''
@deployable(backends=["tvm"], inputs=[tensor(BATCH, {size})], examples=2)
def test_mlp_{size}():
    return mlp({size}, {layers})
'''


def run(label: str, workdir: Path, cache: Path, trials: int, *extra: str) -> tuple[float, dict[str, dict]]:
    report = workdir / f"{label}.json"
    command = [sys.executable, "-m", "pytest", str(workdir / "test_tune_models.py"), "-q", "-p", "no:cacheprovider",
               "--deploy-backends=tvm", f"--deploy-tvm-tune={trials}", "--deploy-latency",
               f"--deploy-cache-dir={cache}", f"--deploy-report={report}", *extra]
    result = timed(label, command, cwd=workdir, logdir=workdir / "logs", env=bench_env(PYTHONPATH=str(ROOT)))
    if not report.exists():
        sys.exit(f"{label}: no report; the log's tail:\n{result.tail()}")
    results = json.loads(report.read_text())["results"]
    return result.seconds, {r["test"].split("::")[-1]: r for r in results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=64, help="--deploy-tvm-tune's trial budget (default 64)")
    parser.add_argument("--sizes", default="256,1024", help="the MLPs' widths (default 256,1024)")
    parser.add_argument("--layers", type=int, default=3, help="Linear layers per MLP (default 3)")
    parser.add_argument("--batch", type=int, default=32, help="the fixed batch (default 32)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="bench-tvm-tune-"))
    tests = "".join(TEST.format(size=size, layers=args.layers) for size in sizes)
    (workdir / "test_tune_models.py").write_text(TEST_FILE.format(batch=args.batch, tests=tests))
    cache = workdir / "cache"
    for line in machine(("apache-tvm", "xgboost")):
        print(f"- {line}")
    print(f"- model: {args.layers} x Linear(size, size) with ReLU between, batch {args.batch}; "
          f"--deploy-tvm-tune={args.trials} --deploy-latency")

    first_wall, first = run("tune", workdir, cache, args.trials)
    second_wall, second = run("reuse", workdir, cache, args.trials, "--deploy-recheck")
    print(f"\nfirst run (tunes) {first_wall:.0f} s wall; second run (same cache) {second_wall:.0f} s wall\n")
    print("| model | trials | search | tuned p50 ms | untuned p50 ms | untuned / tuned | eager p50 ms | threads "
          "| first run: build s | second run: database | second run: build s |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for size in sizes:
        name = f"test_mlp_{size}"
        a, b = first.get(name), second.get(name)
        if a is None or a["outcome"] != "passed" or not a.get("latency"):
            print(f"| {name} | {args.trials} | {a and a['outcome']}: {a and (a.get('message') or '')[:200]} |")
            continue
        lat = a["latency"]
        tuned = lat["shapes"][0]["p50_ms"]
        eager = lat["shapes"][0].get("eager", {}).get("p50_ms", float("nan"))
        untuned = lat.get("variants", {}).get("untuned", {}).get("canonical", {}).get("p50_ms")
        note = a["details"].get("tvm_tuning", "")
        search = note.split("trials (", 1)[-1].rsplit(")", 1)[0]  # "tuned 3 task(s) with 64 trials (...); ..."
        reused = b and b["details"].get("tvm_tuning", "-")
        threads = lat.get("knobs", {}).get("threads", "-")
        ratio = f"{untuned / tuned:.2f}" if untuned else "-"
        print(f"| MLP {size} | {args.trials} | {search} | {tuned:.3f} | {untuned if untuned is None else round(untuned, 3)} "
              f"| {ratio} | {eager:.3f} | {threads} | {a['timings'].get('build', 0):.0f} | {reused} "
              f"| {b['timings'].get('build', 0) if b else 0:.1f} |")


if __name__ == "__main__":
    main()
