"""Where an int8 graph that fails its agreement gate breaks, and which nodes kept in float make it pass.

- :func:`node_sqnr`: every node's output SQNR (dB) between the float graph ``quantize_static`` read (the
  pre-processed one, whose node names ``nodes_to_exclude`` takes) and the QDQ graph, pooled over the check's
  examples; each value as the next node consumes it (after its ``QuantizeLinear``/``DequantizeLinear`` pair, where
  it has one), as ONNX Runtime's ``qdq_loss_debug`` pairs them. Both graphs run with every intermediate exposed.
- :func:`first_collapse`: the first node, in topological order, whose SQNR falls below the gate's SQNR threshold
  (else the one whose SQNR drops most from its inputs'), with the module and the user's line the exporter recorded
  (:func:`.precision.node_origin`).
- :func:`candidates` and :func:`explain`: quantization retried with the worst nodes kept in float (the first
  collapse, then the 2, 4, 8 largest drops), each judged by the same gate on the same examples, within
  :data:`MAX_RETRIES` and :data:`RETRY_SECONDS`: the smallest list that passes is the ``int8_exclude=`` to paste.

onnx, onnxruntime and numpy are imported inside the functions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..agreement import figures_text, sqnr_db
from ..sources import first_line, short_path
from ..tensors import to_numpy
from .onnx_export import input_names
from .precision import node_origin
from .quantize import preprocess, quantize_to, static_feeds

#: At most this many quantizations with nodes kept in float, and this many seconds for all of them.
MAX_RETRIES = 4
RETRY_SECONDS = 60.0
#: Exclusion sizes tried after the first collapsing node alone.
EXCLUSION_SIZES = (2, 4, 8)
#: ``details["int8_sqnr"]`` keeps at most this many nodes; the examples the SQNR pools over.
SQNR_ROWS = 200
SQNR_EXAMPLES = 8
#: A node with no activation input (only weights) counts its inputs at this SQNR when ranking drops.
_CLEAN_DB = 100.0

_QUANT_INPUT = "_QuantizeLinear_Input"
_DEQUANT_OUTPUT = "_DequantizeLinear_Output"
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def base_name(name: str) -> str:
    """The float graph's name of a QDQ graph's value (its ``QuantizeLinear`` input or ``DequantizeLinear`` output)."""
    for suffix in (_QUANT_INPUT, _DEQUANT_OUTPUT + "_1", _DEQUANT_OUTPUT):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _exposed(model: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A run of the graph giving every value it computes (every node output made a graph output, as Polygraphy's
    ``ModifyOutputs`` marks all), on CPU, unoptimised."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for name in node.output:
            if name and name not in known:
                probe.graph.output.append(onnx.ValueInfoProto(name=name))
                known.add(name)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return lambda feed: {**feed, **dict(zip(names, session.run(None, feed)))}


def node_sqnr(float_model: Any, qdq_model: Any, feeds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``[{"node", "op", "output", "sqnr_db", "input_sqnr_db", "producers"}]`` for every node of the QDQ graph but its
    Q/DQ pairs, in graph (topological) order: its output's SQNR against the float graph's, pooled over ``feeds``, its
    activation inputs' lowest (None when it has none), and the nodes computing those inputs. One feed's values are
    held at a time."""
    import numpy as np

    run_float, run_qdq = _exposed(float_model), _exposed(qdq_model)
    sums: dict[str, list[float] | None] = {}  # float value name -> [signal, noise], None where it does not pair
    for feed in feeds:
        want, have = run_float(feed), run_qdq(feed)
        for name, w in want.items():
            h = have.get(name + _DEQUANT_OUTPUT, have.get(name))  # as the next node consumes it
            if h is None or not np.issubdtype(np.asarray(w).dtype, np.floating) or np.shape(w) != np.shape(h):
                sums[name] = None
                continue
            w, h = np.asarray(w, dtype=np.float64), np.asarray(h, dtype=np.float64)
            pair = sums.setdefault(name, [0.0, 0.0])
            if pair is not None:
                pair[0] += float((w * w).sum())
                pair[1] += float(((h - w) ** 2).sum())

    def sqnr(name: str) -> float | None:
        pair = sums.get(base_name(name))
        return None if pair is None else sqnr_db(pair[0], pair[1])

    producer = {base_name(o): n.name for n in qdq_model.graph.node if n.op_type not in _QDQ_OPS for o in n.output}
    rows = []
    for node in qdq_model.graph.node:
        if node.op_type in _QDQ_OPS:
            continue
        outs = [(o, sqnr(o)) for o in node.output if o]
        measured = [(o, v) for o, v in outs if v is not None]
        if not measured:
            continue
        output, value = min(measured, key=lambda ov: ov[1])
        ins = [v for v in (sqnr(i) for i in node.input if i) if v is not None]
        feeding = [producer[base_name(i)] for i in node.input if i and base_name(i) in producer]
        rows.append({"node": node.name, "op": node.op_type, "output": base_name(output), "sqnr_db": value,
                     "input_sqnr_db": min(ins) if ins else None, "producers": list(dict.fromkeys(feeding))})
    return rows


