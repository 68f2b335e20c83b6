"""Checks of what the user hands over (the model, its forward, the input spec), run before any backend.

Each refusal says what is wrong, where (the input, buffer or output by name) and what to do. Reference
problems raise :class:`StageError` at stage ``run``; declaration problems raise :class:`SpecError`.
Importing this module imports neither torch nor any backend; the functions import torch when called.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .errors import SpecError, StageError
from .tensors import clone_args, is_tensor

#: Backends whose artifact is a graph of tensor ops: a string output cannot be part of it.
TENSOR_GRAPH_BACKENDS = frozenset({"trace", "export", "aoti", "onnx", "tvm", "tensorrt"})
#: Backends whose runtime hands back a flat list of tensors: a Python number among the outputs has no place there.
TENSOR_ONLY_OUTPUTS = frozenset({"onnx", "tvm", "tensorrt"})

_GIB = 2**30


def _arg_name(names: Sequence[str], i: int) -> str:
    return f"'{names[i]}'" if i < len(names) else f"{i}"


# ------------------------------------------------------------------------------------- the model


def require_materialised(model, who: str) -> None:
    """A model whose parameters or buffers live on the meta device has no values to run or save."""
    meta = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.device.type == "meta"]
    if meta:
        shown = ", ".join(meta[:3]) + (f" and {len(meta) - 3} more" if len(meta) > 3 else "")
        raise SpecError(
            f"{who} returned a {type(model).__name__} on the meta device ({shown}): its tensors have shapes but no "
            "values, so nothing can run or be saved; fix: materialise it with model.to_empty(device='cpu') and load "
            "its weights (load_state_dict) before returning it"
        )


def check_keyword_arguments(model, params: Sequence[Any], arity: int | None) -> None:
    """pytest-deploy passes inputs positionally: a required keyword-only argument is never filled, and a
    forward taking only ``**kwargs`` receives none of them."""
    cls = type(model).__name__
    keyword_only = [p.name for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty]
    if keyword_only:
        raise StageError(
            "run",
            f"{cls}.forward has keyword-only argument(s) {', '.join(keyword_only)} (after * in its signature); "
            "pytest-deploy passes inputs= positionally, and deployed artifacts take positional inputs too; fix: make "
            "them positional (drop the *), or wrap the model in a module whose forward takes them positionally",
        )
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    var_keyword = next((p.name for p in params if p.kind == p.VAR_KEYWORD), None)
    takes_varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
    if var_keyword and not takes_varargs and arity is not None and arity > len(positional):
        raise StageError(
            "run",
            f"{cls}.forward takes its inputs as **{var_keyword}, but pytest-deploy passes inputs= positionally "
            f"({arity} input(s) for {len(positional)} positional parameter(s)); fix: name the inputs as positional "
            "parameters of forward, or wrap the model in a module whose forward takes them positionally",
        )


# ------------------------------------------------------------------------------- the eager run


def run_watching_inputs(model, args: tuple) -> tuple[Any, list[int]]:
    """Eager outputs of ``model`` on a copy of ``args`` (without autograd), and the positions of the
    tensor arguments forward wrote to."""
    import torch

    copies = clone_args(args)
    with torch.no_grad():
        out = model(*copies)
    written = [i for i, (a, c) in enumerate(zip(args, copies)) if is_tensor(a) and not _same(a, c)]
    return out, written


def check_inputs_unchanged(written: Sequence[int], args: tuple, names: Sequence[str]) -> None:
    if not written:
        return
    which = ", ".join(f"input {_arg_name(names, i)} ({_describe(args[i])})" for i in written)
    raise StageError(
        "run",
        f"forward writes to its {which} in place: eager PyTorch changes the caller's tensor, a deployed runtime "
        "does not write back to its inputs, so callers would see different results; fix: use out-of-place ops "
        "(x = x + 1 instead of x += 1 or x.add_(1)), or clone the input first",
    )


def buffer_snapshot(model) -> dict[str, Any]:
    """Copies of the model's buffers (uninitialised lazy buffers are skipped)."""
    from torch.nn.parameter import is_lazy

    return {name: b.detach().clone() for name, b in model.named_buffers() if not is_lazy(b)}


