"""Example generation: the values behind the ``tensor()``/``mask()`` declarations of :mod:`pytest_deploy.spec`.

An example is drawn as a *recipe* (dim values, and per input a seed and a value pattern) from which
the tensors are generated with a seeded ``torch.Generator``. Hypothesis shrinks the recipe: dims go
to their lower bound, patterns to plain uniform, seeds to 0. That keeps generation fast for large
tensors and keeps failing inputs small and describable.

This module holds the value patterns, :func:`make_tensor` (a mask's rows included), the hypothesis strategy of
recipes, and the *plans* (dims and one recipe per input) of the examples every check runs: the opt dims, the dims'
corners, the special patterns, the constant corners, the exploration, a mask's probe. The declarations themselves,
their validation, and ``InputSpace``/``Example`` (which build the planned examples) are in :mod:`pytest_deploy.spec`,
which imports this module; this one knows a declaration only by the members :class:`Declared` lists.

Importing this module does not import torch or hypothesis; generating does.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .tensors import is_bool_dtype, is_float_dtype, is_tensor

#: Value patterns for generated tensors. Index 0 is what shrinking converges to. Every float pattern varies
#: within the tensor (``low`` is values near the range's low end, ``zeros`` values near zero): a constant input
#: (a zero-variance signal, an all-equal row) is a degenerate case no user asked for.
FLOAT_PATTERNS = ("uniform", "extremes", "zeros", "low", "high", "sparse", "mirrored")
#: Integers: ``low``/``high`` spread over the tenth of the range at that end; the constant corners ``zeros`` (every
#: value the one closest to zero), ``lowest`` and ``highest`` (every value the range's end) are the ones an integer
#: input used as flags or ids takes in real use (an all-zero global-attention mask is the common case).
INT_PATTERNS = ("uniform", "low", "high", "zeros", "lowest", "highest")
#: The constant corners of an integer input.
INT_CORNERS = ("zeros", "highest", "lowest")
BOOL_PATTERNS = ("uniform", "false", "true")
#: Padding masks: ``full`` (every position valid) is what shrinking converges to; ``min`` gives each row
#: ``min_valid`` valid positions; ``uniform`` draws each row's valid length.
MASK_PATTERNS = ("full", "uniform", "min")
# Weights (out of 100) with which generation picks each pattern: mostly uniform values.
_PATTERN_WEIGHTS = {"uniform": 65, "extremes": 10, "zeros": 5, "low": 5, "high": 5, "sparse": 5, "mirrored": 5,
                    "false": 15, "true": 15, "full": 20, "min": 15, "lowest": 3, "highest": 3}
#: The special patterns of each kind, in the order they are guaranteed a place among the examples
#: (see :func:`special_plans`).
_SPECIAL = {"float": ("low", "high", "extremes", "zeros", "sparse", "mirrored"),
            "int": ("zeros", "highest", "low", "high", "lowest"),
            "bool": ("false", "true"), "mask": ("full", "min")}
#: Share of the value range that the ``low``, ``high`` and ``zeros`` float patterns spread over.
_NEAR = 0.1


class Declared(Protocol):
    """What generation reads of a declared input (``spec.TensorSpec``, ``spec.MaskSpec``)."""

    @property
    def kind(self) -> str: ...  # "mask" for a padding mask

    @property
    def shape(self) -> tuple[int | str, ...]: ...

    @property
    def torch_dtype(self) -> Any: ...

    def bounds(self, dims: Mapping[str, int] | None = None) -> tuple[Any, Any]: ...

    def concrete_shape(self, dims: Mapping[str, int]) -> tuple[int, ...]: ...


@dataclass(frozen=True)
class InputRecipe:
    """How one generated tensor was made: enough to describe it and to make it again."""

    seed: int
    pattern: str


#: One planned example: its dims and one recipe per input (``InputSpace.build`` makes the tensors).
Plan = tuple[dict[str, int], Sequence[InputRecipe]]


# ------------------------------------------------------------------------------------ tensors


def make_tensor(spec: Declared, dims: Mapping[str, int], recipe: InputRecipe):
    """Generate the tensor ``recipe`` describes. Deterministic: same recipe, same tensor."""
    import torch

    shape = spec.concrete_shape(dims)
    dtype = spec.torch_dtype
    gen = torch.Generator().manual_seed(recipe.seed)
    p = recipe.pattern
    if spec.kind == "mask":
        return _make_mask(spec, shape, p, gen)
    lo, hi = spec.bounds(dims)
    if is_bool_dtype(dtype):
        if p == "false":
            return torch.zeros(shape, dtype=torch.bool)
        if p == "true":
            return torch.ones(shape, dtype=torch.bool)
        return torch.rand(shape, generator=gen) < 0.5
    if not is_float_dtype(dtype):
        if p in INT_CORNERS:  # constant: the value closest to zero, or one end of the range
            value = hi - 1 if p == "highest" else lo if p == "lowest" else min(max(0, lo), hi - 1)
            return torch.full(shape, value, dtype=dtype)
        if p in ("low", "high"):  # the tenth of the range at that end (at least two values where the range has them)
            width = min(hi - lo, max(2, math.ceil((hi - lo) * _NEAR)))
            lo, hi = (lo, lo + width) if p == "low" else (hi - width, hi)
        return torch.randint(lo, hi, shape, generator=gen, dtype=dtype)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    u = torch.rand(shape, generator=gen, dtype=work)
    span = hi - lo
    if p == "zeros":  # values near zero (or near the range's point closest to it): small, but not constant
        centre = min(max(0.0, lo), hi)
        half = span * _NEAR / 10
        t = (centre + (u * 2 - 1) * half).clamp(lo, hi)
    elif p == "low":
        t = lo + u * span * _NEAR
    elif p == "high":
        t = hi - u * span * _NEAR
    elif p == "extremes":
        t = torch.where(torch.rand(shape, generator=gen) < 0.5, torch.tensor(lo, dtype=work), torch.tensor(hi, dtype=work))
    else:
        t = u * span + lo
        if p == "mirrored":  # the uniform example of the same seed reflected in its range: a sign flip for [-a, a]
            t = (lo + hi) - t
        if p == "sparse":
            t = torch.where(torch.rand(shape, generator=gen) < 0.9, torch.zeros((), dtype=work).clamp(lo, hi), t)
    return t.to(dtype)


def _make_mask(spec: Any, shape: tuple[int, ...], pattern: str, gen):
    """One contiguous run of valid positions per row (``random``: scattered ones), at least ``min_valid`` long."""
    import torch

    positions = shape[-1]
    rows = shape[:-1]
    least = min(spec.min_valid, positions)
    if pattern == "full":
        lengths = torch.full(rows, positions, dtype=torch.int64)
    elif pattern == "min":
        lengths = torch.full(rows, least, dtype=torch.int64)
    else:
        lengths = torch.randint(least, positions + 1, rows, generator=gen, dtype=torch.int64)
    index = torch.arange(positions)
    if spec.padding == "random":
        # the ``length`` positions with the smallest random keys are valid
        keys = torch.rand(shape, generator=gen)
        rank = keys.argsort(-1).argsort(-1)
        valid = rank < lengths.unsqueeze(-1)
    elif spec.padding == "left":
        valid = index >= (positions - lengths).unsqueeze(-1)
    else:
        valid = index < lengths.unsqueeze(-1)
    return valid.to(spec.torch_dtype)


# ------------------------------------------------------------------------------------ patterns


def patterns(spec: Declared) -> tuple[str, ...]:
    """The value patterns generation draws from for an input."""
    if spec.kind == "mask":
        return MASK_PATTERNS
    dtype = spec.torch_dtype
    return BOOL_PATTERNS if is_bool_dtype(dtype) else FLOAT_PATTERNS if is_float_dtype(dtype) else INT_PATTERNS


def special_patterns(spec: Declared) -> tuple[str, ...]:
    """An input's special patterns, in the order :func:`special_plans` gives them a place."""
    if spec.kind == "mask":
        return _SPECIAL["mask"]
    dtype = spec.torch_dtype
    kind = "bool" if is_bool_dtype(dtype) else "float" if is_float_dtype(dtype) else "int"
    if kind == "int":
        return tuple(p for p in _SPECIAL["int"] if p in corner_patterns(spec) or p not in INT_CORNERS)
    return _SPECIAL[kind]


