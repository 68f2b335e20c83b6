"""ONNX: ``torch.onnx.export`` → ``onnx.checker`` → onnxsim → ONNX Runtime, raw and simplified graphs.

Users ship the simplified file, so a simplification that changes outputs is its own failure (stage
``simplify``). Named dims are exported dynamic, and a graph input that fixes a dim the spec says
varies fails at stage ``check`` naming the input and the dim.
"""

from __future__ import annotations

import os
import re

from ..errors import StageError
from ..sources import first_line, short_path
from ..tensors import from_numpy, is_tensor, to_numpy
from .base import Backend
from .onnx_export import (
    EXPORTERS,
    EXTERNAL_DATA_THRESHOLD,
    export_dynamo,
    export_torchscript,
    input_names,
    node_source,
    weight_bytes,
)

_PROTO_LIMIT = 2 * 1024**3 - 64 * 1024**2

#: Path prefix of the simplified graph's outputs in comparisons.
SIMPLIFIED = "simplified "



class OnnxBackend(Backend):
    name = "onnx"
    native = True
    preload = ("torch.export", "torch.onnx")
    aliases = ("ort", "onnxruntime")
    requires = ("onnx", "onnxruntime", "onnxsim", "onnxscript", "numpy")
    extra = "onnx"
    description = "torch.onnx.export (dims dynamic) → onnx.checker → onnxsim → onnxruntime, raw and simplified"

    def uses_cuda(self, options=None) -> bool:
        return providers()[0] == "CUDAExecutionProvider"

    def verify(self, ctx) -> None:
        exporter = ctx.options.get("onnx_exporter") or "dynamo"
        if exporter not in EXPORTERS:
            raise StageError("export", f"unknown ONNX exporter {exporter!r}; use one of {', '.join(EXPORTERS)}")
        opset = ctx.options.get("onnx_opset")
        threshold = ctx.options.get("onnx_external_data_threshold")
        threshold = EXTERNAL_DATA_THRESHOLD if threshold is None else threshold
        raw_path = ctx.path("model.onnx")
        external = weight_bytes(ctx.model) > threshold
        ctx.note("onnx_exporter", exporter)
        ctx.note("onnx_external_data", external)
        if exporter == "dynamo":
            export_dynamo(ctx, raw_path, opset, external)
        else:
            export_torchscript(ctx, raw_path, opset, external)
        _check(ctx, raw_path)
        simplified_path = _simplify(ctx, raw_path, external)
        raw = _session(ctx, raw_path)
        simplified = _session(ctx, simplified_path) if simplified_path else None
        ctx.note("onnxruntime_provider", raw.get_providers()[0])

        from ..compare import Leaves, flatten

        def reference(args):
            leaves = [(p, v) for p, v in flatten(ctx.recorded_eager(args)) if is_tensor(v)]
            if simplified is None:
                return Leaves(leaves)
            return Leaves(leaves + [(SIMPLIFIED + p, v) for p, v in leaves])

        def run(args):
            out = [(f"output[{i}]", o) for i, o in enumerate(_run(ctx, raw, raw_path, args))]
            if simplified is not None:
                assert simplified_path is not None  # a simplified session exists only for a simplified graph
                out += [(f"{SIMPLIFIED}output[{i}]", o) for i, o in enumerate(_run(ctx, simplified, simplified_path, args))]
            return Leaves(out)

        try:
            ctx.run_examples(run, reference=reference)
        except StageError as err:
            errors = err.comparison.errors if err.comparison is not None else []
            if err.stage == "compare" and errors and all(e.path.startswith(SIMPLIFIED) for e in errors):
                raise StageError(
                    "simplify",
                    "onnxsim changed the outputs: the raw ONNX graph matches eager PyTorch, the simplified one "
                    f"does not (users ship the simplified file)\n{err.message}\n  fix: simplify with fewer passes "
                    "(onnxsim's skip options) or ship the raw graph",
                    comparison=err.comparison,
                ) from None
            raise


# ------------------------------------------------------------------------------- check, simplify


