"""Three model families a newcomer would try first: a CNN classifier, a transformer encoder with a
padding mask, and a recurrent tagger. Plain PyTorch; nothing here knows about pytest-deploy."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Conv-BN-ReLU blocks, global pooling, a linear head: the shape of most image classifiers."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


class TextEncoder(nn.Module):
    """Token embedding + learned positions + a transformer encoder that ignores padded tokens.

    ``tokens`` is int64 (batch, seq); ``padding`` is bool (batch, seq), True where a token is padding.
    The first token is never treated as padding, so every row attends to something.
    """

    def __init__(self, vocab: int = 100, dim: int = 32, heads: int = 4, layers: int = 2, max_len: int = 64):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=64, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.classify = nn.Linear(dim, 2)

    def forward(self, tokens: torch.Tensor, padding: torch.Tensor) -> dict[str, torch.Tensor]:
        seq = tokens.shape[1]
        padding = torch.cat([torch.zeros_like(padding[:, :1]), padding[:, 1:]], dim=1)
        h = self.embed(tokens) + self.pos[:seq]
        h = self.norm(self.encoder(h, src_key_padding_mask=padding))
        keep = (~padding).unsqueeze(-1).to(h.dtype)
        pooled = (h * keep).sum(1) / keep.sum(1)
        return {"tokens": h, "logits": self.classify(pooled)}


class GRUTagger(nn.Module):
    """A bidirectional GRU over feature sequences with a per-step tag head."""

    def __init__(self, features: int = 8, hidden: int = 16, tags: int = 5):
        super().__init__()
        self.rnn = nn.GRU(features, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.tag = nn.Linear(2 * hidden, tags)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, last = self.rnn(x)
        return self.tag(out), last


class EarlyExitClassifier(nn.Module):
    """An early-exit network: a cheap head answers when it is confident, the deep path otherwise.

    The ``if`` on a tensor value is exactly what ``torch.jit.trace`` freezes: the traced model always
    takes the path the tracing input took. ``torch.jit.script`` keeps the branch.
    """

    def __init__(self, features: int = 16, classes: int = 4, threshold: float = 0.3):
        super().__init__()
        self.stem = nn.Linear(features, 32)
        self.quick = nn.Linear(32, classes)
        self.deep = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, classes))
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        quick = self.quick(h)
        if quick.softmax(-1).max(-1).values.min() > self.threshold:
            return quick
        return self.deep(h)
