"""An input declaration and its one-line text form, the grammar ``--deploy-inputs`` takes.

:class:`Declaration` is what :func:`pytest_deploy.infer.infer_inputs` returns and ``--deploy-inputs`` gives: the
``inputs=`` and ``dims=`` that ``@deployable`` takes, with the input names and a note on each guess.
:func:`parse_inputs` reads the one-line grammar (docs/zero-code.md); :func:`format_inputs` writes it back::

    x: float32[batch, 3, 32, 32] in [-1, 1]; batch=1..8            keyword input x (a dict declaration)
    float32[batch, 16]; int64[batch] in [0, 4); batch=1..4          two positional inputs (a list)
    input_ids: int64[batch, seq] in [0, 99); attention_mask: mask int64[batch, seq]; batch=1..2; seq=2..16

Guessing a declaration from a model, and probing it with eager runs, is :mod:`pytest_deploy.infer`.

Importing this module does not import torch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import SpecError
from .spec import MaskSpec, TensorSpec, mask, normalize_dims, tensor, validate_declaration

#: dtype names of the grammar, in the order they are listed in messages
DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")

#: the line messages give as an example
EXAMPLE_LINE = "x: float32[batch, 3, 32, 32] in [-1, 1]; batch=1..8"


@dataclass
class Declaration:
    """An input declaration: ``inputs`` (a list: positional; a dict: by keyword) and ``dims``, as ``@deployable``
    takes them; ``names`` the input names (forward's parameters); ``notes`` why each input (and dim) was guessed;
    ``use_cache_off``: the model's ``config.use_cache`` must be set to False before it runs."""

    inputs: list[TensorSpec] | dict[str, TensorSpec]
    dims: dict[str, tuple[int, int]]
    names: list[str]
    notes: dict[str, str] = field(default_factory=dict)
    use_cache_off: bool = False

    @property
    def keywords(self) -> bool:
        return isinstance(self.inputs, dict)

    @property
    def specs(self) -> list[TensorSpec]:
        return list(self.inputs.values()) if isinstance(self.inputs, dict) else list(self.inputs)

    def kwargs(self) -> dict[str, Any]:
        """``{"inputs": ..., "dims": ...}`` for ``@deployable``, ``deploy()`` or ``verify()``."""
        return {"inputs": self.inputs, "dims": dict(self.dims)}

    def line(self) -> str:
        """The declaration in the one-line grammar (:func:`format_inputs`)."""
        return format_inputs(self.inputs, self.dims)

    def prepare(self, model):
        """``model`` made ready for the declared inputs: eval mode, and ``config.use_cache = False`` where noted."""
        if self.use_cache_off and getattr(model, "config", None) is not None:
            model.config.use_cache = False
        return model.eval() if hasattr(model, "eval") else model


# ------------------------------------------------------------------------------------ the grammar


_ITEM = re.compile(
    r"^(?:(?P<name>[A-Za-z_]\w*)\s*:\s*)?(?P<mask>mask\b\s*)?(?P<dtype>[a-z]\w*)?\s*\[(?P<shape>[^\]]*)\]\s*"
    r"(?:in\s*\[\s*(?P<lo>[^,\]\)]+?)\s*,\s*(?P<hi>[^\]\)]+?)\s*(?P<close>[\]\)]))?\s*(?P<opts>.*)$")
_DIM = re.compile(r"^(?P<name>[A-Za-z_]\w*)\s*=\s*(?P<lo>\d+)\s*(?:\.\.\s*(?P<hi>\d+))?$")


def parse_inputs(text: str, *, where: str = "inputs line") -> Declaration:
    """Read a one-line declaration (``x: float32[batch, 3, 32, 32] in [-1, 1]; batch=1..8``): items separated by
    ``;``, each an input or a dim. An input is ``[name:] [mask] dtype[shape] [in [low, high] | in [low, high)]
    [padding=right|left|random] [min_valid=N]``; named inputs are keyword arguments (a dict), unnamed ones
    positional (a list); mixing both is refused. A dim is ``name=min..max`` or ``name=size``. Raises
    :class:`SpecError` naming the item and what to write."""
    import torch

    if not isinstance(text, str) or not text.strip():
        raise SpecError(f"{where}: empty; write e.g. {EXAMPLE_LINE!r}")
    named: dict[str, TensorSpec] = {}
    positional: list[TensorSpec] = []
    dims: dict[str, tuple[int, int]] = {}
    items = [s.strip() for s in re.split(r"[;\n]", text) if s.strip()]
    for k, item in enumerate(items, 1):
        label = f"{where}: item {k} {item!r}"
        dim = _DIM.match(item)
        if dim:
            lo = int(dim["lo"])
            hi = int(dim["hi"]) if dim["hi"] is not None else lo
            if dim["name"] in dims:
                raise SpecError(f"{label}: dim {dim['name']!r} is given twice; give it once")
            dims[dim["name"]] = (lo, hi)
            continue
        m = _ITEM.match(item)
        if not m:
            raise SpecError(f"{label}: not an input (name: dtype[shape] in [low, high]) nor a dim (name=min..max); "
                            f"write e.g. {EXAMPLE_LINE!r}")
        is_mask = bool(m["mask"])
        dtype_name = m["dtype"] or ("int64" if is_mask else "float32")
        if dtype_name not in DTYPES:
            raise SpecError(f"{label}: unknown dtype {dtype_name!r}; use one of {', '.join(DTYPES)}")
        dtype = getattr(torch, dtype_name)
        shape: list[int | str] = []
        for d in (s.strip() for s in m["shape"].split(",")):
            if not d:
                continue
            if re.fullmatch(r"\d+", d):
                shape.append(int(d))
            elif d.isidentifier():
                shape.append(d)
            else:
                raise SpecError(f"{label}: dim {d!r} is neither a size nor a dim name; write e.g. [batch, 3, 32, 32]")
        if m["opts"].strip() and not is_mask:
            raise SpecError(f"{label}: unexpected {m['opts'].strip()!r}; only a mask takes padding= and min_valid=")
        try:
            if is_mask:
                if m["lo"] is not None:
                    raise SpecError("a mask holds 0/1 (or False/True) and takes no range; remove 'in [...]'")
                opts = _mask_options(m["opts"])
                spec: TensorSpec = mask(*shape, dtype=dtype, **opts)
            else:
                low, high = _range(m, dtype)
                spec = tensor(*shape, dtype=None if dtype == torch.float32 else dtype, low=low, high=high)
        except SpecError as exc:
            raise SpecError(f"{label}: {exc}") from None
        if m["name"]:
            if m["name"] in named:
                raise SpecError(f"{label}: input {m['name']!r} is given twice; give it once")
            named[m["name"]] = spec
        else:
            positional.append(spec)
    if named and positional:
        raise SpecError(f"{where}: some inputs are named (keyword arguments) and some are not (positional); name "
                        "every input, or none")
    if not named and not positional:
        raise SpecError(f"{where}: declares dims but no input; write e.g. {EXAMPLE_LINE!r}")
    inputs: list[TensorSpec] | dict[str, TensorSpec] = named if named else positional
    try:
        validate_declaration(inputs, dims)
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None
    names = list(named) if named else [f"input {i}" for i in range(len(positional))]
    return Declaration(inputs, normalize_dims(dims), names)


def _range(m: re.Match, dtype) -> tuple[Any, Any]:
    if m["lo"] is None:
        return None, None
    import torch

    floating = dtype.is_floating_point
    if dtype == torch.bool:
        raise SpecError("a bool input holds False/True and takes no range; remove 'in [...]'")
    if floating and m["close"] != "]":
        raise SpecError("float values lie in [low, high]: close the range with ']'")
    if not floating and m["close"] != ")":
        raise SpecError("integer values lie in [low, high) as with torch.randint: close the range with ')'")

    def number(text: str) -> Any:
        text = text.strip()
        if not floating and text.isidentifier():
            return text  # a bound naming a dim
        try:
            return float(text) if floating else int(text)
        except ValueError:
            kind = "a number" if floating else "an integer or a dim name"
            raise SpecError(f"range bound {text!r} is not {kind}") from None

    return number(m["lo"]), number(m["hi"])


def _mask_options(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in text.split():
        key, _, value = part.partition("=")
        if key == "padding" and value:
            out["padding"] = value
        elif key == "min_valid" and value.isdigit():
            out["min_valid"] = int(value)
        else:
            raise SpecError(f"unexpected {part!r}; a mask takes padding=right|left|random and min_valid=N")
    return out


def format_inputs(inputs: list[TensorSpec] | Mapping[str, TensorSpec] | tuple, dims: Mapping[str, Any] | None = None) -> str:
    """The one-line grammar for ``inputs``/``dims`` (the inverse of :func:`parse_inputs`)."""
    items: list[str] = []
    pairs = list(inputs.items()) if isinstance(inputs, Mapping) else [(None, s) for s in inputs]
    for name, spec in pairs:
        if not isinstance(spec, TensorSpec):
            raise SpecError(f"format_inputs: {spec!r} is not tensor(...) or mask(...); only specs have a one-line form")
        items.append((f"{name}: " if name else "") + format_spec(spec))
    for name, (lo, hi) in normalize_dims(dims).items():
        items.append(f"{name}={lo}" if lo == hi else f"{name}={lo}..{hi}")
    return "; ".join(items)


def format_spec(spec: TensorSpec) -> str:
    """One ``tensor()`` or ``mask()`` spec in the one-line grammar, without its name."""
    dtype = str(spec.torch_dtype).replace("torch.", "")
    shape = ", ".join(str(d) for d in spec.shape)
    if isinstance(spec, MaskSpec):
        text = f"mask {dtype}[{shape}]"
        if spec.padding != "right":
            text += f" padding={spec.padding}"
        if spec.min_valid != 1:
            text += f" min_valid={spec.min_valid}"
        return text
    text = f"{dtype}[{shape}]"
    if dtype == "bool" or (spec.low is None and spec.high is None):
        return text
    lo, hi = spec.bounds()
    if spec.torch_dtype.is_floating_point:
        return f"{text} in [{_num(lo)}, {_num(hi)}]"
    return f"{text} in [{lo}, {hi})"


def _num(value: float) -> str:
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text