def _check(ctx, path: str) -> None:
    import onnx

    with ctx.stage("check"):
        try:
            onnx.checker.check_model(path, full_check=True)
        except Exception as exc:
            raise StageError("check", f"onnx.checker rejects the exported graph: {first_line(exc)}\n"
                                      "  fix: try another --deploy-onnx-opset, or report it to the exporter") from None
        model = onnx.load(path, load_external_data=False)
    names = input_names(ctx.space, len(ctx.space.specs))
    ctx.note("onnx_inputs", [_shape_text(i) for i in model.graph.input])
    ctx.note("onnx_opset", next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None))
    for graph_input in model.graph.input:
        if graph_input.name not in names or not ctx.space.specs:
            continue
        spec = ctx.space.specs[names.index(graph_input.name)]
        dims = graph_input.type.tensor_type.shape.dim
        for axis, d in enumerate(spec.shape):
            if not isinstance(d, str) or axis >= len(dims):
                continue
            lo, hi = ctx.space.dims[d]
            if lo != hi and dims[axis].HasField("dim_value"):
                raise StageError(
                    "check",
                    f"the ONNX graph fixes input '{graph_input.name}' dim {axis} ('{d}') to {dims[axis].dim_value}, "
                    f"but dims= declares {d} in [{lo}, {hi}]: the exported model only accepts that one size\n"
                    "  fix: make forward work for every size (no shape-dependent Python), or narrow dims=",
                )


def _shape_text(value_info) -> str:
    dims = [d.dim_param or str(d.dim_value) for d in value_info.type.tensor_type.shape.dim]
    return f"{value_info.name}[{', '.join(dims)}]"


def _simplify(ctx, raw_path: str, external: bool) -> str | None:
    import onnx
    import onnxsim

    path = ctx.path("model.sim.onnx")
    with ctx.stage("simplify"):
        model = onnx.load(raw_path)
        if model.ByteSize() > _PROTO_LIMIT:
            ctx.note("onnx_simplified", "skipped: the graph is over 2 GB, which onnxsim cannot hold")
            return None
        try:
            simplified, ok = onnxsim.simplify(model, check_n=0)
        except Exception as exc:
            raise StageError("simplify", f"onnxsim fails on the exported graph: {first_line(exc)}\n"
                                         "  fix: ship the raw graph, or simplify with onnxsim's skip options") from None
        if not ok:  # check_n=0: no random-input comparison (the examples below do that); onnx.checker's verdict
            raise StageError("simplify", "onnxsim's simplified graph fails onnx.checker (onnxsim reports it invalid)\n"
                                         "  fix: ship the raw graph, or simplify with onnxsim's skip options")
        onnx.save_model(simplified, path, save_as_external_data=external, all_tensors_to_one_file=True,
                        location=os.path.basename(path) + ".data")
    ctx.note("onnx_nodes", {"raw": len(model.graph.node), "simplified": len(simplified.graph.node)})
    return path


# ------------------------------------------------------------------------------------ runtime


def providers() -> list[str]:
    """CUDA when onnxruntime-gpu and a CUDA device are both present, else CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        try:
            import torch

            if torch.cuda.is_available():
                return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        except ImportError:  # pragma: no cover
            pass
    return ["CPUExecutionProvider"]


def _session(ctx, path: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # errors reach the user through the stage message, not stderr
    with ctx.stage("load"):
        try:
            return ort.InferenceSession(path, options, providers=providers())
        except Exception as exc:
            raise StageError("load", explain_runtime_error(exc, path)) from None


def _run(ctx, session, path: str, args: tuple) -> list:
    names = [i.name for i in session.get_inputs()]
    declared = input_names(ctx.space, len(args))
    feed = {}
    for pos, name in enumerate(names):
        index = declared.index(name) if name in declared else pos
        feed[name] = to_numpy(args[index])
    try:
        outputs = session.run(None, feed)
    except Exception as exc:
        raise StageError("run", explain_runtime_error(exc, path)) from None
    return [from_numpy(o) for o in outputs]


def explain_runtime_error(exc: BaseException, path: str) -> str:
    """onnxruntime's error with the failing node, its op type and the user's line it came from."""
    text = str(exc)
    m = (re.search(r"running (\w+) node\. Name:'([^']*)'", text)  # run
         or re.search(r"implementation for (\w+)\(\d+\) node with name '([^']*)'", text))  # load: no kernel
    status = text.split("Status Message:", 1)[-1].strip().splitlines()[0] if "Status Message:" in text else first_line(exc)
    if not m:
        return f"onnxruntime: {first_line(exc)}"
    op, node = m.group(1), m.group(2)
    where = node_source(path, node)
    at = f"\n  from {short_path(where[0])}:{where[1]}  `{where[2]}`" if where else ""
    return f"onnxruntime fails at node '{node}' (op {op}): {status}{at}"
