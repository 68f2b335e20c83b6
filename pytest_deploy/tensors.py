"""Small tensor helpers used across the package: telling a tensor from other values, copying inputs, and
crossing to runtimes that take numpy arrays (ONNX Runtime, TVM, TensorRT) without losing bfloat16.

A leaf module: torch and numpy are imported inside the functions that need them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def is_tensor(x: Any) -> bool:
    """A ``torch.Tensor`` (or subclass), told without importing torch."""
    return type(x).__module__.startswith("torch") and hasattr(x, "dtype") and hasattr(x, "shape")


def clone_args(args: Iterable[Any]) -> tuple:
    """A copy of forward's inputs: tensors cloned, other values as they are."""
    return tuple(a.clone() if is_tensor(a) else a for a in args)


def dtype_name(dtype: Any) -> str:
    """``float32`` for ``torch.float32``."""
    return str(dtype).replace("torch.", "")


def is_float_dtype(dtype: Any) -> bool:
    """A floating-point ``torch.dtype``, told without importing torch."""
    return bool(getattr(dtype, "is_floating_point", False))


def is_bool_dtype(dtype: Any) -> bool:
    return dtype_name(dtype) == "bool"


def elementwise_error(expected, got) -> Any:
    """``|expected - got|`` per element in float64 (the distance in the complex plane for complex tensors), where NaN
    matches NaN and an infinity matches the same infinity (error 0), and NaN against anything else is an infinite
    error: how comparison and localisation both measure a float output."""
    import torch

    wide = torch.complex128 if expected.is_complex() or got.is_complex() else torch.float64
    e, g = expected.to(wide), got.to(wide)
    nan_e, nan_g = torch.isnan(e), torch.isnan(g)
    diff = (e - g).abs()
    diff = torch.where((nan_e & nan_g) | (torch.isinf(e) & (e == g)), torch.zeros_like(diff), diff)
    return torch.where(nan_e ^ nan_g, torch.full_like(diff, math.inf), diff)


def to_numpy(t) -> Any:
    """A CPU numpy array of ``t``; bfloat16 (which numpy lacks) becomes ml_dtypes' bfloat16, the type ONNX
    Runtime and TVM read."""
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def from_numpy(a) -> Any:
    """The tensor of a runtime's output array (ml_dtypes' bfloat16 included), of the array's shape: a 0-d array
    stays 0-d (``np.ascontiguousarray`` would make it 1-d)."""
    import numpy as np
    import torch

    if not hasattr(a, "dtype"):
        return torch.tensor(a)
    a = np.require(a, requirements="C")
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)
