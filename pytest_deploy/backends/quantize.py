"""int8 ONNX graphs for the onnx backend: ONNX Runtime's quantization of the float32 export.

- ``precision="int8"``: static quantization in QDQ format (``onnxruntime.quantization.quantize_static``:
  ``QuantizeLinear``/``DequantizeLinear`` pairs around each quantized op, weights int8 per channel, activations
  uint8 as ORT recommends on x86 (U8S8), MinMax calibration), after ORT's recommended pre-processing
  (``quant_pre_process``: symbolic shape inference, graph optimisation, ONNX shape inference). It calibrates on the
  check's own generated examples (``calibration_examples`` of them, drawn from the check's seed:
  :func:`pytest_deploy.generate.calibration_plans`), or on the inputs ``calibration=`` gives, each checked against
  the declaration before anything is quantized (:func:`pytest_deploy.validate.calibration_args`).
- ``precision="int8-dynamic"``: ``quantize_dynamic`` of the MatMul and Gemm weights (activations quantized at run
  time): nothing calibrates.

The quantized graph is written, then loaded from the file by ONNX Runtime, and kept in the artifact cache under a
key holding the quantization settings and what calibrated it. onnx and onnxruntime are imported inside the functions.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import StageError
from ..sources import first_line
from ..tensors import to_numpy
from .onnx_export import input_names

#: The quantized graph's file name.
QUANTIZED = "model.int8.onnx"
#: The ops int8-dynamic quantizes (their weights).
DYNAMIC_OPS = ("MatMul", "Gemm")
#: Who runs the static QDQ graph, and how its activations are quantized for it: ONNX Runtime's CPU kernels prefer
#: uint8 activations with a zero point (U8S8); TensorRT takes symmetric int8 only (zero point 0, its explicit
#: quantization), so its graph has int8 activations, symmetric.
TARGETS = {"onnxruntime": {"activations": "uint8"},
           "tensorrt": {"activations": "int8 symmetric"}}


def quantization_reason(backend: str, precision: str) -> str | None:
    """Why ``backend`` cannot deploy at ``precision`` (int8, int8-dynamic) here, or None when it can: onnx runs the
    quantized graph in ONNX Runtime; tensorrt builds the static QDQ graph (:data:`TARGETS`) into an engine."""
    if backend == "tensorrt" and precision == "int8-dynamic":
        return ("tensorrt: precision=int8-dynamic quantizes activations at run time, which TensorRT does not do; use "
                "precision='int8' (a calibrated QDQ graph, built into a strongly typed engine), or check int8-dynamic "
                "with the onnx backend")
    if backend not in ("onnx", "tensorrt"):
        return f"{backend}: precision={precision} is checked by the onnx backend only (ONNX Runtime's quantization)"
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnxruntime.quantization") is None:
        return (f"{backend}: precision={precision} quantizes the graph with onnxruntime.quantization, which is not "
                "installed here; pip install -U onnxruntime")
    return None


def settings(ctx: Any, precision: str, target: str = "onnxruntime") -> dict[str, Any]:
    """What the quantized graph is made with: the key parts of its cache entry, and ``details["quantization"]``;
    ``target`` (:data:`TARGETS`): who runs it."""
    import onnxruntime

    out: dict[str, Any] = {"precision": precision, "onnxruntime": onnxruntime.__version__,
                           "exporter": ctx.options.get("onnx_exporter") or "dynamo",
                           "opset": ctx.options.get("onnx_opset")}
    if precision == "int8-dynamic":
        return {**out, "method": "quantize_dynamic", "ops": list(DYNAMIC_OPS), "weights": "int8 per tensor"}
    out.update(method="quantize_static", format="QDQ", weights="int8 per channel",
               activations=TARGETS[target]["activations"], calibrate="MinMax", preprocess="quant_pre_process")
    if target != "onnxruntime":  # the onnxruntime graph keeps the key it had before other targets existed
        out["target"] = target
    if ctx.options.get("int8_exclude"):
        out["nodes_to_exclude"] = list(ctx.options["int8_exclude"])
    if ctx.calibration is not None:
        out["calibration"] = {"inputs": len(ctx.calibration), "from": "calibration=",
                              "digest": ctx.options.get("calibration")}
    else:
        out["calibration"] = {"inputs": int(ctx.options.get("calibration_examples") or 16),
                              "from": "generated examples", "seed": ctx.seed}
    return out


def calibration_feeds(ctx: Any, graph_inputs: list[str]) -> list[dict[str, Any]]:
    """The calibration inputs as ONNX Runtime feeds (by the graph's input names): ``calibration=``'s, each checked
    against the declaration first (a mismatch fails here, before anything is quantized), or generated ones."""
    from ..generate import calibration_plans
    from ..validate import calibration_args

    space = ctx.space
    names = list(space.names) or input_names(space, len(space.specs))
    if ctx.calibration is not None:
        args = [calibration_args(item, i, space.specs, names, space.dims) for i, item in enumerate(ctx.calibration)]
    elif space.specs:
        count = int(ctx.options.get("calibration_examples") or 16)
        args = [space.build(dims, recipes).args
                for dims, recipes in calibration_plans(space.specs, space.dims, count, ctx.seed)]
    else:  # inputs given as a hypothesis strategy: its minimal example
        args = [ctx.canonical.args]
    declared = input_names(space, len(space.specs) if space.specs else len(args[0]))
    feeds = []
    for one in args:
        feed = {}
        for pos, name in enumerate(graph_inputs):
            feed[name] = to_numpy(one[declared.index(name) if name in declared else pos])
        feeds.append(feed)
    return feeds


def quantize(ctx: Any, src: str, precision: str, target: str = "onnxruntime") -> str:
    """The float32 graph at ``src`` quantized at ``precision`` (int8 or int8-dynamic) for ``target`` (:data:`TARGETS`):
    the path of the quantized graph, built into the work directory or found in the artifact cache. Calibration
    inputs are read and checked before anything is quantized."""
    parts = settings(ctx, precision, target)
    ctx.note("quantization", parts)
    feeds: list[dict[str, Any]] | None = None
    if precision == "int8":
        with ctx.stage("compile"):
            feeds = static_feeds(ctx, src)

    def build() -> None:
        with ctx.stage("compile"):
            quantize_to(ctx, src, ctx.path(QUANTIZED), precision, feeds, ctx.options.get("int8_exclude"), target)

    return str(ctx.cached_files("onnx-" + precision, parts, [QUANTIZED], build) / QUANTIZED)


def static_feeds(ctx: Any, src: str) -> list[dict[str, Any]]:
    """The calibration feeds of the float graph at ``src`` (by its input names, initializers left out)."""
    import onnx

    graph = onnx.load(src, load_external_data=False)
    initializers = {t.name for t in graph.graph.initializer}
    return calibration_feeds(ctx, [i.name for i in graph.graph.input if i.name not in initializers])


def quantize_to(ctx: Any, src: str, dst: str, precision: str, feeds: list[dict[str, Any]] | None,
                exclude: list[str] | None = None, target: str = "onnxruntime") -> None:
    """Quantize the float graph at ``src`` into ``dst`` for ``target`` (nodes named in ``exclude`` kept in float)."""
    with _quiet_logs():
        _run_quantizer(ctx, src, dst, precision, feeds, exclude, target)


def preprocess(ctx: Any, src: str, dst: str) -> None:
    """ORT's recommended pre-processing of ``src`` into ``dst`` (what ``quantize_static`` reads, so its node names
    are the ones ``nodes_to_exclude`` takes); without symbolic shape inference where that cannot read the graph."""
    import warnings

    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _quiet_logs(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            quant_pre_process(src, dst)
        except Exception as first:  # symbolic shape inference cannot read some graphs: ORT's documented fallback
            try:
                quant_pre_process(src, dst, skip_symbolic_shape=True)
            except Exception:
                raise StageError("compile", f"onnxruntime's quant_pre_process fails: {first_line(first)}\n{_FIX}") \
                    from None
            ctx.note("quantization_preprocess", f"without symbolic shape inference ({first_line(first)})")


@contextmanager
def _quiet_logs() -> Iterator[None]:
    """ORT's advice goes to the root logger: silenced (failures reach the user as stage errors)."""
    import logging

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


