"""Before any backend runs: the declaration against forward's signature, and eager PyTorch itself on the canonical
example (it runs, leaves its inputs and buffers alone, gives the same outputs twice, finite unless allowed). A
failure here is the model test's, not one backend's (:func:`check_reference` says for which backends).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .compare import Tolerance, compare_outputs
from .errors import StageError
from .internal import internal_error
from .sources import describe_exception

if TYPE_CHECKING:
    from .context import CheckContext

#: Parameter names that say "padding mask": a plain random 0/1 tensor is a poor stand-in for one.
_MASK_NAME = re.compile(r"mask$")


def check_reference(ctx: CheckContext) -> None:
    """Eager PyTorch must run on the canonical example and give the same outputs twice."""
    from .compare import UnsupportedOutput, flatten
    from .validate import (
        buffer_snapshot,
        check_buffers_unchanged,
        check_finite,
        check_inputs_unchanged,
        check_output_leaves,
        run_watching_inputs,
    )

    args = ctx.canonical.args
    example = ctx.canonical.describe(ctx.space.names)
    if ctx.space.keywords:
        check_keywords(ctx.model, ctx.space.names)
    else:
        check_arity(ctx.model, ctx.space.arity)
    buffers = buffer_snapshot(ctx.model)
    try:
        first, written = run_watching_inputs(lambda *xs: ctx.call(ctx.model, xs), args)
        second = ctx.eager(args)
    except Exception as exc:
        internal = internal_error(exc, staged=True)
        if internal is not None:
            raise internal from exc
        raise StageError("run", "eager PyTorch (the reference) fails on the first example: " + describe_exception(
            exc, "check that inputs= matches forward's arguments (count, dtypes, shapes)")
            + "\n  first example:\n    " + example.replace("\n", "\n    ")) from None
    check_inputs_unchanged(written, args, ctx.space.names)
    check_buffers_unchanged(ctx.model, buffers, ctx.backend)
    try:
        leaves = flatten(first)
    except UnsupportedOutput as exc:
        raise StageError("run", f"eager PyTorch returns an output pytest-deploy cannot compare: {exc}") from None
    try:
        check_output_leaves(leaves, ctx.backend)
    except StageError as err:
        err.backend_kind_only = True  # type: ignore[attr-defined]  # other kinds of backend take these outputs
        raise
    cmp = compare_outputs(first, second, Tolerance({}))
    if not cmp.ok:
        from .sources import rng_sites

        sites = [] if ctx.model.training else rng_sites(ctx.model)
        hint = ("call model.eval() to turn dropout off" if ctx.model.training else
                "draw random numbers only in training (`if self.training:`), or move the randomness out of forward; "
                "a deployed model (and trace, which freezes Python's and numpy's draws) needs the same output for "
                "the same input" if sites else "seed or remove randomness in forward")
        raise StageError(
            "run",
            "eager PyTorch is nondeterministic: two runs on the same input differ "
            f"({cmp.errors[0].text}); no backend can be compared against it"
            + "".join(f"\n  random draw at {where}" for where in sites) + f"\n  fix: {hint}",
        )
    if not ctx.allow_nonfinite:
        check_finite(leaves, example)


def reference_kind(backend: str) -> tuple[bool, bool, bool]:
    """What the reference check asks of the eager outputs for ``backend``: a check that passed for one backend
    of a kind passed for every backend of that kind."""
    from .validate import TENSOR_GRAPH_BACKENDS, TENSOR_ONLY_OUTPUTS

    return backend in TENSOR_GRAPH_BACKENDS, backend in TENSOR_ONLY_OUTPUTS, backend == "checkpoint"


def check_arity(model, arity: int | None) -> None:
    """forward must take the declared inputs positionally (``arity`` None: a strategy, count unknown)."""
    import inspect

    from .validate import check_keyword_arguments

    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return
    params = list(sig.parameters.values())
    check_keyword_arguments(model, params, arity)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if arity is None or any(p.kind == p.VAR_POSITIONAL for p in params):
        return
    required = [p for p in positional if p.default is p.empty]
    if arity > len(positional) or arity < len(required):
        names = ", ".join(p.name for p in positional) or "(none)"
        raise StageError(
            "run",
            f"inputs= declares {arity} input(s) but {type(model).__name__}.forward takes {len(required)}"
            + (f" to {len(positional)}" if len(positional) != len(required) else "")
            + f" positional argument(s) ({names}); make inputs= match forward",
        )


def check_keywords(model, names) -> None:
    """Dict inputs: forward's required parameters must all be among them."""
    import inspect

    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return
    required = [p.name for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    missing = [n for n in required if n not in names]
    if missing:
        raise StageError(
            "run",
            f"{type(model).__name__}.forward requires {', '.join(map(repr, missing))}, which inputs= (a dict of "
            f"keyword arguments: {', '.join(names)}) does not give; add {'them' if len(missing) > 1 else 'it'} to inputs=")


def keyword_parameters(model) -> list[str] | None:
    """Every parameter name of forward in order, for dict inputs; None when forward takes **kwargs (any name
    may be meant for it) or has no signature."""
    import inspect

    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError, AttributeError):
        return None
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind != p.VAR_POSITIONAL]


def input_warnings(space) -> list[str]:
    """A parameter named like a mask fed by a plain random 0/1 (or bool) tensor gets a warning naming mask()."""
    from .spec import MaskSpec

    out = []
    for name, spec in zip(space.names, space.specs):
        if isinstance(spec, MaskSpec) or not _MASK_NAME.search(name):
            continue
        if spec.torch_dtype.is_floating_point or spec.bounds() != (0, 2):  # bools give (0, 2) too
            continue
        out.append(f"input {name!r} looks like a padding mask but is declared as a random 0/1 tensor, which gives "
                   f"masks no real input has (rows without a valid position, holes); declare it "
                   f"mask({', '.join(repr(d) for d in spec.shape)})")
    return out


def forward_arg_names(model, count: int = 0) -> list[str]:
    """forward's positional parameter names; a ``*xs`` parameter names the rest of ``count`` inputs ``xs_0``,
    ``xs_1``, ... as the exporters do (torch.export, and the ONNX graph's inputs)."""
    import inspect

    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError, AttributeError):
        return []
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    var = next((p.name for p in params if p.kind == p.VAR_POSITIONAL), None)
    if var is not None:
        names += [f"{var}_{i}" for i in range(max(0, count - len(names)))]
    return names
