"""Exporting a model to ONNX, shared by every backend that deploys an ONNX graph (onnx, tensorrt) and by the
standalone repro scripts: the exporters, the graph's input names and dynamic axes, where a graph node came
from in the user's code, and the graph's digest independent of the checkout it was exported from.
"""

from __future__ import annotations

import os
import re

from ..errors import StageError
from ..sources import first_line, frame_from_stack, is_user_file, short_path, user_frame
from .base import quiet_torch_logs
from .export import export_program, op_source

#: Above this many bytes of weights the graph is saved with its tensors in a separate ``.data`` file
#: (protobuf cannot hold a message over 2 GB). Overridable per check (``onnx_external_data_threshold``).
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3

EXPORTERS = ("dynamo", "torchscript")


def weight_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def external_data(ctx) -> bool:
    """Whether the check's graph is saved with its weights in a separate ``.data`` file: the model's weights are
    over the ``onnx_external_data_threshold`` backend option (bytes; :data:`EXTERNAL_DATA_THRESHOLD` when unset).
    One rule for every backend that exports ONNX (onnx, tensorrt)."""
    threshold = ctx.options.get("onnx_external_data_threshold")
    return weight_bytes(ctx.model) > (EXTERNAL_DATA_THRESHOLD if threshold is None else threshold)


def export_dynamo(ctx, path: str, opset: int | None, external: bool) -> None:
    onnx_program = dynamo_program(ctx, export_program(ctx), opset)
    with ctx.stage("save"), quiet_torch_logs():
        onnx_program.save(path, external_data=external)


def dynamo_program(ctx, program, opset: int | None = None):
    """``torch.onnx.export`` (dynamo) of the exported ``program`` at ``opset`` (the exporter's own when None),
    its dynamic dims named from the spec (:func:`name_dynamic_axes`), as an ``ONNXProgram``; a conversion
    failure fails at stage export naming the op and the user's line. Shared by the onnx and tensorrt backends
    and the tvm backend's ONNX fallback."""
    import torch

    args, kwargs = ctx.space.split(ctx.canonical.clone_args())
    with ctx.stage("export"), quiet_torch_logs():
        try:
            onnx_program = torch.onnx.export(program, args, kwargs=kwargs or None, dynamo=True, opset_version=opset,
                                             verbose=False)
        except Exception as exc:
            raise StageError("export", explain_conversion_error(exc, program), cause=exc) from None
        # dynamo=True always returns an ONNXProgram: torch's annotation (ONNXProgram | None) covers dynamo=False too
        assert onnx_program is not None
        written = onnx_program.model.opset_imports.get("")
        if opset is not None and written != opset:
            # the exporter writes its own opset and converts to the requested one where it can, else keeps its own
            import onnx

            assert written is not None  # the exporter always writes the default domain's opset
            if opset < written:
                fix = f"ask for opset {written} or newer, or --deploy-onnx-exporter=torchscript (older opsets)"
            else:
                fix = f"ask for an opset onnx knows (at most {onnx.defs.onnx_opset_version()})"
            raise StageError("export", f"torch.onnx did not produce opset {opset}: the exported graph is opset "
                                       f"{written} (the version converter could not convert it)\n  fix: {fix}")
        name_dynamic_axes(onnx_program, ctx.space)
    return onnx_program


def name_dynamic_axes(onnx_program, space) -> None:
    """Give the graph's dynamic dims the spec's names (``batch``, not torch.export's ``s77``), as the
    TorchScript exporter does. A dim that torch.export gave several symbols (one per input; torch 2.13 does
    so for a dim declared ``(1, 2)``) becomes one name again, so a consumer that reads the names (TVM's ONNX
    frontend) sees one dim."""
    if not hasattr(onnx_program, "rename_axes"):  # torch < 2.8
        return
    names = input_names(space, len(space.specs))
    mapping: dict[str, str] = {}
    for graph_input in onnx_program.model.graph.inputs:
        if graph_input.name not in names or graph_input.shape is None:
            continue
        spec = space.specs[names.index(graph_input.name)]
        for axis, d in enumerate(spec.shape):
            symbol = getattr(graph_input.shape[axis], "value", None) if axis < len(graph_input.shape) else None
            if isinstance(d, str) and isinstance(symbol, str):
                mapping.setdefault(symbol, d)
    if mapping:
        onnx_program.rename_axes(mapping)


def export_torchscript(ctx, path: str, opset: int | None, external: bool) -> None:
    import torch

    names = input_names(ctx.space, len(ctx.space.specs) or len(ctx.canonical.args))
    args, kwargs = ctx.space.split(ctx.canonical.clone_args())
    axes = dynamic_axes(ctx.space, names)
    with ctx.stage("export"), quiet_torch_logs():
        try:
            torch.onnx.export(ctx.model, args, path, kwargs=kwargs or None, dynamo=False, input_names=names,
                              dynamic_axes=axes or None, opset_version=opset or 17)
        except Exception as exc:
            raise StageError("export", explain_conversion_error(exc, None, "torchscript"), cause=exc) from None
    # the TorchScript exporter traces: the decisions it froze are checked like the trace backend's
    ctx.traced_decisions()
    if external and not os.path.exists(path + ".data"):
        import onnx

        with ctx.stage("save"):
            onnx.save_model(onnx.load(path), path, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=os.path.basename(path) + ".data", size_threshold=1024)