def corner_patterns(spec: Declared) -> tuple[str, ...]:
    """An integer input's constant corners that differ from each other (``lowest`` is ``zeros`` unless the range
    holds negative values, ``highest`` is ``zeros`` when it holds none above 0); none for other inputs (a mask has
    its own: full rows and min_valid rows)."""
    dtype = spec.torch_dtype
    if spec.kind == "mask" or is_bool_dtype(dtype) or is_float_dtype(dtype):
        return ()
    lo, hi = spec.bounds()
    out = ["zeros"]
    if not (isinstance(hi, (int, float)) and hi - 1 <= 0):
        out.append("highest")
    if isinstance(lo, (int, float)) and lo < 0:
        out.append("lowest")
    return tuple(out)


def _pattern_for(spec: Declared, pattern: str) -> str:
    """The closest pattern a spec's dtype has: floats take any; ints and bools map low/high/zeros; masks
    take their shortest rows for the low end and full rows for the high end."""
    dtype = spec.torch_dtype
    allowed = patterns(spec)
    if pattern in allowed:
        return pattern
    if spec.kind == "mask":
        return {"low": "min", "zeros": "min", "sparse": "min", "high": "full", "extremes": "full"}.get(pattern, "uniform")
    if is_bool_dtype(dtype):
        return {"low": "false", "zeros": "false", "high": "true"}.get(pattern, "uniform")
    return {"extremes": "highest"}.get(pattern, "uniform")


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


