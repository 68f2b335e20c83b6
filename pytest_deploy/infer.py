"""Inputs inferred from a model.

:func:`infer_inputs` looks at a model and returns an ordinary input declaration (``inputs=`` and ``dims=``, what
``@deployable`` takes), with a note on each guess:

* a Hugging Face model: from its ``config`` and ``forward``'s parameters (``main_input_name``, ``input_ids`` below
  ``vocab_size``, ``attention_mask`` as ``mask(...)``, ``token_type_ids``, ``pixel_values`` from ``num_channels`` and
  ``image_size``, audio ``input_values``, ``decoder_input_ids`` of encoder-decoders), by keyword, with the named dims
  ``batch`` and ``seq`` kept small and within the config's limits; ``config.use_cache`` is turned off where forward
  takes ``use_cache``;
* a plain ``nn.Module``: from the first layer that consumes its input (``Conv1d/2d/3d.in_channels``,
  ``Linear.in_features``, ``Embedding.num_embeddings`` for integer ids, ``LSTM/GRU/RNN.input_size``), positionally,
  with named dims for the batch and the spatial or sequence sizes.

Before anything is declared, eager PyTorch runs once at each corner of the dims (every dim at its lower or upper
bound); bounds it refuses are shrunk, and a model it refuses at every size is refused with the error. A forward
with inputs of unknown meaning is refused with the parameter's name and the line to write instead.

The declaration (:class:`~pytest_deploy.declaration.Declaration`) and the one-line grammar ``--deploy-inputs`` takes
(``parse_inputs``/``format_inputs``) are in :mod:`pytest_deploy.declaration`.

Importing this module does not import torch.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from .declaration import EXAMPLE_LINE, Declaration, format_inputs, format_spec
from .errors import SpecError
from .spec import TensorSpec, mask, tensor

#: A named dim's upper bound for sequences: big enough to vary, small enough to keep every check fast.
SEQ_MAX = 16
#: A named dim's lower bound for sequences: torch.export specialises a size of 1.
SEQ_MIN = 2
#: Upper bound of the batch dim for Hugging Face models and for plain modules.
HF_BATCH = (1, 2)
BATCH = (1, 4)
#: Corners probed at most (every dim at its lower or upper bound).
MAX_CORNERS = 16


def is_hf_model(model) -> bool:
    """Whether ``model`` is a Hugging Face ``transformers`` model (without importing transformers)."""
    return hasattr(model, "config") and any(c.__module__.startswith("transformers.") for c in type(model).__mro__)


def infer_inputs(model, *, probe: bool = True) -> Declaration:
    """An input declaration for ``model`` (see the module docstring), probed by one eager run at each corner of
    its dims unless ``probe=False``. Raises :class:`SpecError` naming the parameter it cannot infer and what to
    write instead."""
    import torch

    if not isinstance(model, torch.nn.Module):
        raise SpecError(f"infer_inputs: {type(model).__name__} is not a torch.nn.Module; inputs are inferred from "
                        "a module's forward and its layers")
    decl = _infer_hf(model) if is_hf_model(model) else _infer_module(model)
    if probe:
        decl = fit_bounds(model, decl)
    return decl


def _parameters(model) -> list[inspect.Parameter]:
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):
        raise SpecError(f"infer_inputs: {type(model).__name__}.forward has no readable signature; declare the "
                        f"inputs, e.g. --deploy-inputs={EXAMPLE_LINE!r}") from None
    return list(sig.parameters.values())


def _unknown(model, name: str, decl_so_far: list[str], why: str, dims: Mapping[str, Any] | None = None) -> SpecError:
    bounds = format_inputs([], dims) if dims else "batch=1..4"
    known = "; ".join([*decl_so_far, f"{name}: DTYPE[SHAPE] in [LOW, HIGH]", bounds])
    return SpecError(
        f"cannot infer input {name!r} of {type(model).__name__}.forward: {why}; declare the inputs yourself, "
        f"e.g. --deploy-inputs='{known}' (docs/zero-code.md), or write the test with "
        "@deployable(inputs=...)")


# -- Hugging Face


def _cfg(config, *names: str) -> tuple[str, Any] | tuple[None, None]:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return name, value
    return None, None


def _infer_hf(model) -> Declaration:
    import torch

    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    params = _parameters(model)
    names = [p.name for p in params]
    main = getattr(model, "main_input_name", None) or names[0]
    encdec = bool(getattr(config, "is_encoder_decoder", False))
    inputs: dict[str, TensorSpec] = {}
    notes: dict[str, str] = {}
    dims: dict[str, tuple[int, int]] = {"batch": HF_BATCH}
    notes["batch"] = f"batch in {list(HF_BATCH)}: kept small for speed"

    def seq_bound(dim: str, *limits: str) -> None:
        limit_name, limit = _cfg(text_config, *limits)
        hi = SEQ_MAX if limit is None else max(SEQ_MIN, min(SEQ_MAX, limit - 2))
        dims[dim] = (SEQ_MIN, hi)
        why = (f"config.{limit_name}={limit}, kept small for speed" if limit_name else
               "the config gives no length limit; kept small for speed")
        notes[dim] = f"{dim} in [{SEQ_MIN}, {hi}]: {why}; from {SEQ_MIN}, since torch.export specialises a size of 1"

    if main == "input_ids" or (main not in ("pixel_values", "input_values", "input_features") and "input_ids" in names):
        vocab_name, vocab = _cfg(text_config, "vocab_size")
        if vocab is None:
            raise _unknown(model, "input_ids", [], "the config has no vocab_size to bound the token ids")
        inputs["input_ids"] = tensor("batch", "seq", dtype=torch.int64, low=0, high=vocab)
        notes["input_ids"] = f"token ids in [0, {vocab}): config.{vocab_name}"
        seq_bound("seq", "max_position_embeddings", "n_positions", "max_source_positions", "n_ctx")
        if "attention_mask" in names:
            inputs["attention_mask"] = mask("batch", "seq")
            notes["attention_mask"] = "a right-padded 0/1 mask, at least 1 valid token per row"
        if "token_type_ids" in names:
            type_name, types = _cfg(text_config, "type_vocab_size")
            if types is not None and types >= 2:
                inputs["token_type_ids"] = tensor("batch", "seq", dtype=torch.int64, low=0, high=types)
                notes["token_type_ids"] = f"segment ids in [0, {types}): config.{type_name}"
    elif main == "pixel_values":
        vision = getattr(config, "vision_config", None) or config
        channels = _cfg(vision, "num_channels")[1] or 3
        size_name, size = _cfg(vision, "image_size")
        if isinstance(getattr(vision, "image_size", None), (list, tuple)):
            size_name, size = "image_size", int(vision.image_size[0])
        guessed = size is None
        size = size or 32
        inputs["pixel_values"] = tensor("batch", channels, size, size, low=-1.0, high=1.0)
        notes["pixel_values"] = (f"{channels} channels (config.num_channels), {size}x{size} "
                                 + ("(the config has no image_size: 32 guessed, probed)" if guessed
                                    else f"(config.{size_name})")
                                 + ", values in [-1, 1] as a normalised image")
    elif main == "input_values":
        lo, hi = _audio_samples(config)
        inputs["input_values"] = tensor("batch", "samples", low=-1.0, high=1.0)
        dims["samples"] = (lo, hi)
        notes["input_values"] = "a raw waveform in [-1, 1]"
        notes["samples"] = (f"samples in [{lo}, {hi}]: 4 to 12 frames of the feature extractor's convolutions "
                            "(config.conv_kernel, config.conv_stride)")
    elif main == "input_features":
        bins = _cfg(config, "num_mel_bins", "input_feat_per_channel")[1]
        if bins is None:
            raise _unknown(model, "input_features", [], "the config has no num_mel_bins")
        source = _cfg(config, "max_source_positions")[1]
        if source is not None and "whisper" in type(config).__name__.lower():
            inputs["input_features"] = tensor("batch", bins, 2 * source, low=-1.0, high=1.0)
            notes["input_features"] = (f"log-mel features: {bins} bins (config.num_mel_bins), exactly 2 * "
                                       f"config.max_source_positions = {2 * source} frames, values in [-1, 1]")
        else:
            inputs["input_features"] = tensor("batch", "frames", bins, low=-1.0, high=1.0)
            dims["frames"] = (8, 32)
            notes["input_features"] = f"filter-bank features: {bins} per frame, values in [-1, 1]"
            notes["frames"] = "frames in [8, 32], probed"
    else:
        raise _unknown(model, main, [], "it is the model's main input (main_input_name) and pytest-deploy knows "
                                        "input_ids, pixel_values, input_values and input_features")
    if encdec and "decoder_input_ids" in names:
        vocab = _cfg(text_config, "vocab_size")[1]
        if vocab is None:
            raise _unknown(model, "decoder_input_ids", [], "the config has no vocab_size to bound the token ids")
        inputs["decoder_input_ids"] = tensor("batch", "dec_seq", dtype=torch.int64, low=0, high=vocab)
        notes["decoder_input_ids"] = f"decoder token ids in [0, {vocab}): config.vocab_size"
        _, limit = _cfg(config, "max_target_positions", "max_position_embeddings", "n_positions")
        hi = max(SEQ_MIN, min(8, limit - 2)) if limit else 8
        dims["dec_seq"] = (SEQ_MIN, hi)
        notes["dec_seq"] = f"dec_seq in [{SEQ_MIN}, {hi}]: a short decoder prefix"
    # a parameter forward needs that is not declared: refused by name
    for p in params:
        if (p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                and p.name not in inputs):
            line = [f"{n}: {format_spec(s)}" for n, s in inputs.items()]
            raise _unknown(model, p.name, line, "forward requires it and its meaning is not known from the config",
                           dims)
    order = {n: i for i, n in enumerate(names)}
    inputs = dict(sorted(inputs.items(), key=lambda kv: order.get(kv[0], len(order))))
    if "use_cache" in names:
        notes["model"] = "config.use_cache = False: the checks compare the outputs, not a key/value cache"
    return Declaration(inputs, dims, list(inputs), notes, "use_cache" in names)


def _audio_samples(config) -> tuple[int, int]:
    """Waveform lengths giving 4 to 12 frames after the feature extractor's convolutions."""
    kernels = getattr(config, "conv_kernel", None)
    strides = getattr(config, "conv_stride", None)
    if not kernels or not strides or len(kernels) != len(strides):
        return 400, 1600

    def samples(frames: int) -> int:
        n = frames
        for k, s in zip(reversed(list(kernels)), reversed(list(strides))):
            n = (n - 1) * int(s) + int(k)
        return n

    return samples(4), samples(12)


