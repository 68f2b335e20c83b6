"""Input specs: ``tensor(...)`` declarations, named dims, and the hypothesis strategies built from them.

Importing this module does not import torch or hypothesis; building examples does.

An example is drawn as a *recipe* (dim values, and per input a seed and a value pattern) from which
the tensors are generated with a seeded ``torch.Generator``. Hypothesis shrinks the recipe: dims go
to their lower bound, patterns to plain uniform, seeds to 0. That keeps generation fast for large
tensors and keeps failing inputs small and describable.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

from .errors import SpecError

#: Value patterns for generated tensors. Index 0 is what shrinking converges to.
FLOAT_PATTERNS = ("uniform", "extremes", "zeros", "low", "high", "sparse", "mirrored")
INT_PATTERNS = ("uniform", "low", "high")
BOOL_PATTERNS = ("uniform", "false", "true")
# Weights (out of 100) with which generation picks each pattern: mostly uniform values.
_PATTERN_WEIGHTS = {"uniform": 65, "extremes": 10, "zeros": 5, "low": 5, "high": 5, "sparse": 5, "mirrored": 5,
                    "false": 15, "true": 15}

#: Refuse to allocate examples larger than this many bytes (per example, all inputs together), or than
#: half the memory available (validate.check_example_size).
MAX_EXAMPLE_BYTES = 1 << 30


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def _is_float(dtype: Any) -> bool:
    return bool(getattr(dtype, "is_floating_point", False))


def _is_bool(dtype: Any) -> bool:
    return _dtype_name(dtype) == "bool"


@dataclass(frozen=True)
class TensorSpec:
    """One input tensor: shape of ints and dim names, dtype and value range."""

    shape: tuple[int | str, ...]
    dtype: Any = None  # torch.dtype; None means torch.float32 (resolved lazily)
    low: float | None = None
    high: float | None = None

    @property
    def torch_dtype(self):
        import torch

        return torch.float32 if self.dtype is None else self.dtype

    def dim_names(self) -> list[str]:
        return [d for d in self.shape if isinstance(d, str)]

    def bounds(self) -> tuple[float, float]:
        """Value range: floats in [low, high], integers in [low, high), bools either."""
        dtype = self.torch_dtype
        if _is_bool(dtype):
            return (0, 2)
        if _is_float(dtype):
            return (-1.0 if self.low is None else self.low, 1.0 if self.high is None else self.high)
        return (0 if self.low is None else int(self.low), 10 if self.high is None else int(self.high))

    def concrete_shape(self, dims: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(dims[d] if isinstance(d, str) else d for d in self.shape)

    def describe(self) -> str:
        shape = ", ".join(str(d) for d in self.shape)
        lo, hi = self.bounds()
        dtype = self.torch_dtype
        if _is_bool(dtype):
            rng = ""
        elif _is_float(dtype):
            rng = f" in [{lo:g}, {hi:g}]"
        else:
            rng = f" in [{lo}, {hi})"
        return f"{_dtype_name(dtype)}[{shape}]{rng}"

    def __repr__(self) -> str:
        return f"tensor({self.describe()})"


def tensor(*shape: int | str, dtype: Any = None, low: float | None = None, high: float | None = None) -> TensorSpec:
    """Declare one input tensor.

    Each dim is an int or a name bound by ``dims=``; no dims means a scalar tensor. Float values
    lie in [low, high] (default [-1, 1]); integer values in [low, high) as with ``torch.randint``
    (default [0, 10)); bool values are either.
    """
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    for i, d in enumerate(shape):
        if isinstance(d, bool) or not isinstance(d, (int, str)):
            raise SpecError(
                f"tensor(): dim {i} is {d!r} ({type(d).__name__}); each dim must be an int or a dim name "
                f"bound by dims=, e.g. tensor('batch', 3, 32, 32) with dims={{'batch': (1, 8)}}"
            )
        if isinstance(d, int) and d < 0:
            raise SpecError(f"tensor(): dim {i} is {d}; sizes must be >= 0")
        if isinstance(d, str) and not d.isidentifier():
            raise SpecError(f"tensor(): dim name {d!r} is not an identifier; use names like 'batch' or 'seq'")
    if dtype is not None:
        import torch

        if not isinstance(dtype, torch.dtype):
            raise SpecError(f"tensor(): dtype={dtype!r} is not a torch.dtype; pass e.g. dtype=torch.int64")
        if dtype.is_complex:
            raise SpecError(f"tensor(): dtype={dtype} is complex; pytest-deploy generates real, integer and bool inputs")
    for name, value in (("low", low), ("high", high)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
            raise SpecError(f"tensor(): {name}={value!r} must be a finite number")
    spec = TensorSpec(tuple(shape), dtype, low, high)
    if not _is_bool(spec.torch_dtype):
        lo, hi = spec.bounds()
        if lo > hi or (lo == hi and not _is_float(spec.torch_dtype)):
            raise SpecError(
                f"tensor(): empty value range low={lo}, high={hi}"
                + ("" if _is_float(spec.torch_dtype) else " (integers are drawn from [low, high))")
            )
    return spec


# --------------------------------------------------------------------------------------- dims


def normalize_dims(dims: Mapping[str, Any] | None) -> dict[str, tuple[int, int]]:
    """``{"batch": (1, 8), "seq": 16}`` → ``{"batch": (1, 8), "seq": (16, 16)}``, validated."""
    if dims is None:
        return {}
    if not isinstance(dims, Mapping):
        raise SpecError(f"dims={dims!r} must be a dict of name -> (min, max), e.g. dims={{'batch': (1, 8)}}")
    out: dict[str, tuple[int, int]] = {}
    for name, bound in dims.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise SpecError(f"dims: key {name!r} is not a dim name; use identifiers such as 'batch'")
        if isinstance(bound, int) and not isinstance(bound, bool):
            lo = hi = bound
        elif isinstance(bound, (tuple, list)) and len(bound) == 2 and all(
            isinstance(b, int) and not isinstance(b, bool) for b in bound
        ):
            lo, hi = bound
        else:
            raise SpecError(f"dims[{name!r}]={bound!r} must be an int or a (min, max) pair of ints")
        if lo < 0:
            raise SpecError(f"dims[{name!r}]=({lo}, {hi}): sizes must be >= 0")
        if lo > hi:
            raise SpecError(f"dims[{name!r}]=({lo}, {hi}): min > max; write ({hi}, {lo})")
        out[name] = (lo, hi)
    return out


# ------------------------------------------------------------------------------------ examples


@dataclass(frozen=True)
class InputRecipe:
    """How one generated tensor was made: enough to describe it and to make it again."""

    seed: int
    pattern: str


@dataclass
class Example:
    """One set of forward arguments, with the recipe that produced it (None for user-given tensors)."""

    args: tuple
    dims: dict[str, int] = field(default_factory=dict)
    recipes: tuple[InputRecipe | None, ...] | None = None
    specs: tuple[TensorSpec | None, ...] | None = None
    label: str = "generated"

    def clone_args(self) -> tuple:
        return tuple(a.clone() if hasattr(a, "clone") else a for a in self.args)

    def describe(self, names: Sequence[str] | None = None) -> str:
        """One line per input: name, dtype, shape, how it was generated and the values' actual range."""
        lines = []
        for i, arg in enumerate(self.args):
            name = names[i] if names and i < len(names) else f"input {i}"
            lines.append(f"{name}: {describe_value(arg)}{self._how(i)}")
        if self.dims:
            lines.append("dims: " + ", ".join(f"{k}={v}" for k, v in self.dims.items()))
        return "\n".join(lines)

    def _how(self, i: int) -> str:
        if not self.recipes or self.recipes[i] is None:
            return f" ({self.label})"
        r = self.recipes[i]
        spec = self.specs[i] if self.specs else None
        bounds = ""
        if spec is not None and not _is_bool(spec.torch_dtype):
            lo, hi = spec.bounds()
            bounds = f" in [{lo:g}, {hi:g}]" if _is_float(spec.torch_dtype) else f" in [{lo}, {hi})"
        return f" (pattern {r.pattern}{bounds}, seed {r.seed})"


