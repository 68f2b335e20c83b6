"""The branch search spends its runs only where they can flip a decision, and as many as the model's cost allows.

A decision that reads only the weights, shapes and inputs the spec holds constant (an all-ones mask) cannot be
flipped by any declared input: it is chased at the corners of the dims only, then reported uncovered with why.
A decision that reads a varying input, directly, through a view written in place or through a Python number
taken from it, is chased as before. Every assertion counts runs or outcomes; none times anything.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from pytest_deploy import search as search_module
from pytest_deploy import tensor, verify

ONES = tensor("batch", 4, dtype=torch.int64, low=1, high=2)  # an all-ones mask: the spec holds it constant
X = tensor("batch", 4)
DIMS = {"batch": (1, 3)}
CORNERS = 3  # the opt dims, every dim at its lower bound, every dim at its upper bound


class OnMask(nn.Module):
    def forward(self, x, mask):
        if bool((mask == 0).any()):  # never True: the mask is all ones in every example
            x = x * 0
        return x + 1


class OnWeights(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x, mask):
        if bool(self.scale.sum() < 0):  # the weights decide, whatever the input
            x = -x
        return x * self.scale


class OnMaskAndInput(nn.Module):
    def forward(self, x, mask):
        if bool(((mask * x) > 10).any()):  # the mask is constant, x is not (it cannot reach 10 either)
            x = x * 0
        return x + 1


class ThroughAView(nn.Module):
    def forward(self, x, mask):
        buf = torch.zeros(2)
        buf[0] = x.sum()  # written through a view of buf: buf now depends on x
        if bool(buf[0] > 0):
            return x + 1
        return x - 1


class ThroughAPythonNumber(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("table", torch.tensor([1.0, -1.0, 1.0, -1.0]))

    def forward(self, x, mask):
        n = int(x[0].argmax())  # a Python number from x: what it indexes depends on x too
        if bool(self.table[n] > 0):
            return x + 1
        return x - 1


def run(model, backend="state_dict"):
    return verify(model.eval(), backend, factory=lambda: model, inputs=[X, ONES], dims=DIMS, examples=3,
                  isolate="none")


def site_of(result, source_start):
    return next(b for b in result.branches if b["source"].startswith(source_start))


def test_a_decision_on_an_input_the_spec_holds_constant_is_chased_at_the_corners_only():
    result = run(OnMask())
    search = result.details["branch_search"]
    assert search["runs"] <= CORNERS
    assert site_of(result, "if bool((mask == 0)")["uncovered"] == ["True"]
    assert len(search["not_chased"]) == 1 and "no declared input can change it" in search["not_chased"][0]
    assert "test_branch_budget.py" in search["not_chased"][0]


def test_a_decision_on_the_weights_only_is_not_chased():
    result = run(OnWeights())
    assert result.details["branch_search"]["runs"] <= CORNERS
    assert site_of(result, "if bool(self.scale.sum()")["uncovered"] == ["True"]


def test_a_decision_that_reads_a_varying_input_too_is_chased_with_the_whole_budget():
    result = run(OnMaskAndInput())
    search = result.details["branch_search"]
    assert search["not_chased"] == []
    assert search["runs"] == search["budget"] >= search_module.EXPLORE_MIN_RUNS


def test_a_value_written_through_a_view_carries_the_inputs_dependence():
    result = run(ThroughAView())
    assert result.details["branch_search"]["not_chased"] == []
    assert site_of(result, "if bool(buf[0] > 0)")["uncovered"] == []


def test_a_python_number_taken_from_a_varying_input_makes_what_follows_depend_on_it():
    result = run(ThroughAPythonNumber())
    assert result.details["branch_search"]["not_chased"] == []
    assert site_of(result, "if bool(self.table[n] > 0)")["uncovered"] == []


class Slow(nn.Module):
    """A decision no input reaches the other side of, on a model whose every run costs at least 0.2 s."""

    def forward(self, x, mask):
        time.sleep(0.2)
        if bool((x.abs() > 100).any()):  # x lies in [-1, 1]
            x = x * 0
        return x + 1


class Fast(Slow):
    def forward(self, x, mask):
        if bool((x.abs() > 100).any()):
            x = x * 0
        return x + 1


def test_the_search_budget_follows_the_models_cost():
    """A run of at least 0.2 s gets EXPLORE_COST_SECONDS / 0.2 = 10 runs at most, so the floor of
    EXPLORE_MIN_RUNS; a model of microseconds gets every one of EXPLORE_RUNS."""
    slow = run(Slow()).details["branch_search"]
    fast = run(Fast()).details["branch_search"]
    assert slow["budget"] == slow["runs"] == search_module.EXPLORE_MIN_RUNS
    assert fast["budget"] == fast["runs"] == search_module.EXPLORE_RUNS


class RunCount:
    """Counts forward's runs outside the model's state (which every eager run starts from again)."""

    n = 0


class RefusesDispatchModes(nn.Module):
    def __init__(self):
        super().__init__()
        self.runs = RunCount()

    def forward(self, x, mask):
        from torch.utils._python_dispatch import _get_current_dispatch_mode

        if _get_current_dispatch_mode() is not None:
            raise RuntimeError("this model does not run under a dispatch mode")
        self.runs.n += 1
        if bool((x.abs() > 100).any()):
            x = x * 0
        return x + 1


def test_a_model_that_fails_under_the_tracking_mode_is_recorded_and_searched_without_it():
    model = RefusesDispatchModes()
    result = run(model)
    search = result.details["branch_search"]
    assert result.outcome == "passed"
    assert search["not_chased"] == []
    assert search["runs"] == search["budget"]
    assert model.runs.n >= search["budget"]  # every search run ran the model (none was refused)


class OnFlags(nn.Module):
    """Token ids and integer flags in [0, 2): random flags almost always hold a 1; only the all-zero corner of the
    flags (Longformer's global-attention mask, all zero in the common case) takes the other outcome."""

    def forward(self, ids, flags):
        if bool((flags > 0).any()):
            return ids * 2
        return ids - 1


def test_the_search_tries_the_constant_corners_of_the_integer_inputs_that_feed_an_unreached_outcome(monkeypatch):
    # the budget of a 110M-parameter model: the plan's dims corners, sign flips and reseeds would spend it all
    monkeypatch.setattr(search_module, "EXPLORE_RUNS", search_module.EXPLORE_MIN_RUNS)
    ids = tensor("batch", 16, dtype=torch.int64, low=0, high=100)
    flags = tensor("batch", 16, dtype=torch.int64, low=0, high=2)
    model = OnFlags().eval()
    result = verify(model, "state_dict", factory=lambda: model, inputs=[ids, flags], dims=DIMS, examples=1,
                    isolate="none")
    assert site_of(result, "if bool((flags > 0)")["uncovered"] == []
    search = result.details["branch_search"]
    # the dims' corners first, then the flags' all-zero corner: the ids feed no decision, their corners are not run
    assert search["runs"] == CORNERS + 1, search
