"""``--deploy-keep-artifacts=DIR``: what a failing check leaves behind to reproduce it without pytest.

For each failing check, ``DIR/<test>/<backend>/`` gets:

- ``artifact/``: the files the backend built (the work directory, and cached files it loaded);
- ``inputs.pt``: the failing example's inputs (the shrunk one), a list of tensors;
- ``expected.pt``: eager PyTorch's outputs on them, ``[(path, tensor), ...]``;
- ``actual.pt``: the backend's outputs on them, when it ran;
- ``repro.py``: loads the artifact with the backend's own runtime (no pytest, no pytest-deploy), runs it
  on the inputs, compares with the expected outputs at the check's tolerance, prints each output's
  error and exits 1 when they differ, as the check did;
- ``failure.txt``: the check's message.

All ``.pt`` files hold tensors, strings and lists only and load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

#: Per backend: source of ``load(artifact: Path) -> run(args: list[Tensor]) -> outputs`` for repro.py.
LOADERS = {
    "trace": '''
def load(artifact):
    module = torch.jit.load(str(artifact / "model.pt"), map_location="cpu")
    return lambda args: call(module, args)
''',
    "export": '''
def load(artifact):
    module = torch.export.load(str(artifact / "model.pt2")).module()
    return lambda args: call(module, args)
''',
    "aoti": '''
def load(artifact):
    runner = torch._inductor.aoti_load_package(str(artifact / "model.pt2"))
    return lambda args: call(runner, args)
''',
    "onnx": '''
def load(artifact):
    import onnxruntime as ort

    # the graph that failed: the quantized one at int8, the simplified one when stage is "simplify", else the
    # exporter's
    graph = artifact / ("model.int8.onnx" if (artifact / "model.int8.onnx").exists()
                        else "model.sim.onnx" if STAGE == "simplify" else "model.onnx")
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(args):
        feed = {name: (args[INPUT_NAMES.index(name)] if name in INPUT_NAMES else args[pos]).numpy()
                for pos, name in enumerate(names)}
        return [torch.from_numpy(o) for o in session.run(None, feed)]
    return run
''',
    "tvm": '''
def load(artifact):
    import tvm
    from tvm import relax

    device = tvm.device(DEVICE, 0)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(artifact / "model.so")), device)
    make = getattr(tvm.runtime, "tensor", None) or tvm.nd.array

    def leaves(out):
        if hasattr(out, "numpy"):
            return [torch.from_numpy(out.numpy())]
        return [leaf for item in out for leaf in leaves(item)]

    return lambda args: leaves(vm["main"](*[make(a.numpy(), device) for a in args]))
''',
    "pickle": '''
def load(artifact):
    # the pickled model: unpickling runs code from the file (weights_only=False); it is the file this
    # check just wrote from your own model. Your model's modules must be importable (run from your project).
    sys.path.insert(0, os.getcwd())
    module = torch.load(str(artifact / "model.pt"), weights_only=False)
    return lambda args: call(module, args)
''',
}
LOADERS["script"] = LOADERS["trace"]


def keep_failure(ctx, err, directory: str | os.PathLike) -> str:
    """Write the failing check's files under ``directory``; return a line for the failure message."""
    import torch

    from .compare import flatten

    target = Path(directory) / _safe(ctx.result.test) / ctx.backend
    shutil.rmtree(target, ignore_errors=True)
    (target / "artifact").mkdir(parents=True)
    for item in Path(ctx.workdir).iterdir():
        dest = target / "artifact" / item.name
        (shutil.copytree if item.is_dir() else shutil.copyfile)(item, dest)
    for name, path in ctx.artifacts.items():
        if os.path.exists(path) and not (target / "artifact" / name).exists():
            shutil.copyfile(path, target / "artifact" / name)
    (target / "failure.txt").write_text(ctx.result.message + "\n")
    write_node_errors(ctx.result, target)
    example = ctx.failed_example
    if example is None:  # the failure came before any example ran (export, compile, ...): the artifact is all
        return f"\n  kept: {target} (the artifact; the failure happened before any example ran)"
    args = [a.detach().cpu() if isinstance(a, torch.Tensor) else a for a in example.clone_args()]
    torch.save(args, target / "inputs.pt")
    expected = [(p, v) for p, v in flatten(ctx.eager(tuple(args))) if isinstance(v, torch.Tensor)]
    torch.save(expected, target / "expected.pt")
    if ctx.runner is not None:
        try:
            actual = [(p, v) for p, v in flatten(ctx.runner(tuple(a.clone() for a in args)))
                      if isinstance(v, torch.Tensor)]
            torch.save(actual, target / "actual.pt")
        except Exception:
            pass
    loader = getattr(ctx_backend(ctx), "repro_loader", None) or LOADERS.get(ctx.backend)
    if loader is None:
        return f"\n  kept: {target} (artifact, inputs.pt, expected.pt; no standalone repro for {ctx.backend})"
    (target / "repro.py").write_text(_repro_script(ctx, err, loader))
    return f"\n  kept: {target}; reproduce without pytest: python {target / 'repro.py'}"


