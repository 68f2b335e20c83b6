"""Reduced precision for the ONNX graphs the onnx and tensorrt backends deploy: the float32 export converted to
float16, the float16 rounding ONNX Runtime's CPU provider leaves out, and where a float16 graph overflows.

- :func:`convert_fp16`: onnxconverter-common's ``float16.convert_float_to_float16`` with the graph's inputs and
  outputs kept float32 (so the check feeds and compares float32, as for a float32 graph). Constants beyond
  float16's range are clamped by the converter to its largest finite value (65504): they are listed first
  (:func:`out_of_range_constants`), so a failing check can say which.
- :func:`emulate_fp16`: ONNX Runtime's CPU provider has float16 kernels for few ops; for the others it inserts
  casts, computes in float32, and removes the casts between two such nodes (``InsertCastTransformer``), so the
  float16 graph's intermediates are never rounded to float16 and never overflow: on CPU it behaves as a float32
  graph with float16 weights. The emulation graph puts that rounding back: the converted graph with float32
  types, its float16 weights' values, and a ``Cast`` to float16 and back after every node output the converted
  graph computes in float16, the rounding (and the overflow to inf) a GPU's float16 kernels give.
- :func:`locate_overflow`: the first node whose output is inf or NaN while its inputs are finite, found by running
  the graph with every intermediate as an output; with the module and the user's line the exporter recorded.

onnx and numpy are imported inside the functions.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..sources import frame_from_stack, short_path

#: float16's largest finite value.
FP16_MAX = 65504.0
#: The converter's ``min_positive_val``: nonzero constants smaller in magnitude are raised to it (its default).
MIN_POSITIVE = 1e-7
#: A serialized graph this large cannot go through in-memory shape inference (protobuf's 2 GiB, with a margin).
PROTO_LIMIT = 2 * 1024**3 - 64 * 1024**2
#: Suffixes of the names the emulation graph gives a node's unrounded output and its float16 copy.
UNROUNDED, ROUNDED = "__fp32", "__fp16"


def converter_version() -> str | None:
    """``onnxconverter-common <version>``, or None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"onnxconverter-common {version('onnxconverter-common')}"
    except PackageNotFoundError:
        return None


def reduced_precision_reason(backend: str, precision: str) -> str | None:
    """Why ``backend`` (onnx, tensorrt) cannot deploy at ``precision`` here, or None when it can."""
    if precision == "fp32":
        return None
    if precision.startswith("int8"):
        from .quantize import quantization_reason

        return quantization_reason(backend, precision)
    if precision == "bf16":
        runtime = (" (ONNX Runtime's CPU provider has no bfloat16 kernels for Add, MatMul or Relu either)"
                   if backend == "onnx" else "")
        return (f"{backend}: bf16 needs the float32 graph converted to bfloat16, and onnxconverter-common converts "
                f"to float16 only{runtime}; use precision='fp16'")
    if converter_version() is None:
        return (f"{backend}: precision=fp16 converts the float32 ONNX graph with onnxconverter-common, which is not "
                f"installed; pip install 'pytest-deploy[onnx]' (or pip install onnxconverter-common)")
    return None


# ------------------------------------------------------------------------------------------ conversion


def _float_constants(model):
    """``(name, values, first consumer)`` of each float32 initializer and Constant node value of ``model``."""
    from onnx import TensorProto, numpy_helper

    consumers: dict[str, str] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, node.name)
    tensors = [(t.name, t) for t in model.graph.initializer]
    tensors += [(node.output[0], a.t) for node in model.graph.node if node.op_type == "Constant"
                for a in node.attribute if a.name == "value"]
    for name, tensor in tensors:
        if tensor.data_type == TensorProto.FLOAT:
            yield name, numpy_helper.to_array(tensor), consumers.get(name)


def out_of_range_constants(model) -> list[dict[str, Any]]:
    """Initializers and Constant nodes of a float32 graph holding a finite value beyond float16's range: the
    converter clamps them to 65504. ``[{"name", "max_abs", "node" (the first consumer)}]``."""
    import numpy as np

    found = []
    for name, values, node in _float_constants(model):
        values = np.abs(values)
        values = values[np.isfinite(values)]
        if values.size and float(values.max()) > FP16_MAX:
            found.append({"name": name, "max_abs": float(values.max()), "node": node})
    return found


