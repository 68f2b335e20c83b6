"""Inputs as real models take them: padding masks, keyword arguments, bounds that follow a dim; and the
verdicts that depend on them (masked comparison, vacuous checks, seeded factories, pointers)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings

import pytest
import torch
from helpers import check  # tests/integration/helpers.py
from torch import nn

from pytest_deploy import DeployFailure, InputWarning, SpecError, mask, tensor, verify
from pytest_deploy.backends import get_backend

VOCAB = 20


class MaskedPool(nn.Module):
    """Token embeddings, a masked attention-like mix over the sequence, and masked mean pooling.

    At a padding position the attention row sees no valid key, so its output is whatever the runtime makes
    of an all-masked softmax row (eager: the uniform mix over padding, after -inf + finfo.min arithmetic):
    garbage that real inputs never read. The pooled output ignores padding by construction."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 8)
        self.q = nn.Linear(8, 8)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                positions: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        h = self.emb(input_ids)
        valid = attention_mask != 0
        scores = self.q(h) @ h.transpose(1, 2)
        # keys masked; a query at a padding position masks itself too (as causal + padding masks do)
        both = valid[:, None, :] & valid[:, :, None]
        scores = scores.masked_fill(~both, -1e9)
        mixed = scores.softmax(-1) @ h
        # a float count: TVM 0.27 cannot compile clamp_min on an integer tensor ("Cannot convert infinity to BigInt")
        pooled = (mixed * valid[..., None]).sum(1) / valid.sum(1, keepdim=True).to(mixed.dtype).clamp_min(1.0)
        out = {"hidden": mixed, "pooled": pooled}
        if positions is not None:
            out["picked"] = mixed[torch.arange(mixed.shape[0]), positions]
        return out


IDS = tensor("batch", "seq", dtype=torch.int64, low=0, high=VOCAB)
DIMS = {"batch": (1, 3), "seq": (2, 6)}


# ------------------------------------------------------------------------------ dict inputs, every backend


@pytest.mark.parametrize("backend", ["state_dict", "pickle", "trace", "script", "export", "onnx", "tvm"])
def test_dict_inputs_reach_forward_as_keywords_through_every_backend(backend):
    if get_backend(backend).unavailable_reason():
        pytest.skip(get_backend(backend).unavailable_reason())
    model = MaskedPool().eval()
    result, message = check(backend, model, {"attention_mask": mask("batch", "seq"), "input_ids": IDS}, DIMS,
                            factory=MaskedPool)
    assert message is None, message
    assert result.details["masked_outputs"] == {"output['hidden']": "attention_mask"} or backend in ("onnx", "tvm")
    left_out = result.details["masked_positions"]["left_out"]
    assert left_out > 0  # padding rows existed and were not compared


def test_an_unmasked_comparison_of_padding_rows_fails_where_the_masked_one_passes():
    """Padding positions get a filler that torch.jit.trace freezes (the sequence length as a Python number):
    the traced model differs from eager there and only there. Declared with mask(), those positions are left
    out and the check passes; with compare_masked=True it fails on them."""

    class Filler(MaskedPool):
        def forward(self, input_ids, attention_mask):
            h = self.q(self.emb(input_ids))
            valid = attention_mask[..., None].to(h.dtype)
            return h * valid + (1 - valid) * float(input_ids.shape[1])

    inputs = {"input_ids": IDS, "attention_mask": mask("batch", "seq", padding="left")}
    result, message = check("trace", Filler().eval(), inputs, DIMS)
    assert message is None, message
    assert result.details["masked_positions"]["left_out"] > 0
    _, message = check("trace", Filler().eval(), inputs, DIMS, compare_masked=True)
    assert message is not None and "stage branches: trace-frozen number" in message  # float() of the seq length


