"""Every backend of a model test starts from the same model state (issue 22 item 4).

The backends of one model test share one model instance. A ``forward`` that fills a cache in it (a bias buffer
grown lazily, as ALiBi's is) or counts its calls must not make one backend's verdict depend on whether another
ran first; the user is told once, per model test, what ``forward`` changes.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from pytest_deploy import DeployFailure, InputWarning, tensor
from pytest_deploy.check import run_check
from pytest_deploy.checkoptions import CheckOptions
from pytest_deploy.modeltest import ModelTest

INPUTS = [tensor("batch", 4)]
DIMS = {"batch": (1, 4)}


class GrowingCache(nn.Module):
    """A position bias grown lazily to the longest batch seen, and a call counter."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.register_buffer("bias_cache", torch.zeros(0), persistent=False)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        n = x.shape[0]
        if self.bias_cache.shape[0] < n:
            self.bias_cache = torch.arange(n, dtype=torch.float32)
        return self.fc(x) + self.bias_cache[:n, None]


def check(model, backend, shared):
    """(outcome, stage, message, max abs error, branches) of one check, and the InputWarnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = run_check(model, backend, CheckOptions(inputs=INPUTS, dims=DIMS, examples=4, isolate="none"),
                               shared=shared, factory=GrowingCache)
        except DeployFailure as failure:
            result = failure.result
    said = [str(w.message) for w in caught if issubclass(w.category, InputWarning)]
    return (result.outcome, result.stage, result.message, result.max_abs_error, result.branches), said


def model():
    torch.manual_seed(0)
    return GrowingCache().eval()


def test_a_backends_verdict_does_not_depend_on_which_backend_ran_first():
    alone, _ = check(model(), "trace", ModelTest("alone"))
    shared = ModelTest("after")
    first = model()
    _, said_first = check(first, "script", shared)
    after, said_after = check(first, "trace", shared)
    assert after[:2] == alone[:2] and after[3:] == alone[3:]  # outcome, stage, error, branches
    if after[2] != alone[2]:  # a failure of eager PyTorch itself is told in full once per model test, then named
        cause = alone[2].removeprefix(f"trace: stage {alone[1]}: ").splitlines()[0]
        assert after[2] == (f"trace: stage {alone[1]}: fails for the same reason as this model test's script check, "
                            f"before any backend runs (its message has the whole text): {cause}")
    # told once per model test, naming what forward changes
    told = [w for w in said_first + said_after if "forward changes the model's state" in w]
    assert len(told) == 1, said_first + said_after
    assert "buffer 'bias_cache' (replaced)" in told[0] and "attribute 'calls'" in told[0]
    # and the model is as it was built after each check
    assert first.bias_cache.shape == (0,) and first.calls == 0


class FrozenDict(dict):
    """As diffusers' FrozenDict (its models' ``_internal_dict``): a dict that refuses every change."""

    def _refuse(self, *args, **kwargs):
        raise Exception(f"You cannot change a {type(self).__name__} instance.")

    update = clear = pop = setdefault = __setitem__ = __delitem__ = _refuse

    def __init__(self, *args, **kwargs):  # a constructor that is not dict's
        super().__init__(*args, **kwargs)
        self.frozen = True


class WithConfig(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self._internal_dict = FrozenDict(scale=2.0)
        self.seen = {}

    def forward(self, x):
        self.seen["last"] = x.shape[0]
        return self.fc(x) * self._internal_dict["scale"]


def test_an_attribute_that_refuses_changes_is_left_as_it_is_and_a_changed_dict_is_put_back():
    """diffusers' models keep their config in a FrozenDict: putting back every dict attribute crashed every check
    after the first with 'You cannot use update on a FrozenDict instance' (after clearing it)."""
    torch.manual_seed(0)
    model = WithConfig().eval()
    shared = ModelTest("frozen")
    verdicts = []
    for backend in ("trace", "export"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InputWarning)
            result = run_check(model, backend, CheckOptions(inputs=INPUTS, dims=DIMS, examples=3, isolate="none"),
                               shared=shared, factory=WithConfig)
        verdicts.append(result.outcome)
    assert verdicts == ["passed", "passed"]
    assert model._internal_dict == {"scale": 2.0} and type(model._internal_dict) is FrozenDict
    assert model.seen == {}


class RebuildsItsPlan(nn.Module):
    """As transformers' models do with ``_pp_plan``: forward (or a hook) assigns an equal dict of new tuples."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.plan = {"fc": (["x"], ["y"])}

    def forward(self, x):
        self.plan = {"fc": (["x"], ["y"])}  # new objects, equal values
        return self.fc(x)


def test_an_attribute_rebuilt_equal_is_no_change_to_report():
    torch.manual_seed(0)
    (outcome, *_), said = check(RebuildsItsPlan().eval(), "trace", ModelTest("plan"))
    assert outcome == "passed"
    assert not [w for w in said if "forward changes the model's state" in w], said
