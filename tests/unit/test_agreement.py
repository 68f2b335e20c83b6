"""The agreement gate of int8 checks (pytest_deploy.agreement): its forms, the default by output kind, the metrics
against hand-computed values, the failure text; and the calibration inputs' checks (pytest_deploy.validate)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from pytest_deploy import tensor
from pytest_deploy.agreement import Agreement, cell_text, default_gate, markdown_lines, parse_agreement
from pytest_deploy.errors import SpecError, StageError
from pytest_deploy.generate import calibration_plans
from pytest_deploy.results import Result
from pytest_deploy.spec import Example
from pytest_deploy.validate import calibration_args, calibration_digest, read_calibration


@pytest.mark.parametrize(("value", "gate"), [
    (None, None),
    ("top1", {"top1": 0.99}),
    ("topk:5", {"top5": 0.99}),
    ("cosine", {"cosine": 0.99}),
    ("sqnr", {"sqnr": 20.0}),
    ("cosine, sqnr", {"cosine": 0.99, "sqnr": 20.0}),
    ({"cosine": 0.95, "topk:3": 0.9}, {"cosine": 0.95, "top3": 0.9}),
    ({"sqnr": 30}, {"sqnr": 30.0}),
])
def test_agreement_forms(value, gate):
    assert parse_agreement(value) == gate


@pytest.mark.parametrize(("value", "words"), [
    ("top-one", "unknown metric 'top-one'"),
    ("topk:0", "unknown metric 'topk:0'"),
    ({"cosine": 1.5}, "must be within [0, 1]"),
    ({"sqnr": "high"}, "threshold 'high' must be a number"),
    ("", "names no metric"),
    (0.99, "must be a metric name"),
])
def test_bad_agreement_settings_are_refused(value, words):
    with pytest.raises(SpecError, match=words.replace("[", r"\[").replace("]", r"\]")):
        parse_agreement(value)


def test_the_default_gate_follows_the_output_kind():
    assert default_gate(torch.zeros(4, 10)) == {"top1": 0.99, "cosine": 0.99, "sqnr": 20.0}
    assert default_gate(torch.zeros(2, 5, 32)) == {"cosine": 0.99, "sqnr": 20.0}
    assert default_gate(torch.zeros(4, 1)) == {"cosine": 0.99, "sqnr": 20.0}


def _ctx():
    return SimpleNamespace(result=Result(test="t", backend="onnx"), space=SimpleNamespace(names=["x"]),
                           options={"reproduce": "seed=0"}, seed=0, failed_example=None,
                           note=None)


def _judge(agreement: Agreement):
    ctx = _ctx()
    ctx.note = ctx.result.details.__setitem__
    agreement.judge(ctx)
    return ctx


def test_metrics_match_their_definitions():
    eager = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    noisy = eager + torch.tensor([[0.1, -0.1, 0.0], [0.0, 0.0, 2.5]])  # the second row's argmax moves
    agreement = Agreement(None, "int8")
    agreement.add(Example((torch.zeros(1),)), [("output", eager, noisy)])
    figures = agreement.figures()["output"]
    assert figures["top1"] == 0.5
    e, n = eager.double().flatten(), noisy.double().flatten()
    assert figures["cosine"] == pytest.approx(float(e @ n / (e.norm() * n.norm())))
    assert figures["sqnr_db"] == pytest.approx(10 * math.log10(float((e**2).sum() / ((n - e) ** 2).sum())))


def test_identical_outputs_agree_exactly_and_pass():
    out = torch.randn(3, 4)
    agreement = Agreement(None, "int8")
    agreement.add(Example((torch.zeros(1),)), [("output", out, out.clone())])
    ctx = _judge(agreement)
    assert ctx.result.details["agreement"]["output"] == {"top1": 1.0, "cosine": pytest.approx(1.0),
                                                         "sqnr_db": math.inf}


def test_a_metric_below_its_gate_fails_at_compare_naming_the_worst_example():
    eager = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    good, bad = Example((torch.zeros(2),), label="good"), Example((torch.ones(2),), label="bad")
    agreement = Agreement(parse_agreement({"topk:2": 0.9, "cosine": 0.5}), "int8")
    agreement.add(good, [("output", eager, eager.clone())])
    agreement.add(bad, [("output", eager, -eager)])  # eager's argmax is now the smallest of both rows
    with pytest.raises(StageError) as info:
        _judge(agreement)
    err = info.value
    assert err.stage == "compare"
    assert "int8 agreement below its gate: output top2 50.0% < 90.0% over 2 example(s)" in err.message
    assert "worst example (top2 0.0%):" in err.message and "x: float32[2] range [1, 1] (bad)" in err.message
    assert "agreement={'topk:2': ...}" in err.message


def test_a_gate_no_output_can_meet_is_refused():
    agreement = Agreement({"top1": 0.99}, "int8")
    agreement.add(Example((torch.zeros(1),)), [("output", torch.ones(4, 1), torch.ones(4, 1))])
    with pytest.raises(StageError, match="names metrics no output has"):
        _judge(agreement)


def test_the_summary_cell_and_markdown_show_the_worst_output():
    result = Result(test="t", backend="onnx", outcome="passed")
    result.details.update(precision="int8", model_size={"float_bytes": 4096, "quantized_bytes": 1024},
                          agreement={"output[0]": {"top1": 1.0, "cosine": 0.9991, "sqnr_db": 31.24},
                                     "output[1]": {"top1": None, "cosine": 0.995, "sqnr_db": "inf"}})
    assert cell_text(result.details) == "cos 0.9950 31.2dB top1 100%"
    assert cell_text({}) == ""
    lines = markdown_lines([result], {"t": "test_t"}, str)
    assert "| `test_t` | onnx | int8 | output[0] | 100.0% | 0.9991 | 31.2 | 4.0 KB → 1.0 KB |" in lines
    assert "| `test_t` | onnx | int8 | output[1] | - | 0.9950 | inf | 4.0 KB → 1.0 KB |" in lines


# ---------------------------------------------------------------------------------- calibration inputs

SPECS = [tensor("batch", 3), tensor("batch", 2, dtype=torch.int64, low=0, high=5)]
BOUNDS = {"batch": (1, 4)}


def test_calibration_inputs_are_read_once_and_hashed():
    items = read_calibration(lambda: ((torch.zeros(2, 3), torch.zeros(2, 2, dtype=torch.int64)) for _ in range(3)))
    assert len(items) == 3
    assert calibration_digest(items) == calibration_digest(list(items))
    assert calibration_digest(items) != calibration_digest(items[:2])
    with pytest.raises(SpecError, match="yields no input"):
        read_calibration([])

    def broken():
        raise ValueError("no data")

    with pytest.raises(SpecError, match="calling it raised ValueError: no data"):
        read_calibration(broken)


@pytest.mark.parametrize(("item", "words"), [
    ((torch.zeros(2, 3),), "calibration input 0 holds 1 value(s) but inputs= declares 2"),
    ((torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 2, dtype=torch.int64)), "(dtype float64)"),
    ((torch.zeros(5, 3), torch.zeros(5, 2, dtype=torch.int64)), "(dim 0 ('batch') is 5, outside [1, 4])"),
    ((torch.zeros(2, 3), torch.zeros(3, 2, dtype=torch.int64)), "(dim 0 ('batch') is 3, but another input has batch=2)"),
    ((torch.zeros(2, 4), torch.zeros(2, 2, dtype=torch.int64)), "(dim 1 is 4, declared 3)"),
    ({"a": torch.zeros(2, 3)}, "calibration input 0 has keys ['a'] but the inputs are named ['a', 'b'] (missing ['b'])"),
])
def test_a_calibration_input_that_does_not_match_the_declaration_is_refused(item, words):
    with pytest.raises(StageError) as info:
        calibration_args(item, 0, SPECS, ["a", "b"], BOUNDS)
    assert words in info.value.message and "fix: yield inputs as inputs= declares them" in info.value.message


def test_matching_calibration_inputs_come_back_in_the_declarations_order():
    a, b = torch.zeros(2, 3), torch.ones(2, 2, dtype=torch.int64)
    assert calibration_args({"b": b, "a": a}, 0, SPECS, ["a", "b"], BOUNDS) == (a, b)
    assert calibration_args([a, b], 0, SPECS, ["a", "b"], BOUNDS) == (a, b)


def test_generated_calibration_plans_are_deterministic_and_start_at_the_canonical_example():
    plans = calibration_plans(SPECS, BOUNDS, 5, seed=3)
    assert len(plans) == 5 and plans == calibration_plans(SPECS, BOUNDS, 5, seed=3)
    assert plans != calibration_plans(SPECS, BOUNDS, 5, seed=4)
    assert all(r.pattern == "uniform" for _, recipes in plans for r in recipes)
    assert all(1 <= dims["batch"] <= 4 for dims, _ in plans)


# ---------------------------------------------------------------------------------- what the keys see


def test_only_int8_checks_carry_the_quantization_options():
    from pytest_deploy.check import _normalised
    from pytest_deploy.checkoptions import CheckOptions

    fp32, _ = _normalised(CheckOptions(agreement="cosine", calibration=[(torch.zeros(1),)]), "onnx")
    assert "agreement" not in fp32.backend_options and "calibration" not in fp32.backend_options
    assert "calibration_examples" not in fp32.backend_options and fp32.calibration is None
    generated, _ = _normalised(CheckOptions(precision="int8", calibration_examples=8), "onnx")
    assert generated.backend_options["calibration_examples"] == 8 and "agreement" not in generated.backend_options
    given, _ = _normalised(CheckOptions(precision="int8", agreement="sqnr", calibration=lambda: [(torch.zeros(1),)]),
                           "onnx")
    assert given.backend_options["agreement"] == {"sqnr": 20.0}
    assert given.backend_options["calibration"] == calibration_digest([(torch.zeros(1),)])
    assert len(given.calibration) == 1 and "calibration_examples" not in given.backend_options
    dynamic, _ = _normalised(CheckOptions(precision="int8-dynamic", calibration=[(torch.zeros(1),)]), "onnx")
    assert "calibration" not in dynamic.backend_options and dynamic.calibration is None
    assert CheckOptions(calibration_examples=None).calibration_examples == 16
