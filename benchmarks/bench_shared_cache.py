"""Two CI runners sharing one bucket: what the second one saves.

    python benchmarks/bench_shared_cache.py [--backends trace,script,export,tvm,aoti] [--examples 5]

An S3-protocol server (moto's standalone server) is started on 127.0.0.1 with one empty bucket. The workload
(``benchmarks/workload/``: a CNN, a 2-layer transformer encoder and an MLP) is copied into two directories, two
"runners", each with its own pytest cache (the local read-through copy). Each run is a fresh pytest process
with ``--deploy-cache-dir=s3://bench/shared``; the wall time is the whole process:

1. runner 1, cold: an empty bucket; every artifact is built and every result stored;
2. runner 2, warm: another directory, an empty local cache; every result comes from the bucket;
3. runner 2 again with ``--deploy-recheck``: every check runs, its artifacts (AOTInductor packages, TVM
   libraries, TorchScript archives, exported programs) come from the bucket, verified by hash;
4. a third runner with no shared cache at all (``--deploy-no-cache``), for comparison with 1.

Run by hand on a quiet machine; nothing here is timed inside the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchutil import bench_env, copy_workload, machine, timed


def start_s3() -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(150):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("moto's S3 server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="trace,script,export,tvm,aoti")
    parser.add_argument("--examples", type=int, default=5)
    args = parser.parse_args()
    proc, port = start_s3()
    env = bench_env(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                    AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    try:
        import s3fs

        os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                               "AWS_ENDPOINT_URL")})
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir("bench")
        with tempfile.TemporaryDirectory(prefix="bench-shared-") as tmp:
            base = Path(tmp)
            logs = base / "logs"
            common = [f"--deploy-backends={args.backends}", f"--deploy-examples={args.examples}", "-q",
                      "--deploy-report=report.json"]
            shared = "--deploy-cache-dir=s3://bench/shared"
            plan = [("runner 1, cold (empty bucket)", "runner1", [shared]),
                    ("runner 2, warm (results from the bucket)", "runner2", [shared]),
                    ("runner 2, --deploy-recheck (artifacts from the bucket)", "runner2", [shared, "--deploy-recheck"]),
                    ("runner 3, no cache", "runner3", ["--deploy-no-cache"])]
            rows = []
            for label, name, extra in plan:
                root = copy_workload(base / name)
                run = timed(label, [sys.executable, "-m", "pytest", *common, *extra], cwd=root, logdir=logs, env=env)
                report = json.loads((root / "report.json").read_text())["results"] if run.ok else []
                cached = sum(bool(r["cached"]) for r in report)
                rows.append((label, run, len(report), cached))
                if not run.ok:
                    print(f"{label} FAILED:\n{run.tail()}", file=sys.stderr)
            objects = fs.find("bench/shared")
            size = sum(fs.info(o)["size"] for o in objects)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    print("\n".join(machine()))
    print(f"backends {args.backends}; {args.examples} examples per check; bucket after the runs: "
          f"{len(objects)} objects, {size / 2**20:.1f} MiB\n")
    cold = rows[0][1].seconds
    print("| run | wall s | vs runner 1 cold | checks | cached (result or artifact) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, run, checks, cached in rows:
        print(f"| {label} | {run.seconds:.1f} | {run.seconds / cold:.2f}x | {checks} | {cached} |")


if __name__ == "__main__":
    main()