def check_buffers_unchanged(model, before: Mapping[str, Any], backend: str) -> None:
    """Eager runs for the reference must leave the model's buffers as they were: a buffer that forward
    updates makes each run see another model. The checkpoint backend trains on purpose, so a model in
    train mode (BatchNorm statistics) is left to it."""
    if backend == "checkpoint" and model.training:
        return
    after = dict(model.named_buffers())
    changed = [name for name, old in before.items() if name in after and not _same(old, after[name])]
    if not changed:
        return
    shown = ", ".join(f"'{n}'" for n in changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
    modules = dict(model.named_modules())
    batchnorm = any(_is_batchnorm(modules.get(n.rpartition(".")[0])) for n in changed)
    if model.training and batchnorm:
        fix = "call model.eval() before returning the model (BatchNorm in train mode updates its running statistics)"
    else:
        fix = "keep state out of forward (update the buffer in a separate method), or return a fresh value instead"
    raise StageError(
        "run",
        f"forward changes the model's buffer(s) {shown} on every call ({type(model).__name__} in "
        f"{'train' if model.training else 'eval'} mode): each eager run sees another model, and a deployed "
        f"artifact keeps the buffer's value from when it was built; fix: {fix}",
    )


def _is_batchnorm(module) -> bool:
    from torch.nn.modules.batchnorm import _NormBase

    return isinstance(module, _NormBase)


def check_output_leaves(leaves: Sequence[tuple[str, Any]], backend: str) -> None:
    """Something to compare, and nothing a tensor graph cannot return."""
    if not any(is_tensor(v) or isinstance(v, (int, float)) for _, v in leaves):
        what = ", ".join(f"{p} is {v!r:.40}" for p, v in leaves[:4]) or "output is empty"
        raise StageError(
            "run",
            f"forward returns no tensor ({what}), so there is nothing to compare and every backend would pass "
            "without checking anything; fix: return the tensors the deployed model computes",
        )
    if backend in TENSOR_GRAPH_BACKENDS:
        strings = [(p, v) for p, v in leaves if isinstance(v, str)]
        if strings:
            path, value = strings[0]
            raise StageError(
                "run",
                f"{path} is a str ({value!r:.40}): the {backend} artifact computes tensors only and cannot return "
                "it; fix: return tensors (e.g. class indices, mapped to names outside the model), or check this "
                "model with state_dict, pickle or script",
            )
        numbers = [(p, v) for p, v in leaves if isinstance(v, (bool, int, float, complex))]
        if numbers and backend in TENSOR_ONLY_OUTPUTS:
            path, number = numbers[0]
            raise StageError(
                "run",
                f"{path} is a Python {type(number).__name__} ({number!r:.40}): the {backend} graph returns tensors "
                "only, so this output would go uncompared; fix: return it as a tensor (torch.tensor(...)), or leave "
                "it out of forward's outputs",
            )


def check_finite(leaves: Sequence[tuple[str, Any]], example: str) -> None:
    """NaN or Inf in eager outputs: a backend's NaN cannot be told apart from eager's, so the check proves
    nothing for those elements."""
    import torch

    for path, value in leaves:
        if is_tensor(value) and value.is_floating_point():
            v = value.detach()
            nan, inf = int(torch.isnan(v).sum()), int(torch.isinf(v).sum())
        elif isinstance(value, float):
            nan, inf = int(value != value), int(value in (float("inf"), float("-inf")))
        else:
            continue
        if nan or inf:
            total = value.numel() if is_tensor(value) else 1
            counts = " and ".join(f"{n} {kind}" for n, kind in ((nan, "NaN"), (inf, "Inf")) if n)
            raise StageError(
                "run",
                f"eager PyTorch returns non-finite values on the first example: {path} has {counts} of {total} "
                "elements, which no comparison can check; fix: restrict the inputs' value range with "
                "tensor(..., low=, high=) (e.g. positive values for log, sqrt or division), make the model "
                "finite (clamp, an eps), or pass allow_nonfinite=True if they are intended (a backend then matches "
                f"where it gives the same NaN or Inf)\n  first example:\n    " + example.replace("\n", "\n    "),
            )


def _same(a, b) -> bool:
    """Equal shape, dtype and values (NaN equal to NaN)."""
    import torch

    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return torch.equal(a, b) or (a.is_floating_point() and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True))


def _describe(t) -> str:
    return f"{str(t.dtype).replace('torch.', '')}[{', '.join(str(s) for s in t.shape)}]"


