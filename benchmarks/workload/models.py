"""The benchmark workload's three models: small, plain PyTorch, nothing here knows about pytest-deploy.

Shared by the pytest-deploy test file (``test_workload.py``), the hand-written baseline
(``benchmarks/handwritten.py``) and the pytest-torch side-by-side (``benchmarks/peer/``), so all of
them check the very same modules with the very same weights.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvNet(nn.Module):
    """Two conv-BN-ReLU blocks, pooling and a linear head, on 3x32x32 images."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


class Encoder(nn.Module):
    """A 2-layer transformer encoder (d_model 32, 4 heads) over (batch, seq, 32) features, mean-pooled."""

    def __init__(self, dim: int = 32, heads: int = 4, layers: int = 2, classes: int = 4):
        super().__init__()
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(1))


class MLP(nn.Module):
    """64 features → 128 → 128 → 10 with GELU and LayerNorm."""

    def __init__(self, features: int = 64, hidden: int = 128, classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(features, hidden), nn.GELU(), nn.LayerNorm(hidden),
            nn.Linear(hidden, hidden), nn.GELU(),
            nn.Linear(hidden, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build(name: str) -> nn.Module:
    """A fresh model in eval mode with fixed weights (seed 0), by name: cnn, transformer, mlp."""
    torch.manual_seed(0)
    return {"cnn": ConvNet, "transformer": Encoder, "mlp": MLP}[name]().eval()


#: Per model: the input shapes (ints, or names of dims that vary) and the dims' bounds, as the
#: pytest-deploy test file declares them; the hand-written baseline and the pytest-torch tests draw
#: their inputs from the same description.
SPECS = {
    "cnn": {"shape": ("batch", 3, 32, 32), "dims": {"batch": (1, 8)}},
    "transformer": {"shape": ("batch", "seq", 32), "dims": {"batch": (1, 8), "seq": (2, 16)}},
    "mlp": {"shape": ("batch", 64), "dims": {"batch": (1, 8)}},
}
