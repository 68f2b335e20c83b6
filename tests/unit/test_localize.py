"""The pure parts of localisation: comparing values, choosing the first divergence, the call tree, the report."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from torch import nn

from pytest_deploy.compare import resolve_tolerance
from pytest_deploy.divergence import locate
from pytest_deploy.localize import (
    TABLE_ROWS,
    Entry,
    Finding,
    Node,
    _children_calls,
    error,
    first_divergence,
    record_calls,
)
from pytest_deploy.results import Result

TOL = resolve_tolerance("onnx")  # float32: atol 1e-4, rtol 1e-3


def node(name, *inputs, module="m"):
    return Node(name, list(inputs), module, "Mod", 0, None, None, None)


def test_error_handles_nested_outputs_shapes_and_ints():
    a = {"x": torch.ones(2), "y": (torch.zeros(3), torch.tensor([1, 2]))}
    assert error(a, a, TOL) == (0.0, True)
    b = {"x": torch.ones(2) + 0.5, "y": (torch.zeros(3), torch.tensor([1, 2]))}
    assert error(a, b, TOL) == (0.5, False)
    assert error(torch.ones(2), torch.ones(3), TOL) == (math.inf, False)
    assert error((torch.ones(1),), (torch.ones(1), torch.ones(1)), TOL) == (math.inf, False)
    assert error(torch.tensor([1, 2]), torch.tensor([1, 3]), TOL) == (1.0, False)
    nan = torch.tensor([float("nan"), 1.0])
    assert error(nan, nan.clone(), TOL) == (0.0, True)


def test_error_treats_infinities_and_nans_as_compare_does():
    from pytest_deploy.compare import compare_leaf

    inf, nan = float("inf"), float("nan")
    expected = torch.tensor([inf, -inf, nan, 1.0])
    assert error(expected, expected.clone(), TOL) == (0.0, True)  # inf - inf is no error
    for changed in (torch.tensor([-inf, -inf, nan, 1.0]), torch.tensor([inf, -inf, 2.0, 1.0]),
                    torch.tensor([inf, 5.0, nan, 1.0])):
        assert error(expected, changed, TOL) == (inf, False)
        assert compare_leaf("output", expected, changed, TOL).max_abs == inf
    assert error(expected, torch.tensor([inf, -inf, nan, 1.5]), TOL) == (0.5, False)


def test_first_divergence_needs_agreeing_inputs_and_passes_through_missing_nodes():
    nodes = [node("a"), node("b", "a"), node("c", "b"), node("d", "c")]
    expected = {n: torch.zeros(2) for n in "abcd"}
    # b is fused away (no value); c diverges but reads b, which passes a's agreement on; d diverges after c
    actual = {"a": torch.zeros(2), "c": torch.ones(2), "d": torch.ones(2) * 3}
    found = first_divergence(nodes, expected, actual, TOL)
    assert found.culprit is not None and found.culprit.node == "c"
    assert [e.node for e in found.entries] == ["a", "c", "d"]
    assert found.divergence()["input_max_abs_error"] == 0.0
    # a diverging input: d's inputs disagree, so d is not where it broke
    actual = {"a": torch.ones(2), "c": torch.ones(2), "d": torch.ones(2)}
    assert first_divergence(nodes, expected, actual, TOL).culprit.node == "a"


def test_first_divergence_without_common_names_says_so():
    found = first_divergence([node("a")], {"a": torch.zeros(1)}, {}, TOL)
    assert found.culprit is None and "keeps none of the exported program's node names" in found.error
    found = first_divergence([node("a")], {"a": torch.zeros(1)}, {"a": torch.zeros(1)}, TOL)
    assert found.culprit is None and found.error == "no node of the exported program diverges while its inputs agree"


def test_record_calls_keeps_nesting_and_call_indices():
    inner = nn.Linear(2, 2)
    model = nn.Sequential(nn.Sequential(inner), inner)  # inner shared: called twice
    calls = record_calls(model, lambda: model(torch.ones(1, 2)))
    assert [(c.path, c.index) for c in calls] == [("0", 0), ("0.0", 0), ("0.0", 1)]
    top = _children_calls(calls, None)
    assert [(c.path, c.index) for c in top] == [("0", 0), ("0.0", 1)]
    assert [(c.path, c.index) for c in _children_calls(calls, top[0])] == [("0.0", 0)]


def test_table_is_bounded_around_the_culprit():
    entries = [Entry("m", "T", f"n{i}", 0.0, 0.0, False) for i in range(1000)]
    finding = Finding(culprit=entries[700], entries=entries, how="graph")
    table = finding.table()
    assert len(table) == TABLE_ROWS
    assert table[0]["node"] == f"n{700 - TABLE_ROWS // 2}" and any(r["node"] == "n700" for r in table)


def test_message_when_found_and_when_not():
    culprit = Entry("encoder.norm", "LayerNorm", "layer_norm", 0.31, 1e-7, True, call=1, file="model.py", line=42,
                    code="x = self.norm(x)")
    text = Finding(culprit=culprit, entries=[culprit], how="graph").message(1e-4)
    assert text.splitlines() == [
        "diverges first at encoder.norm (LayerNorm, call 2, node layer_norm) at model.py:42",
        "  `x = self.norm(x)`",
        "  max abs error 0.31 at its output (atol 0.0001), 1e-07 at its inputs"]
    assert Finding(error="why").message(1e-4) == "diverges first at: not located (why)"


def _ctx(backend, budget=None):
    options = {} if budget is None else {"localize_budget": budget}
    return SimpleNamespace(backend=backend, options=options, result=Result(test="t", backend=backend),
                           tol=TOL, runner=None)


def test_backend_without_localisation_says_why():
    ctx = _ctx("pickle")
    text = locate(ctx, (torch.ones(1),), "compare")
    assert ctx.result.divergence is None
    assert ctx.result.details["divergence_error"].startswith("pickle: pytest-deploy cannot look inside")
    assert text.startswith("\ndiverges first at: not located (pickle: pytest-deploy cannot look inside")
    ctx = _ctx("aoti")
    locate(ctx, (torch.ones(1),), "branches")
    assert ctx.result.details["divergence_error"].startswith("aoti: the compiled package runs as one sequence")


def test_only_compare_and_branches_failures_are_localised():
    for stage, budget in (("run", None), ("export", None), ("compare", 0)):
        ctx = _ctx("export", budget)
        assert locate(ctx, (torch.ones(1),), stage) == ""
        assert "divergence_error" not in ctx.result.details


def test_budget_is_not_part_of_the_result_cache_key():
    from pytest_deploy.fingerprint import check_key

    model = nn.Linear(2, 2)
    keys = {check_key(model, "onnx", declared={}, options=opts) for opts in ({}, {"localize_budget": 5})}
    assert len(keys) == 1
    assert check_key(model, "onnx", declared={}, options={"onnx_opset": 17}) not in keys


def test_budget_option_parses():
    import argparse

    import pytest

    from pytest_deploy.options import budget_seconds

    assert budget_seconds("0") == 0.0 and budget_seconds("2.5") == 2.5
    for bad in ("-1", "soon"):
        with pytest.raises(argparse.ArgumentTypeError):
            budget_seconds(bad)


def test_budget_is_at_most_half_the_stage_timeout(monkeypatch):
    import time

    import pytest_deploy.divergence as divergence

    seen = []

    class Recorder:
        def localize(self, ctx, args, deadline):
            seen.append(deadline - time.perf_counter())
            return Finding(error="nothing here")

    monkeypatch.setattr(divergence, "get_backend", lambda name: Recorder())
    ctx = _ctx("onnx", budget=60)
    ctx.timeout = 10.0
    text = locate(ctx, (torch.ones(1),), "compare")
    assert 4.0 < seen[0] <= 5.0
    assert text == "\ndiverges first at: not located (nothing here)"
    assert ctx.result.details["divergence_error"] == "nothing here"