class StaticMaskHead(nn.Module):
    """Logits of 3 classes beside a 0/1 mask of 3 flags: the logits are per-example, not per-flag. At the 0
    flags they gain a number torch.jit.trace freezes (the count of 1 flags, as a Python float): the traced
    model is wrong there and only there."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x, flags):
        return self.fc(x) + (1 - flags) * float(flags.sum())


def test_an_output_beside_a_mask_whose_dims_cannot_vary_is_compared_in_full():
    """The mask's dims are (batch, 3): the logits' leading dims equal them on every example, by chance. A mask
    whose padding dim cannot vary cannot tell a per-token output from that, so the logits are compared at
    every position, and trace's wrong values at the 0 flags are caught (on the old code they were left out
    and the check passed)."""
    inputs = [tensor("batch", 4), mask("batch", 3)]
    result, message = check("trace", StaticMaskHead().eval(), inputs, {"batch": (1, 4)}, examples=6)
    assert message is not None and "output" in message, message
    assert "masked_outputs" not in result.details and "masked_positions" not in result.details
    assert result.details["unmasked_outputs"] == {"output": "mask 'flags': its last dim 3 cannot vary"}


class PoolAndClassify(MaskedPool):
    """Per-token hidden states (batch, seq, 8) and per-example logits of 3 classes (batch, 3)."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 3)

    def forward(self, input_ids, attention_mask):
        out = super().forward(input_ids, attention_mask)
        return {"hidden": out["hidden"], "logits": self.head(out["pooled"])}


def test_per_token_outputs_are_told_from_outputs_whose_dims_equal_the_masks_by_chance():
    """The canonical example has batch 2 and seq 3, so the (batch, 3) logits' leading dims equal the mask's
    there. Run beside another example whose mask dims differ, only the hidden states follow the mask: they
    are masked, the logits compared in full (the old code masked both, deciding on the one example)."""
    inputs = {"input_ids": IDS, "attention_mask": mask("batch", "seq")}
    result, message = check("export", PoolAndClassify().eval(), inputs, {"batch": (1, 3), "seq": (3, 6)})
    assert message is None, message
    assert result.details["masked_outputs"] == {"output['hidden']": "attention_mask"}
    assert "output['logits']" in result.details["unmasked_outputs"]
    assert "do not follow mask 'attention_mask'" in result.details["unmasked_outputs"]["output['logits']"]
    assert result.details["masked_positions"]["left_out"] > 0  # the hidden states' padding rows


def test_integer_bound_naming_a_dim_feeds_valid_positions():
    model = MaskedPool().eval()
    inputs = {"input_ids": IDS, "attention_mask": mask("batch", "seq", min_valid=2),
              "positions": tensor("batch", dtype=torch.int64, low=0, high="seq")}
    result, message = check("export", model, inputs, DIMS, examples=8)
    assert message is None, message


def test_dict_input_naming_no_parameter_is_refused_with_the_parameters():
    with pytest.raises(SpecError) as info:
        verify(MaskedPool().eval(), "trace", inputs={"input_ids": IDS, "mask": mask("batch", "seq")}, dims=DIMS)
    assert "'mask'" in str(info.value) and "input_ids, attention_mask, positions" in str(info.value)