def strategy(specs: Sequence[Declared], bounds: Mapping[str, tuple[int, int]], build: Callable[..., Any],
             representative: bool = False):
    """A hypothesis strategy of ``build(dims, recipes)``: each dim drawn within its bounds, each input a seed and
    one of its patterns (weighted, shrinking to the first); ``representative``: the uniform pattern only (an int8
    check's examples: agreement is promised on the input distribution, not on constant or extreme inputs)."""
    from hypothesis import strategies as st

    dim_st = st.fixed_dictionaries({n: st.integers(lo, hi) for n, (lo, hi) in bounds.items()})
    recipe_sts = [st.builds(InputRecipe, st.integers(0, 2**31 - 1),
                            st.just(_pattern_for(s, "uniform")) if representative else _weighted(patterns(s)))
                  for s in specs]
    return st.builds(build, dim_st, st.tuples(*recipe_sts))


# ------------------------------------------------------------------------------------ plans


def canonical_recipes(specs: Sequence[Declared]) -> tuple[InputRecipe, ...]:
    """Seed 0, uniform values (a mask's padded rows: the artifact is built, traced or exported, from an input that
    uses the mask): the recipes of the example artifacts are built from."""
    return tuple(InputRecipe(0, "uniform") for _ in specs)


def opt_dims(specs: Sequence[Declared], bounds: Mapping[str, tuple[int, int]]) -> dict[str, int]:
    """A representative size per named dim (used for trace/export): not 0 or 1 where the bounds
    allow, and distinct from the other dims and static sizes, so exporters do not specialise."""
    taken = {d for s in specs for d in s.shape if isinstance(d, int)}
    out: dict[str, int] = {}
    for name, (lo, hi) in bounds.items():
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


def dim_corners_bounds(bounds: Mapping[str, tuple[int, int]]) -> tuple[dict[str, int], dict[str, int]]:
    """Every dim at its lower bound; every dim at its upper bound."""
    return {n: lo for n, (lo, _) in bounds.items()}, {n: hi for n, (_, hi) in bounds.items()}


def _unique(corners: Sequence[dict[str, int]]) -> list[dict[str, int]]:
    return [dict(c) for c in dict.fromkeys(tuple(sorted(c.items())) for c in corners)]


def dim_corners(specs: Sequence[Declared], bounds: Mapping[str, tuple[int, int]]) -> list[dict[str, int]]:
    """The opt dims, every dim at its lower bound, every dim at its upper bound; duplicates removed."""
    return _unique([opt_dims(specs, bounds), *dim_corners_bounds(bounds)])


def special_plans(specs: Sequence[Declared], bounds: Mapping[str, tuple[int, int]], limit: int) -> list[Plan]:
    """At most ``limit`` plans that together give every input each of its special patterns: plan k gives each
    input its k-th special pattern, at the dims' corners in turn (``InputSpace.special_examples``)."""
    if not specs or limit <= 0:
        return []
    count = min(limit, max(len(special_patterns(s)) for s in specs))
    # the opt dims, then the upper corner (a mask's shortest rows mean most in long sequences), then the lower
    opt, low, high = opt_dims(specs, bounds), *dim_corners_bounds(bounds)
    corners = _unique([opt, high, low])
    out: list[Plan] = []
    for k in range(count):
        recipes = []
        for i, s in enumerate(specs):
            special = special_patterns(s)
            recipes.append(InputRecipe(101 + k + 7919 * i, special[k] if k < len(special) else "uniform"))
        out.append((corners[k % len(corners)], recipes))
    return out


