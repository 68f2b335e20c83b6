"""Input declarations: ``tensor(...)``/``mask(...)`` specs, named dims, and the :class:`InputSpace` a
declaration resolves to against forward's arguments (validated before any model exists), with the
:class:`Example` objects it hands to a check.

The generation behind them (value patterns, recipes, tensors and masks made from a recipe, the hypothesis
strategy, the plans of the canonical, special, corner and exploration examples) is in
:mod:`pytest_deploy.generate`; ``InputSpace``'s example methods turn its plans into examples.

Importing this module does not import torch or hypothesis; building examples does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import generate
from .errors import SpecError
from .generate import InputRecipe
from .tensors import clone_args, dtype_name, is_bool_dtype, is_float_dtype, is_tensor

#: How special-pattern examples are labelled in failure messages.
SPECIAL_LABEL = "special pattern, always run"

#: Padding layouts of :func:`mask`.
PADDINGS = ("right", "left", "random")

#: Refuse to allocate examples larger than this many bytes (per example, all inputs together), or than
#: half the memory available (validate.check_example_size).
MAX_EXAMPLE_BYTES = 1 << 30


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
        if is_bool_dtype(dtype):
            return (0, 2)
        if is_float_dtype(dtype):
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
        if isinstance(lo, str) or isinstance(hi, str) or is_bool_dtype(self.torch_dtype):
            return False
        return lo == hi if is_float_dtype(self.torch_dtype) else hi - lo <= 1

    def describe(self) -> str:
        shape = ", ".join(str(d) for d in self.shape)
        lo, hi = self.bounds()
        dtype = self.torch_dtype
        if is_bool_dtype(dtype):
            rng = ""
        elif is_float_dtype(dtype):
            rng = f" in [{lo:g}, {hi:g}]"
        else:
            rng = f" in [{lo}, {hi})"
        return f"{dtype_name(dtype)}[{shape}]{rng}"

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

    def describe(self) -> str:
        shape = ", ".join(str(d) for d in self.shape)
        return f"mask {dtype_name(self.torch_dtype)}[{shape}] {self.padding}-padded, >= {self.min_valid} valid"

    def __repr__(self) -> str:
        return f"mask({self.describe()})"

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
    if not is_bool_dtype(spec.torch_dtype) and not spec.bound_names():
        lo, hi = spec.bounds()
        if lo > hi or (lo == hi and not is_float_dtype(spec.torch_dtype)):
            raise SpecError(
                f"tensor(): empty value range low={lo}, high={hi}"
                + ("" if is_float_dtype(spec.torch_dtype) else " (integers are drawn from [low, high))")
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
                text = f"{dtype_name(arg.dtype)}[{', '.join(map(str, arg.shape))}] {spec.padding}-padded mask, " \
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
        if spec is not None and not is_bool_dtype(spec.torch_dtype) and not isinstance(spec, MaskSpec):
            lo, hi = spec.bounds(self.dims if set(spec.bound_names()) <= set(self.dims) else None)
            bounds = f" in [{lo:g}, {hi:g}]" if is_float_dtype(spec.torch_dtype) else f" in [{lo}, {hi})"
        return f" (pattern {r.pattern}{bounds}, seed {r.seed})"


def describe_value(value: Any) -> str:
    """``float32[2, 3] range [-0.98, 0.97]`` for tensors; repr for anything else."""
    if hasattr(value, "dtype") and hasattr(value, "shape"):
        shape = ", ".join(str(s) for s in value.shape)
        text = f"{dtype_name(value.dtype)}[{shape}]"
        if value.numel() and not value.is_complex() and value.device.type != "meta":
            v = value.detach()
            if is_bool_dtype(v.dtype):
                text += f" {int(v.sum())} of {v.numel()} true"
            else:
                lo, hi = v.min().item(), v.max().item()
                text += f" range [{lo:.4g}, {hi:.4g}]"
        return text
    return repr(value)


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
        """A representative size per named dim (used for trace/export): :func:`generate.opt_dims`."""
        return generate.opt_dims(self.specs, self.dims)

    def canonical(self) -> Example:
        """The example artifacts are built from: the user's tensors if given, else opt dims, uniform, seed 0."""
        if self.given:
            return Example(tuple(self.given), label="example given by the test", specs=self.specs or None)
        if self.strategy_override is not None:
            from hypothesis import find

            args = find(self.strategy_override, lambda _: True)
            return Example(_as_args(args), label="minimal example of the inputs strategy")
        ex = self.build(self.opt_dims(), generate.canonical_recipes(self.specs))
        ex.label = "the input the artifact was built from"
        return ex

    def build(self, dims: Mapping[str, int], recipes: Sequence[InputRecipe]) -> Example:
        args = tuple(generate.make_tensor(s, dims, r) for s, r in zip(self.specs, recipes))
        return Example(args, dict(dims), tuple(recipes), self.specs)

    def strategy(self, representative: bool = False):
        """A hypothesis strategy of :class:`Example` (``representative``: uniform values only, see generate)."""
        if self.strategy_override is not None:
            return self.strategy_override.map(lambda a: Example(_as_args(a), label="drawn from the inputs strategy"))
        return generate.strategy(self.specs, self.dims, self.build, representative)

    def special_examples(self, limit: int) -> list[Example]:
        """At most ``limit`` examples that together give every input each of its special patterns (near the
        range's ends, extremes, near zero, sparse, sign-flipped; a mask's full and ``min_valid`` lengths;
        an integer's ends; a bool's all-false and all-true), so that a verdict never depends on which
        patterns hypothesis happened to draw. Example k gives each input its k-th special pattern, at the
        dims' corners in turn."""
        out = []
        for dims, recipes in generate.special_plans(self.specs, self.dims, limit):
            ex = self.build(dims, recipes)
            ex.label = SPECIAL_LABEL
            out.append(ex)
        return out

    def corner_examples(self, inputs: Sequence[int]) -> list[Example]:
        """For each input position in ``inputs``, one example per constant corner of that input
        (:func:`generate.corner_patterns`: all zero, all at an end of its range), at the opt dims, the other
        inputs as in the canonical example."""
        return [self.build(dims, recipes) for dims, recipes in generate.corner_plans(self.specs, self.dims, inputs)]

    def mask_probe(self, example: Example, masks: Sequence[int]) -> tuple[Example | None, dict[int, str]]:
        """An example whose ``mask()`` inputs (positions ``masks``) have other sizes than in ``example``, the
        rest as in it: the outputs whose leading dims follow a mask's dims in both are per-token.

        Every dim of those masks that can vary takes another size (the nearest one no other dim or static
        size of the inputs has). A mask whose last dim (the one padding runs along) cannot vary (a number,
        or a dim bound to one size) cannot tell a per-token output from one that has its size by chance: it
        is returned with the reason, and leads no masked output. Returns ``(probe or None, {mask: reason})``."""
        dims, static = generate.probe_dims(self.specs, self.dims, example.args, example.dims, masks)
        if dims is None:
            return None, static
        probe = self.build(dims, example.recipes or generate.canonical_recipes(self.specs))
        probe.label = "another size of the masks' dims (which outputs are per-token)"
        return probe, static

    def dim_corners_bounds(self) -> tuple[dict[str, int], dict[str, int]]:
        """Every dim at its lower bound; every dim at its upper bound."""
        return generate.dim_corners_bounds(self.dims)

    def dim_corners(self) -> list[dict[str, int]]:
        """The opt dims, every dim at its lower bound, every dim at its upper bound; duplicates removed."""
        return generate.dim_corners(self.specs, self.dims)

    def exploration(self) -> Iterator[Example]:
        """Examples meant to push data-dependent decisions to their other outcome: each dim at its
        bounds, sign flips (``mirrored``), zeros, the range's ends, extremes; then random recipes."""
        for dims, recipes in generate.exploration_plans(self.specs, self.dims):
            yield self.build(dims, recipes)

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
    if not spec.bound_names() or is_bool_dtype(spec.torch_dtype):
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