def describe_value(value: Any) -> str:
    """``float32[2, 3] range [-0.98, 0.97]`` for tensors; repr for anything else."""
    if hasattr(value, "dtype") and hasattr(value, "shape"):
        shape = ", ".join(str(s) for s in value.shape)
        text = f"{_dtype_name(value.dtype)}[{shape}]"
        if value.numel() and not value.is_complex() and value.device.type != "meta":
            v = value.detach()
            if _is_bool(v.dtype):
                text += f" {int(v.sum())} of {v.numel()} true"
            else:
                lo, hi = v.min().item(), v.max().item()
                text += f" range [{lo:.4g}, {hi:.4g}]"
        return text
    return repr(value)


def make_tensor(spec: TensorSpec, dims: Mapping[str, int], recipe: InputRecipe):
    """Generate the tensor ``recipe`` describes. Deterministic: same recipe, same tensor."""
    import torch

    shape = spec.concrete_shape(dims)
    dtype = spec.torch_dtype
    gen = torch.Generator().manual_seed(recipe.seed)
    lo, hi = spec.bounds()
    p = recipe.pattern
    if _is_bool(dtype):
        if p == "false":
            return torch.zeros(shape, dtype=torch.bool)
        if p == "true":
            return torch.ones(shape, dtype=torch.bool)
        return torch.rand(shape, generator=gen) < 0.5
    if not _is_float(dtype):
        if p == "low":
            return torch.full(shape, lo, dtype=dtype)
        if p == "high":
            return torch.full(shape, hi - 1, dtype=dtype)
        return torch.randint(lo, hi, shape, generator=gen, dtype=dtype)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    if p == "zeros":
        t = torch.zeros(shape, dtype=work).clamp(lo, hi)
    elif p == "low":
        t = torch.full(shape, lo, dtype=work)
    elif p == "high":
        t = torch.full(shape, hi, dtype=work)
    elif p == "extremes":
        t = torch.where(torch.rand(shape, generator=gen) < 0.5, torch.tensor(lo, dtype=work), torch.tensor(hi, dtype=work))
    else:
        t = torch.rand(shape, generator=gen, dtype=work) * (hi - lo) + lo
        if p == "mirrored":  # the uniform example of the same seed reflected in its range: a sign flip for [-a, a]
            t = (lo + hi) - t
        if p == "sparse":
            t = torch.where(torch.rand(shape, generator=gen) < 0.9, torch.zeros((), dtype=work).clamp(lo, hi), t)
    return t.to(dtype)