def corner_plans(specs: Sequence[Declared], bounds: Mapping[str, tuple[int, int]], inputs: Sequence[int]) -> list[Plan]:
    """For each input position in ``inputs``, one plan per constant corner of that input, at the opt dims, the
    other inputs canonical (``InputSpace.corner_examples``)."""
    opt = opt_dims(specs, bounds)
    base = list(canonical_recipes(specs))
    out: list[Plan] = []
    for k in inputs:
        for pattern in corner_patterns(specs[k]):
            recipes = list(base)
            recipes[k] = InputRecipe(0, pattern)
            out.append((opt, recipes))
    return out


def exploration_plans(specs: Sequence[Declared], bounds: Mapping[str, tuple[int, int]]) -> Iterator[Plan]:
    """Endless plans meant to push data-dependent decisions to their other outcome: each dim at its bounds, sign
    flips (``mirrored``), zeros, the range's ends, extremes; then random recipes (``InputSpace.exploration``)."""
    if not specs:
        return
    unique = dim_corners(specs, bounds)
    plan = [("uniform", 0), ("mirrored", 0), ("uniform", 1), ("mirrored", 1), ("zeros", 0), ("low", 0),
            ("high", 0), ("extremes", 0), ("sparse", 0)]
    for pattern, seed in plan:
        for dims in unique:
            yield dims, [InputRecipe(seed + 7919 * i, _pattern_for(s, pattern)) for i, s in enumerate(specs)]
    rng = random.Random(0)
    while True:
        dims = {n: rng.randint(lo, hi) for n, (lo, hi) in bounds.items()}
        pattern = rng.choice(FLOAT_PATTERNS)
        yield dims, [InputRecipe(rng.randrange(2**31), _pattern_for(s, pattern)) for s in specs]


def calibration_plans(specs: Sequence[Declared], bounds: Mapping[str, tuple[int, int]], count: int,
                      seed: int) -> list[Plan]:
    """``count`` plans an int8 check calibrates on, drawn from ``seed`` (the check's): the canonical example's
    first, then uniform values (the generated examples' usual pattern) at dims drawn within their bounds."""
    rng = random.Random(f"calibration-{seed}")
    out: list[Plan] = [(opt_dims(specs, bounds), canonical_recipes(specs))]
    while len(out) < count:
        dims = {n: rng.randint(lo, hi) for n, (lo, hi) in bounds.items()}
        out.append((dims, [InputRecipe(rng.randrange(2**31), _pattern_for(s, "uniform")) for s in specs]))
    return out[:count]


def probe_dims(specs: Sequence[Declared], bounds: Mapping[str, tuple[int, int]], args: Sequence[Any],
               dims: Mapping[str, int], masks: Sequence[int]) -> tuple[dict[str, int] | None, dict[int, str]]:
    """The dims of a probe whose masks (input positions ``masks``) have other sizes than the example of ``args`` and
    ``dims``, the rest as in it (``InputSpace.mask_probe``): every dim of those masks that can vary takes the
    nearest size no other dim or static size has. A mask whose last dim cannot vary is returned with the reason.
    Returns ``(dims or None, {mask: reason})``."""
    current = dict(opt_dims(specs, bounds))
    for spec, arg in zip(specs, args):
        if is_tensor(arg) and arg.dim() == len(spec.shape):
            current.update({d: int(n) for d, n in zip(spec.shape, arg.shape) if isinstance(d, str)})
    current.update(dims)
    static: dict[int, str] = {}
    change: list[str] = []
    for i in masks:
        shape = specs[i].shape
        last = shape[-1] if shape else None
        if not isinstance(last, str) or bounds[last][0] == bounds[last][1]:
            size = last if not isinstance(last, str) else f"{last!r} (bound to {bounds[last][0]})"
            static[i] = f"its last dim {size} cannot vary"
            continue
        change += [d for d in shape if isinstance(d, str) and bounds[d][0] < bounds[d][1] and d not in change]
    if not change:
        return None, static
    out = dict(current)
    taken = {d for s in specs for d in s.shape if isinstance(d, int)}
    taken |= {v for name, v in current.items() if name not in change}
    for name in change:
        lo, hi = bounds[name]
        old = current[name]
        near = [v for step in range(1, 65) for v in (old + step, old - step) if lo <= v <= hi]
        out[name] = next((v for v in near if v not in taken), near[0])
        taken.add(out[name])
    return out, static
