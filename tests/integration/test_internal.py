"""A failure inside pytest-deploy itself (issue 22 item 2): never a backend's verdict. An exception raised by the
plugin's own code fails the check at stage ``internal``, saying it is a pytest-deploy bug, where, and how to report
it; every report shows it as its own status, and a declared xfail does not hide it. Exceptions raised by torch, a
backend's library or the model stay verdicts at their stage."""

from __future__ import annotations

import json

import helpers  # tests/integration/helpers.py
import pytest
import torch
from torch import nn

import pytest_deploy.compare
import pytest_deploy.examples
from pytest_deploy import tensor, tensors
from pytest_deploy.internal import internal_error

SPEC = dict(inputs=[tensor("batch", 4)], dims={"batch": (1, 3)}, examples=2)


def _raised(fn, *args):
    try:
        fn(*args)
    except Exception as exc:
        return exc
    raise AssertionError("did not raise")


def test_an_exception_raised_in_pytest_deploy_code_is_internal():
    bug = internal_error(_raised(tensors.clone_args, 5), staged=True)  # iterating an int, in tensors.py
    assert bug is not None
    assert bug.message.startswith("pytest-deploy failed inside itself: TypeError:")
    assert "at pytest_deploy/tensors.py:" in bug.message and "in clone_args" in bug.message
    assert "bug in pytest-deploy" in bug.message and "details.internal_traceback" in bug.message
    assert "Traceback" in bug.traceback and "clone_args" in bug.traceback


def test_exceptions_from_torch_the_model_or_the_machine_are_not_internal():
    def model_code():
        raise ValueError("the model's own")

    torch_error = _raised(nn.Sequential, 1)  # TypeError raised in torch's Python code
    assert internal_error(torch_error, staged=True) is None
    assert internal_error(_raised(model_code), staged=True) is None
    assert internal_error(_raised(model_code), staged=False) is None
    # a RuntimeError raised by a compiled function that pytest-deploy's code calls (torch's, a runtime's) is not
    # told apart from the data the backend gave it: the stage's verdict
    runtime = _raised(pytest_deploy.compare.compare_leaf, "output", torch.zeros(2, 3), torch.zeros(2, 3),
                      pytest_deploy.compare.Tolerance({}), torch.ones(5, dtype=torch.bool))  # torch.where broadcast
    assert isinstance(runtime, RuntimeError)
    assert internal_error(runtime, staged=True) is None
    # an exception that escaped every stage is internal unless the model's code raised it
    assert internal_error(torch_error, staged=False) is not None


@pytest.mark.parametrize("backend", ["trace", "state_dict"])
@pytest.mark.parametrize(("module", "name", "where"), [
    (pytest_deploy.compare, "is_tensor", "pytest_deploy/compare.py"),  # first met outside any stage
    (pytest_deploy.examples, "Leaves", "pytest_deploy/examples.py"),  # met inside stage compare: once a compare verdict
])
def test_a_bug_in_comparison_fails_at_stage_internal(backend, module, name, where, monkeypatch):
    monkeypatch.setattr(module, name, None)  # a bug: 'NoneType' object is not callable
    model = nn.Linear(4, 2)
    result, message = helpers.check(backend, model, factory=lambda: nn.Linear(4, 2), **SPEC)
    assert result.stage == "internal" and result.outcome == "failed"
    assert message.startswith(f"{backend}: stage internal: pytest-deploy failed inside itself: TypeError:")
    assert f"at {where}:" in message
    assert "TypeError" in result.details["internal_traceback"].splitlines()[-1]


def test_a_backend_failure_keeps_its_stage():
    class Untypable(nn.Module):
        def forward(self, x, *rest):  # torch.jit.script refuses varargs
            return x + len(rest)

    result, message = helpers.check("script", Untypable(), **SPEC)
    assert result.stage == "export", message
    assert "internal_traceback" not in result.details


MODELS = '''
import pytest
import torch
from torch import nn

import pytest_deploy.compare
from pytest_deploy import deployable, tensor


@pytest.fixture(autouse=True)
def broken_comparison(monkeypatch):
    monkeypatch.setattr(pytest_deploy.compare, "is_tensor", None)


@deployable(backends=["trace"], inputs=[tensor("batch", 4)], dims={"batch": (1, 3)}, examples=2,
            xfail={"trace": "a known defect"})
def test_linear():
    return nn.Linear(4, 2).eval()
'''


def test_every_report_shows_the_bug_and_a_declared_xfail_does_not_hide_it(pytester):
    pytester.makepyfile(test_models=MODELS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--deploy-report=out.json",
                                           "--deploy-markdown=out.md", "--deploy-html=out.html", timeout=300)
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    assert "stage internal: pytest-deploy failed inside itself" in text
    assert "does not cover a bug in pytest-deploy" in text
    assert "BUG" in text.split("pytest-deploy summary")[1]
    (check,) = json.loads((pytester.path / "out.json").read_text())["results"]
    assert check["outcome"] == "failed" and check["stage"] == "internal"
    assert "Traceback" in check["details"]["internal_traceback"]
    assert "**BUG**" in (pytester.path / "out.md").read_text()
    assert ">BUG<" in (pytester.path / "out.html").read_text()