def write_node_errors(result, target: Path) -> None:
    """The localisation's per-place table (``details.node_errors``) as ``node_errors.csv``, and its error against
    execution order as ``node_errors.png`` (the divergence marked): where the error appears, at a glance."""
    import csv

    rows = result.details.get("node_errors") or []
    if not rows:
        return
    fields = ["order", "module", "node", "max_abs_error", "input_max_abs_error"]
    with open(target / "node_errors.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for i, row in enumerate(rows):
            writer.writerow({"order": i, **row})
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:  # the table is kept; the plot needs matplotlib
        return
    errors = [max(float(r["max_abs_error"]), 1e-12) if r.get("max_abs_error") is not None else 1e-12 for r in rows]
    errors = [e if e != float("inf") else max([x for x in errors if x != float("inf")] + [1.0]) * 10 for e in errors]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(range(len(errors)), errors, marker="o", markersize=3, linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("execution order")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("max abs error vs eager")
    if result.atol:
        ax.axhline(result.atol, color="grey", linestyle="--", linewidth=1, label=f"atol {result.atol:g}")
    div = result.divergence or {}
    at = next((i for i, r in enumerate(rows) if div and r.get("node") == div.get("node")), None)
    if at is not None:
        ax.plot([at], [errors[at]], marker="X", markersize=10, color="red", linestyle="none",
                label=f"diverges first: {div.get('module') or '(model)'} ({div.get('type')})")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"{result.test} on {result.backend}", fontsize=9)
    fig.tight_layout()
    fig.savefig(target / "node_errors.png", dpi=100)
    plt.close(fig)


def ctx_backend(ctx):
    from .backends import get_backend

    return get_backend(ctx.backend)


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("_")[-100:] or "check"


def _repro_script(ctx, err, loader: str) -> str:
    from .backends.onnx_export import input_names

    tolerances = {name: list(ctx.tol.for_dtype(name)) for name in ("float16", "bfloat16", "float32", "float64")}
    target = ctx.options.get("tvm_target") or "llvm"
    device = "cuda" if "cuda" in str(target) else "cpu"
    names = input_names(ctx.space, len(ctx.failed_example.args))
    header = f'''"""Standalone reproduction of a pytest-deploy failure: {ctx.result.test} on {ctx.backend}.

Written by pytest-deploy --deploy-keep-artifacts. Needs torch and the backend's runtime only (not
pytest, not pytest-deploy). Loads the artifact in ./artifact, runs it on inputs.pt and compares with
eager PyTorch's outputs in expected.pt at the check's tolerances. Exit status 1: the mismatch reproduces.

The check said:
{_indent(ctx.result.message)}
"""

import os
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
STAGE = {err.stage!r}
INPUT_NAMES = {names!r}
#: forward takes the inputs as keyword arguments (declared as a dict), else positionally
KEYWORDS = {bool(ctx.space.keywords)!r}
DEVICE = {device!r}
#: (atol, rtol) per floating dtype; other dtypes must match exactly
TOLERANCES = {tolerances!r}
'''
    main = '''

def call(fn, args):
    return fn(**dict(zip(INPUT_NAMES, args))) if KEYWORDS else fn(*args)


def flatten(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [leaf for value in out.values() for leaf in flatten(value)]
    if isinstance(out, (list, tuple)):
        return [leaf for value in out for leaf in flatten(value)]
    return []


def main():
    inputs = torch.load(HERE / "inputs.pt", weights_only=True)
    expected = torch.load(HERE / "expected.pt", weights_only=True)
    run = load(HERE / "artifact")
    with torch.no_grad():
        actual = flatten(run([a.clone() for a in inputs]))
    if len(actual) != len(expected):
        print(f"MISMATCH: the artifact returns {len(actual)} tensors, eager PyTorch {len(expected)}")
        return 1
    failed = 0
    for (path, want), got in zip(expected, actual):
        got = got.detach().cpu()
        if got.shape != want.shape:
            print(f"{path}: MISMATCH shape {tuple(got.shape)} != {tuple(want.shape)}")
            failed += 1
            continue
        name = str(want.dtype).removeprefix("torch.")
        if want.is_floating_point():
            atol, rtol = TOLERANCES.get(name, TOLERANCES["float32"])
            diff = (got.double() - want.double()).abs()
            bad = ~(diff <= atol + rtol * want.double().abs()) & ~(got.isnan() & want.isnan())
            worst = diff.nan_to_num(float("inf")).max().item() if diff.numel() else 0.0
            print(f"{path}: max abs error {worst:.3g} (atol {atol:g}, rtol {rtol:g})"
                  + (f" MISMATCH in {int(bad.sum())} of {bad.numel()} elements" if bad.any() else " ok"))
        else:
            bad = got.to(want.dtype) != want
            print(f"{path}: {name} compared exactly" + (f" MISMATCH in {int(bad.sum())} of {bad.numel()} elements"
                                                       if bad.any() else " ok"))
        failed += bool(bad.any())
    print("mismatch reproduced" if failed else "no mismatch: the artifact matches eager PyTorch on these inputs")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
'''
    return header + loader + main


def _indent(text: str) -> str:
    return "\n".join("    " + ln for ln in (text or "").splitlines())
