"""Float16 conversion (pytest_deploy.backends.precision) on graphs built here: a graph with external data (how a
model over 2 GiB is exported) converts without in-memory shape inference, and constants the converter changes are
listed."""

from __future__ import annotations

import os

import pytest

for _module in ("onnx", "onnxruntime", "onnxconverter_common"):
    pytest.importorskip(_module)

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import uses_external_data

from pytest_deploy.backends.precision import (
    MIN_POSITIVE,
    conversion_failure,
    convert_fp16,
    emulate_fp16,
    raised_constants,
    raised_text,
)

#: what protobuf raises when onnx serializes a ModelProto over 2 GiB for in-memory shape inference
TOO_BIG = "Message onnx.ModelProto exceeds maximum protobuf size of 2GB: 2400000000"


def save(model, path, external: bool) -> str:
    model.ir_version = 10  # ONNX Runtime reads it
    onnx.save_model(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=os.path.basename(path) + ".data", size_threshold=0)
    return str(path)


def mlp(path, external: bool) -> str:
    """x[n, 16] -> MatMul, Add, Relu, MatMul -> y[n, 8], random float32 weights."""
    rng = np.random.default_rng(0)
    weights = {"w1": rng.standard_normal((16, 32)) * 0.3, "b1": rng.standard_normal(32) * 0.1,
               "w2": rng.standard_normal((32, 8)) * 0.3}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Add", ["h", "b1"], ["h1"], name="bias1"),
             helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
             helper.make_node("MatMul", ["h2", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path, external)


def run(path: str, feed: dict) -> np.ndarray:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_a_graph_with_external_data_converts_without_in_memory_shape_inference(tmp_path, monkeypatch):
    """Over 2 GiB, onnx.shape_inference.infer_shapes (which the converter calls on the loaded graph) fails in
    protobuf; made to fail so here, a graph with external data still converts, and its float16 graph runs."""
    src = mlp(tmp_path / "mlp.onnx", external=True)

    def too_big(*args, **kwargs):
        raise ValueError(TOO_BIG)

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", too_big)
    dst = str(tmp_path / "mlp.fp16.onnx")
    info = convert_fp16(src, dst, external=True)
    assert info["precision_converter"].startswith("onnxconverter-common ")
    onnx.checker.check_model(dst, full_check=True)
    converted = onnx.load(dst, load_external_data=False)
    assert any(uses_external_data(t) for t in converted.graph.initializer)  # saved as it came: external data
    assert {t.data_type for t in converted.graph.initializer} == {TensorProto.FLOAT16}
    assert not [p for p in os.listdir(tmp_path) if "inferred" in p]  # the shape-inferred copy is removed
    feed = {"x": np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32)}
    fp32, fp16 = run(src, feed), run(dst, feed)
    assert fp16.dtype == np.float32  # inputs and outputs kept float32
    np.testing.assert_allclose(fp16, fp32, atol=2e-2, rtol=1e-2)
    assert not np.array_equal(fp16, fp32)  # float16 weights ran, not the float32 ones
    # the CPU emulation graph is built without in-memory inference too, from the types the conversion declared
    emulated = emulate_fp16(onnx.load(dst))
    np.testing.assert_allclose(ort.InferenceSession(emulated.SerializeToString()).run(None, feed)[0], fp32,
                               atol=2e-2, rtol=1e-2)


def test_a_conversion_over_protobufs_limit_says_so():
    text = conversion_failure(ValueError(TOO_BIG))
    assert "over protobuf's 2 GiB limit" in text and "onnx_external_data_threshold" in text
    assert "op_block_list" not in text  # keeping an op in float32 does not help a graph too big to serialize
    assert "op_block_list" in conversion_failure(RuntimeError("Unsupported op Foo"))


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("PYTEST_DEPLOY_LARGE_MODELS"),
                    reason="builds a 2.3 GB graph (about 10 GB of memory); set PYTEST_DEPLOY_LARGE_MODELS=1 to run")
