"""Control-flow models with known ground truth, for the branch analysis tests (test_branches.py).

Each line that holds a data-dependent decision carries a trailing marker ``# <KIND>: <case>``:

* ``LOST``: torch.jit.trace freezes the decision and some declared input takes the other outcome, with
  other outputs (trace fails at stage branches, naming this line);
* ``SAME``: lost as well, but both outcomes compute the same outputs (reported, trace passes);
* ``UNCOVERED``: a decision whose other outcome no declared input reaches (reported as uncovered).

The tests read the markers to find the expected lines; nothing here hard-codes a line number. Models
are tiny and deterministic (no parameters, or fixed ones) so that the ground truth holds for any seed.
"""

from __future__ import annotations

import torch
from torch import nn


def squash(x):
    """A helper function with its own branch."""
    if x.abs().max() > 0.5:  # LOST: helper
        return x.clamp(-0.5, 0.5)
    return x + 1


class IfReduction(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # LOST: reduction
            return x * 2
        return x - 1


class ItemCompare(nn.Module):
    def forward(self, x):
        if x.mean().item() > 0.0:  # LOST: item
            return x * 2
        return x - 1


class WhileTensorBound(nn.Module):
    """Halves the input while its norm is above 1: the iteration count depends on the values."""

    def forward(self, x):
        y = x
        while y.norm() > 1.0:  # LOST: while
            y = y * 0.5
        return y


class EarlyReturn(nn.Module):
    def forward(self, x):
        if x.sum() < 0: return torch.zeros_like(x)  # noqa: E701  # LOST: early_return
        y = x.relu()
        return y + 1


class Gate(nn.Module):
    def forward(self, x):
        if x.mean() > 0:  # LOST: submodule
            return x.relu()
        return x.sigmoid()


class SubmoduleBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate = Gate()

    def forward(self, x):
        return self.gate(x * 3) + 1


class HelperBranch(nn.Module):
    def forward(self, x):
        return squash(x) + 1


class ToListLoop(nn.Module):
    def forward(self, x):
        y = torch.zeros_like(x)
        for v in x[0].tolist():  # LOST: tolist
            y = y + v
        return y


class IntSlice(nn.Module):
    def forward(self, x):
        k = int(x[0, 0].abs() * 8)  # LOST: int_slice
        return x[:, :k].sum(dim=1)


class ShapeBranch(nn.Module):
    """Branches on the batch size, declared dynamic."""

    def forward(self, x):
        if x.shape[0] > 2:  # LOST: shape
            return x * 2
        return x


class Nested(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # LOST: nested
            if x.max() > 0.9:  # LOST: nested
                return x * 3
            return x * 2
        return x


class RareBranch(nn.Module):
    """The branch is taken by few inputs in [-1, 1]: the search has to find them."""

    def forward(self, x):
        if x.max() > 0.95:  # LOST: rare
            return x * 10
        return x


class IdenticalOutcomes(nn.Module):
    """Both outcomes compute the same thing: lost, but outputs never change."""

    def forward(self, x):
        if x.sum() > 0:  # SAME: identical
            y = x * 2
        else:
            y = x + x
        return y


class ElifChain(nn.Module):
    def forward(self, x):
        s = x.mean()
        if s > 0.2:  # LOST: elif
            return x + 1
        elif s < -0.2:  # LOST: elif
            return x - 1
        return x


class FloatValue(nn.Module):
    """float(t) becomes a constant when traced."""

    def forward(self, x):
        return x + float(x.sum())  # LOST: float


class LenValue(nn.Module):
    """len(x) is the batch size: a constant once traced."""

    def forward(self, x):
        return x / len(x)  # LOST: len


class IntegerFlags(nn.Module):
    """An integer input in [0, 2) used as flags: random ones almost always hold a 1, so only the all-zero corner
    (the common case of a global-attention mask, as Longformer's is) takes the other outcome."""

    def forward(self, x, flags):
        if (flags > 0).any().item():  # LOST: flags
            return x * 2
        return x - 1


class Unreachable(nn.Module):
    """Inputs lie in [-1, 1]: the branch is never taken, by the trace or by any input."""

    def forward(self, x):
        if x.abs().max() > 2.0:  # UNCOVERED: unreachable
            return x * 0
        return x + 1


class MLP(nn.Module):
    """No data-dependent control flow at all."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    def forward(self, x):
        return self.net(x)


class StaticControl(nn.Module):
    """Python control flow that no input can change: configuration flags, a loop over layers, a
    counted while loop, a check of the rank and of a static size."""

    def __init__(self, residual=True, scale=None):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))
        self.residual = residual
        self.scale = scale

    def forward(self, x):
        if x.dim() != 2:
            raise ValueError("expected a 2-d input")
        if x.shape[1] != 4:
            raise ValueError("expected 4 features")
        for layer in self.layers:
            y = layer(x)
            if self.residual:
                x = x + y
            else:
                x = y
        i = 0
        while i < 2:
            x = x * 0.5
            i += 1
        if self.scale is not None:
            x = x * self.scale
        return x


class StaticShapes(nn.Module):
    """Shape reads that a trace keeps (the batch size in view) or that no input changes (the feature
    size, declared static): nothing is lost."""

    def forward(self, x):
        y = x.view(x.size(0), -1)
        half = x.shape[1] // 2
        s = y[:, :half].sum(dim=1)
        for i in range(x.shape[1]):
            s = s + y[:, i]
        return s * (x.shape[1] / len(x[0]))


class StandardLayers(nn.Module):
    """Library layers only (their own Python code is not the user's): nothing to report."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv1d(4, 4, 3, padding=1)
        self.norm = nn.BatchNorm1d(4)
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
        self.ln = nn.LayerNorm(4)

    def forward(self, x):
        h = self.norm(self.conv(x.transpose(1, 2))).transpose(1, 2)
        a, _ = self.attn(h, h, h)
        return self.ln(a + h)
