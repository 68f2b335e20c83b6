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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import SpecError
from .tensors import clone_args, is_tensor

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
#: (see :meth:`InputSpace.special_examples`).
_SPECIAL = {"float": ("low", "high", "extremes", "zeros", "sparse", "mirrored"),
            "int": ("zeros", "highest", "low", "high", "lowest"),
            "bool": ("false", "true"), "mask": ("full", "min")}
#: Share of the value range that the ``low``, ``high`` and ``zeros`` float patterns spread over.
_NEAR = 0.1

#: How special-pattern examples are labelled in failure messages.
SPECIAL_LABEL = "special pattern, always run"

#: Padding layouts of :func:`mask`.
PADDINGS = ("right", "left", "random")

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
    #: integer bounds may name a dim (``high="seq"``): the bound follows that dim's value in each example
    low: float | str | None = None
    high: float | str | None = None

    kind = "tensor"

    @property
    def torch_dtype(self):
        import torch

        return torch.float32 if self.dtype is None else self.dtype

    def dim_names(self) -> list[str]:
        return [d for d in self.shape if isinstance(d, str)]

    def bound_names(self) -> list[str]:
        """The dims that ``low``/``high`` name."""
        return [b for b in (self.low, self.high) if isinstance(b, str)]

    def bounds(self, dims: Mapping[str, int] | None = None) -> tuple[Any, Any]:
        """Value range: floats in [low, high], integers in [low, high), bools either. A bound that names a
        dim takes that dim's value from ``dims`` (without ``dims`` it stays the name)."""
        dtype = self.torch_dtype
        if _is_bool(dtype):
            return (0, 2)
        if _is_float(dtype):
            return (-1.0 if self.low is None else self.low, 1.0 if self.high is None else self.high)

        def value(bound, default):
            if bound is None:
                return default
            if isinstance(bound, str):
                return bound if dims is None else int(dims[bound])
            return int(bound)

        return (value(self.low, 0), value(self.high, 10))

    def concrete_shape(self, dims: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(dims[d] if isinstance(d, str) else d for d in self.shape)

    def holds_constant(self) -> bool:
        """Whether every value of this input is the same whatever the example (``low=1, high=2`` for integers:
        an all-ones mask; ``low == high`` for floats): only its shape can change."""
        lo, hi = self.bounds()
        if isinstance(lo, str) or isinstance(hi, str) or _is_bool(self.torch_dtype):
            return False
        return lo == hi if _is_float(self.torch_dtype) else hi - lo <= 1

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

    def patterns(self) -> tuple[str, ...]:
        """The value patterns generation draws from for this input."""
        dtype = self.torch_dtype
        return BOOL_PATTERNS if _is_bool(dtype) else FLOAT_PATTERNS if _is_float(dtype) else INT_PATTERNS

    def special_patterns(self) -> tuple[str, ...]:
        dtype = self.torch_dtype
        kind = "bool" if _is_bool(dtype) else "float" if _is_float(dtype) else "int"
        if kind == "int":
            return tuple(p for p in _SPECIAL["int"] if p in self.corner_patterns() or p not in INT_CORNERS)
        return _SPECIAL[kind]

    def corner_patterns(self) -> tuple[str, ...]:
        """An integer input's constant corners that differ from each other (``lowest`` is ``zeros`` unless the range
        holds negative values, ``highest`` is ``zeros`` when it holds none above 0); none for other inputs."""
        dtype = self.torch_dtype
        if _is_bool(dtype) or _is_float(dtype):
            return ()
        lo, hi = self.bounds()
        out = ["zeros"]
        if not (isinstance(hi, (int, float)) and hi - 1 <= 0):
            out.append("highest")
        if isinstance(lo, (int, float)) and lo < 0:
            out.append("lowest")
        return tuple(out)

    def canonical_pattern(self) -> str:
        return "uniform"

    def __repr__(self) -> str:
        return f"tensor({self.describe()})"


@dataclass(frozen=True, repr=False)
class MaskSpec(TensorSpec):
    """A padding mask: along the last dim, each row holds one contiguous run of valid positions (1 or True)
    at least ``min_valid`` long; ``padding`` says where the run lies (``right``: ones then zeros, ``left``:
    zeros then ones, ``random``: any pattern with at least ``min_valid`` ones)."""

    padding: str = "right"
    min_valid: int = 1

    kind = "mask"

    def bounds(self, dims: Mapping[str, int] | None = None) -> tuple[Any, Any]:
        return (0, 2)

    def holds_constant(self) -> bool:
        return False  # its padding varies

    def corner_patterns(self) -> tuple[str, ...]:
        return ()  # its own: full rows and min_valid rows

    def describe(self) -> str:
        shape = ", ".join(str(d) for d in self.shape)
        return f"mask {_dtype_name(self.torch_dtype)}[{shape}] {self.padding}-padded, >= {self.min_valid} valid"

    def __repr__(self) -> str:
        return f"mask({self.describe()})"

    def patterns(self) -> tuple[str, ...]:
        return MASK_PATTERNS

    def special_patterns(self) -> tuple[str, ...]:
        return _SPECIAL["mask"]

    def canonical_pattern(self) -> str:
        # padded rows: the artifact is built (traced, exported) from an input that uses the mask
        return "uniform"

    def valid_lengths(self, value) -> list[int]:
        """Valid positions per row of a generated mask."""
        return [int(n) for n in value.reshape(-1, value.shape[-1]).sum(-1).tolist()] if value.dim() else [int(value)]


def mask(*shape: int | str, padding: str = "right", min_valid: int = 1, dtype: Any = None) -> MaskSpec:
    """Declare a padding mask input (``attention_mask``): 0/1 of ``dtype`` (default int64; ``torch.bool``
    gives False/True). Along the last dim each row holds a contiguous run of at least ``min_valid`` valid
    positions: ``padding="right"`` (ones then zeros), ``"left"`` (zeros then ones) or ``"random"`` (any
    pattern with at least ``min_valid`` ones). Generation draws each row's valid length; the full-length
    and the ``min_valid``-length rows are always among the examples.

    Outputs whose leading dims are this mask's dims are compared only where the mask is 1
    (``compare_masked=True`` compares every position).
    """
    import torch

    base = tensor(*shape, dtype=torch.int64 if dtype is None else dtype)
    if not base.shape:
        raise SpecError("mask(): a mask needs at least one dim, e.g. mask('batch', 'seq')")
    if base.torch_dtype.is_floating_point:
        raise SpecError(f"mask(): dtype={base.torch_dtype} is a float type; a mask is an integer (default "
                        "torch.int64) or torch.bool tensor")
    if padding not in PADDINGS:
        raise SpecError(f"mask(): padding={padding!r}; use one of {', '.join(map(repr, PADDINGS))}")
    if isinstance(min_valid, bool) or not isinstance(min_valid, int) or min_valid < 0:
        raise SpecError(f"mask(): min_valid={min_valid!r} must be an int >= 0")
    last = base.shape[-1]
    if isinstance(last, int):
        if last == 0:
            raise SpecError("mask(): the last dim (the positions a row masks) has size 0; a mask needs positions")
        if min_valid > last:
            raise SpecError(f"mask(): min_valid={min_valid} is larger than the last dim ({last}); lower min_valid")
    return MaskSpec(base.shape, base.dtype, None, None, padding, min_valid)


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
    named = dtype is not None and not dtype.is_floating_point and dtype != torch.bool
    for name, value in (("low", low), ("high", high)):
        if isinstance(value, str) and value.isidentifier():
            if not named:
                raise SpecError(f"tensor(): {name}={value!r} names a dim, which only integer tensors can take as a "
                                "bound (positions, lengths, indices); pass dtype=torch.int64, or a number")
            continue
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
            raise SpecError(f"tensor(): {name}={value!r} must be a finite number, or for integers a dim name")
    spec = TensorSpec(tuple(shape), dtype, low, high)
    if not _is_bool(spec.torch_dtype) and not spec.bound_names():
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
    recipes: tuple[InputRecipe, ...] | None = None
    specs: tuple[TensorSpec | None, ...] | None = None
    label: str = "generated"

    def clone_args(self) -> tuple:
        return clone_args(self.args)

    def describe(self, names: Sequence[str] | None = None) -> str:
        """One line per input: name, dtype, shape, how it was generated and the values' actual range."""
        lines = []
        for i, arg in enumerate(self.args):
            name = names[i] if names and i < len(names) else f"input {i}"
            spec = self.specs[i] if self.specs and i < len(self.specs) else None
            text = describe_value(arg)
            if isinstance(spec, MaskSpec) and hasattr(arg, "dim"):
                lengths = spec.valid_lengths(arg)
                shown = ", ".join(map(str, lengths[:8])) + (", ..." if len(lengths) > 8 else "")
                text = f"{_dtype_name(arg.dtype)}[{', '.join(map(str, arg.shape))}] {spec.padding}-padded mask, " \
                       f"valid lengths [{shown}]"
            lines.append(f"{name}: {text}{self._how(i)}")
        if self.dims:
            lines.append("dims: " + ", ".join(f"{k}={v}" for k, v in self.dims.items()))
        return "\n".join(lines)

    def _how(self, i: int) -> str:
        r = self.recipes[i] if self.recipes else None
        if r is None:
            return f" ({self.label})"
        spec = self.specs[i] if self.specs else None
        bounds = ""
        if spec is not None and not _is_bool(spec.torch_dtype) and not isinstance(spec, MaskSpec):
            lo, hi = spec.bounds(self.dims if set(spec.bound_names()) <= set(self.dims) else None)
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
    p = recipe.pattern
    if isinstance(spec, MaskSpec):
        return _make_mask(spec, shape, p, gen)
    lo, hi = spec.bounds(dims)
    if _is_bool(dtype):
        if p == "false":
            return torch.zeros(shape, dtype=torch.bool)
        if p == "true":
            return torch.ones(shape, dtype=torch.bool)
        return torch.rand(shape, generator=gen) < 0.5
    if not _is_float(dtype):
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


def _make_mask(spec: MaskSpec, shape: tuple[int, ...], pattern: str, gen):
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


class InputSpace:
    """The set of examples one model accepts: from ``tensor()`` specs, concrete tensors or a strategy.

    ``keywords``: the inputs were declared as a dict, and ``forward`` takes them as keyword arguments named
    ``names`` (in that order); otherwise they are positional and ``names`` are forward's parameter names.
    """

    def __init__(self, specs=None, dims=None, strategy=None, given=None, names=None, keywords: bool = False):
        self.specs: tuple[TensorSpec, ...] = tuple(specs or ())
        self.dims: dict[str, tuple[int, int]] = dict(dims or {})
        self.strategy_override = strategy
        self.given: tuple = tuple(given or ())  # user-supplied example args, run first
        self.names = list(names or [])
        self.keywords = keywords

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def resolve(cls, inputs: Any, dims: Mapping[str, Any] | None, example_inputs: Any = None, names=None,
                parameters: Sequence[str] | None = None) -> InputSpace:
        """Build the input space from the marker's ``inputs``/``dims`` and any example the test returned.

        ``names`` are forward's positional parameter names; ``parameters`` all of its parameter names in
        order (None when unknown, as at collection): dict inputs are put in that order and must name them.
        """
        bounds = normalize_dims(dims)
        keywords = isinstance(inputs, Mapping) or (inputs is None and isinstance(example_inputs, Mapping))
        if keywords:
            inputs, example_inputs, names = _keyword_inputs(inputs, example_inputs, parameters)
        given = _as_args(example_inputs) if example_inputs is not None else None
        if inputs is None:
            if given is None:
                raise SpecError(
                    "no inputs declared: pass inputs=[tensor(...), ...] (or a dict name -> tensor(...) for keyword "
                    "arguments) to the marker, or return (model, example_inputs) from the test"
                )
            inputs = given
        if _is_strategy(inputs):
            if bounds:
                raise SpecError("dims= cannot be combined with a hypothesis strategy for inputs; the strategy decides shapes")
            return cls(strategy=inputs, given=given, names=names)
        items = _as_args(inputs)
        label = (lambda i: f"inputs[{names[i]!r}]") if keywords else (lambda i: f"inputs[{i}]")
        specs = []
        for i, item in enumerate(items):
            if isinstance(item, TensorSpec):
                specs.append(item)
            elif is_tensor(item):
                specs.append(_spec_from_tensor(item))
            elif _is_strategy(item):
                raise SpecError(
                    f"{label(i)} is a hypothesis strategy; pass one strategy for all inputs (drawing a tuple), "
                    "or tensor(...) specs for each"
                )
            else:
                raise SpecError(
                    f"{label(i)} is {type(item).__name__} ({item!r:.60}); each input must be tensor(...), mask(...), "
                    "a torch.Tensor, or pass one hypothesis strategy for all inputs"
                )
        used = {n for s in specs for n in s.dim_names()}
        missing = sorted(used - set(bounds))
        if missing:
            where = [f"{label(i)} {s.describe()}" for i, s in enumerate(specs) if set(s.dim_names()) & set(missing)]
            raise SpecError(
                f"dim {', '.join(map(repr, missing))} used by {'; '.join(where)} is not bound: add "
                f"dims={{{', '.join(repr(m) + ': (min, max)' for m in missing)}}}"
            )
        for i, s in enumerate(specs):
            _check_named_bounds(s, bounds, label(i))
            if isinstance(s, MaskSpec):
                _check_mask(s, bounds, label(i))
        unused = sorted(set(bounds) - used - {n for s in specs for n in s.bound_names()})
        if unused:
            raise SpecError(f"dims {', '.join(map(repr, unused))} are not used by any input; remove them or use them in tensor(...)")
        explicit = tuple(item for item in items if is_tensor(item))
        space = cls(specs, bounds, given=given or (explicit if len(explicit) == len(items) else None), names=names,
                    keywords=keywords)
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

    # -- calling forward ----------------------------------------------------------------------

    def call(self, fn: Callable[..., Any], args: Sequence[Any]) -> Any:
        """``fn(*args)``, or ``fn(name=arg, ...)`` for inputs declared as a dict."""
        if self.keywords:
            return fn(**dict(zip(self.names, args)))
        return fn(*args)

    def split(self, args: Sequence[Any]) -> tuple[tuple, dict[str, Any]]:
        """``(args, kwargs)`` for an exporter: ``((), {name: arg})`` for dict inputs, else ``(args, {})``."""
        if self.keywords:
            return (), dict(zip(self.names, args))
        return tuple(args), {}

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
            return Example(tuple(self.given), label="example given by the test", specs=self.specs or None)
        if self.strategy_override is not None:
            from hypothesis import find

            args = find(self.strategy_override, lambda _: True)
            return Example(_as_args(args), label="minimal example of the inputs strategy")
        ex = self.build(self.opt_dims(), tuple(InputRecipe(0, s.canonical_pattern()) for s in self.specs))
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
        recipe_sts = [st.builds(InputRecipe, st.integers(0, 2**31 - 1), _weighted(s.patterns())) for s in self.specs]
        return st.builds(self.build, dim_st, st.tuples(*recipe_sts))

    def special_examples(self, limit: int) -> list[Example]:
        """At most ``limit`` examples that together give every input each of its special patterns (near the
        range's ends, extremes, near zero, sparse, sign-flipped; a mask's full and ``min_valid`` lengths;
        an integer's ends; a bool's all-false and all-true), so that a verdict never depends on which
        patterns hypothesis happened to draw. Example k gives each input its k-th special pattern, at the
        dims' corners in turn."""
        if not self.specs or limit <= 0:
            return []
        count = min(limit, max(len(s.special_patterns()) for s in self.specs))
        # the opt dims, then the upper corner (a mask's shortest rows mean most in long sequences), then the lower
        opt, low, high = self.opt_dims(), *self.dim_corners_bounds()
        corners = [dict(c) for c in dict.fromkeys(tuple(sorted(c.items())) for c in (opt, high, low))]
        out = []
        for k in range(count):
            recipes = []
            for i, s in enumerate(self.specs):
                special = s.special_patterns()
                recipes.append(InputRecipe(101 + k + 7919 * i, special[k] if k < len(special) else "uniform"))
            ex = self.build(corners[k % len(corners)], recipes)
            ex.label = SPECIAL_LABEL
            out.append(ex)
        return out

    def corner_examples(self, inputs: Sequence[int]) -> list[Example]:
        """For each input position in ``inputs``, one example per constant corner of that input
        (:meth:`TensorSpec.corner_patterns`: all zero, all at an end of its range), at the opt dims, the other
        inputs as in the canonical example."""
        opt = self.opt_dims()
        base = [InputRecipe(0, s.canonical_pattern()) for s in self.specs]
        out = []
        for k in inputs:
            for pattern in self.specs[k].corner_patterns():
                recipes = list(base)
                recipes[k] = InputRecipe(0, pattern)
                out.append(self.build(opt, recipes))
        return out

    def mask_probe(self, example: Example, masks: Sequence[int]) -> tuple[Example | None, dict[int, str]]:
        """An example whose ``mask()`` inputs (positions ``masks``) have other sizes than in ``example``, the
        rest as in it: the outputs whose leading dims follow a mask's dims in both are per-token.

        Every dim of those masks that can vary takes another size (the nearest one no other dim or static
        size of the inputs has). A mask whose last dim (the one padding runs along) cannot vary (a number,
        or a dim bound to one size) cannot tell a per-token output from one that has its size by chance: it
        is returned with the reason, and leads no masked output. Returns ``(probe or None, {mask: reason})``."""
        current = dict(self.opt_dims())
        for spec, arg in zip(self.specs, example.args):
            if is_tensor(arg) and arg.dim() == len(spec.shape):
                current.update({d: int(n) for d, n in zip(spec.shape, arg.shape) if isinstance(d, str)})
        current.update(example.dims)
        static: dict[int, str] = {}
        change: list[str] = []
        for i in masks:
            shape = self.specs[i].shape
            last = shape[-1] if shape else None
            if not isinstance(last, str) or self.dims[last][0] == self.dims[last][1]:
                size = last if not isinstance(last, str) else f"{last!r} (bound to {self.dims[last][0]})"
                static[i] = f"its last dim {size} cannot vary"
                continue
            change += [d for d in shape if isinstance(d, str) and self.dims[d][0] < self.dims[d][1] and d not in change]
        if not change:
            return None, static
        dims = dict(current)
        taken = {d for s in self.specs for d in s.shape if isinstance(d, int)}
        taken |= {v for name, v in current.items() if name not in change}
        for name in change:
            lo, hi = self.dims[name]
            old = current[name]
            near = [v for step in range(1, 65) for v in (old + step, old - step) if lo <= v <= hi]
            dims[name] = next((v for v in near if v not in taken), near[0])
            taken.add(dims[name])
        recipes = example.recipes or tuple(InputRecipe(0, s.canonical_pattern()) for s in self.specs)
        probe = self.build(dims, recipes)
        probe.label = "another size of the masks' dims (which outputs are per-token)"
        return probe, static

    def dim_corners_bounds(self) -> tuple[dict[str, int], dict[str, int]]:
        """Every dim at its lower bound; every dim at its upper bound."""
        return {n: lo for n, (lo, _) in self.dims.items()}, {n: hi for n, (_, hi) in self.dims.items()}

    def dim_corners(self) -> list[dict[str, int]]:
        """The opt dims, every dim at its lower bound, every dim at its upper bound; duplicates removed."""
        corners = [self.opt_dims(), *self.dim_corners_bounds()]
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
        if self.keywords:
            text = ", ".join(f"{n}={s.describe()}" for n, s in zip(self.names, self.specs))
        else:
            text = ", ".join(s.describe() for s in self.specs)
        if self.dims:
            text += " with " + ", ".join(f"{k} in [{lo}, {hi}]" for k, (lo, hi) in self.dims.items())
        return text


def _keyword_inputs(inputs, example_inputs, parameters):
    """Dict inputs: validated names, put in forward's parameter order when it is known; returns
    ``(inputs, example_inputs, names)`` as sequences in that order."""
    declared = inputs if isinstance(inputs, Mapping) else example_inputs
    keys = list(declared)
    for key in keys:
        if not isinstance(key, str) or not key.isidentifier():
            raise SpecError(f"inputs: key {key!r} is not a parameter name; dict inputs map forward's keyword "
                            "argument names to tensor(...) specs, e.g. {'input_ids': tensor(...)}")
    if parameters is not None:
        unknown = [k for k in keys if k not in parameters]
        if unknown:
            raise SpecError(
                f"inputs names {', '.join(map(repr, unknown))}, which forward does not take (its parameters: "
                f"{', '.join(parameters) or 'none'}); fix the name, or pass it positionally in a list")
        keys.sort(key=list(parameters).index)
    if isinstance(inputs, Mapping) and isinstance(example_inputs, Mapping) and set(example_inputs) != set(inputs):
        raise SpecError(f"the test returned example inputs for {sorted(example_inputs)} but inputs= declares "
                        f"{sorted(inputs)}; make them agree")
    if example_inputs is not None and not isinstance(example_inputs, Mapping):
        raise SpecError("inputs= is a dict (keyword arguments), so the example inputs the test returns must be a "
                        "dict with the same names too")
    new_inputs = [inputs[k] for k in keys] if isinstance(inputs, Mapping) else None
    new_example = [example_inputs[k] for k in keys] if isinstance(example_inputs, Mapping) else None
    return new_inputs, new_example, keys


def _check_named_bounds(spec: TensorSpec, dims: Mapping[str, tuple[int, int]], where: str) -> None:
    """A bound naming a dim must name a declared one, and leave a non-empty range at every size."""
    for name in spec.bound_names():
        if name not in dims:
            known = ", ".join(map(repr, dims)) or "none"
            raise SpecError(f"{where} {spec.describe()}: the bound {name!r} is not a dim (dims declared: {known}); "
                            f"add dims={{{name!r}: (min, max)}} or use a number")
    if not spec.bound_names() or _is_bool(spec.torch_dtype):
        return
    import itertools

    names = spec.bound_names()
    for sizes in itertools.product(*(dims[n] for n in names)):
        lo, hi = spec.bounds(dict(zip(names, sizes)))
        if lo >= hi:
            at = ", ".join(f"{n}={v}" for n, v in zip(names, sizes))
            raise SpecError(f"{where} {spec.describe()}: at {at} the value range [{lo}, {hi}) holds no integer; "
                            "raise the dim's lower bound or lower low=")


def _check_mask(spec: MaskSpec, dims: Mapping[str, tuple[int, int]], where: str) -> None:
    last = spec.shape[-1]
    if not isinstance(last, str):
        return
    lo, _ = dims[last]
    if lo == 0:
        raise SpecError(f"{where} {spec.describe()}: dim {last!r} can be 0, and a mask needs positions; "
                        f"declare dims={{{last!r}: (1, ...)}} or more")
    if spec.min_valid > lo:
        raise SpecError(f"{where} {spec.describe()}: min_valid={spec.min_valid} is larger than {last!r}'s lower bound "
                        f"{lo}, so short rows cannot hold it; lower min_valid or raise dims[{last!r}]")


def _pattern_for(spec: TensorSpec, pattern: str) -> str:
    """The closest pattern a spec's dtype has: floats take any; ints and bools map low/high/zeros; masks
    take their shortest rows for the low end and full rows for the high end."""
    dtype = spec.torch_dtype
    allowed = spec.patterns()
    if pattern in allowed:
        return pattern
    if isinstance(spec, MaskSpec):
        return {"low": "min", "zeros": "min", "sparse": "min", "high": "full", "extremes": "full"}.get(pattern, "uniform")
    if _is_bool(dtype):
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


def _is_strategy(x: Any) -> bool:
    from hypothesis.strategies import SearchStrategy

    return isinstance(x, SearchStrategy)


def validate_declaration(inputs: Any, dims: Any) -> None:
    """Check the marker's ``inputs``/``dims`` at collection, before any model exists: the errors a run
    would find in every backend (an unbound dim, a bad mask, a bound naming no dim) are found once."""
    if inputs is None:
        return
    InputSpace.resolve(inputs, dims)


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