# -- plain modules


def _first_layer(model):
    """The first leaf layer whose input size is known, in registration order (usually the order forward calls
    them), with its qualified name."""
    from torch import nn

    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.Embedding, nn.EmbeddingBag, nn.LSTM, nn.GRU, nn.RNN)
    for name, module in model.named_modules():
        if isinstance(module, kinds):
            return name or "(the model itself)", module
    return None, None


def _infer_module(model) -> Declaration:
    import torch
    from torch import nn

    params = [p for p in _parameters(model) if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not params:
        raise SpecError(f"cannot infer the inputs of {type(model).__name__}.forward: it takes no positional "
                        f"parameter; declare them, e.g. --deploy-inputs={EXAMPLE_LINE!r}")
    first = params[0].name
    where, layer = _first_layer(model)
    if layer is None:
        raise _unknown(model, first, [], "the model has no Conv, Linear, Embedding, LSTM, GRU or RNN layer to read "
                                          "its size from")
    kind = type(layer).__name__
    notes: dict[str, str] = {}
    dims: dict[str, tuple[int, int]] = {"batch": BATCH}
    notes["batch"] = f"batch in {list(BATCH)}: kept small for speed"
    ref = f"{where} = {kind}"
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        spatial = {nn.Conv1d: ["length"], nn.Conv2d: ["height", "width"], nn.Conv3d: ["depth", "height", "width"]}
        names = next(v for k, v in spatial.items() if isinstance(layer, k))
        bounds = {1: (8, 64), 2: (8, 32), 3: (4, 12)}[len(names)]
        spec = tensor("batch", layer.in_channels, *names, low=-1.0, high=1.0)
        for n in names:
            dims[n] = bounds
            notes[n] = f"{n} in {list(bounds)}, probed"
        notes[first] = (f"read by {ref}({layer.in_channels}, ...): {layer.in_channels} channels; values in [-1, 1] "
                        "(a normalised signal)")
    elif isinstance(layer, nn.Linear):
        spec = tensor("batch", layer.in_features, low=-1.0, high=1.0)
        notes[first] = f"read by {ref}({layer.in_features}, ...): {layer.in_features} features; values in [-1, 1]"
    elif isinstance(layer, (nn.Embedding, nn.EmbeddingBag)):
        spec = tensor("batch", "seq", dtype=torch.int64, low=0, high=layer.num_embeddings)
        dims["seq"] = (SEQ_MIN, SEQ_MAX)
        notes[first] = f"token ids read by {ref}({layer.num_embeddings}, ...): in [0, {layer.num_embeddings})"
        notes["seq"] = f"seq in [{SEQ_MIN}, {SEQ_MAX}], probed; from {SEQ_MIN}, since torch.export specialises a size of 1"
    else:  # LSTM, GRU, RNN
        shape = ("batch", "seq", layer.input_size) if layer.batch_first else ("seq", "batch", layer.input_size)
        spec = tensor(*shape, low=-1.0, high=1.0)
        dims["seq"] = (SEQ_MIN, 12)
        notes[first] = (f"read by {ref}(input_size={layer.input_size}, batch_first={layer.batch_first}): "
                        f"{'(batch, seq, features)' if layer.batch_first else '(seq, batch, features)'}; values in [-1, 1]")
        notes["seq"] = f"seq in [{SEQ_MIN}, 12], probed"
    for extra in params[1:]:
        if extra.default is inspect.Parameter.empty:
            line = [f"{first}: {format_spec(spec)}"]
            raise _unknown(model, extra.name, line, f"forward takes more than one input, and only the first "
                                                    f"({first!r}, read by {ref}) has a meaning pytest-deploy can "
                                                    "infer", dims)
    notes["model"] = f"{first} is inferred from the first layer that takes an input size, {ref}"
    return Declaration([spec], dims, [first], notes)


# -- probing


def corners(dims: Mapping[str, tuple[int, int]]) -> list[dict[str, int]]:
    """Every dim at its lower bound, every dim at its upper bound, then the mixed corners (at most MAX_CORNERS)."""
    names = list(dims)
    out = [{n: dims[n][0] for n in names}, {n: dims[n][1] for n in names}]
    for values in itertools.product(*(sorted(set(dims[n])) for n in names)):
        corner = dict(zip(names, values))
        if corner not in out:
            out.append(corner)
        if len(out) >= MAX_CORNERS:
            break
    return out


def _run_at(model, space, corner: Mapping[str, int]) -> str | None:
    """One eager run of ``model`` on an example of ``space`` at ``corner``; the error it raises, or None."""
    import torch

    from .generate import InputRecipe

    example = space.build(corner, [InputRecipe(0, "uniform") for _ in space.specs])
    try:
        with torch.no_grad():
            space.call(model, example.args)
    except Exception as exc:  # any error of eager PyTorch on this input
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"{type(exc).__name__}: {first}"[:300]
    return None


def _space(decl: Declaration):
    from .spec import InputSpace

    return InputSpace.resolve(decl.inputs, decl.dims, names=decl.names)


def probe(model, decl: Declaration) -> tuple[dict[str, int], str] | None:
    """One eager run at each corner of ``decl``'s dims; the first corner that fails and its error, or None."""
    space = _space(decl)
    for corner in corners(space.dims):
        error = _run_at(model, space, corner)
        if error is not None:
            return corner, error
    return None


def fit_bounds(model, decl: Declaration) -> Declaration:
    """``decl`` with its dims' bounds shrunk until eager PyTorch runs at every corner; dims left at one size become
    literal sizes. Refuses (SpecError) when eager PyTorch fails at every size tried.

    From a size where the model runs (the first along the diagonal from the lower corner), each dim's bounds are
    narrowed on their own (a bisection towards the working size), then every corner is checked again; when a
    corner still fails, every dim is fixed at the working size."""
    decl.prepare(model)
    start = decl.line()
    failed = probe(model, decl)
    if failed is None:
        return decl
    corner, error = failed
    space = _space(decl)
    dims = dict(space.dims)
    point = None
    for t in range(min(64, max((hi - lo for lo, hi in dims.values()), default=0)) + 1):
        candidate = {n: min(lo + t, hi) for n, (lo, hi) in dims.items()}
        if _run_at(model, space, candidate) is None:
            point = candidate
            break
    if point is None:
        at = ", ".join(f"{k}={v}" for k, v in corner.items()) or "its fixed sizes"
        raise SpecError(
            f"cannot infer the inputs of {type(model).__name__}: eager PyTorch fails on the inferred input ({start}) "
            f"at {at} and every size tried: {error}; declare the inputs yourself, e.g. --deploy-inputs='{start}' "
            "with the sizes the model takes (docs/zero-code.md)")
    fitted: dict[str, tuple[int, int]] = {}
    for name, (lo, hi) in dims.items():
        def runs(value: int, name: str = name) -> bool:
            return _run_at(model, space, {**point, name: value}) is None

        fitted[name] = (lo if runs(lo) else _bisect(point[name], lo, runs),
                        hi if runs(hi) else _bisect(point[name], hi, runs))
    narrowed = replace(decl, dims=fitted, notes=dict(decl.notes))
    if probe(model, narrowed) is not None:
        narrowed = replace(decl, dims={n: (v, v) for n, v in point.items()}, notes=dict(decl.notes))
    for name, bounds in narrowed.dims.items():
        if bounds != dims[name]:
            narrowed.notes[name] = (f"{name} in [{bounds[0]}, {bounds[1]}], narrowed from {list(dims[name])}: eager "
                                    f"PyTorch fails beyond ({error})")
    return _fold_fixed(narrowed, start)


def _bisect(good: int, bad: int, runs) -> int:
    """The size nearest ``bad`` that runs, between ``good`` (runs) and ``bad`` (does not), either way round."""
    while abs(bad - good) > 1:
        mid = (good + bad) // 2
        if runs(mid):
            good = mid
        else:
            bad = mid
    return good


def _fold_fixed(decl: Declaration, start: str) -> Declaration:
    """Dims with one size left become that literal size in every shape that names them."""
    fixed = {n: lo for n, (lo, hi) in decl.dims.items() if lo == hi}
    if not fixed:
        return decl

    def fold(spec: TensorSpec) -> TensorSpec:
        shape = tuple(fixed.get(d, d) if isinstance(d, str) else d for d in spec.shape)
        low = fixed.get(spec.low, spec.low) if isinstance(spec.low, str) else spec.low
        high = fixed.get(spec.high, spec.high) if isinstance(spec.high, str) else spec.high
        return replace(spec, shape=shape, low=low, high=high)

    inputs: list[TensorSpec] | dict[str, TensorSpec]
    inputs = ({k: fold(s) for k, s in decl.inputs.items()} if isinstance(decl.inputs, dict)
              else [fold(s) for s in decl.inputs])
    dims = {n: b for n, b in decl.dims.items() if n not in fixed}
    notes = dict(decl.notes)
    for n, size in fixed.items():
        notes[n] = f"{n} fixed at {size}: " + notes.get(n, "eager PyTorch takes no other size").split(": ", 1)[-1]
    return replace(decl, inputs=inputs, dims=dims, notes=notes)