def _drop(row: Mapping[str, Any]) -> float:
    before = row["input_sqnr_db"]
    before = _CLEAN_DB if before is None else min(before, _CLEAN_DB)
    return before - min(row["sqnr_db"], _CLEAN_DB)


def first_collapse(rows: list[dict[str, Any]], threshold: float) -> dict[str, Any] | None:
    """The first row whose SQNR is below ``threshold`` while its inputs' is not; else the largest drop."""
    for row in rows:
        before = row["input_sqnr_db"]
        if row["sqnr_db"] < threshold and (before is None or before >= threshold):
            return row
    return max(rows, key=_drop) if rows else None


def candidates(rows: list[dict[str, Any]], first: dict[str, Any] | None) -> list[list[str]]:
    """The exclusion lists to try, smallest first, each in graph order, none twice: the first collapsing node; it
    and the nodes feeding it (their outputs' quantization is its inputs'); then the 2, 4, 8 largest SQNR drops with
    the first collapse and the nodes feeding each."""
    order = {row["node"]: i for i, row in enumerate(rows)}
    feeding = {row["node"]: row.get("producers") or [] for row in rows}
    worst = [row["node"] for row in sorted(rows, key=_drop, reverse=True) if _drop(row) > 0]
    picks: list[set[str]] = []
    if first is not None:
        picks += [{first["node"]}, {first["node"], *feeding[first["node"]]}]
    for size in EXCLUSION_SIZES:
        chosen = set(worst[:size]) | ({first["node"]} if first else set())
        picks.append(chosen | {p for n in chosen for p in feeding.get(n, [])})
    out: list[list[str]] = []
    for pick in picks:
        ordered = sorted(pick, key=lambda n: order.get(n, len(order)))
        if ordered and ordered not in out:
            out.append(ordered)
    return out


def explain(ctx: Any, float_path: str, qdq_path: str, agreement: Any,
            replay: Callable[[str], Any]) -> str:
    """The failure message's lines for an int8 gate that fails: where the QDQ graph diverges first, and the
    smallest ``int8_exclude=`` found (within the budget) that passes the same gate on the same examples.
    ``replay(path)`` judges the quantized graph at ``path`` again: an :class:`~pytest_deploy.agreement.Agreement`.
    Records ``details["int8_sqnr"]`` and ``details["int8_exclude_suggested"]``. Never raises."""
    import onnx

    prepared = ctx.path("int8_debug.pre.onnx")
    try:
        preprocess(ctx, float_path, prepared)
        float_model, qdq_model = onnx.load(prepared), onnx.load(qdq_path)
        initializers = {t.name for t in float_model.graph.initializer}
        names = [i.name for i in float_model.graph.input if i.name not in initializers]
        declared = input_names(ctx.space, len(ctx.space.specs))
        # the worst example (the gate's failing metric's) first
        examples = sorted((ex for ex, _ in agreement.samples), key=lambda ex: ex is not ctx.failed_example)
        feeds = [{name: to_numpy(example.args[declared.index(name) if name in declared else pos])
                  for pos, name in enumerate(names)} for example in examples[:SQNR_EXAMPLES]]
        rows = node_sqnr(float_model, qdq_model, feeds)
        ctx.note("int8_sqnr", [{"node": r["node"], "op": r["op"], "sqnr_db": _json(r["sqnr_db"])}
                               for r in rows[:SQNR_ROWS]])
        threshold = agreement.sqnr_threshold()
        first = first_collapse(rows, threshold)
        ctx.note("int8_sqnr_first", {"node": first["node"] if first else None, "threshold_db": threshold})
        where = where_text(first, threshold, _origin_nodes(ctx, qdq_model))
    except Exception as exc:  # the explanation is extra: never hide the gate's own failure
        ctx.note("int8_sqnr_error", first_line(exc))
        return f"  diverges first at: not located ({first_line(exc)})"
    finally:
        _remove(prepared)
    return where + "\n" + _retry(ctx, float_path, candidates(rows, first), replay)


