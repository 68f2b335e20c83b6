"""Unit tests for pytest_deploy.tensors: crossing between torch tensors and runtimes' numpy arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pytest_deploy.tensors import elementwise_error, from_numpy, to_numpy


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64, torch.bool, torch.bfloat16])
@pytest.mark.parametrize("shape", [(), (1,), (2, 3), (0, 4)])
def test_from_numpy_keeps_shape_and_dtype(shape, dtype):
    t = (torch.arange(int(np.prod(shape)), dtype=torch.float32).reshape(shape) * 1.5).to(dtype)
    back = from_numpy(to_numpy(t))
    assert back.shape == t.shape and back.dtype == t.dtype
    assert torch.equal(back, t)


def test_from_numpy_of_a_numpy_scalar_is_0d():
    assert from_numpy(np.float32(2.5)).shape == ()


def test_from_numpy_makes_a_strided_array_contiguous():
    a = np.arange(12.0).reshape(3, 4)[:, ::2]
    t = from_numpy(a)
    assert t.is_contiguous() and torch.equal(t, torch.from_numpy(a.copy()))


def test_elementwise_error_matches_equal_infinities_and_nans():
    inf, nan = float("inf"), float("nan")
    e = torch.tensor([inf, -inf, nan, 1.0, inf, nan, 2.0], dtype=torch.float16)
    g = torch.tensor([inf, -inf, nan, 1.5, -inf, 1.0, nan], dtype=torch.float16)
    diff = elementwise_error(e, g)
    assert diff.dtype == torch.float64
    assert diff.tolist() == [0.0, 0.0, 0.0, 0.5, inf, inf, inf]


def test_elementwise_error_of_complex_tensors_is_the_distance_in_the_plane():
    e = torch.tensor([1 + 1j, complex(float("inf"), 0)])
    g = torch.tensor([4 + 5j, complex(float("inf"), 0)])
    assert elementwise_error(e, g).tolist() == [5.0, 0.0]