class InputSpace:
    """The set of examples one model accepts: from ``tensor()`` specs, concrete tensors or a strategy."""

    def __init__(self, specs=None, dims=None, strategy=None, given=None, names=None):
        self.specs: tuple[TensorSpec, ...] = tuple(specs or ())
        self.dims: dict[str, tuple[int, int]] = dict(dims or {})
        self.strategy_override = strategy
        self.given: tuple = tuple(given or ())  # user-supplied example args, run first
        self.names = list(names or [])

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def resolve(cls, inputs: Any, dims: Mapping[str, Any] | None, example_inputs: Any = None, names=None) -> "InputSpace":
        """Build the input space from the marker's ``inputs``/``dims`` and any example the test returned."""
        bounds = normalize_dims(dims)
        given = _as_args(example_inputs) if example_inputs is not None else None
        if inputs is None:
            if given is None:
                raise SpecError(
                    "no inputs declared: pass inputs=[tensor(...), ...] to the marker, or return "
                    "(model, example_inputs) from the test"
                )
            inputs = given
        if _is_strategy(inputs):
            if bounds:
                raise SpecError("dims= cannot be combined with a hypothesis strategy for inputs; the strategy decides shapes")
            return cls(strategy=inputs, given=given, names=names)
        items = _as_args(inputs)
        specs = []
        for i, item in enumerate(items):
            if isinstance(item, TensorSpec):
                specs.append(item)
            elif _is_tensor(item):
                specs.append(_spec_from_tensor(item))
            elif _is_strategy(item):
                raise SpecError(
                    f"inputs[{i}] is a hypothesis strategy; pass one strategy for all inputs (drawing a tuple), "
                    "or tensor(...) specs for each"
                )
            else:
                raise SpecError(
                    f"inputs[{i}] is {type(item).__name__} ({item!r:.60}); each input must be tensor(...), a "
                    "torch.Tensor, or pass one hypothesis strategy for all inputs"
                )
        used = {n for s in specs for n in s.dim_names()}
        missing = sorted(used - set(bounds))
        if missing:
            where = [f"inputs[{i}] {s.describe()}" for i, s in enumerate(specs) if set(s.dim_names()) & set(missing)]
            raise SpecError(
                f"dim {', '.join(map(repr, missing))} used by {'; '.join(where)} is not bound: add "
                f"dims={{{', '.join(repr(m) + ': (min, max)' for m in missing)}}}"
            )
        unused = sorted(set(bounds) - used)
        if unused:
            raise SpecError(f"dims {', '.join(map(repr, unused))} are not used by any input; remove them or use them in tensor(...)")
        explicit = tuple(item for item in items if _is_tensor(item))
        space = cls(specs, bounds, given=given or (explicit if len(explicit) == len(items) else None), names=names)
        from .validate import check_example_size

        check_example_size(specs, bounds, names or [], cap=MAX_EXAMPLE_BYTES)
        if given is not None:
            space._check_given_matches(given)
        return space

    def _check_given_matches(self, given: tuple) -> None:
        if len(given) != len(self.specs):
            raise SpecError(
                f"the test returned {len(given)} example input(s) but inputs= declares {len(self.specs)}; make them agree"
            )

    # -- examples ----------------------------------------------------------------------------

    @property
    def arity(self) -> int | None:
        return len(self.specs) if self.specs else (len(self.given) if self.given else None)

    def opt_dims(self) -> dict[str, int]:
        """A representative size per named dim (used for trace/export): not 0 or 1 where the bounds
        allow, and distinct from the other dims and static sizes, so exporters do not specialise."""
        taken = {d for s in self.specs for d in s.shape if isinstance(d, int)}
        out: dict[str, int] = {}
        for name, (lo, hi) in self.dims.items():
            choice = None
            for v in range(max(lo, 2), min(hi, max(lo, 2) + 64) + 1):
                if v not in taken:
                    choice = v
                    break
            if choice is None:
                choice = max(lo, min(hi, 2))
            out[name] = choice
            taken.add(choice)
        return out

    def canonical(self) -> Example:
        """The example artifacts are built from: the user's tensors if given, else opt dims, uniform, seed 0."""
        if self.given:
            return Example(tuple(self.given), label="example given by the test")
        if self.strategy_override is not None:
            from hypothesis import find

            args = find(self.strategy_override, lambda _: True)
            return Example(_as_args(args), label="minimal example of the inputs strategy")
        ex = self.build(self.opt_dims(), tuple(InputRecipe(0, "uniform") for _ in self.specs))
        ex.label = "the input the artifact was built from"
        return ex

    def build(self, dims: Mapping[str, int], recipes: Sequence[InputRecipe]) -> Example:
        args = tuple(make_tensor(s, dims, r) for s, r in zip(self.specs, recipes))
        return Example(args, dict(dims), tuple(recipes), self.specs)

    def strategy(self):
        """A hypothesis strategy of :class:`Example`."""
        from hypothesis import strategies as st

        if self.strategy_override is not None:
            return self.strategy_override.map(lambda a: Example(_as_args(a), label="drawn from the inputs strategy"))

        dim_st = st.fixed_dictionaries({n: st.integers(lo, hi) for n, (lo, hi) in self.dims.items()})
        recipe_sts = []
        for s in self.specs:
            dtype = s.torch_dtype
            patterns = BOOL_PATTERNS if _is_bool(dtype) else FLOAT_PATTERNS if _is_float(dtype) else INT_PATTERNS
            recipe_sts.append(st.builds(InputRecipe, st.integers(0, 2**31 - 1), _weighted(patterns)))
        return st.builds(self.build, dim_st, st.tuples(*recipe_sts))

    def dim_corners(self) -> list[dict[str, int]]:
        """The opt dims, every dim at its lower bound, every dim at its upper bound; duplicates removed."""
        corners = [self.opt_dims(), {n: lo for n, (lo, _) in self.dims.items()}, {n: hi for n, (_, hi) in self.dims.items()}]
        return [dict(c) for c in dict.fromkeys(tuple(sorted(c.items())) for c in corners)]

    def exploration(self) -> Iterator[Example]:
        """Examples meant to push data-dependent decisions to their other outcome: each dim at its
        bounds, sign flips (``mirrored``), zeros, the range's ends, extremes; then random recipes."""
        if not self.specs:
            return
        unique = self.dim_corners()
        plan = [("uniform", 0), ("mirrored", 0), ("uniform", 1), ("mirrored", 1), ("zeros", 0), ("low", 0),
                ("high", 0), ("extremes", 0), ("sparse", 0)]
        for pattern, seed in plan:
            for dims in unique:
                yield self.build(dims, [InputRecipe(seed + 7919 * i, _pattern_for(s, pattern))
                                        for i, s in enumerate(self.specs)])
        rng = random.Random(0)
        while True:
            dims = {n: rng.randint(lo, hi) for n, (lo, hi) in self.dims.items()}
            pattern = rng.choice(FLOAT_PATTERNS)
            yield self.build(dims, [InputRecipe(rng.randrange(2**31), _pattern_for(s, pattern)) for s in self.specs])

    def describe(self) -> str:
        if self.strategy_override is not None:
            return f"strategy {self.strategy_override!r}"
        text = ", ".join(s.describe() for s in self.specs)
        if self.dims:
            text += " with " + ", ".join(f"{k} in [{lo}, {hi}]" for k, (lo, hi) in self.dims.items())
        return text


