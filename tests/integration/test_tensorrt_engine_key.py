"""The TensorRT engine's cache key is the same from any checkout (issue 26): the exporter writes the source file's
absolute path into node metadata (``pkg.torch.onnx.stack_trace``), which must not reach the key, while any real
change to the graph (a weight) must. Runs on CPU: only the export and the digest, no TensorRT."""

from __future__ import annotations

import importlib.util
import textwrap

import pytest

for _module in ("onnx", "onnxscript"):
    pytest.importorskip(_module)

import torch

from pytest_deploy.backends.onnx_export import onnx_digest

SOURCE = textwrap.dedent("""
    import torch
    from torch import nn


    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return torch.relu(self.fc(x)) * 2
""")


def _export(checkout, name: str, bump: float = 0.0) -> str:
    """``Block`` imported from ``checkout/model.py`` (a checkout of its own) and exported as the backend exports."""
    checkout.mkdir()
    (checkout / "model.py").write_text(SOURCE)
    spec = importlib.util.spec_from_file_location(name, checkout / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = module.Block().eval()
    with torch.no_grad():
        model.fc.bias.add_(bump)
    path = str(checkout / "model.onnx")
    program = torch.onnx.export(model, (torch.randn(2, 4),), dynamo=True, verbose=False)
    assert program is not None
    program.save(path)
    return path


def test_the_engine_key_does_not_depend_on_the_checkout_path(tmp_path):
    first = _export(tmp_path / "checkout_a", "block_a")
    second = _export(tmp_path / "checkout_b_longer_path", "block_b")
    assert str(tmp_path / "checkout_a") in open(first, "rb").read().decode("latin-1")  # the path is in the file
    assert onnx_digest(first) == onnx_digest(second)


def test_the_engine_key_changes_with_a_weight(tmp_path):
    assert onnx_digest(_export(tmp_path / "a", "block_w0")) != onnx_digest(_export(tmp_path / "b", "block_w1", 1.0))
