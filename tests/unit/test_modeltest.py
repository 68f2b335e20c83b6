"""Unit tests for pytest_deploy.modeltest: what tells one example's inputs from another's."""

from __future__ import annotations

import torch

from pytest_deploy.modeltest import args_digest


def test_digest_sees_every_element_of_a_tensor_nested_in_a_dict():
    a = torch.zeros(2000)
    b = a.clone()
    b[1500] = 1.0  # repr() summarises a tensor this long: the element is not in it
    assert repr({"x": a}) == repr({"x": b})
    assert args_digest((torch.ones(2), {"x": [a]})) != args_digest((torch.ones(2), {"x": [b]}))
    assert args_digest((torch.ones(2), {"x": [a]})) == args_digest((torch.ones(2), {"x": [a.clone()]}))


def test_digest_sees_structure_dtype_and_other_leaves():
    x = torch.zeros(3)
    assert args_digest(({"x": x},)) != args_digest(({"y": x},))
    assert args_digest((x,)) != args_digest((x.double(),))
    assert args_digest((x, 1)) != args_digest((x, 2))
    assert args_digest(([x, x],)) != args_digest(((x, x),))