def _pattern_for(spec: TensorSpec, pattern: str) -> str:
    """The closest pattern a spec's dtype has: floats take any; ints and bools map low/high/zeros."""
    dtype = spec.torch_dtype
    allowed = BOOL_PATTERNS if _is_bool(dtype) else FLOAT_PATTERNS if _is_float(dtype) else INT_PATTERNS
    if pattern in allowed:
        return pattern
    if _is_bool(dtype):
        return {"low": "false", "zeros": "false", "high": "true"}.get(pattern, "uniform")
    return {"zeros": "low"}.get(pattern, "uniform")


def _weighted(patterns: Sequence[str]):
    """Pick a pattern, mostly the first; shrinks towards the first."""
    from hypothesis import strategies as st

    weights = [_PATTERN_WEIGHTS.get(p, 5) for p in patterns]
    total = sum(weights)

    def pick(k: int) -> str:
        for p, w in zip(patterns, weights):
            if k < w:
                return p
            k -= w
        return patterns[-1]

    return st.integers(0, total - 1).map(pick)


def _is_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "dtype") and hasattr(x, "shape")


def _is_strategy(x: Any) -> bool:
    return any(c.__name__ == "SearchStrategy" for c in type(x).__mro__)


def _as_args(x: Any) -> tuple:
    if isinstance(x, (tuple, list)):
        return tuple(x)
    return (x,)


def _spec_from_tensor(t) -> TensorSpec:
    """A concrete example tensor: keep its shape, dtype and value range."""
    import torch

    dtype = t.dtype
    if dtype == torch.bool:
        return TensorSpec(tuple(t.shape), dtype)
    if t.numel() == 0:
        return TensorSpec(tuple(t.shape), dtype)
    lo, hi = t.min().item(), t.max().item()
    if dtype.is_floating_point:
        if lo == hi:
            lo, hi = lo - 1.0, hi + 1.0
        return TensorSpec(tuple(t.shape), dtype, float(lo), float(hi))
    return TensorSpec(tuple(t.shape), dtype, int(lo), int(hi) + 1)