_FIX = ("  fix: check fp32 first; keep the failing op in float (quantize_static's nodes_to_exclude), or use "
        "precision='int8-dynamic'")


def _run_quantizer(ctx: Any, src: str, dst: str, precision: str, feeds: list[dict[str, Any]] | None,
                   exclude: list[str] | None, target: str = "onnxruntime") -> None:
    import warnings

    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    fix = _FIX
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if precision == "int8-dynamic":
            try:
                quantize_dynamic(src, dst, op_types_to_quantize=list(DYNAMIC_OPS), weight_type=QuantType.QInt8)
            except Exception as exc:
                raise StageError("compile", f"onnxruntime's quantize_dynamic fails: {first_line(exc)}\n{fix}") from None
            return
        prepared = dst[: -len(".onnx")] + ".pre.onnx"
        preprocess(ctx, src, prepared)

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.items = iter(feeds or [])

            def get_next(self) -> dict[str, Any] | None:
                return next(self.items, None)

        try:
            symmetric = target == "tensorrt"
            quantize_static(prepared, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                            weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude or []),
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True} if symmetric else {})
        except Exception as exc:
            raise StageError("compile", f"onnxruntime's quantize_static fails: {first_line(exc)}\n{fix}") from None
        finally:
            if os.path.exists(prepared):
                os.remove(prepared)


def graph_bytes(path: str) -> int:
    """Bytes of the ONNX graph at ``path``, with its external data file when it has one."""
    data = path + ".data"
    return os.path.getsize(path) + (os.path.getsize(data) if os.path.exists(data) else 0)
