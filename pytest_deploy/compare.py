"""Output comparison: flatten nested outputs, apply per-dtype tolerances, keep error statistics.

Integer and bool outputs must match exactly; float outputs pass where
``|got - expected| <= atol + rtol * |expected|`` (NaN matches NaN). A mismatch reports the output's
path, the worst element, the max abs and rel errors, and the smallest tolerance that would pass.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import SpecError
from .tensors import elementwise_error, is_tensor

#: Default (atol, rtol) per backend family and output dtype. Serialization round trips run the same
#: kernels on the same weights, but a reloaded tensor's memory alignment can steer CPU kernels onto
#: another vector path, so the last bit may differ: a few ulps are allowed. Compilers reorder float
#: arithmetic and get more. (The checkpoint backend also requires the trained weights to be identical.)
_EXACT = {"float64": (1e-12, 1e-10), "float32": (1e-6, 1e-5), "float16": (1e-3, 1e-3), "bfloat16": (1e-2, 1e-2)}
_JIT = {"float64": (1e-10, 1e-8), "float32": (1e-5, 1e-4), "float16": (1e-3, 1e-3), "bfloat16": (1e-2, 1e-2)}
_COMPILED = {"float64": (1e-8, 1e-6), "float32": (1e-4, 1e-3), "float16": (2e-3, 2e-3), "bfloat16": (2e-2, 2e-2)}
DEFAULT_TOLERANCES: dict[str, dict[str, tuple[float, float]]] = {
    "state_dict": _EXACT,
    "pickle": _EXACT,
    "checkpoint": _EXACT,
    "trace": _JIT,
    "script": _JIT,
    "export": _JIT,
    "aoti": _COMPILED,
    # float16 as TensorRT's: measured on the Hugging Face corpus converted to fp16 (docs/hf-corpus.md), the encoders'
    # float16 rounding reaches 4.9e-3 on O(1) hidden states, over the compilers' 2e-3
    "onnx": {**_COMPILED, "float16": (1e-2, 1e-2)},
    "tvm": _COMPILED,
    "tensorrt": {"float64": (1e-5, 1e-4), "float32": (1e-3, 1e-3), "float16": (1e-2, 1e-2), "bfloat16": (2e-2, 2e-2)},
}


@dataclass(frozen=True)
class Tolerance:
    """Tolerances for one backend: per output dtype (atol, rtol); user overrides apply to every float dtype."""

    per_dtype: Mapping[str, tuple[float, float]]

    def for_dtype(self, dtype_name: str) -> tuple[float, float]:
        return self.per_dtype.get(dtype_name, self.per_dtype.get("float32", (0.0, 0.0)))

    @property
    def float32(self) -> tuple[float, float]:
        return self.for_dtype("float32")


def resolve_tolerance(backend: str, atol: Any = None, rtol: Any = None, tolerances: Any = None) -> Tolerance:
    """Effective tolerance for ``backend``.

    ``atol``/``rtol`` are a number for every backend or a ``{backend: number}`` dict; ``tolerances``
    is ``{backend: (atol, rtol)}``. A user value replaces the default for every float dtype.
    """
    base = dict(DEFAULT_TOLERANCES.get(backend, _COMPILED))
    user_atol = _pick(atol, backend, "atol")
    user_rtol = _pick(rtol, backend, "rtol")
    if user_rtol is None and isinstance(atol, Mapping):
        # {"tensorrt": (atol, rtol)} given as atol= alone: its rtol half applies too
        user_rtol = _pick({k: v for k, v in atol.items() if isinstance(v, (tuple, list))}, backend, "rtol")
    if tolerances is not None:
        if not isinstance(tolerances, Mapping):
            raise SpecError(f"tolerances={tolerances!r} must be a dict {{backend: (atol, rtol)}}")
        from .names import canonical_name

        for key, pair in tolerances.items():
            if canonical_name(key) != backend:
                continue
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise SpecError(f"tolerances[{key!r}]={pair!r} must be an (atol, rtol) pair")
            user_atol, user_rtol = _number(pair[0], f"tolerances[{key!r}] atol"), _number(pair[1], f"tolerances[{key!r}] rtol")
    if user_atol is None and user_rtol is None:
        return Tolerance(base)
    out = {}
    for dtype, (a, r) in base.items():
        out[dtype] = (a if user_atol is None else user_atol, r if user_rtol is None else user_rtol)
    return Tolerance(out)


def widen_for_precision(tol: Tolerance, default: Tolerance, precision: str) -> Tolerance:
    """``tol`` for a check deployed at ``precision`` (fp16, bf16): when it is the backend's ``default`` (the user gave
    no tolerance), every float dtype gets at least the default of that precision's dtype (the float16 row for fp16,
    so float32 outputs get it too); a user's tolerance is kept as given, and fp32 changes nothing."""
    from .names import PRECISIONS

    if precision == "fp32" or PRECISIONS[precision] == "int8" or tol != default:
        return tol
    atol, rtol = default.for_dtype(PRECISIONS[precision])
    return Tolerance({dtype: (max(a, atol), max(r, rtol)) for dtype, (a, r) in default.per_dtype.items()})