def test_a_graph_over_2_gib_converts(tmp_path):
    """Two embedding tables of 1.15 GB each (a tensor over 2 GiB cannot even be built in protobuf): the graph, 2.3 GB,
    is over protobuf's limit for one message, as large models are."""
    rows, width = 70_000, 4096
    rng = np.random.default_rng(0)
    tables = {name: rng.standard_normal((rows, width), dtype=np.float32) for name in ("left", "right")}
    nodes = [helper.make_node("Gather", ["left", "ids"], ["a"], name="lookup_left"),
             helper.make_node("Gather", ["right", "ids"], ["b"], name="lookup_right"),
             helper.make_node("Add", ["a", "b"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "lookup", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", width])],
                              [numpy_helper.from_array(t, name) for name, t in tables.items()])
    ids = np.array([0, 7, rows - 1], dtype=np.int64)
    expected = tables["left"][ids] + tables["right"][ids]
    src = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "big.onnx", True)
    assert os.path.getsize(src + ".data") > 2 * 1024**3
    del tables, graph  # the conversion holds the graph several times over
    dst = str(tmp_path / "big.fp16.onnx")
    convert_fp16(src, dst, external=True)
    np.testing.assert_allclose(run(dst, {"ids": ids}), expected, atol=1e-2, rtol=2e-3)


def normalize(path) -> str:
    """y = (x - 0.5) / sqrt(x * x + eps), eps = 1e-12 a Constant node; and an initializer holding one value below
    the converter's min_positive_val (-3e-9) beside ordinary ones."""
    eps = helper.make_tensor("eps_value", TensorProto.FLOAT, [], [1e-12])
    shift = numpy_helper.from_array(np.array([0.5, -3e-9, 0.0, 0.25], dtype=np.float32), "shift")
    nodes = [helper.make_node("Constant", [], ["eps"], value=eps, name="eps_const"),
             helper.make_node("Sub", ["x", "shift"], ["centred"], name="centre"),
             helper.make_node("Mul", ["x", "x"], ["square"], name="square"),
             helper.make_node("Add", ["square", "eps"], ["variance"], name="add_eps"),
             helper.make_node("Sqrt", ["variance"], ["std"], name="std"),
             helper.make_node("Div", ["centred", "std"], ["y"], name="scale")]
    graph = helper.make_graph(nodes, "normalize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [shift])
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path, external=False)


def test_tiny_constants_the_converter_raises_are_listed(tmp_path):
    src = normalize(tmp_path / "norm.onnx")
    raised = {c["name"]: c for c in raised_constants(onnx.load(src))}
    assert set(raised) == {"eps", "shift"}
    assert raised["eps"]["min_abs"] == pytest.approx(1e-12) and raised["eps"]["count"] == 1
    assert raised["eps"]["node"] == "add_eps"
    assert raised["shift"] == {"name": "shift", "min_abs": pytest.approx(3e-9), "count": 1, "node": "centre"}
    info = convert_fp16(src, str(tmp_path / "norm.fp16.onnx"), external=False)
    assert info["precision_raised"] == [raised["shift"], raised["eps"]]  # initializers, then Constant nodes
    # the converter really raised them: its float16 eps is min_positive_val, as float16 holds it
    converted = onnx.load(str(tmp_path / "norm.fp16.onnx"))
    value = next(numpy_helper.to_array(n.attribute[0].t) for n in converted.graph.node if n.output[0] == "eps")
    assert float(value) == pytest.approx(float(np.float16(MIN_POSITIVE)))
    text = raised_text(info["precision_raised"])
    assert "'eps' (smallest nonzero |value| 1e-12, 1 value(s), used by node 'add_eps')" in text
    assert "to 1e-07" in text and "node_block_list" in text


def test_constants_at_or_above_min_positive_val_are_not_listed(tmp_path):
    src = mlp(tmp_path / "mlp.onnx", external=False)
    assert raised_constants(onnx.load(src)) == []
    assert "precision_raised" not in convert_fp16(src, str(tmp_path / "mlp.fp16.onnx"), external=False)


class _Space:
    names = ["x"]
    specs = [None]


class _Ctx:
    """What _failing_reference and _simplify_changed_float32 read of a check: the failing example, eager PyTorch on it, the
    inputs' names."""

    def __init__(self, weights: dict):
        import torch

        self.space = _Space()
        self.failed_example = type("Example", (), {"args": (torch.rand(3, 16),)})()
        self.notes: dict = {}
        self.weights = {k: torch.as_tensor(v.astype(np.float32)) for k, v in weights.items()}

    def eager(self, args):
        import torch

        h = torch.relu(args[0] @ self.weights["w1"] + self.weights["b1"])
        return h @ self.weights["w2"]

    def note(self, key, value):
        self.notes[key] = value


def test_onnxsim_is_blamed_at_fp16_only_when_its_float32_graph_changed(tmp_path):
    """At fp16 the raw and simplified graphs round at different points; only a simplified float32 graph that itself
    misses eager blames onnxsim."""
    from pytest_deploy.backends.onnx import _failing_reference, _simplify_changed_float32

    path = mlp(tmp_path / "model.sim.onnx", external=False)
    model = onnx.load(path)
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    ctx = _Ctx(weights)
    assert _simplify_changed_float32(ctx, path, _failing_reference(ctx)) is False
    assert ctx.notes["precision_simplify_float32"] == "unchanged"
    weights["b1"] = weights["b1"] + 0.5  # the float32 graph no longer computes what eager computes
    ctx = _Ctx(weights)
    assert _simplify_changed_float32(ctx, path, _failing_reference(ctx)) is True


def test_the_block_list_search_returns_a_list_that_passed_and_only_the_nodes_needed():
    """auto_convert_mixed_precision's bisection with our attempt: the list it returns passed its last attempt, holds
    the nodes that must stay float32 and no good segment's nodes."""
    from pytest_deploy.backends.fp16_search import search_block_list

    names = [f"n{i}" for i in range(40)]
    needed = {"n7", "n31"}
    calls = []

    def attempt(block):
        calls.append(list(block))
        return needed <= set(block)

    found = search_block_list(names, attempt)
    assert found.nodes is not None and needed <= set(found.nodes)
    assert len(found.nodes) < len(names) // 2
    assert calls[-1] == found.nodes and found.attempts == len(calls)


def test_the_block_list_search_says_when_nothing_passes_or_the_budget_ends():
    from pytest_deploy.backends.fp16_search import block_list_text, search_block_list

    names = [f"n{i}" for i in range(16)]
    never = search_block_list(names, lambda block: False)
    assert never.nodes is None and never.stopped == "no list passes"
    assert "no node_block_list passes" in block_list_text(never, "here")
    short = search_block_list(names, lambda block: False, max_attempts=3)
    assert short.nodes is None and short.stopped == "budget" and short.attempts == 3
    assert "budget" in block_list_text(short, "here")


def shared(path) -> tuple[str, list[str]]:
    """x[n, 8] -> MatMul -> h, read by two nodes (Relu, Mul) -> Add -> LayerNormalization -> y, a graph output the
    next MatMul reads too -> z; both LayerNormalizations share one scale initializer, as onnxsim merges equal
    constants."""
    rng = np.random.default_rng(1)
    inits = {"w": rng.standard_normal((8, 8)) * 0.5, "w2": rng.standard_normal((8, 4)) * 0.5, "scale": np.ones(8),
             "two": np.array(2.0)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Mul", ["h", "two"], ["m"], name="mul"),
             helper.make_node("Add", ["r", "m"], ["a"], name="add"),
             helper.make_node("LayerNormalization", ["a", "scale"], ["y"], name="ln1", axis=-1),
             helper.make_node("LayerNormalization", ["y", "scale"], ["y2"], name="ln2", axis=-1),
             helper.make_node("MatMul", ["y2", "w2"], ["z"], name="mm2")]
    graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 4])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path, False), \
        [n.name for n in nodes]