def input_names(space, arity: int) -> list[str]:
    names = list(space.names[:arity]) if space.names and len(space.names) >= arity else []
    return names or [f"input_{i}" for i in range(arity)]


def dynamic_axes(space, names: list[str]) -> dict[str, dict[int, str]]:
    """``dynamic_axes`` for the TorchScript exporter: every named dim whose bounds vary."""
    out: dict[str, dict[int, str]] = {}
    for name, spec in zip(names, space.specs):
        axes = {axis: d for axis, d in enumerate(spec.shape) if isinstance(d, str) and space.dims[d][0] != space.dims[d][1]}
        if axes:
            out[name] = axes
    return out


def explain_conversion_error(exc: BaseException, program, exporter: str = "dynamo") -> str:
    """Name the op the exporter could not convert and, where the graph knows it, the user's line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    op = None
    for pattern in (r"OpOverload\(op='([\w.]+)'", r"target=torch\.ops\.([\w.]+)", r"operator '([\w:.]+)'",
                    r"(aten::\w+)", r"aten_(\w+)"):
        m = re.search(pattern, text)
        if m:
            op = m.group(1)
            break
    reason = ""
    summary = text.split("## Exception summary", 1)[-1]
    for line in summary.splitlines():
        m = re.match(r"\s*<class '[\w.]+'>: (.+)", line)
        if m:
            reason = m.group(1).strip()
            break
    reason = reason or first_line(exc)
    # torch's traceback of the node that failed, else the first node calling the op, else the Python traceback
    where = frame_from_stack(text) if "Original traceback:" in text else None
    where = where or (op_source(program, op) if program is not None and op else None)
    where = where or user_frame(exc.__traceback__) or _traced_node_source(exc)
    at = f"\n  at {short_path(where[0])}:{where[1]}  `{where[2]}`" if where else ""
    what = f"torch.onnx cannot convert {op.replace('::', '.') if op else 'the model'}"
    other = "torchscript" if exporter == "dynamo" else "dynamo"
    return (f"{what}: {reason}{at}\n  fix: rewrite that call with ops ONNX supports, register a translation "
            f"(torch.onnx.export(custom_translation_table=...)), or try --deploy-onnx-exporter={other}")


def _traced_node_source(exc: BaseException):
    """The user's line for the TorchScript node the TorchScript exporter failed on: its symbolic-function
    frames hold the node (``node``), whose source range is the stack it was traced at, innermost first."""
    import linecache
    import traceback

    found = None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        node = frame.f_locals.get("node")
        source = getattr(node, "sourceRange", None)
        if not callable(source):
            continue
        for m in re.finditer(r"^(.+)\((\d+)\): \S+$", source(), re.M):
            if is_user_file(m.group(1)):
                found = (m.group(1), int(m.group(2)), linecache.getline(m.group(1), int(m.group(2))).strip())
                break
    return found


def node_source(path: str, node_name: str):
    try:
        import onnx

        model = onnx.load(path, load_external_data=False)
    except Exception:
        return None
    for node in model.graph.node:
        if node.name == node_name:
            for prop in node.metadata_props:
                if prop.key == "pkg.torch.onnx.stack_trace":
                    return frame_from_stack(prop.value)
    return None


def onnx_digest(path: str) -> str:
    """The graph's digest for the engine's cache key: of a canonical copy without the documentation and metadata
    the exporter writes (``doc_string``, ``metadata_props``: source stack traces with the checkout's absolute
    paths, module names), which TensorRT does not build from, so every checkout of the same model shares its
    engine; the nodes, attributes, initializers and external weights are all digested, so any real change counts."""
    import hashlib

    import onnx

    from ..cache import file_digest

    model = onnx.load(path, load_external_data=False)
    _strip_annotations(model)
    parts = [hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()]
    if os.path.exists(path + ".data"):
        parts.append(file_digest(path + ".data"))
    return ":".join(parts)


def _strip_annotations(model) -> None:
    """Clear every ``doc_string`` and ``metadata_props`` in ``model`` (its graph, subgraphs, nodes, values,
    initializers and functions), in place."""
    import onnx

    def clear(proto) -> None:
        proto.ClearField("doc_string")
        if hasattr(proto, "metadata_props"):
            proto.ClearField("metadata_props")

    def graph(g) -> None:
        clear(g)
        for value in [*g.input, *g.output, *g.value_info, *g.initializer, *g.sparse_initializer]:
            if hasattr(value, "doc_string"):
                clear(value)
        for node in g.node:
            clear(node)
            for attr in node.attribute:
                attr.ClearField("doc_string")
                if attr.type == onnx.AttributeProto.GRAPH:
                    graph(attr.g)
                for sub in attr.graphs:
                    graph(sub)

    clear(model)
    graph(model.graph)
    for function in model.functions:
        clear(function)
        for node in function.node:
            clear(node)
