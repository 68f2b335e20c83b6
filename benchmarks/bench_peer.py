"""pytest-deploy side by side with pytest-torch, the closest peer, on the backends both have.

    python benchmarks/bench_peer.py [--repeat N] [--peer-site DIR] [--quick]

pytest-torch (PyPI ``pytest-torch``, https://github.com/AKJ7/pytest-torch) is a general pytest plugin for
PyTorch models; its deployment-parity helpers (``assert_torchscript_parity``, ``assert_export_parity``,
``assert_onnx_parity``, also for torch.compile, AOTInductor and autocast) compare a converted model with
eager. Both tools cover TorchScript trace, torch.export and ONNX Runtime, so the workload's three models
(``benchmarks/workload/models.py``) are checked on those three backends with 20 examples each:

(1) pytest-deploy: ``benchmarks/workload/test_workload.py`` with ``--deploy-backends=trace,export,onnx``,
    a fresh ``--deploy-cache-dir`` and ``-p no:pytest_torch``;
(2) pytest-torch, 20 examples: ``benchmarks/peer/test_pytest_torch.py -k examples`` with ``-p no:deploy``:
    the loop over the 20 inputs written in pytest-torch's idiom (its helpers build the trace and the ONNX
    file from the input they are given, so those two are built once per input; export once for all 20);
(3) pytest-torch, ``ModelSuite`` (one input per check), for reference: what its documentation shows first.

Each run is a fresh ``python -m pytest`` process with ``-p no:cacheprovider``, in its own copy of the files
in a temporary directory; the time is the wall time of the whole subprocess. The order of (1)-(3) rotates
from one repeat to the next. Every run must pass.

pytest-torch is not a dependency of this project: ``pip install --no-deps -r requirements-bench.txt`` (its
own dependencies, pytest and torch, onnx, onnxruntime and onnxscript for the ONNX helper, are already
installed by requirements-dev.txt; --no-deps keeps pip away from the pinned torch). Installed into the
development venv, its plugin loads in every pytest run there, the test suite's included (autouse
fixtures, a header line, per-worker thread settings under xdist); to keep it out, install it into a
directory of its own and name that directory here:
``pip install --no-deps --target /tmp/peer-site -r requirements-bench.txt`` then ``--peer-site /tmp/peer-site``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchutil import BENCH, Run, bench_env, copy_workload, fmt_seconds, fresh_dir, machine, stats, timed, warm_up

MODELS = ("cnn", "transformer", "mlp")
HEAVY = ("torch", "onnx", "onnxruntime", "onnxsim", "onnxscript", "hypothesis", "pytest")

NOTE = """\
What each run checks (same models, same input dims, same example count N):