# --------------------------------------------------------------------------------- example size


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (MemAvailable on Linux, psutil elsewhere), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def check_example_size(specs: Sequence[Any], bounds: Mapping[str, tuple[int, int]], names: Sequence[str],
                       cap: int) -> None:
    """Refuse, before anything is allocated, inputs whose largest example (every dim at its upper bound)
    takes more than ``cap`` bytes or half the memory available."""
    import math

    top = {k: hi for k, (_, hi) in bounds.items()}
    sizes = [(math.prod(s.concrete_shape(top)) if s.shape else 1) * s.torch_dtype.itemsize for s in specs]
    total = sum(sizes)
    available = available_memory()
    limit = cap if available is None else min(cap, available // 2)
    if total <= limit:
        return
    i = max(range(len(sizes)), key=sizes.__getitem__)
    used = list(dict.fromkeys(d for d in specs[i].dim_names() if d in top))
    at = f" at {', '.join(f'{d}={top[d]}' for d in used)}" if used else ""
    why = f"the smaller of {cap / _GIB:g} GiB and half the {available / _GIB:.1f} GiB of memory available" \
        if available is not None else "memory available unknown"
    raise SpecError(
        f"the largest example these inputs allow takes {total / _GIB:.1f} GiB, more than the limit of "
        f"{limit / _GIB:.1f} GiB ({why}); input {_arg_name(names, i)} "
        f"{specs[i].describe()} alone takes {sizes[i] / _GIB:.1f} GiB{at}; refused before anything was "
        "allocated; fix: lower the dims' upper bounds" + (f" ({', '.join(map(repr, used))})" if used else "")
    )


# ---------------------------------------------------------------------------------- calibration inputs


def read_calibration(value: Any) -> list[Any]:
    """``calibration=`` as a list of its items: an iterable, or a zero-argument callable returning one. Read once,
    in pytest's process, so that the result cache's key can hash what the check will calibrate on."""
    if callable(value):
        try:
            value = value()
        except Exception as exc:
            raise SpecError(f"calibration=: calling it raised {type(exc).__name__}: {exc}; fix: pass an iterable, or "
                            "a zero-argument callable returning one (a generator function)") from None
    try:
        items = list(value)
    except TypeError:
        raise SpecError(f"calibration= must be an iterable or a zero-argument callable yielding inputs, not "
                        f"{type(value).__name__}") from None
    if not items:
        raise SpecError("calibration= yields no input; fix: give at least one (tuples or dicts as inputs= declares), "
                        "or leave it out to calibrate on generated examples")
    return items


def calibration_digest(items: Sequence[Any]) -> str:
    """A hash of the calibration inputs' dtypes, shapes and values (part of the check's and the artifact's keys)."""
    import hashlib

    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, Mapping):
            for key in sorted(value, key=str):
                digest.update(str(key).encode())
                feed(value[key])
        elif isinstance(value, (list, tuple)):
            digest.update(b"(")
            for v in value:
                feed(v)
            digest.update(b")")
        elif is_tensor(value) or hasattr(value, "tobytes"):
            array = value.detach().cpu().contiguous().numpy() if is_tensor(value) else value
            digest.update(f"{array.dtype}{tuple(array.shape)}".encode())
            digest.update(array.tobytes())
        else:
            digest.update(repr(value).encode())

    feed(list(items))
    return digest.hexdigest()[:16]


def calibration_args(item: Any, index: int, specs: Sequence[Any], names: Sequence[str],
                     bounds: Mapping[str, tuple[int, int]]) -> tuple:
    """One calibration input as forward's arguments in the declaration's order, checked against it (count, names,
    dtypes, ranks, static sizes, dims within their bounds and equal wherever they recur). A mismatch raises
    :class:`StageError` at stage ``compile`` naming the input, what was declared, what came, and the fix."""
    import numpy as np
    import torch

    fix = ("  fix: yield inputs as inputs= declares them (tuples in forward's order, or dicts by input name), "
           "or widen dims=")
    where = f"calibration input {index}"
    if isinstance(item, Mapping):
        missing = [n for n in names if n not in item]
        extra = [str(k) for k in item if k not in names]
        if missing or extra:
            raise StageError("compile", f"{where} has keys {sorted(map(str, item))} but the inputs are named "
                                        f"{list(names)}" + (f" (missing {missing})" if missing else "")
                             + (f" (unknown {extra})" if extra else "") + "\n" + fix)
        args = tuple(item[n] for n in names)
    else:
        args = tuple(item) if isinstance(item, (list, tuple)) else (item,)
    if specs and len(args) != len(specs):
        raise StageError("compile", f"{where} holds {len(args)} value(s) but inputs= declares {len(specs)}\n{fix}")
    args = tuple(torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in args)
    seen: dict[str, int] = {}
    for i, (arg, spec) in enumerate(zip(args, specs)):
        name = _arg_name(names, i)
        expected = spec.describe() + "".join(
            f", {d} in [{bounds[d][0]}, {bounds[d][1]}]" for d in dict.fromkeys(spec.dim_names()) if d in bounds)
        if not is_tensor(arg):
            raise StageError("compile", f"{where}, input {name}: expected a tensor {expected}, got "
                                        f"{type(arg).__name__}\n{fix}")
        problem = None
        if arg.dtype != spec.torch_dtype:
            problem = f"dtype {str(arg.dtype).replace('torch.', '')}"
        elif arg.dim() != len(spec.shape):
            problem = f"{arg.dim()} dims"
        else:
            for axis, (d, n) in enumerate(zip(spec.shape, arg.shape)):
                if isinstance(d, int) and d != n:
                    problem = f"dim {axis} is {n}, declared {d}"
                elif isinstance(d, str) and d in bounds and not bounds[d][0] <= n <= bounds[d][1]:
                    problem = f"dim {axis} ('{d}') is {n}, outside [{bounds[d][0]}, {bounds[d][1]}]"
                elif isinstance(d, str) and seen.setdefault(d, n) != n:
                    problem = f"dim {axis} ('{d}') is {n}, but another input has {d}={seen[d]}"
                if problem:
                    break
        if problem:
            raise StageError("compile", f"{where}, input {name}: expected {expected}, got {_describe(arg)} "
                                        f"({problem})\n{fix}")
    return args
