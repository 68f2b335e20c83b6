"""Unit tests for pytest_deploy.validate: the parts the bad-input corpus (tests/integration/test_bad_input.py)
does not reach: the memory-based size limit, what the checks leave alone, NaN-safe comparison."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from torch import nn

from pytest_deploy import validate
from pytest_deploy.errors import SpecError, StageError
from pytest_deploy.spec import tensor

GIB = 2**30


def test_available_memory_is_a_positive_byte_count_here():
    available = validate.available_memory()
    assert available is not None and available > 0


def test_example_size_limit_is_half_the_available_memory_when_that_is_below_the_cap(monkeypatch):
    monkeypatch.setattr(validate, "available_memory", lambda: GIB)
    specs = [tensor("n", 1024, 1024, dtype=torch.uint8)]  # n MiB
    validate.check_example_size(specs, {"n": (1, 512)}, ["x"], cap=GIB)  # 0.5 GiB: exactly half, accepted
    with pytest.raises(SpecError) as info:
        validate.check_example_size(specs, {"n": (1, 768)}, ["x"], cap=GIB)
    message = str(info.value)
    assert "takes 0.8 GiB, more than the limit of 0.5 GiB (the smaller of 1 GiB and half the 1.0 GiB of memory " \
           "available)" in message
    assert "input 'x' uint8[n, 1024, 1024] in [0, 10) alone takes 0.8 GiB at n=768" in message
    assert message.endswith("fix: lower the dims' upper bounds ('n')")


def test_example_size_names_the_largest_input_and_works_without_a_memory_reading(monkeypatch):
    monkeypatch.setattr(validate, "available_memory", lambda: None)
    specs = [tensor("n", 4), tensor(8, "n", dtype=torch.float64)]
    with pytest.raises(SpecError) as info:
        validate.check_example_size(specs, {"n": (1, 2**27)}, ["x", "y"], cap=GIB)
    assert "(memory available unknown)" in str(info.value)
    assert "input 'y' float64[8, n] in [-1, 1] alone takes 8.0 GiB at n=134217728" in str(info.value)


def test_keyword_arguments_with_defaults_and_positional_ones_pass():
    class Fine(nn.Module):
        def forward(self, x, mask=None, *, scale=1.0, **extra):
            return x * scale

    params = list(inspect.signature(Fine().forward).parameters.values())
    for arity in (None, 1, 2):
        validate.check_keyword_arguments(Fine(), params, arity)
    with pytest.raises(StageError, match=r"Fine.forward takes its inputs as \*\*extra"):
        validate.check_keyword_arguments(Fine(), params, 3)


def test_buffers_left_alone_and_lazy_buffers_are_skipped():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).eval()
    before = validate.buffer_snapshot(model)
    model(torch.randn(3, 4))
    validate.check_buffers_unchanged(model, before, "trace")  # eval-mode BatchNorm does not update
    lazy = nn.LazyBatchNorm1d().eval()
    assert set(validate.buffer_snapshot(lazy)) == {"num_batches_tracked"}  # running stats are not there yet


def test_same_treats_nan_as_equal_and_tells_shape_and_dtype_apart():
    a = torch.tensor([1.0, math.nan, math.inf])
    assert validate._same(a, a.clone())
    assert not validate._same(a, torch.tensor([1.0, math.nan, -math.inf]))
    assert not validate._same(a, a.double())
    assert not validate._same(a, a[:2])


def test_finite_outputs_and_python_numbers_pass_and_a_nan_float_does_not():
    validate.check_finite([("output[0]", torch.ones(2)), ("output[1]", 3), ("output[2]", 0.5)], "x")
    with pytest.raises(StageError, match=r"output\[1\] has 1 NaN of 1 elements"):
        validate.check_finite([("output[0]", torch.ones(2)), ("output[1]", math.nan)], "x")
