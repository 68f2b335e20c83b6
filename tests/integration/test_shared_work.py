"""Issue 18: the work a model test's backends share is done once, and a passing run leaves little behind.

Each test counts what it is about (model builds, eager runs, digests, files on disk); none times anything.
"""

from __future__ import annotations

import os

import pytest
import torch

from pytest_deploy import mask, tensor, verify

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def tiny_bert():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=37, max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.BertModel._from_config(cfg, attn_implementation="eager").eval()


BERT_INPUTS = {"input_ids": tensor("batch", "seq", dtype=torch.int64, low=0, high=99),
               "attention_mask": mask("batch", "seq")}
BERT_DIMS = {"batch": (1, 2), "seq": (2, 8)}


# ------------------------------------------------------------------ the line-tracing decision (item 4)


def test_the_first_check_of_a_session_traces_the_lines_of_an_installed_models_files(tmp_path):
    """BertModel's classes live under site-packages: they count as user code only once the check registers
    them. The decision whether to trace lines must come after that, or the first check of a session says
    the model has no if/while (and the next one, with the files registered, says it has). The result-cache key
    covers those files too: the second check has the first one's key, and is reported from the cache."""
    from pytest_deploy import sources

    model = tiny_bert()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sources, "_MODEL_FILES", set())  # a fresh session: no model's files registered yet
        patch.setattr(sources, "_MODEL_PACKAGES", set())
        sources.is_user_file.cache_clear()
        try:
            first = verify(model, "state_dict", factory=tiny_bert, inputs=BERT_INPUTS, dims=BERT_DIMS, examples=1,
                           isolate="none", cache_dir=tmp_path)
            second = verify(model, "state_dict", factory=tiny_bert, inputs=BERT_INPUTS, dims=BERT_DIMS, examples=1,
                            isolate="none", cache_dir=tmp_path)
        finally:
            sources.is_user_file.cache_clear()
    sources.is_user_file.cache_clear()  # what the restored registry says
    assert first.details["branch_recording"] == "tensor conversions and if/while outcomes"
    assert second.cached and "reused" in second.details
    assert second.details["branch_recording"] == first.details["branch_recording"]
