"""Outputs of any pytree type, rank and dtype through real checks (issue 22 item 1): a type registered without key
functions, and 0-d outputs through the runtimes that return numpy arrays."""

from __future__ import annotations

from collections import OrderedDict

import helpers  # tests/integration/helpers.py
import pytest
import torch
from torch import nn

from pytest_deploy import tensor


class SampleOutput(OrderedDict):
    """diffusers' BaseOutput in small: a dict of named outputs, registered with pytree as diffusers registers it
    (flatten and unflatten and a serialized name, no flatten_with_keys_fn)."""


torch.utils._pytree.register_pytree_node(
    SampleOutput, lambda o: (list(o.values()), list(o.keys())), lambda values, keys: SampleOutput(zip(keys, values)),
    serialized_type_name=f"{__name__}.SampleOutput",
)


class Denoiser(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x):
        y = self.proj(x)
        return SampleOutput(sample=y, scale=y.abs().mean(dim=-1))


@pytest.mark.parametrize("backend", ["export", "onnx"])  # trace refuses a dict subclass (torch's verdict)
def test_output_type_registered_without_key_function_is_compared(backend):
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    result, message = helpers.check(backend, Denoiser(), [tensor("batch", 4)], {"batch": (1, 3)}, examples=2)
    assert message is None, message
    assert result.passed and result.examples == 2


class Loss(nn.Module):
    """A model returning 0-d outputs beside a 1-d one: a loss, a count and a norm."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 3)

    def forward(self, x):
        y = self.proj(x)
        return y.pow(2).mean(), (y > 0).sum(), y.norm(dim=-1)


@pytest.mark.parametrize("backend", ["onnx", "tvm"])
def test_0d_outputs_keep_their_shape(backend, monkeypatch):
    pytest.importorskip("onnxruntime" if backend == "onnx" else "tvm")
    from pytest_deploy import compare

    shapes = []
    real = compare.compare_leaf

    def spy(path, expected, got, *args, **kwargs):
        shapes.append((path, tuple(expected.shape), tuple(got.shape)))
        return real(path, expected, got, *args, **kwargs)

    monkeypatch.setattr(compare, "compare_leaf", spy)
    torch.manual_seed(0)
    result, message = helpers.check(backend, Loss(), [tensor("batch", 4)], {"batch": (1, 3)}, examples=2)
    assert message is None, message
    assert result.passed
    assert ("output[0]", (), ()) in shapes and ("output[1]", (), ()) in shapes
