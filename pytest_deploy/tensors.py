"""Small tensor helpers used across the package: telling a tensor from other values, copying inputs, and
crossing to runtimes that take numpy arrays (ONNX Runtime, TVM, TensorRT) without losing bfloat16.

A leaf module: torch and numpy are imported inside the functions that need them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def is_tensor(x: Any) -> bool:
    """A ``torch.Tensor`` (or subclass), told without importing torch."""
    return type(x).__module__.startswith("torch") and hasattr(x, "dtype") and hasattr(x, "shape")


def clone_args(args: Iterable[Any]) -> tuple:
    """A copy of forward's inputs: tensors cloned, other values as they are."""
    return tuple(a.clone() if is_tensor(a) else a for a in args)


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
