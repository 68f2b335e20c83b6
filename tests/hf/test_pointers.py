"""Where failure messages point, on real model code: the innermost frame of the model's code that torch's own
traceback of the failing node names (transformers' files count as the model's code)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pytest_deploy import DeployFailure, mask, tensor, verify
from pytest_deploy.backends import get_backend


def test_onnx_export_error_points_at_the_line_of_the_node_that_failed():
    """This T5 fails torch.onnx's decomposition at the reshape of the attention output (modeling_t5.py's
    ``attn_output.reshape(...)``); the first aten.view of the graph is the query projection's, a line the
    failure has nothing to do with, which is where the message pointed before."""
    if get_backend("onnx").unavailable_reason():
        pytest.skip(get_backend("onnx").unavailable_reason())
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                   use_cache=False, decoder_start_token_id=0)
    model = transformers.T5Model(config).eval()
    inputs = {"input_ids": tensor("batch", "seq", dtype=torch.int64, low=0, high=99),
              "attention_mask": mask("batch", "seq"),
              "decoder_input_ids": tensor("batch", "dec", dtype=torch.int64, low=0, high=99)}
    with pytest.raises(DeployFailure) as info:
        verify(model, "onnx", inputs=inputs, dims={"batch": (1, 2), "seq": (2, 8), "dec": (1, 6)}, examples=2)
    message = str(info.value)
    assert message.startswith("onnx: stage export: torch.onnx cannot convert aten.view")
    at = next(line for line in message.splitlines() if line.strip().startswith("at "))
    assert "transformers/models/t5/modeling_t5.py:" in at
    assert "`attn_output = attn_output.reshape(*input_shape, -1).contiguous()`" in at