def _pick(value: Any, backend: str, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        from .names import canonical_name

        for key, v in value.items():
            if canonical_name(key) == backend:
                if isinstance(v, (tuple, list)) and len(v) == 2:
                    # {"tensorrt": (atol, rtol)} given as atol=: take the matching half
                    return _number(v[0] if what == "atol" else v[1], f"{what}[{key!r}]")
                return _number(v, f"{what}[{key!r}]")
        return None
    return _number(value, what)


def _number(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or v < 0:
        raise SpecError(f"{what}={v!r} must be a non-negative number")
    return float(v)


# ------------------------------------------------------------------------------- flattening


class UnsupportedOutput(Exception):
    pass


def flatten(obj: Any, path: str = "output") -> list[tuple[str, Any]]:
    """Leaves of a nested output with their paths: ``output['logits']``, ``output[1].mask``, in the order the
    exporters flatten outputs (``torch.utils._pytree``: tuples, lists, dicts, namedtuples and every type a
    library registered, such as Hugging Face's ModelOutput). Dataclasses are walked by field.

    Tensors, Python numbers, strings and None are leaves; anything else raises :class:`UnsupportedOutput`.
    """
    from torch.utils._pytree import keystr

    if isinstance(obj, Leaves):  # a runtime's outputs, already flat
        return list(obj)
    out: list[tuple[str, Any]] = []
    for key, leaf in key_paths(obj, is_leaf=lambda x: x is None):
        where = path + keystr(key)
        if leaf is None or isinstance(leaf, (bool, int, float, complex, str)) or is_tensor(leaf):
            out.append((where, leaf))
        elif dataclasses.is_dataclass(leaf) and not isinstance(leaf, type):
            for f in dataclasses.fields(leaf):
                out.extend(flatten(getattr(leaf, f.name), f"{where}.{f.name}"))
        else:
            raise UnsupportedOutput(
                f"{where} is a {type(leaf).__module__}.{type(leaf).__qualname__}; outputs must be tensors, Python "
                f"numbers, or tuples, lists, dicts, namedtuples or dataclasses of them; fix: {_output_fix(leaf)}"
            )
    return out


def key_paths(tree: Any, is_leaf: Any = None, prefix: tuple = ()) -> list[tuple[tuple, Any]]:
    """``torch.utils._pytree.tree_flatten_with_path``'s ``[(key path, leaf)]``, in ``tree_flatten``'s order, for
    every registered type: a type registered without a ``flatten_with_keys_fn``, which that function refuses, gets
    positional keys (``[0]``, ``[1]``) from its ``flatten_fn``; a mapping flattened to its values with its keys as
    the context (diffusers' ``BaseOutput``, an ``OrderedDict``) gets its keys (``['sample']``), as a dict does: the
    traced module returns that output as a plain dict, whose paths must pair with eager's."""
    from collections.abc import Mapping

    from torch.utils._pytree import SUPPORTED_NODES, MappingKey, SequenceKey, _get_node_type

    if is_leaf is not None and is_leaf(tree):
        return [(prefix, tree)]
    handler = SUPPORTED_NODES.get(_get_node_type(tree))
    if handler is None:
        return [(prefix, tree)]
    if handler.flatten_with_keys_fn is not None:
        keyed = handler.flatten_with_keys_fn(tree)[0]
    else:
        children, context = handler.flatten_fn(tree)
        if isinstance(tree, Mapping) and isinstance(context, (list, tuple)) and list(context) == list(tree.keys()) \
                and len(children) == len(context) and all(tree[k] is c for k, c in zip(context, children)):
            keyed = [(MappingKey(k), child) for k, child in zip(context, children)]
        else:
            keyed = [(SequenceKey(i), child) for i, child in enumerate(children)]
    return [pair for key, child in keyed for pair in key_paths(child, is_leaf, (*prefix, key))]


def _output_fix(obj: Any) -> str:
    """The usual way to get rid of a non-tensor output object."""
    name = type(obj).__qualname__
    if "Cache" in name and type(obj).__module__.startswith("transformers"):
        return ("a Hugging Face model returns its key/value cache when use_cache is on: build it with use_cache=False "
                "(in the config, or model.config.use_cache = False)")
    return "return tensors (or containers of them) from forward, e.g. through a wrapper module that unpacks this object"


# -------------------------------------------------------------------------------- comparison


@dataclass
class LeafError:
    """Why one output leaf differs, with the numbers a user needs to judge it."""

    path: str
    reason: str  # "values" | "dtype" | "shape" | "type" | "nan"
    text: str
    max_abs: float = 0.0
    max_rel: float = 0.0
    needed_atol: float | None = None
    needed_rtol: float | None = None
    dtype: str = ""


@dataclass
class Comparison:
    """Comparison of one example's outputs."""

    max_abs: float = 0.0
    max_rel: float = 0.0
    errors: list[LeafError] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


class Leaves(list):
    """Outputs already flattened to ``[(path, leaf), ...]`` (e.g. by a worker process)."""


def paired(expected: Any, got: Any, keep: Mapping[str, Any] | None = None) -> list[tuple[str, Any, Any]]:
    """``[(path, eager leaf, backend leaf)]`` as :func:`compare_outputs` pairs them (empty where they do not pair);
    with ``keep`` (path -> a padding mask, as :func:`compare_outputs` takes it), only the positions it keeps."""
    pairs = _pair(expected if isinstance(expected, Leaves) else flatten(expected),
                  got if isinstance(got, Leaves) else flatten(got), by_path=not isinstance(got, Leaves))
    if isinstance(pairs, LeafError):
        return []
    return [(p, e[keep[p]], a[keep[p]]) if keep and p in keep else (p, e, a) for p, e, a in pairs]


def compare_outputs(expected: Any, got: Any, tol: Tolerance, keep: Mapping[str, Any] | None = None) -> Comparison:
    """Compare a backend's outputs with eager outputs (either nested, or already :class:`Leaves`).

    Leaves are paired by path: a backend that returns a nested structure must return eager's. Runtimes that
    return a flat list of tensors (ONNX Runtime, TVM, TensorRT: :class:`Leaves` named ``output[i]``) are
    paired by position, the order exporters flatten outputs in. ``keep`` maps an output path to a bool tensor
    over the output's leading dims (a padding mask): only the positions where it is True are compared."""
    exp = expected if isinstance(expected, Leaves) else flatten(expected)
    act = got if isinstance(got, Leaves) else flatten(got)
    result = Comparison()
    pairs = _pair(exp, act, by_path=not isinstance(got, Leaves))
    if isinstance(pairs, LeafError):
        result.errors.append(pairs)
        return result
    for path, e, a in pairs:
        err = compare_leaf(path, e, a, tol, None if keep is None else keep.get(path))
        if err is None:
            continue
        if isinstance(err, tuple):  # statistics of a passing float leaf
            result.max_abs = max(result.max_abs, err[0])
            result.max_rel = max(result.max_rel, err[1])
            continue
        result.max_abs = max(result.max_abs, err.max_abs)
        result.max_rel = max(result.max_rel, err.max_rel)
        result.errors.append(err)
    return result


def _pair(exp: list[tuple[str, Any]], act: list[tuple[str, Any]], *, by_path: bool):
    """``[(path, expected, got)]``, or a structure :class:`LeafError` naming what does not line up."""
    got = dict(act)
    expected_paths = [p for p, _ in exp]
    counts = (f"eager returns {len(exp)} output leaves ({_paths(exp)}) but the backend returns {len(act)} "
              f"({_paths(act)})")
    if by_path or set(got) == set(expected_paths):
        missing = [p for p in expected_paths if p not in got]
        extra = [p for p, _ in act if p not in set(expected_paths)]
        if missing or extra:
            return LeafError("output", "structure", f"{counts}: missing {_names(missing)}; extra {_names(extra)}",
                             math.inf, math.inf)
        return [(p, e, got[p]) for p, e in exp]
    if len(exp) != len(act):
        return LeafError("output", "structure", counts, math.inf, math.inf)
    return [(p, e, a) for (p, e), (_, a) in zip(exp, act)]


def _names(paths: list[str]) -> str:
    return (", ".join(paths[:6]) + (", ..." if len(paths) > 6 else "")) if paths else "none"


def _paths(leaves) -> str:
    return _names([p for p, _ in leaves]) if leaves else ""


def compare_leaf(path: str, expected: Any, got: Any, tol: Tolerance, keep: Any = None):
    """None or ``(max_abs, max_rel)`` when the leaf matches; a :class:`LeafError` when it does not.
    ``keep``: only positions where this bool tensor (over the leading dims) is True are compared."""
    import torch

    if not is_tensor(expected):
        if is_tensor(got) and got.numel() == 1 and isinstance(expected, (int, float, bool)):
            got = got.item()
        if isinstance(expected, float) and isinstance(got, (int, float)):
            expected, got = torch.tensor(expected, dtype=torch.float64), torch.tensor(float(got), dtype=torch.float64)
        elif expected == got and type(expected) is type(got):
            return None
        else:
            return LeafError(path, "type", f"{path}: eager gives {expected!r}, the backend gives {got!r}", math.inf, math.inf)
    if not is_tensor(got):
        if isinstance(got, (int, float, bool)) and expected.numel() == 1:
            got = torch.tensor(got, dtype=expected.dtype)
        else:
            return LeafError(path, "type", f"{path}: eager gives a tensor, the backend gives {type(got).__name__} {got!r:.80}", math.inf, math.inf)
    dtype = str(expected.dtype).replace("torch.", "")
    if expected.dtype != got.dtype:
        return LeafError(path, "dtype", f"{path}: dtype {dtype} in eager, {str(got.dtype).replace('torch.', '')} from the backend", math.inf, math.inf)
    if tuple(expected.shape) != tuple(got.shape):
        return LeafError(
            path, "shape", f"{path}: shape {tuple(expected.shape)} in eager, {tuple(got.shape)} from the backend", math.inf, math.inf
        )
    e = expected.detach().cpu()
    g = got.detach().cpu()
    if e.numel() == 0:
        return None
    if keep is not None:  # padding positions take eager's own values: they can never differ
        valid = keep.cpu().reshape(*keep.shape, *([1] * (e.dim() - keep.dim())))
        g = torch.where(valid, g, e)
    if not (e.is_floating_point() or e.is_complex()):
        bad = e != g
        if not bad.any():
            return None
        idx = _index(bad.nonzero()[0])
        n = int(bad.sum())
        diff = (e.to(torch.float64) - g.to(torch.float64)).abs().max().item() if e.dtype != torch.bool else 1.0
        return LeafError(
            path,
            "values",
            f"{path} [{dtype}, shape {tuple(e.shape)}]: {n} of {e.numel()} elements differ (integer and bool outputs "
            f"must match exactly); first at index {idx}: expected {e[idx].item()}, got {g[idx].item()}",
            diff,
            math.inf,
        )
    atol, rtol = tol.for_dtype(dtype)
    wide = torch.complex128 if e.is_complex() else torch.float64  # complex: the distance in the complex plane
    e64, g64 = e.to(wide), g.to(wide)
    nan_e, nan_g = torch.isnan(e64), torch.isnan(g64)
    diff = elementwise_error(e64, g64)
    mag = e64.abs().nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
    allowed = atol + rtol * mag
    bad = diff > allowed
    max_abs = diff.max().item()
    with torch.no_grad():
        rel = torch.where(mag > 0, diff / mag.clamp_min(1e-300), torch.where(diff > 0, torch.full_like(diff, math.inf), diff))
    max_rel = rel.max().item()
    if not bad.any():
        return (max_abs, max_rel)
    worst = (diff - allowed).flatten().argmax()
    idx = _index(torch.stack(torch.unravel_index(worst, tuple(e.shape)))) if e.dim() else ()
    needed_atol = _passing(
        (diff - rtol * mag).clamp_min(0).max().item(), lambda a: not bool((diff > a + rtol * mag).any())
    )
    over = diff > atol
    needed_rtol = (
        _passing(((diff - atol) / mag.clamp_min(1e-300))[over].max().item(), lambda r: not bool((diff > atol + r * mag).any()))
        if bool((mag[over] > 0).all())
        else math.inf
    )
    n = int(bad.sum())
    text = (
        f"{path} [{dtype}, shape {tuple(e.shape)}]: {n} of {e.numel()} elements exceed atol {atol:g} + rtol {rtol:g}*|expected|; "
        f"worst at index {idx}: expected {e64[idx].item():.6g}, got {g64[idx].item():.6g}"
    )
    reason = "nan" if bool((nan_e ^ nan_g).any()) else "values"
    if reason == "nan":
        text += " (NaN in only one of eager and backend)"
    return LeafError(path, reason, text, max_abs, max_rel, needed_atol, needed_rtol, dtype)


def _passing(value: float, passes) -> float:
    """``value`` computed as the smallest passing tolerance, stepped up past the last bits of round-off
    (``(diff - atol) / |expected|`` times ``|expected|`` can fall an ulp short of ``diff``)."""
    for _ in range(64):
        if passes(value):
            break
        value = math.nextafter(value, math.inf)
    return value


def _index(t) -> tuple[int, ...]:
    return tuple(int(i) for i in t.tolist()) if hasattr(t, "tolist") else tuple(t)


def format_number(x: float | None, *, round_up: bool = False) -> str:
    """Three significant digits; ``round_up`` for tolerances a user copies, which must not end up below ``x``."""
    if x is None:
        return "-"
    if math.isinf(x):
        return "inf"
    if x == 0:
        return "0"
    text = f"{x:.3g}"
    if round_up and float(text) < x:
        text = f"{float(text) + 10 ** (math.floor(math.log10(abs(float(text)))) - 2):.3g}"
    return text
