"""Compile times of the native backends here, cold and from the artifact cache.

    python benchmarks/bench_compile.py [--no-tuning]

For AOTInductor, "cold" also gives inductor a fresh cache directory of its own (TORCHINDUCTOR_CACHE_DIR),
so nothing compiled earlier on this machine helps. For TVM: an untuned compile, a MetaSchedule tuning
run with 4 trials (static-shape MLP), and the same tuned check with the database from the cache.
Each row is one `pytest_deploy.verify` call with 4 examples; "build" is the export + compile time the
check records, "total" the wall time of the call. "artifact from cache" rows rerun the check
(``recheck=True``) with the built artifact from the cache; the "result reused" row is a plain rerun,
answered by the result cache without building or running anything. Run by hand; nothing is timed
inside the tests.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")  # before torch is imported

import torch

from examples.models import SmallCNN
from pytest_deploy import tensor, verify


def cnn():
    torch.manual_seed(0)  # the same weights each call: the same program, so the second call can hit the cache
    return SmallCNN().eval()


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()


def timed(label, model, backend, cache, recheck=True, **spec):
    start = time.perf_counter()
    result = verify(model, backend, cache_dir=cache, examples=4, recheck=recheck, **spec)
    total = time.perf_counter() - start
    build = "-" if "reused" in result.details else f"{result.timings['build']:.2f}"
    print(f"| {label} | {result.outcome} | {'yes' if result.cached else 'no'} | {build} | {total:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-tuning", action="store_true", help="skip the MetaSchedule rows (about 80 s here)")
    args = parser.parse_args()
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"- {cpu}; {os.cpu_count()} cores; torch {torch.__version__}; Python {platform.python_version()}\n")
    print("| check | outcome | from cache | build s | total s |")
    print("| --- | --- | --- | ---: | ---: |")
    cache = tempfile.mkdtemp(prefix="deploy-cache-")
    batch = dict(inputs=[tensor("batch", 16)], dims={"batch": (1, 8)})
    timed("aoti MLP, cold", mlp(), "aoti", cache, **batch)
    timed("aoti MLP, artifact from cache", mlp(), "aoti", cache, **batch)
    image = dict(inputs=[tensor("batch", 3, 32, 32)], dims={"batch": (1, 8)})
    timed("aoti SmallCNN, cold", cnn(), "aoti", cache, **image)
    timed("aoti SmallCNN, artifact from cache", cnn(), "aoti", cache, **image)
    timed("tvm SmallCNN, untuned compile", cnn(), "tvm", cache, **image)
    timed("tvm SmallCNN, untuned, artifact from cache", cnn(), "tvm", cache, **image)
    timed("tvm SmallCNN, untuned, result reused", cnn(), "tvm", cache, recheck=False, **image)
    if not args.no_tuning:
        static = dict(inputs=[tensor(2, 16)], backend_options={"tvm_tune": 4})
        timed("tvm MLP, tuned (4 trials), cold", mlp(), "tvm", cache, **static)
        timed("tvm MLP, tuned, database from cache", mlp(), "tvm", cache, **static)


if __name__ == "__main__":
    main()