def run_all(model, feed: dict) -> list:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def test_every_node_blocked_computes_the_float32_graph_exactly(tmp_path):
    """onnxconverter-common 1.16 left float16 round trips between blocked nodes where the value has several readers,
    and typed an output float16 when its producer is blocked (keep_io_types notwithstanding): no block list could
    keep a chain float32. Every node blocked is now the float32 graph itself, outputs float32."""
    from pytest_deploy.backends.precision import convert_model

    path, names = shared(tmp_path / "shared.onnx")
    feed = {"x": np.random.default_rng(2).standard_normal((3, 8)).astype(np.float32)}
    expected = run_all(onnx.load(path), feed)
    converted = convert_model(onnx.load(path), names)
    onnx.checker.check_model(converted, full_check=True)
    got = run_all(emulate_fp16(converted), feed)
    assert [g.dtype for g in got] == [np.float32, np.float32]
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(e, g)


@pytest.mark.parametrize("blocked", [["ln1"], ["mm", "relu", "ln2"], ["mul", "add", "mm2"]])
def test_a_partial_block_list_gives_a_graph_onnx_runtime_runs(tmp_path, blocked):
    """The converter kept an initializer float32 when a blocked node reads it, so a converted node reading the same
    one got a float32 weight and the graph failed onnx.checker ("Scale has inconsistent type"): the blocked nodes
    now get their own copy."""
    from pytest_deploy.backends.precision import convert_model

    path, _ = shared(tmp_path / "shared.onnx")
    feed = {"x": np.random.default_rng(3).standard_normal((2, 8)).astype(np.float32)}
    converted = convert_model(onnx.load(path), blocked)
    onnx.checker.check_model(converted, full_check=True)
    expected = run_all(onnx.load(path), feed)
    for e, g in zip(expected, run_all(emulate_fp16(converted), feed)):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, e, atol=5e-2, rtol=5e-2)


def test_a_weight_shared_with_an_op_the_converter_always_keeps_float32_converts(tmp_path):
    """Max is on the converter's default op block list: a constant it shares with an Add stayed float32 for the
    converted Add as well, and the graph failed onnx.checker."""
    from pytest_deploy.backends.precision import convert_model

    nodes = [helper.make_node("Max", ["x", "c"], ["m"], name="max"), helper.make_node("Add", ["m", "c"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "max", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
                              [numpy_helper.from_array(np.full(4, 0.25, np.float32), "c")])
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "max.onnx", False)
    converted = convert_model(onnx.load(path), [])
    onnx.checker.check_model(converted, full_check=True)
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_allclose(run_all(converted, {"x": x})[0], np.maximum(x, 0.25) + 0.25, atol=1e-3)
