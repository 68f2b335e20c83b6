"""What loading pytest-deploy costs a session that has no deployable test.

    python benchmarks/bench_plugin_load.py [--repeat 15] [--tests 50] [--quick]

A temporary suite of plain tests (no ``@deployable``, no torch: ``--tests`` of them in files of 5) is
collected with ``python -m pytest --collect-only -q``, once with pytest-deploy loaded (the default: its
``pytest11`` entry point is ``deploy``) and once with ``-p no:deploy``. After two warm-up runs of each,
the two commands alternate (which one goes first alternates too) ``--repeat`` times; the time is the wall
time of the whole subprocess. Reported: median and minimum per variant and their difference in ms.
Target (issue): under 20 ms.

Then one more run of each under ``python -X importtime`` says which heavy libraries the session imported
(torch, hypothesis, numpy, onnx, tvm: the plugin must import none of them at load) and what importing
pytest_deploy itself cost. Exits 1 when the median difference is 20 ms or more, or torch got imported.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchutil import bench_env, machine

TARGET_MS = 20.0
HEAVY = ("torch", "hypothesis", "numpy", "onnx", "onnxruntime", "onnxscript", "onnxsim", "tvm", "tvm_ffi", "filelock")

TEST_FILE = '''\
import math

import pytest


def helper(x):
    return x * 2


def test_add_{i}():
    assert 1 + 1 == 2


def test_helper_{i}():
    assert helper(3) == 6


@pytest.mark.parametrize("n", [1])
def test_sqrt_{i}(n):
    assert math.isclose(math.sqrt(n * n), n)


class TestGroup{i}:
    def test_one(self):
        assert "a".upper() == "A"

    def test_two(self):
        assert sorted([3, 1]) == [1, 3]
'''


def make_suite(root: Path, tests: int) -> Path:
    files = max(1, tests // 5)
    for i in range(files):
        (root / f"test_plain_{i:02d}.py").write_text(TEST_FILE.format(i=i))
    return root


def collect(python: str, suite: Path, plugin: bool, importtime: bool = False) -> tuple[float, str]:
    cmd = [python, *(["-X", "importtime"] if importtime else []), "-m", "pytest", "--collect-only", "-q",
           "-p", "no:cacheprovider", *([] if plugin else ["-p", "no:deploy"])]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=suite, capture_output=True, text=True, env=bench_env())
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"collection failed ({' '.join(cmd)}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return elapsed, proc.stdout + proc.stderr


def imports(text: str) -> dict[str, int]:
    """Top-level package -> import time (µs) from ``-X importtime`` output: the sum of the cumulative times
    of its outermost lines (a package's submodules can be imported apart from it, e.g. an entry point
    naming ``pkg.plugin``: both count, nested ones only once)."""
    rows = [(len(m.group(2)), m.group(3), int(m.group(1)))
            for m in re.finditer(r"^import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)$", text, re.M)]
    out: dict[str, int] = {}
    for i, (indent, name, cumulative) in enumerate(rows):
        top = name.split(".")[0]
        # importtime lists children before their parent, indented deeper: the parent is the next shallower line
        parent = next((n for d, n, _ in rows[i + 1:] if d < indent), None)
        if parent is None or parent.split(".")[0] != top:
            out[top] = out.get(top, 0) + cumulative
    return out


IMPORT_PROBE = """
import json, sys, time
import pytest
before = set(sys.modules)
start = time.perf_counter()
import pytest_deploy.plugin
elapsed = time.perf_counter() - start
new = sorted(set(sys.modules) - before)
print(json.dumps({"ms": elapsed * 1e3, "modules": len(new), "heavy": sorted({m.split('.')[0] for m in new} & HEAVY)}))
"""


def plugin_import(python: str, runs: int) -> tuple[float, int, list[str]]:
    """Median time of ``import pytest_deploy.plugin`` after ``import pytest`` in fresh interpreters, the number
    of modules it adds and the heavy libraries among them."""
    results = []
    for _ in range(runs):
        code = IMPORT_PROBE.replace("HEAVY", repr(set(HEAVY)))
        proc = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True, env=bench_env())
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return statistics.median(r["ms"] for r in results), results[-1]["modules"], results[-1]["heavy"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--repeat", type=int, default=15, help="timed runs of each variant, alternating (default 15)")
    parser.add_argument("--tests", type=int, default=50, help="plain tests in the suite (default 50)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 3 runs of each")
    args = parser.parse_args()
    if args.quick:
        args.repeat = 3
    python = sys.executable

    with tempfile.TemporaryDirectory(prefix="bench-plugin-load-") as tmp:
        suite = make_suite(Path(tmp), args.tests)
        _, listing = collect(python, suite, plugin=True)
        collected = re.search(r"(\d+) tests? collected", listing)
        for _ in range(2):  # warm-up: page cache, bytecode
            collect(python, suite, True), collect(python, suite, False)
        times: dict[bool, list[float]] = {True: [], False: []}
        for i in range(args.repeat):
            for plugin in ((True, False) if i % 2 == 0 else (False, True)):
                times[plugin].append(collect(python, suite, plugin)[0])
        paired = [a - b for a, b in zip(times[True], times[False])]  # each pair ran back to back
        with_plugin = imports(collect(python, suite, True, importtime=True)[1])
        probe_ms, probe_modules, probe_heavy = plugin_import(python, max(3, args.repeat // 3))
        without = imports(collect(python, suite, False, importtime=True)[1])

    ms = 1e3
    med_on, med_off = statistics.median(times[True]) * ms, statistics.median(times[False]) * ms
    min_on, min_off = min(times[True]) * ms, min(times[False]) * ms
    diff = med_on - med_off
    print("## Plugin load: `pytest --collect-only` on a suite without deployable tests\n")
    for line in machine():
        print(f"- {line}")
    print(f"- suite: {collected.group(1) if collected else '?'} plain tests in {max(1, args.tests // 5)} files; "
          f"{args.repeat} alternating runs of each variant after 2 warm-up runs each\n")
    print("| variant | median ms | min ms |")
    print("| --- | ---: | ---: |")
    print(f"| with pytest-deploy (default) | {med_on:.1f} | {min_on:.1f} |")
    print(f"| `-p no:deploy` | {med_off:.1f} | {min_off:.1f} |")
    print(f"| **difference** | **{diff:+.1f}** | {min_on - min_off:+.1f} |")
    print(f"\nMedian of the {len(paired)} paired differences (each pair back to back): "
          f"{statistics.median(paired) * ms:+.1f} ms; spread of the runs with the plugin: "
          f"{(max(times[True]) - min(times[True])) * ms:.0f} ms (max - min).")
    met = diff < TARGET_MS
    print(f"\nTarget: under {TARGET_MS:.0f} ms (median difference): {'met' if met else '**missed**'}. "
          "Wall time of the whole `python -m pytest --collect-only -q -p no:cacheprovider` subprocess.")

    heavy_on = [m for m in HEAVY if m in with_plugin]
    heavy_off = [m for m in HEAVY if m in without]
    print(f"\n`import pytest_deploy.plugin` after `import pytest`, fresh interpreter, median of "
          f"{max(3, args.repeat // 3)}: {probe_ms:.1f} ms, {probe_modules} modules added, heavy libraries among them: "
          f"{', '.join(probe_heavy) or 'none'}")
    print("\nWhole session under `-X importtime` (pytest's assertion rewriting hides the lines of the modules it "
          "rewrites, pytest_deploy/__init__ and plugin among them, so that is not a load time):")
    print(f"- heavy libraries imported with the plugin: {', '.join(heavy_on) or 'none'}"
          + (f" (torch {with_plugin['torch'] / 1e3:.0f} ms)" if "torch" in with_plugin else ""))
    print(f"- heavy libraries imported without it: {', '.join(heavy_off) or 'none'}")
    print(f"- torch imported at plugin load: {'**yes**' if 'torch' in heavy_on else 'no'}")
    return 0 if met and "torch" not in heavy_on and "torch" not in probe_heavy else 1


if __name__ == "__main__":
    sys.exit(main())
