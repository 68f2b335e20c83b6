"""Where a failing int8 graph breaks (pytest_deploy.backends.int8_debug's pure helpers), the agreement gate's
verdict without raising, and the int8_exclude= setting reaching the backend options only at int8."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from pytest_deploy.agreement import Agreement, sqnr_db
from pytest_deploy.backends.int8_debug import base_name, candidates, first_collapse, where_text
from pytest_deploy.compare import Leaves, paired
from pytest_deploy.spec import Example


def _row(node, sqnr, before, producers=()):
    return {"node": node, "op": "Gemm", "output": node + "_out", "sqnr_db": sqnr, "input_sqnr_db": before,
            "producers": list(producers)}


def test_qdq_value_names_map_back_to_the_float_graphs():
    assert base_name("mul_4_DequantizeLinear_Output") == "mul_4"
    assert base_name("mul_4_DequantizeLinear_Output_1") == "mul_4"
    assert base_name("output_QuantizeLinear_Input") == "output"
    assert base_name("relu") == "relu"


def test_sqnr_in_db():
    assert sqnr_db(100.0, 1.0) == pytest.approx(20.0)
    assert sqnr_db(1.0, 0.0) == math.inf and sqnr_db(0.0, 1.0) == -math.inf


def test_the_first_collapse_is_the_first_node_below_the_threshold_whose_inputs_are_not():
    rows = [_row("a", 44.0, 45.0), _row("b", 12.0, 44.0, ["a"]), _row("c", 5.0, 12.0, ["b"])]
    assert first_collapse(rows, 20.0)["node"] == "b"
    # none below the threshold: the largest drop from its inputs
    rows = [_row("a", 44.0, 45.0), _row("b", 25.0, 44.0, ["a"]), _row("c", 24.0, 25.0, ["b"])]
    assert first_collapse(rows, 20.0)["node"] == "b"
    assert first_collapse([], 20.0) is None


def test_exclusion_candidates_grow_from_the_first_collapse_and_its_producers():
    rows = [_row("a", 44.0, None), _row("m", 45.7, 44.0, ["a"]), _row("g", 0.9, 45.7, ["m"])]
    tries = candidates(rows, rows[2])
    assert tries[:2] == [["g"], ["m", "g"]]
    assert all(len(t) == len(set(t)) for t in tries) and len(tries) == len({tuple(t) for t in tries})
    assert candidates([], None) == []


def test_where_text_names_the_node_the_module_and_the_line():
    node = SimpleNamespace(name="node_linear_1", metadata_props=[
        SimpleNamespace(key="pkg.torch.onnx.name_scopes", value="['', 'out', 'linear']"),
        SimpleNamespace(key="pkg.torch.onnx.class_hierarchy",
                        value="['m.Net', 'torch.nn.modules.linear.Linear', 'aten.linear.default']")])
    text = where_text(_row("node_linear_1", 0.9, 45.7), 20.0, {"node_linear_1": node})
    assert text == ("  diverges first at node 'node_linear_1' (op Gemm, SQNR 0.9 dB < 20.0 dB; its inputs 45.7 dB) "
                    "in module 'out' (Linear)")
    assert "the largest drop" in where_text(_row("g", 25.0, 44.0), 20.0, {})
    assert "not located" in where_text(None, 20.0, {})


def test_the_gate_verdict_without_raising_and_the_samples_kept_for_a_replay():
    eager = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    agreement = Agreement(None, "int8")
    example = Example((torch.zeros(1),))
    agreement.add(example, [("output", eager, eager.clone())], replay=("leaves", None))
    assert agreement.first_failure() is None and agreement.samples == [(example, ("leaves", None))]
    assert agreement.sqnr_threshold() == 20.0
    agreement.add(example, [("output", eager, -eager)])
    path, metric, value, threshold = agreement.first_failure()
    assert (path, metric, threshold) == ("output", "top1", 0.99) and value == 0.5
    assert Agreement({"sqnr": 35.0}, "int8").sqnr_threshold() == 20.0  # no output yet
    gated = Agreement({"sqnr": 35.0}, "int8")
    gated.add(example, [("output", eager, eager.clone())])
    assert gated.sqnr_threshold() == 35.0


def test_paired_keeps_only_the_masked_positions():
    eager = Leaves([("output", torch.arange(6.0).reshape(3, 2))])
    got = Leaves([("output[0]", torch.zeros(3, 2))])
    keep = {"output": torch.tensor([True, False, True])}
    ((path, e, a),) = paired(eager, got, keep)
    assert path == "output" and e.shape == a.shape == (2, 2)
    assert paired(eager, got)[0][1].shape == (3, 2)


def test_int8_exclude_reaches_the_backend_options_at_int8_only():
    from pytest_deploy.check import _normalised
    from pytest_deploy.checkoptions import CheckOptions

    int8, _ = _normalised(CheckOptions(precision="int8", int8_exclude=("node_mul_4",)), "onnx")
    assert int8.backend_options["int8_exclude"] == ["node_mul_4"]
    fp32, _ = _normalised(CheckOptions(int8_exclude=["node_mul_4"]), "onnx")
    assert "int8_exclude" not in fp32.backend_options
    unset, _ = _normalised(CheckOptions(precision="int8"), "onnx")
    assert "int8_exclude" not in unset.backend_options  # the keys of checks without it are unchanged