def separate_outputs(model) -> list[str]:
    """Give every graph output that other nodes also read a node of its own: the producer writes
    ``<name>__inner``, its readers read that, and an ``Identity`` writes ``<name>``. In place; returns the outputs
    separated.

    With ``keep_io_types=True`` the converter renames a float output's producer and casts the float16 value back to
    float32 under the output's name, but leaves the output's other readers reading that name: a node it converted to
    float16 then reads float32 and ONNX Runtime refuses the graph (Hugging Face's last hidden state, read again by
    the pooler or the LM head, is such an output)."""
    from onnx import helper

    graph = model.graph
    read = {name for node in graph.node for name in node.input}
    produced = {name for node in graph.node for name in node.output}
    separated = []
    for out in graph.output:
        if out.name not in read or out.name not in produced:
            continue
        inner = out.name + "__inner"
        for node in graph.node:
            node.input[:] = [inner if i == out.name else i for i in node.input]
            node.output[:] = [inner if o == out.name else o for o in node.output]
        for info in graph.value_info:
            if info.name == out.name:
                info.name = inner
        graph.node.append(helper.make_node("Identity", [inner], [out.name], name=f"{out.name}/output"))
        separated.append(out.name)
    return separated


def retarget_casts(model) -> list[str]:
    """Make every ``Cast`` to float32 whose output the converter typed float16 cast to float16. In place; returns the
    nodes changed.

    The converter types every float value of a converted node float16 (its ``value_info``) and converts its readers,
    but leaves a ``Cast(to=FLOAT)`` node's ``to`` as it is: an int64 ``arange`` cast to float for rotary or
    relative position embeddings then writes float32 where the graph declares, and its readers expect, float16, and
    ONNX Runtime refuses the graph."""
    from onnx import TensorProto

    graph = model.graph
    fp16 = {v.name for v in graph.value_info if v.type.tensor_type.elem_type == TensorProto.FLOAT16}
    changed = []
    for node in graph.node:
        if node.op_type != "Cast" or not node.output or node.output[0] not in fp16:
            continue
        for attr in node.attribute:
            if attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
                changed.append(node.name)
    return changed


def raised_constants(model) -> list[dict[str, Any]]:
    """Initializers and Constant nodes of a float32 graph holding a nonzero value smaller in magnitude than
    :data:`MIN_POSITIVE`: the converter raises each to ±MIN_POSITIVE (a LayerNorm eps of 1e-12 becomes 1e-7).
    ``[{"name", "min_abs" (the smallest nonzero |value|), "count" (values raised), "node" (the first consumer)}]``."""
    import numpy as np

    found = []
    for name, values, node in _float_constants(model):
        values = np.abs(values)
        # the converter's rule (convert_np_to_float16): 0 < |x| < min_positive_val, compared in float32
        tiny = values[(values > 0) & (values < np.float32(MIN_POSITIVE))]
        if tiny.size:
            found.append({"name": name, "min_abs": float(tiny.min()), "count": int(tiny.size), "node": node})
    return found