def _remove(path: str) -> None:
    import os

    for one in (path, path + ".data"):
        if os.path.exists(one):
            os.remove(one)


def _origin_nodes(ctx: Any, qdq_model: Any) -> dict[str, Any]:
    """Nodes by name, where the exporter's metadata survives: the raw export's (onnxsim and ORT's pre-processing
    drop it), else the QDQ graph's."""
    import os

    import onnx

    nodes = {n.name: n for n in qdq_model.graph.node}
    raw = ctx.path("model.onnx")
    if os.path.exists(raw):
        nodes.update({n.name: n for n in onnx.load(raw, load_external_data=False).graph.node})
    return nodes


def _json(value: float) -> float | str:
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")


def where_text(first: dict[str, Any] | None, threshold: float, nodes: Mapping[str, Any]) -> str:
    """``  diverges first at node 'X' (op Gemm, SQNR 2.1 dB < 20.0 dB; its inputs 41.3 dB) in module ...``, and the
    user's line where the exporter recorded it."""
    if first is None:
        return "  diverges first at: not located (no node of the QDQ graph pairs with the float graph's)"
    before = first["input_sqnr_db"]
    inputs = f"; its inputs {before:.1f} dB" if before is not None and math.isfinite(before) else ""
    text = (f"  diverges first at node '{first['node']}' (op {first['op']}, SQNR {first['sqnr_db']:.1f} dB < "
            f"{threshold:.1f} dB{inputs})" if first["sqnr_db"] < threshold else
            f"  diverges first at node '{first['node']}' (op {first['op']}, SQNR {first['sqnr_db']:.1f} dB: the "
            f"largest drop{inputs})")
    origin = node_origin(nodes[first["node"]]) if first["node"] in nodes else {}
    if origin.get("module"):
        text += f" in module '{origin['module']}'" + (f" ({origin['type']})" if origin.get("type") else "")
    if origin.get("file"):
        text += f"\n    from {short_path(origin['file'])}:{origin['line']}  `{origin['source']}`"
    return text


def _retry(ctx: Any, float_path: str, tries: list[list[str]], replay: Callable[[str], Any]) -> str:
    """Quantize again with each exclusion list in turn (within the budget); the first whose graph passes."""
    given = list(ctx.options.get("int8_exclude") or [])
    start, tried = time.monotonic(), []
    feeds = None
    for i, nodes in enumerate(tries[:MAX_RETRIES]):
        if time.monotonic() - start > RETRY_SECONDS:
            break
        exclude = given + [n for n in nodes if n not in given]
        path = ctx.path(f"int8_debug.try{i}.onnx")
        try:
            feeds = feeds if feeds is not None else static_feeds(ctx, float_path)
            quantize_to(ctx, float_path, path, "int8", feeds, exclude)
            again = replay(path)
        except Exception as exc:  # a retry that cannot run proves nothing: say so, never hide the failure
            ctx.note("int8_exclude_error", first_line(exc))
            break
        finally:
            _remove(path)
        tried.append(len(nodes))
        if again.first_failure() is None:
            ctx.note("int8_exclude_suggested", exclude)
            figures = "; ".join(f"{p} {figures_text(f)}" for p, f in again.figures().items())
            return (f"  fix, proven: int8_exclude={exclude!r} (those nodes kept in float) passes the gate on the same "
                    f"{again.examples} example(s): {figures}")
    ctx.note("int8_exclude_suggested", None)
    sizes = ", ".join(map(str, tried)) or "none"
    return (f"  no exclusion tried passes the gate (kept in float: {sizes} node(s); at most {MAX_RETRIES} retries in "
            f"{RETRY_SECONDS:.0f} s): int8 may not suit this model without calibration= on representative inputs")
