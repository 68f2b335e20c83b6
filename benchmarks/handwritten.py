"""The hand-written baseline: the benchmark workload's checks written out without pytest-deploy.

    python benchmarks/handwritten.py [--examples 20] [--models cnn,transformer,mlp] [--backends ...] [--quick]

What a careful engineer would write by hand to learn what pytest-deploy's workload
(``benchmarks/workload/test_workload.py``) tells them: for each model (``workload/models.py``) and
each backend, build the artifact from one input, write it to disk, load it back, run it on 20 inputs
whose dims vary within the declared bounds, and compare every output with eager PyTorch. The steps
are those of ``pytest_deploy/backends/`` (torchscript.py, export.py, onnx.py, tvm.py), in the same
order, with the same tolerances, so that ``bench_overhead.py`` compares like with like:

* trace: ``torch.jit.trace(check_trace=False, strict=False)`` → ``jit.save`` → ``jit.load``
* script: ``torch.jit.script`` → ``jit.save`` → ``jit.load``
* export: ``torch.export.export`` with a ``Dim`` per varying dim → ``torch.export.save``
  → ``torch.export.load().module()``
* onnx: ``torch.export.export`` (dims) → ``torch.onnx.export(program, dynamo=True)`` → save
  → ``onnx.checker.check_model(full_check=True)`` → ``onnxsim.simplify`` → save → ONNX Runtime sessions on
  the raw **and** the simplified graph, both compared
* tvm: ``torch.export.export`` (dims) → ``relax.frontend.torch.from_exported_program``
  → ``tvm.compile(target="llvm")`` → ``export_library`` → ``tvm.runtime.load_module`` → ``relax.VirtualMachine``

Tolerances (atol, rtol): 1e-5, 1e-4 for trace, script and export; 1e-4, 1e-3 for onnx and tvm, as
pytest-deploy's defaults. The first input is the one the artifact is built from, with each varying dim
at a size >= 2 that differs from the other sizes (what pytest-deploy calls the canonical example); the
other inputs draw each dim uniformly within its bounds and values uniformly in [-1, 1].

What pytest-deploy does on top, and this script does not (that is the overhead bench_overhead.py measures):

* pytest itself: plugin loading, collection, one item per model x backend, reporting, the summary table;
* hypothesis: drawing the 19 generated examples as recipes (dims, seed, value pattern: uniform, extremes,
  zeros, low/high, sparse, mirrored) and, on a failure, shrinking it (not triggered: everything passes);
* branch recording: every eager reference run happens inside the decision recorder (tensor-conversion
  wrappers; the line tracer only for models whose own code has if/while, none here), and for trace the
  decisions of the tracing input are recorded once more; the branch search runs only when a decision
  was recorded (none here);
* the reference sanity check: eager runs twice on the first input and must agree (nondeterminism check);
  the eager reference is computed per backend (here once per model and reused by every backend);
* diagnostics that cost only on failure (the user's source line, the aten op, the smallest passing
  tolerance), TracerWarnings capture, the ONNX graph-input check that no declared-dynamic dim was fixed,
  renaming the ONNX graph's dynamic axes to the spec's dim names, silencing exporter logs;
* the artifact and result cache (keys, lookups, writing entries), which is what makes a warm rerun fast;
* process isolation (``--deploy-isolate``, default ``native``: the onnx and tvm checks run in a worker
  process, so a crash in native code fails one check instead of the session) and per-check timeouts.

Prints one line per model x backend with its time (to stderr, so stdout stays quiet for the timer)
and exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "workload"))

BACKENDS = ("trace", "script", "export", "onnx", "tvm")
MODELS = ("cnn", "transformer", "mlp")
TOLERANCES = {"trace": (1e-5, 1e-4), "script": (1e-5, 1e-4), "export": (1e-5, 1e-4),
              "onnx": (1e-4, 1e-3), "tvm": (1e-4, 1e-3)}


# ------------------------------------------------------------------------------------------ inputs


def canonical_dims(shape, dims: dict[str, tuple[int, int]]) -> dict[str, int]:
    """Each varying dim at a size >= 2 that no other dim or static size has (exporters do not specialise)."""
    taken = {d for d in shape if isinstance(d, int)}
    out = {}
    for name, (lo, hi) in dims.items():
        size = next((v for v in range(max(lo, 2), hi + 1) if v not in taken), max(lo, min(hi, 2)))
        out[name] = size
        taken.add(size)
    return out


def make_examples(name: str, count: int, seed: int):
    """``count`` input tuples: the canonical one first, then dims drawn within bounds, values in [-1, 1]."""
    import torch
    from models import SPECS

    shape, dims = SPECS[name]["shape"], SPECS[name]["dims"]
    rng = random.Random(seed)
    out = []
    for i in range(count):
        sizes = canonical_dims(shape, dims) if i == 0 else {d: rng.randint(lo, hi) for d, (lo, hi) in dims.items()}
        gen = torch.Generator().manual_seed(i if i == 0 else rng.randrange(2**31))
        concrete = [sizes[d] if isinstance(d, str) else d for d in shape]
        out.append((torch.rand(concrete, generator=gen) * 2 - 1,))
    return out


def dynamic_shapes(name: str):
    """``torch.export`` dynamic_shapes: one ``Dim(name, min, max)`` per named dim of the single input."""
    import torch
    from models import SPECS

    shape, dims = SPECS[name]["shape"], SPECS[name]["dims"]
    made = {d: torch.export.Dim(d, min=lo, max=hi) for d, (lo, hi) in dims.items() if lo != hi}
    return ({axis: made[d] for axis, d in enumerate(shape) if d in made},)


def compare(got, expected, backend: str, what: str) -> None:
    import torch

    atol, rtol = TOLERANCES[backend]
    got = got if isinstance(got, (list, tuple)) else [got]
    expected = expected if isinstance(expected, (list, tuple)) else [expected]
    assert len(got) == len(expected), f"{what}: {len(got)} outputs, eager has {len(expected)}"
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=atol, rtol=rtol, check_dtype=True, msg=lambda m: f"{what}: {m}")


# ---------------------------------------------------------------------------------------- backends


def runner_trace(model, name, example, workdir):
    import torch

    traced = torch.jit.trace(model, example, check_trace=False, strict=False)
    path = os.path.join(workdir, "model.pt")
    torch.jit.save(traced, path)
    loaded = torch.jit.load(path, map_location="cpu")
    return lambda args: loaded(*args)


def runner_script(model, name, example, workdir):
    import torch

    scripted = torch.jit.script(model)
    path = os.path.join(workdir, "model.pt")
    torch.jit.save(scripted, path)
    loaded = torch.jit.load(path, map_location="cpu")
    return lambda args: loaded(*args)


def export_program(model, name, example):
    import torch

    return torch.export.export(model, tuple(a.clone() for a in example), dynamic_shapes=dynamic_shapes(name))


def runner_export(model, name, example, workdir):
    import torch

    program = export_program(model, name, example)
    path = os.path.join(workdir, "model.pt2")
    torch.export.save(program, path)
    module = torch.export.load(path).module()
    return lambda args: module(*args)


def runner_onnx(model, name, example, workdir):
    import onnx
    import onnxruntime as ort
    import onnxsim
    import torch

    program = export_program(model, name, example)
    raw_path = os.path.join(workdir, "model.onnx")
    onnx_program = torch.onnx.export(program, tuple(a.clone() for a in example), dynamo=True, verbose=False)
    onnx_program.save(raw_path)
    onnx.checker.check_model(raw_path, full_check=True)
    simplified, ok = onnxsim.simplify(onnx.load(raw_path))
    assert ok, "onnxsim could not validate its simplified graph"
    sim_path = os.path.join(workdir, "model.sim.onnx")
    onnx.save_model(simplified, sim_path)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    sessions = [ort.InferenceSession(p, options, providers=["CPUExecutionProvider"]) for p in (raw_path, sim_path)]

    def run(args):
        outs = []
        for session in sessions:  # raw, then simplified: each is compared with eager
            feed = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)}
            outs.append([torch.from_numpy(o) for o in session.run(None, feed)])
        return outs

    return run


def runner_tvm(model, name, example, workdir):
    import torch
    import tvm
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    program = export_program(model, name, example)
    module = from_exported_program(program)
    executable = tvm.compile(module, target=tvm.target.Target("llvm"))
    path = os.path.join(workdir, "model.so")
    executable.export_library(path)
    device = tvm.cpu(0)
    vm = relax.VirtualMachine(tvm.runtime.load_module(path), device)
    make = getattr(tvm.runtime, "tensor", None) or tvm.nd.array

    def run(args):
        out = vm["main"](*[make(a.numpy(), device) for a in args])
        leaves = [out] if hasattr(out, "numpy") else list(out)
        return [torch.from_numpy(t.numpy()) for t in leaves]

    return run


RUNNERS = {"trace": runner_trace, "script": runner_script, "export": runner_export, "onnx": runner_onnx,
           "tvm": runner_tvm}


# -------------------------------------------------------------------------------------------- main


def check(name: str, backend: str, model, examples, expected) -> None:
    with tempfile.TemporaryDirectory(prefix=f"handwritten-{backend}-") as workdir:
        run = RUNNERS[backend](model, name, examples[0], workdir)
        for i, (args, want) in enumerate(zip(examples, expected)):
            got = run(tuple(a.clone() for a in args))
            if backend == "onnx":
                compare(got[0], want, backend, f"{name}/{backend} example {i} (raw graph)")
                compare(got[1], want, backend, f"{name}/{backend} example {i} (simplified graph)")
            else:
                compare(got, want, backend, f"{name}/{backend} example {i}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=20,
                        help="inputs per model x backend, the first included (default 20)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated, of {', '.join(BACKENDS)}")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated inputs (default 0)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 3 examples, the MLP only")
    args = parser.parse_args()
    if args.quick:
        args.examples, args.models = 3, "mlp"
    models = [m for m in args.models.split(",") if m]
    backends = [b for b in args.backends.split(",") if b]
    unknown = sorted(set(models) - set(MODELS)) + sorted(set(backends) - set(BACKENDS))
    if unknown:
        parser.error(f"unknown model or backend: {', '.join(unknown)}")

    import torch
    from models import build

    start = time.perf_counter()
    failures = 0
    for name in models:
        model = build(name)
        examples = make_examples(name, args.examples, args.seed)
        with torch.no_grad():
            expected = [model(*(a.clone() for a in ex)) for ex in examples]
        for backend in backends:
            t0 = time.perf_counter()
            try:
                check(name, backend, model, examples, expected)
                status = "PASS"
            except Exception as exc:  # report and go on, as a test run would
                failures += 1
                status = f"FAIL {type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
            print(f"{name:12} {backend:7} {time.perf_counter() - t0:7.2f}s  {status}", file=sys.stderr, flush=True)
    print(f"{len(models) * len(backends)} checks, {failures} failed, {args.examples} examples each; "
          f"{time.perf_counter() - start:.1f}s after imports", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