def _stored_large(src: str) -> bool:
    """The graph at ``src`` keeps its weights in external data, or is near protobuf's 2 GiB limit: in-memory shape
    inference (which serializes the whole graph, weights included) cannot hold it."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    if os.path.getsize(src) > PROTO_LIMIT:
        return True
    return any(uses_external_data(t) for t in onnx.load(src, load_external_data=False).graph.initializer)


def convert_model(model, block_list: Sequence[str] = (), shape_inference: bool = True):
    """The float32 ``model`` converted to float16 (inputs and outputs kept float32, the nodes named in ``block_list``
    kept float32), with the converter's two defects mended (:func:`separate_outputs`, :func:`retarget_casts`);
    ``shape_inference=False`` when the model's value_info was inferred already (from its file). ``model`` itself is
    changed (its outputs separated)."""
    import warnings

    from onnx import TensorProto
    from onnxconverter_common import float16

    original = {node.name for node in model.graph.node}
    floats = {o.name for o in model.graph.output if o.type.tensor_type.elem_type == TensorProto.FLOAT}
    separated = separate_outputs(model)
    block = set(block_list)
    # an output's own Identity stays float32 with its producer
    block |= {f"{name}/output" for name in separated if _producer(model, name + "__inner") in block}
    # the converter keeps its default op block list (Range, Resize, Min, Max, TopK, ...) float32 too
    split_shared_weights(model, block | {n.name for n in model.graph.node if n.op_type in float16.DEFAULT_OP_BLOCK_LIST})
    with warnings.catch_warnings():  # the clamped and raised constants are reported, not warned about
        warnings.simplefilter("ignore")
        converted = float16.convert_float_to_float16(model, keep_io_types=True, max_finite_val=FP16_MAX,
                                                     min_positive_val=MIN_POSITIVE,
                                                     disable_shape_infer=not shape_inference,
                                                     node_block_list=sorted(block) or None)
    retarget_casts(converted)
    keep_float_outputs(converted, floats)
    drop_round_trips(converted, original | {f"{name}/output" for name in separated})
    return converted


def keep_float_outputs(model, floats: set[str]) -> list[str]:
    """Make the graph outputs named in ``floats`` (float32 in the float32 graph) float32 again where the converter
    typed them float16: with ``keep_io_types=True`` it still does so for an output whose producer is kept float32
    (blocked), writing it through its own ``Cast`` to float16. That cast now casts to float32 (a no-op on the blocked
    producer's float32 value); any other float16 producer gets a ``Cast`` to float32 after it. In place; returns the
    outputs changed."""
    from onnx import TensorProto, helper

    graph = model.graph
    producers = {name: node for node in graph.node for name in node.output}
    changed = []
    for out in graph.output:
        if out.name not in floats or out.type.tensor_type.elem_type != TensorProto.FLOAT16:
            continue
        out.type.tensor_type.elem_type = TensorProto.FLOAT
        producer = producers.get(out.name)
        if producer is not None and producer.op_type == "Cast":
            for attr in producer.attribute:
                if attr.name == "to":
                    attr.i = TensorProto.FLOAT
        elif producer is not None:
            half = out.name + "__fp16"
            producer.output[:] = [half if o == out.name else o for o in producer.output]
            graph.node.append(helper.make_node("Cast", [half], [out.name], to=TensorProto.FLOAT,
                                               name=f"{out.name}/to_float32"))
        changed.append(out.name)
    return changed


def split_shared_weights(model, block: set[str]) -> list[str]:
    """Give the blocked nodes their own copy of every float initializer they share with nodes that are converted.
    In place; returns the initializers copied.

    The converter keeps an initializer float32 when a blocked node reads it, and then a converted node reading the
    same one gets a float32 weight beside float16 activations, which ONNX Runtime refuses. onnxsim merges equal
    constants, so every LayerNorm's weight of ones is often one initializer that all of them share."""
    from onnx import TensorProto

    graph = model.graph
    floats = {t.name: t for t in graph.initializer if t.data_type == TensorProto.FLOAT}
    readers: dict[str, set[bool]] = {}
    for node in graph.node:
        for name in node.input:
            if name in floats:
                readers.setdefault(name, set()).add(node.name in block)
    shared = [name for name, kinds in readers.items() if kinds == {True, False}]
    for name in shared:
        copy = graph.initializer.add()
        copy.CopyFrom(floats[name])
        copy.name = name + "__fp32"
        for node in graph.node:
            if node.name in block:
                node.input[:] = [copy.name if i == name else i for i in node.input]
    return shared


def _producer(model, value: str) -> str | None:
    return next((node.name for node in model.graph.node if value in node.output), None)


def drop_round_trips(model, original: set[str]) -> int:
    """Remove the float16 round trips the converter leaves between float32 values: a ``Cast`` to float16 it inserted,
    read by ``Cast`` nodes to float32 it inserted, whose readers now read the float32 value itself. In place; returns
    the float32 casts removed.

    The converter casts a kept-float32 (blocked) node's output to float16 and casts it back before the next blocked
    node, and removes such pairs only when the float16 value has one reader (1.16 compares the ``to`` of the others
    with 32 and 16, not with FLOAT and FLOAT16): between blocked nodes every value was still rounded to float16, so
    no block list could keep a sensitive chain in float32. ``original`` names the graph's own nodes (a cast the model
    itself writes is kept)."""
    from onnx import TensorProto

    graph = model.graph
    outputs = {o.name for o in graph.output}

    def inserted(node, to: int) -> bool:
        return (node.op_type == "Cast" and node.name not in original
                and any(a.name == "to" and a.i == to for a in node.attribute))

    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    producers = {name: node for node in graph.node for name in node.output}
    removed = []
    for down in [n for n in graph.node if n.op_type == "Cast"]:
        if not inserted(down, TensorProto.FLOAT):
            continue
        up = producers.get(down.input[0])
        if up is None or not inserted(up, TensorProto.FLOAT16):
            continue
        source = up.input[0]
        if down.output[0] in outputs:  # a graph output keeps its name: the cast now reads float32 (a no-op)
            down.input[0] = source
            continue
        for reader in readers.get(down.output[0], []):
            reader.input[:] = [source if i == down.output[0] else i for i in reader.input]
        removed.append(down)
    for node in removed:
        graph.node.remove(node)
    still_read = {name for node in graph.node for name in node.input} | outputs
    for node in [n for n in graph.node if inserted(n, TensorProto.FLOAT16) and n.output[0] not in still_read]:
        graph.node.remove(node)
    return len(removed)


def convert_fp16(src: str, dst: str, external: bool, block_list: Sequence[str] = ()) -> dict[str, Any]:
    """The float32 graph at ``src`` converted to float16 at ``dst`` (inputs and outputs kept float32, ``block_list``'s
    nodes float32); returns what the report records (the converter, the constants it clamped and the ones it raised).

    A graph with external data (a model over 2 GiB) is shape-inferred from its file (``infer_shapes_path``) and
    converted with the converter's own in-memory shape inference off (``disable_shape_infer``: it relies on the
    value_info that inference wrote), since protobuf cannot serialize a message over 2 GiB."""
    import onnx

    large = _stored_large(src)
    if large:
        # beside src, so that the relative location of src's external data resolves from it too
        inferred = os.path.splitext(src)[0] + ".inferred.onnx"
        try:
            onnx.shape_inference.infer_shapes_path(src, inferred)
            model = onnx.load(inferred)
        finally:
            if os.path.exists(inferred):
                os.remove(inferred)
    else:
        model = onnx.load(src)
    clamped = out_of_range_constants(model)
    raised = raised_constants(model)
    converted = convert_model(model, block_list, shape_inference=not large)
    onnx.save_model(converted, dst, save_as_external_data=external or large, all_tensors_to_one_file=True,
                    location=os.path.basename(dst) + ".data")
    out: dict[str, Any] = {"precision_converter": converter_version()}
    if clamped:
        out["precision_clamped"] = clamped
    if raised:
        out["precision_raised"] = raised
    return out


def conversion_failure(exc: BaseException) -> str:
    """The compile stage's message when the float16 conversion (or its check) raises ``exc``."""
    import re

    from ..sources import first_line

    text = f"onnxconverter-common cannot convert the graph to float16: {first_line(exc)}"
    if re.search(r"2 ?GB|protobuf size", str(exc), re.IGNORECASE):  # protobuf's, or onnx.checker's, size limit
        return (f"{text}\n  the graph is over protobuf's 2 GiB limit, so it cannot be converted in memory; a graph "
                "with external data is converted from its file\n  fix: export with external data (the onnx backend's "
                "onnx_external_data_threshold option, below the weights' size), or check fp32")
    return f"{text}\n  fix: keep the failing op in float32 (convert_float_to_float16's op_block_list), or check fp32"


# ------------------------------------------------------------------------------------------- emulation


def fp16_values(model) -> set[str]:
    """Names of the values the (converted) graph computes in float16, from its types after shape inference."""
    import onnx
    from onnx import TensorProto

    try:  # serializing a graph over 2 GiB fails in protobuf (or takes its memory twice): the declared types
        inferred = onnx.shape_inference.infer_shapes(model) if model.ByteSize() < PROTO_LIMIT else model
    except Exception:  # a graph shape inference cannot read: the types the graph itself declares
        inferred = model
    graph = inferred.graph
    return {v.name for v in [*graph.value_info, *graph.output, *graph.input]
            if v.type.tensor_type.elem_type == TensorProto.FLOAT16}


def emulate_fp16(model):
    """The emulation graph of a float16 graph (see the module docstring), or None where it cannot be built (a
    node with a subgraph: If, Loop, Scan)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return None
    rounded = fp16_values(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    for tensor in g.initializer:
        if tensor.data_type == TensorProto.FLOAT16:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype("float32"), tensor.name))
    for info in [*g.value_info, *g.input, *g.output]:
        if info.type.tensor_type.elem_type == TensorProto.FLOAT16:
            info.type.tensor_type.elem_type = TensorProto.FLOAT
    nodes = []
    for node in g.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT16:
                attr.i = TensorProto.FLOAT
            elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT16:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype("float32"), attr.t.name))
        nodes.append(node)
        for i, name in enumerate(node.output):
            if name and name in rounded:
                # one pair per output, named uniquely (a Split has several; ONNX Runtime refuses duplicate names)
                base = node.name if len(node.output) == 1 and node.name else f"{node.name}/{name}"
                node.output[i] = name + UNROUNDED
                nodes.append(helper.make_node("Cast", [name + UNROUNDED], [name + ROUNDED], to=TensorProto.FLOAT16,
                                              name=f"{base}/to_fp16"))
                nodes.append(helper.make_node("Cast", [name + ROUNDED], [name], to=TensorProto.FLOAT,
                                              name=f"{base}/from_fp16"))
    del g.node[:]
    g.node.extend(nodes)
    return out


# ------------------------------------------------------------------------------------------- overflow


def nonfinite_outputs(expected: list[tuple[str, Any]], got: list[tuple[str, Any]]) -> list[str]:
    """Paths of the float outputs that hold inf or NaN from the backend where eager's are finite."""
    import torch

    paths = []
    for (_, e), (path, g) in zip(expected, got):
        if not (hasattr(e, "is_floating_point") and hasattr(g, "is_floating_point")) or tuple(e.shape) != tuple(g.shape):
            continue
        if e.is_floating_point() and bool((~torch.isfinite(g) & torch.isfinite(e)).any()):
            paths.append(path)
    return paths


def unoptimised_session(model, providers: list):
    """An ONNX Runtime session on ``model`` (in memory) with its graph optimisations off, so the float16 emulation's
    round trips and every marked intermediate output stay as written; errors reach the user through the caller."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=providers)


def locate_overflow(model, feed: Mapping[str, Any], providers: list) -> dict[str, Any] | None:
    """The first node (in graph order) whose float output holds inf or NaN while all its float inputs are finite,
    run with every intermediate value as a graph output; None when no node does."""
    import numpy as np
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    graph = probe.graph
    known = {o.name for o in graph.output}
    for node in graph.node:
        for name in node.output:
            if name and name not in known:
                graph.output.append(onnx.ValueInfoProto(name=name))
                known.add(name)
    session = unoptimised_session(probe, providers)
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(None, dict(feed))))
    values.update(feed)

    def finite(name: str) -> bool:
        v = values.get(name)
        return v is None or not np.issubdtype(np.asarray(v).dtype, np.floating) or bool(np.isfinite(v).all())

    for node in graph.node:
        if node.name.endswith(("/to_fp16", "/from_fp16")):  # the emulation's rounding: judged with its node
            continue
        # a node's value as the graph passes it on: in the emulation graph, after its float16 rounding
        outputs = [o[: -len(UNROUNDED)] if o.endswith(UNROUNDED) else o for o in node.output if o]
        bad = [o for o in outputs if not finite(o)]
        if bad and all(finite(i) for i in node.input if i):
            largest = [float(np.abs(np.asarray(values[i], dtype=np.float64)).max()) for i in node.input
                       if i in values and np.issubdtype(np.asarray(values[i]).dtype, np.floating)
                       and np.asarray(values[i]).size]
            return {"node": node.name, "op": node.op_type, "output": bad[0],
                    "input_max_abs": max(largest) if largest else None, **node_origin(node)}
    return None


def node_origin(node) -> dict[str, Any]:
    """The module (``amp``) and its class, and the user's source line, the dynamo exporter recorded for ``node``."""
    import ast

    props = {p.key: p.value for p in node.metadata_props}
    out: dict[str, Any] = {}
    try:
        scopes = ast.literal_eval(props.get("pkg.torch.onnx.name_scopes", "[]"))
        classes = ast.literal_eval(props.get("pkg.torch.onnx.class_hierarchy", "[]"))
    except (ValueError, SyntaxError):
        scopes, classes = [], []
    module = ".".join(s for s in scopes[1:-1] if s)
    if module:
        out["module"] = module
        if len(classes) >= 2:
            out["type"] = str(classes[-2]).rsplit(".", 1)[-1]
    where = frame_from_stack(props.get("pkg.torch.onnx.stack_trace", ""))
    if where:
        out["file"], out["line"], out["source"] = where
    return out


def overflow_text(paths: list[str], found: dict[str, Any] | None, clamped: list[dict[str, Any]]) -> str:
    """The failure's explanation of a float16 overflow: which outputs, the first node and where it came from."""
    lines = [f"float16 overflow: {', '.join(paths)} holds inf/NaN in the fp16 graph where eager's values are finite "
             f"(float16's largest finite value is {FP16_MAX:g})"]
    if found:
        module = f" in module '{found['module']}'" + (f" ({found['type']})" if found.get("type") else "") \
            if found.get("module") else ""
        largest = found.get("input_max_abs")
        inputs = f"; its inputs are finite (largest |value| {largest:.4g})" if largest is not None else ""
        lines.append(f"  first at node '{found['node']}' (op {found['op']}){module}: its output "
                     f"'{found['output']}' overflows{inputs}")
        if found.get("file"):
            lines.append(f"  from {short_path(found['file'])}:{found['line']}  `{found['source']}`")
    for c in clamped[:3]:
        lines.append(f"  constant '{c['name']}' (max |value| {c['max_abs']:.4g}, used by node '{c['node']}') is beyond "
                     "float16's range: the converter clamps it to 65504")
    node = f"node_block_list=['{found['node']}']" if found else "node_block_list"
    lines.append(f"  fix: scale the values down before that op, or keep it in float32 (onnxconverter-common's "
                 f"convert_float_to_float16({node}))")
    return "\n".join(lines)


def clamped_text(clamped: list[dict[str, Any]]) -> str:
    """A failing check's note on constants the converter clamped (their values changed)."""
    names = ", ".join(f"'{c['name']}' (max |value| {c['max_abs']:.4g}, used by node '{c['node']}')" for c in clamped[:3])
    return (f"float16 cannot hold constant(s) {names}: the converter clamps them to 65504\n"
            "  fix: keep those values within float16's range, or keep their nodes in float32 (onnxconverter-common's "
            "node_block_list)")



def raised_text(raised: list[dict[str, Any]]) -> str:
    """A failing check's note on tiny constants the converter raised to ``min_positive_val`` (their values
    changed: a LayerNorm eps of 1e-12 became 1e-7)."""
    names = ", ".join(f"'{c['name']}' (smallest nonzero |value| {c['min_abs']:.4g}, {c['count']} value(s), used by "
                      f"node '{c['node']}')" for c in raised[:3])
    more = f" and {len(raised) - 3} more" if len(raised) > 3 else ""
    return (f"float16 conversion raised tiny constant(s) {names}{more} to {MIN_POSITIVE:g}: onnxconverter-common "
            f"raises every nonzero |value| below its min_positive_val ({MIN_POSITIVE:g}), so the fp16 graph computes "
            "with larger values than eager\n"
            f"  fix: use constants of at least {MIN_POSITIVE:g} (an eps of 1e-5 or 1e-6, as float16 models use), or keep "
            "their nodes in float32 (onnxconverter-common's node_block_list)")
