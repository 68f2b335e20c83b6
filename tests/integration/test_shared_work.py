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


# ------------------------------------------------------------------------- no cache, no hashing


class TwoLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(6, 8)
        self.b = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def make_two_layers():
    torch.manual_seed(0)
    return TwoLayers().eval()


@pytest.mark.parametrize("backend", ["state_dict", "pickle", "trace", "script", "export", "onnx"])
def test_without_a_cache_the_weights_are_never_hashed(monkeypatch, backend):
    """With no cache (verify()'s default, --deploy-no-cache) no key is looked up, so no weight is hashed: the
    model digest and the exported program's fingerprint are never called (each would raise here)."""
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    from pytest_deploy import cache, fingerprint

    def refuse(*args, **kwargs):
        raise AssertionError("the weights were hashed without a cache")

    monkeypatch.setattr(fingerprint, "model_digest", refuse)
    monkeypatch.setattr(cache, "program_fingerprint", refuse)
    model = make_two_layers()
    result = verify(model, backend, factory=make_two_layers, inputs=[tensor("batch", 6)], dims={"batch": (1, 3)},
                    examples=2, isolate="none")
    assert result.outcome == "passed"
    assert "cache_key" not in result.details


def test_without_a_cache_an_export_is_still_shared_by_the_backends_of_one_model_and_redone_after_a_change():
    """The exported program is shared without hashing (the model object and its tensors' version counters),
    and a change to the weights in place makes a new export."""
    model = make_two_layers()
    kw = dict(inputs=[tensor("batch", 6)], dims={"batch": (1, 3)}, examples=1, isolate="none")
    first = verify(model, "export", **kw)
    again = verify(model, "export", **kw)
    with torch.no_grad():
        model.a.weight.mul_(2)
    changed = verify(model, "export", **kw)
    assert "exported_program" not in first.details
    assert again.details["exported_program"].startswith("reused")
    assert "exported_program" not in changed.details


# ------------------------------------------------------------------------- what a run leaves on disk

LEFT_BEHIND = """
import torch
from pytest_deploy import deployable, tensor


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(x)


class Leaky(torch.nn.Module):
    # float(x.sum()) becomes a constant when traced: any other input gives another output
    def forward(self, x):
        return x + float(x.sum())


INPUTS = dict(inputs=[tensor("batch", 6)], dims={"batch": (1, 3)}, examples=2)


@deployable(backends=["state_dict", "pickle", "trace", "export", "onnx"], **INPUTS)
def test_passes():
    return Net().eval()


@deployable(backends=["trace"], **INPUTS)
def test_leaks():
    return Leaky()
"""


def files_under(root) -> dict[str, int]:
    """Every file below ``root`` (relative path -> bytes)."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = os.path.getsize(path)
    return out


@pytest.mark.parametrize("keep", [False, True], ids=["default", "keep-passing"])
def test_passing_checks_leave_nothing_in_pytests_temp_dir_and_failing_ones_keep_their_artifact(pytester, keep):
    pytester.makepyfile(test_left=LEFT_BEHIND)
    basetemp = pytester.path / "basetemp"
    args = ["-p", "no:cacheprovider", f"--basetemp={basetemp}", "-p", "no:randomly"]
    result = pytester.runpytest(*args, *(["--deploy-keep-passing"] if keep else []))
    result.assert_outcomes(passed=5, failed=1)
    left = files_under(basetemp)
    passing = {p: n for p, n in left.items() if "test_passes" in p}
    failing = {p: n for p, n in left.items() if "test_leaks" in p}
    assert any(p.endswith("model.pt") for p in failing)  # the failing trace check keeps its archive, as before
    if keep:
        for name in ("state_dict.pt", "model.pt", "model.pt2", "model.onnx", "model.sim.onnx"):
            assert any(p.endswith(name) for p in passing), (name, sorted(passing))
    else:
        assert passing == {}
        assert set(left) == set(failing)
