"""Wall time of the Hugging Face corpus (tests/hf), per backend.

One pytest session per backend (``--deploy-backends=B``), every architecture (``PYTEST_DEPLOY_HF=all``), no
cache, run one after the other: the wall time of the whole session (pytest's start-up, importing torch and
transformers, building the models included), and from its JSON report the time the checks themselves
recorded (build, load, run) and their outcomes.

    python benchmarks/bench_hf_corpus.py [--backends trace,export] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchutil import cpu_summary

ROOT = Path(__file__).resolve().parent.parent


def run(backend: str, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pytest", "tests/hf", f"--deploy-backends={backend}", "--deploy-no-cache",
               f"--deploy-report={report}", "-q", "-p", "no:cacheprovider"]
        if workers > 1:
            cmd += ["-n", str(workers)]
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTEST_DEPLOY_HF": "all"}, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
        wall = time.perf_counter() - start
        results = [r for r in json.loads(report.read_text())["results"] if r["outcome"] != "skipped"]
    recorded = sum(sum((r.get("timings") or {}).values()) for r in results)
    return {"backend": backend, "wall": wall, "checks": len(results), "recorded": recorded,
            "outcomes": Counter(r["outcome"] for r in results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="trace,script,export,onnx,tvm")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    print(cpu_summary())
    print("| backend | checks | wall s | per check s | recorded build+load+run s | outcomes |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for backend in args.backends.split(","):
        row = run(backend, args.workers)
        outcomes = ", ".join(f"{n} {k}" for k, n in sorted(row["outcomes"].items()))
        print(f"| {backend} | {row['checks']} | {row['wall']:.1f} | {row['wall'] / max(1, row['checks']):.2f} | "
              f"{row['recorded']:.1f} | {outcomes} |", flush=True)


if __name__ == "__main__":
    main()