- pytest-deploy, per model x backend: ONE artifact built from the canonical input with the dims declared
  dynamic (trace: torch.jit.trace; export and onnx: torch.export with a Dim per varying dim), written to
  disk and loaded back (jit.save/load, torch.export.save/load, the .onnx file), then run on N inputs of
  varying dims (N-1 hypothesis-drawn recipes: uniform, extremes, zeros, low/high, sparse, mirrored values)
  and compared with eager. On top: eager checked deterministic first; every eager run recorded for
  data-dependent decisions (branch analysis; trace's frozen branches are found and judged); onnx also runs
  onnx.checker (full check), checks that no declared-dynamic dim was fixed in the graph, simplifies with
  onnxsim and runs ONNX Runtime on both the raw and the simplified graph; failures are shrunk and point at
  the user's line; a summary table.
- pytest-torch (N examples): trace and ONNX are rebuilt for every input and each artifact is checked
  on the input it was built from only, so it is never asked to generalise across dims (a trace that froze
  the batch size passes); export is one program with dynamic_shapes checked on all N inputs. No
  save/load round trip (the traced module and the exported program stay in memory; the ONNX file is
  written and loaded by ONNX Runtime), no onnx.checker, no simplification, no branch analysis, inputs
  uniform in [-1, 1] from its seeded make_tensor, nothing to shrink.
- pytest-torch ModelSuite: the same helpers on one input each (export: that input and a half batch)."""


def count_passed(run: Run) -> int | None:
    m = re.findall(r"(\d+) passed", run.log.read_text(errors="replace"))
    return int(m[-1]) if m else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--repeat", type=int, default=1, help="repeats of (1)-(3); medians are reported (default 1)")
    parser.add_argument("--peer-site", default=None,
                        help="a directory holding pytest-torch (pip install --target DIR), put on PYTHONPATH for "
                             "the pytest-torch runs; default: pytest-torch is installed in this Python")
    parser.add_argument("--examples", type=int, default=20, help="examples per check (default 20)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of cnn,transformer,mlp")
    parser.add_argument("--no-suite", action="store_true", help="skip (3), the ModelSuite run")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before a run is killed (default 3600)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 3 examples, the MLP only")
    args = parser.parse_args()
    if args.quick:
        args.examples, args.models = 3, "mlp"
    models = [m for m in args.models.split(",") if m]
    if set(models) - set(MODELS):
        parser.error(f"unknown model(s): {', '.join(sorted(set(models) - set(MODELS)))}")
    python = sys.executable

    env = bench_env(WORKLOAD_EXAMPLES=str(args.examples))
    peer_env = dict(env)
    if args.peer_site:
        site = str(Path(args.peer_site).resolve())
        peer_env["PYTHONPATH"] = os.pathsep.join(p for p in (site, env.get("PYTHONPATH")) if p)
        sys.path.insert(0, site)  # so that the version line finds it
    probe = subprocess.run([python, "-c", "import pytest_torch"], env=peer_env, capture_output=True, text=True)
    if probe.returncode:
        sys.exit("pytest-torch is not importable: pip install --no-deps -r requirements-bench.txt, or install it with "
                 "--target DIR and pass --peer-site DIR\n" + probe.stderr.strip().splitlines()[-1])

    tmp = Path(tempfile.mkdtemp(prefix="bench-peer-"))
    logs = tmp / "logs"
    deploy_dir = copy_workload(tmp / "deploy")
    peer_dir = copy_workload(tmp / "peer", files=("models.py",))
    shutil.copy2(BENCH / "peer" / "test_pytest_torch.py", peer_dir / "test_pytest_torch.py")
    which = " or ".join(models)
    base = [python, "-m", "pytest", "-p", "no:cacheprovider"]

    def deploy_cmd() -> list[str]:
        cache = fresh_dir(tmp, "cache-")
        return [*base, str(deploy_dir), "-p", "no:pytest_torch", f"--deploy-cache-dir={cache}",
                "--deploy-backends=trace,export,onnx", "-k", which]

    variants = {
        "deploy": ("pytest-deploy", deploy_cmd, deploy_dir, env),
        "examples": (f"pytest-torch, {args.examples} examples",
                     lambda: [*base, str(peer_dir), "-p", "no:deploy", "-k", f"examples and ({which})"],
                     peer_dir, peer_env),
    }
    if not args.no_suite:
        variants["suite"] = ("pytest-torch, ModelSuite (1 example)",
                             lambda: [*base, str(peer_dir), "-p", "no:deploy", "-k", f"TestSuite and ({which})"],
                             peer_dir, peer_env)

    print("## pytest-deploy vs pytest-torch: trace, export, onnx\n")
    for line in machine(extra=("pytest-torch", "onnx", "onnxruntime", "onnxsim")):
        print(f"- {line}")
    print(f"- workload: {', '.join(models)} x trace, export, onnx; {args.examples} examples per check; "
          f"{args.repeat} repeat(s)")
    print(flush=True)

    warm_up(python, HEAVY)
    for key, (_, cmd, cwd, e) in variants.items():  # bytecode and assertion rewrites, outside the timings
        timed(f"collect {key}", [*cmd(), "--collect-only", "-q"], cwd=cwd, logdir=logs, env=e)

    runs: dict[str, list[Run]] = {k: [] for k in variants}
    keys = list(variants)
    for i in range(args.repeat):
        for key in keys[i % len(keys):] + keys[:i % len(keys)]:
            label, cmd, cwd, e = variants[key]
            runs[key].append(timed(label, cmd(), cwd=cwd, logdir=logs, env=e, timeout=args.timeout))
        print(f"repeat {i + 1}/{args.repeat}: " + ", ".join(
            f"{k} {r[-1].seconds:.1f}s{'' if r[-1].ok else ' FAILED'}" for k, r in runs.items()), file=sys.stderr,
            flush=True)

    want = len(models) * 3
    failed = False
    for rs in runs.values():
        for r in rs:
            if not r.ok or count_passed(r) != want:
                failed = True
                print(f"\n**{r.label} FAILED** (exit {r.returncode}, {count_passed(r)} passed, expected {want}); "
                      f"log {r.log}:\n```\n{r.tail()}\n```", file=sys.stderr)

    deploy = stats([r.seconds for r in runs["deploy"]])[0]
    print("| run | checks | wall s | pytest-deploy / this (above 1: pytest-deploy slower) |")
    print("| --- | ---: | ---: | ---: |")
    for key, rs in runs.items():
        seconds = stats([r.seconds for r in rs])[0]
        ok = "" if all(r.ok for r in rs) else " FAILED"
        print(f"| {variants[key][0]}{ok} | {want} | {fmt_seconds([r.seconds for r in rs])} | "
              f"{'-' if key == 'deploy' else f'{deploy / seconds:.2f}x'} |")
    print(f"\nWall time of the whole `python -m pytest` subprocess (start-up, imports, collection, reports), "
          f"{'median (min-max) of ' + str(args.repeat) + ' runs' if args.repeat > 1 else 'one run each'}, "
          "-p no:cacheprovider, the other tool's plugin disabled with -p no:...\n")
    print(NOTE.replace("count N", f"count N = {args.examples}"))
    if args.keep:
        print(f"\nLogs: {logs}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