def test_random_01_tensor_named_like_a_mask_warns_with_the_fix():
    inputs = {"input_ids": IDS, "attention_mask": tensor("batch", "seq", dtype=torch.int64, low=0, high=2)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # rows with no valid position may well fail: that is the point of the warning
        with contextlib.suppress(DeployFailure):
            verify(MaskedPool().eval(), "trace", inputs=inputs, dims=DIMS, examples=2, isolate="none")
    texts = [str(w.message) for w in caught if issubclass(w.category, InputWarning)]
    assert any("'attention_mask' looks like a padding mask" in t and "mask('batch', 'seq')" in t for t in texts)
    assert all("\n" not in t for t in texts)


# -------------------------------------------------------------------------------------- vacuous checks


class Vanishing(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.scale = scale

    def forward(self, x):
        return self.fc(x) * self.scale


def test_outputs_zero_on_every_example_fail_as_vacuous():
    _, message = check("trace", Vanishing(1e-30), [tensor("batch", 4)], {"batch": (1, 3)})
    assert message is not None
    assert message.startswith("trace: stage reference: vacuous check")
    assert "largest magnitude" in message and "initialise the weights" in message and "allow_vacuous=True" in message


def test_allow_vacuous_accepts_them():
    result, message = check("trace", Vanishing(1e-30), [tensor("batch", 4)], {"batch": (1, 3)}, allow_vacuous=True)
    assert message is None and result.outcome == "passed"


def test_ordinary_outputs_are_not_vacuous():
    _, message = check("trace", Vanishing(1.0), [tensor("batch", 4)], {"batch": (1, 3)})
    assert message is None


def test_outputs_no_input_changes_warn():
    class Constant(nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return self.bias * 1.0

    with pytest.warns(InputWarning, match="eager outputs were identical for every example"):
        verify(Constant().eval(), "trace", inputs=[tensor(4)], examples=4, isolate="none")


# ------------------------------------------------------------------------------------ seeded factories


def test_unseeded_factory_gives_the_same_weights_for_every_check(tmp_path):
    """A factory is called with the RNGs seeded (seeded_call): the same seed gives the same weights every time. The
    fresh instance of state_dict and checkpoint gets another seed than the model (fresh_seed), as a serving process
    builds its own instance, and the same one on every run."""
    built = []

    def factory():
        model = nn.Linear(4, 4)
        built.append(model.weight.detach().clone())
        return model

    from pytest_deploy.context import seeded_call

    a = seeded_call(factory, 7)
    b = seeded_call(factory, 7)
    assert torch.equal(a.weight, b.weight)
    assert not torch.equal(seeded_call(factory, 8).weight, a.weight)
    from pytest_deploy.context import fresh_seed

    assert fresh_seed(7) == fresh_seed(7) != 7
    assert not torch.equal(seeded_call(factory, fresh_seed(7)).weight, a.weight)
    state = torch.random.get_rng_state()
    seeded_call(factory, 7)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG state is restored


# ------------------------------------------------------------------------------ temporary directories


def test_tvm_leaves_nothing_in_the_system_temp_dir():
    if get_backend("tvm").unavailable_reason():
        pytest.skip(get_backend("tvm").unavailable_reason())
    before = set(os.listdir(tempfile.gettempdir()))
    result, message = check("tvm", nn.Sequential(nn.Linear(4, 3)), [tensor("batch", 4)], {"batch": (1, 3)},
                            isolate="native", examples=2)
    assert message is None, message
    after = set(os.listdir(tempfile.gettempdir()))
    assert not {name for name in after - before if name.startswith("tmp")}, after - before


# ------------------------------------------------------------------------------- through pytest itself

UNSEEDED = """
import torch
from pytest_deploy import deployable, mask, tensor


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)  # random weights: the test sets no seed

    def forward(self, x, attention_mask):
        return self.fc(x) * attention_mask[..., None]


@deployable(backends=["trace", "state_dict"], inputs={"x": tensor("batch", "seq", 4),
            "attention_mask": mask("batch", "seq")}, dims={"batch": (1, 2), "seq": (1, 4)}, examples=3)
def test_unseeded():
    return Net().eval()
"""


def test_an_unseeded_form1_test_reuses_its_results_on_a_rerun(pytester, tmp_path):
    pytester.makepyfile(test_unseeded=UNSEEDED)
    args = (f"--deploy-cache-dir={tmp_path / 'cache'}", "--deploy-report=report.json", "-p", "no:cacheprovider")
    pytester.runpytest_subprocess(*args, timeout=240).assert_outcomes(passed=2)
    first = json.loads((pytester.path / "report.json").read_text())["results"]
    assert not any(r["cached"] for r in first)
    pytester.runpytest_subprocess(*args, timeout=240).assert_outcomes(passed=2)
    again = json.loads((pytester.path / "report.json").read_text())["results"]
    assert all(r["cached"] for r in again), again


@pytest.mark.parametrize("declaration, words", [
    ('inputs=[mask("batch", "seq")], dims={"batch": (1, 2), "seq": (0, 4)}', ["dim 'seq' can be 0", "(1, ...)"]),
    ('inputs=[mask("batch", "seq", min_valid=3)], dims={"batch": (1, 2), "seq": (2, 4)}',
     ["min_valid=3 is larger than 'seq''s lower bound 2"]),
    ('inputs=[tensor("batch", dtype=torch.int64, high="len")], dims={"batch": (1, 2)}',
     ["the bound 'len' is not a dim", "dims={'len': (min, max)}"]),
    ('inputs=[tensor("batch", 4)]', ["dim 'batch' used by inputs[0]", "is not bound", "dims={'batch': (min, max)}"]),
])
def test_bad_declarations_fail_at_collection_with_the_fix(pytester, declaration, words):
    pytester.makepyfile(test_bad=f"""
import torch
from pytest_deploy import deployable, mask, tensor

@deployable(backends=["trace", "export"], {declaration})
def test_model():
    return torch.nn.Identity()
""")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(errors=1)
    text = result.stdout.str()
    assert "INTERNALERROR" not in text
    for word in words:
        assert word in text, f"{word!r} missing from:\n{text}"
