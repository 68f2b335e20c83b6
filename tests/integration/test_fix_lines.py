"""Each kind of trace-lost decision gets the fix that fits it, at the most precise line the run recorded (issue 25
item 3): `.item()` -> keep it a tensor, `len()` -> `x.size(0)`, numpy -> the torch op (for trace, at the numpy
line; for script, whose error names no line, found in forward's source). Every fix named here was checked to pass
trace, script and export on these models (``test_the_fixes_the_messages_give_pass``)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from torch import nn

from pytest_deploy import DeployFailure, tensor, verify

SPEC = dict(inputs=[tensor("batch", 4)], dims={"batch": (1, 4)}, examples=4)
HERE = "tests/integration/test_fix_lines.py"


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 4)


class ByItem(Scaled):
    def forward(self, x):
        h = self.fc(x)
        m = h.abs().max().item()
        return h / m


class ByNumpy(Scaled):
    def forward(self, x):
        h = self.fc(x)
        scale = np.abs(h.detach().numpy()).max()
        return h / float(scale)


class ByLen(nn.Module):
    def forward(self, x):
        n = len(x)
        return x * n


class ByItemFixed(Scaled):
    def forward(self, x):
        h = self.fc(x)
        return h / h.abs().max()


class ByNumpyFixed(Scaled):
    def forward(self, x):
        h = self.fc(x)
        return h / torch.abs(h).max()


class ByLenFixed(nn.Module):
    def forward(self, x):
        return x * x.size(0)


class ByBranchFixed(nn.Module):  # `if x.sum() > 0: return x * 2 else: return x - 1`, both sides and torch.where
    def forward(self, x):
        return torch.where(x.sum() > 0, x * 2, x - 1)


def line_in(cls, text: str) -> int:
    lines, start = inspect.getsourcelines(cls)
    return start + next(i for i, ln in enumerate(lines) if text in ln)


def fails(model, backend: str) -> str:
    with pytest.raises(DeployFailure) as info:
        verify(model.eval(), backend, **SPEC)
    return str(info.value)


@pytest.mark.parametrize(("cls", "text", "fix"), [
    (ByItem, "m = h.abs().max().item()", "fix: keep it a tensor: drop the conversion (`.item()`)"),
    (ByNumpy, "scale = np.abs(h.detach().numpy()).max()", "fix: do it in torch: replace the numpy call with the torch op"),
    (ByLen, "n = len(x)", "fix: read the size from the tensor: `x.size(0)` (or `x.shape[0]`) instead of `len(x)`"),
], ids=["item", "numpy", "len"])
def test_a_trace_lost_decision_gets_the_fix_for_its_kind_at_its_line(cls, text, fix):
    message = fails(cls(), "trace")
    first, _, fix_line = message.splitlines()[:3]
    assert first.startswith(f"trace: stage branches: trace-lost value at {HERE}:{line_in(cls, text)}  `{text}`")
    assert fix_line.strip().startswith(fix)
    assert "torch.cond" not in fix_line  # a value is not a branch: torch.cond does not apply


def test_scripting_numpy_names_the_numpy_line_and_the_torch_fix():
    message = fails(ByNumpy(), "script")
    assert f"at {HERE}:{line_in(ByNumpy, 'np.abs(')}  `scale = np.abs(h.detach().numpy()).max()`" in message
    assert "fix: do it in torch: replace the numpy call with the torch op" in message


@pytest.mark.parametrize("cls", [ByItemFixed, ByNumpyFixed, ByLenFixed, ByBranchFixed])
@pytest.mark.parametrize("backend", ["trace", "script", "export"])
def test_the_fixes_the_messages_give_pass(cls, backend):
    assert verify(cls().eval(), backend, **SPEC).passed
