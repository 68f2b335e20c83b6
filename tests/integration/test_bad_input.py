"""The bad-input corpus: every way a user can hand pytest-deploy something that cannot be checked.

Each case must end in a clear message (what is wrong, where, what to do), never in an INTERNALERROR and
never in a silent pass. Most cases call ``verify()`` in-process on the cheap backends (trace, export);
the ones that need the plugin (what a ``@deployable`` test returns, the marker's arguments) run a user
test file through ``pytester``. Each case asserts the key words of its message.

Cases (→ outcome, stage):
  the model
    1  a @deployable test returns None                          → failed: returned None
    2  a @deployable test returns a string                      → failed: not a torch.nn.Module
    3  a @deployable test returns a 3-tuple                     → failed: (model, example_inputs)
    4  verify() gets a plain function                           → SpecError: not a torch.nn.Module
    5  the factory returns something that is not a module       → DeployFailure at load
    6  a model on the meta device                               → SpecError before anything runs
  eager PyTorch is not a usable reference
    7  train mode with dropout                                  → run: nondeterministic, model.eval()
    8  randomness in forward                                    → run: nondeterministic, remove randomness
    9  BatchNorm left in train mode                             → run: buffers change, model.eval()
   10  forward updates a buffer in eval mode                    → run: names the buffer
   11  forward writes to its input in place                     → run: names the input, out-of-place ops
  outputs
   12  forward returns None                                     → run: no tensor to compare
   13  forward returns only a string, or an empty dataclass     → run: no tensor to compare
   14  a string among tensor outputs (trace, export)            → run: names the output path
   15  a custom object among the outputs                        → run: names the output path and type
   16  None among tensor outputs, traced                        → export: trace's own words, use export
   17  NaN in eager outputs                                     → run: which output, how many, low=/high=
   18  Inf in eager outputs                                     → run: which output, how many
   19  integer output that the backend changes                  → compare: integers must match exactly
   20  bool output that the backend changes                     → compare: bools must match exactly
  the spec against forward
   21  inputs= count does not fit forward                       → run: declared vs forward's arguments
   22  inputs= dtype does not fit forward                       → run: torch's error, the example, the fix
   23  keyword-only forward arguments                           → run: positional, drop the *
   24  forward taking **kwargs                                  → run: positional
   25  dims with min > max (verify)                             → SpecError: write (lo, hi)
   26  dims with min > max in the marker                        → collection error
   27  a dim used by inputs= but not bound                      → SpecError: add dims=
   28  no inputs declared                                       → SpecError
   29  an input that is neither a spec nor a tensor             → SpecError: names inputs[i]
   30  an example too large for memory                          → SpecError before allocation
  the declaration
   31  unknown backend name in verify()                         → SpecError: lists known backends
   32  unknown backend name in the marker                       → collection error
   33  an empty backends list (marker and decorator)            → collection error
   34  examples=0                                               → SpecError
   35  a negative tolerance                                     → SpecError
   36  a misspelt argument                                      → SpecError: lists known arguments
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import random
import textwrap

import pytest
import torch
from torch import nn

import pytest_deploy.check  # noqa: F401  (imported once, not by each pytester run)
from pytest_deploy import DeployFailure, SpecError, tensor, verify

BATCH = dict(inputs=[tensor("batch", 4)], dims={"batch": (1, 3)})


class Lambda(nn.Module):
    """A Linear(4, 4) whose forward is ``fn(self, x)``: one class for the many one-line models below."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fn(self, x)


def failure(model, backend="trace", **kwargs) -> DeployFailure:
    """verify() must fail; the DeployFailure, after checking its message starts with backend and stage."""
    kwargs = {**BATCH, "examples": 2, **kwargs}
    with pytest.raises(DeployFailure) as info:
        verify(model, backend, **kwargs)
    assert str(info.value).startswith(f"{backend}: stage {info.value.result.stage}: ")
    assert info.value.result.outcome == "failed"
    return info.value


def refusal(model, backend="trace", **kwargs) -> str:
    """verify() must refuse the declaration (SpecError); its message."""
    kwargs = {**BATCH, "examples": 2, **kwargs}
    with pytest.raises(SpecError) as info:
        verify(model, backend, **kwargs)
    return str(info.value)


def assert_words(message: str, *words: str) -> None:
    for word in words:
        assert word in message, f"{word!r} missing from:\n{message}"


def linear():
    torch.manual_seed(0)
    return nn.Linear(4, 4).eval()


# ------------------------------------------------------------------------------------- the plugin

PRELUDE = """
import pytest
import torch
from pytest_deploy import deployable, tensor


class Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)


INPUTS = dict(inputs=[tensor("batch", 4)], dims={"batch": (1, 3)}, examples=2)
"""


def run_user_file(pytester, body: str):
    """Run a user test file through the plugin; never an INTERNALERROR."""
    pytester.makepyfile(PRELUDE + textwrap.dedent(body))
    result = pytester.runpytest("-p", "no:cacheprovider")
    out = result.stdout.str() + result.stderr.str()
    assert result.ret != pytest.ExitCode.INTERNAL_ERROR and "INTERNALERROR" not in out, out
    return result, out


@pytest.mark.parametrize(("returned", "words"), [
    ("None", ["test_model[trace] returned None; a @deployable test must return the model",
               "(or (model, example_inputs))"]),
    ('"model"', ["trace: the test returned builtins.str, not a torch.nn.Module", "return the model"]),
    ("Linear(), torch.zeros(2, 4), 1", ["test_model[trace] returned a tuple of 3 items",
                                        "return the model, or (model, example_inputs)"]),
], ids=["none", "string", "three-tuple"])
def test_1_to_3_a_deployable_test_returning_something_else_fails_clearly(pytester, returned, words):
    result, out = run_user_file(pytester, f"""
        @deployable(backends=["trace"], **INPUTS)
        def test_model():
            return {returned}
    """)
    result.assert_outcomes(failed=1)
    assert_words(out, *words)
    assert "During handling of the above exception" not in out


def test_4_verify_of_something_that_is_not_a_module():
    message = refusal(lambda x: x * 2)
    assert_words(message, "returned builtins.function, not a torch.nn.Module", "return the model")


def test_5_a_factory_returning_something_that_is_not_a_module():
    exc = failure(linear(), "state_dict", factory=lambda: None)
    assert exc.result.stage == "load"
    assert_words(str(exc), "the factory returned builtins.NoneType, not a torch.nn.Module", "return the model")


def test_6_a_model_on_the_meta_device_is_refused_before_anything_runs(monkeypatch):
    model = nn.Linear(4, 4, device="meta").eval()
    monkeypatch.setattr(nn.Linear, "forward", lambda *a: pytest.fail("forward ran on a meta model"))
    message = refusal(model)
    assert_words(message, "returned a Linear on the meta device (weight, bias)", "no values",
                 "fix: materialise it with model.to_empty(device='cpu')", "load_state_dict")


# ------------------------------------------------------------------------- eager is not a reference


def test_7_train_mode_with_dropout_is_nondeterministic():
    model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5)).train()
    exc = failure(model)
    assert exc.result.stage == "run"
    assert_words(str(exc), "eager PyTorch is nondeterministic: two runs on the same input differ", "output [float32",
                 "fix: call model.eval() to turn dropout off")


def test_8_randomness_in_forward_is_nondeterministic():
    exc = failure(Lambda(lambda m, x: m.fc(x) + torch.rand_like(x)).eval())
    assert exc.result.stage == "run"
    assert_words(str(exc), "nondeterministic", "fix: seed or remove randomness in forward")


class Coin(nn.Module):
    def forward(self, x):
        return x * random.random()  # a new draw per call


def test_8_a_random_draw_in_forward_is_named_with_its_line_and_a_fix_that_fits():
    exc = failure(Coin().eval(), examples=3)
    assert exc.result.stage == "run"
    line = inspect.getsourcelines(Coin)[1] + 2
    assert_words(str(exc), "nondeterministic", f"random draw at tests/integration/test_bad_input.py:{line}  "
                 "`return x * random.random()", "fix: draw random numbers only in training (`if self.training:`)")


def test_9_batchnorm_left_in_train_mode_changes_its_buffers():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).train()
    exc = failure(model)
    assert exc.result.stage == "run"
    assert_words(str(exc), "forward changes the model's buffer(s) '1.running_mean', '1.running_var'",
                 "(Sequential in train mode)", "fix: call model.eval() before returning the model",
                 "BatchNorm in train mode updates its running statistics")


class Counting(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        return self.fc(x)


def test_10_forward_updating_a_buffer_in_eval_mode_names_the_buffer():
    # the outputs do not depend on the buffer: without this check the model would pass
    exc = failure(Counting().eval(), "export")
    assert exc.result.stage == "run"
    assert_words(str(exc), "forward changes the model's buffer(s) 'calls' on every call (Counting in eval mode)",
                 "a deployed artifact keeps the buffer's value from when it was built",
                 "fix: keep state out of forward")


def test_9_10_the_checkpoint_backend_may_train_a_model_in_train_mode():
    # not bad input: the checkpoint backend trains on purpose, and BatchNorm statistics move while it does
    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).train()

    result = verify(make(), "checkpoint", factory=make, inputs=[tensor("batch", 4)], dims={"batch": (2, 3)},
                    examples=2)
    assert result.passed


class InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x, scale):
        scale.mul_(2)
        return self.fc(x) * scale


def test_11_forward_writing_to_its_input_names_the_input():
    exc = failure(InPlace().eval(), "export", inputs=[tensor("batch", 4), tensor(4)])
    assert exc.result.stage == "run"
    assert_words(str(exc), "forward writes to its input 'scale' (float32[4]) in place",
                 "a deployed runtime does not write back to its inputs",
                 "fix: use out-of-place ops (x = x + 1 instead of x += 1 or x.add_(1))")
    assert "'x'" not in str(exc)


# ------------------------------------------------------------------------------------------ outputs


@dataclasses.dataclass
class Box:
    pass


class Opaque:
    """Not a dataclass, not a container: pytest-deploy cannot look inside."""


@pytest.mark.parametrize(("fn", "words"), [
    (lambda m, x: None, ["forward returns no tensor (output is None)", "nothing to compare",
                         "fix: return the tensors the deployed model computes"]),
    (lambda m, x: "positive", ["forward returns no tensor (output is 'positive')", "nothing to compare"]),
    (lambda m, x: Box(), ["forward returns no tensor (output is empty)", "nothing to compare"]),
], ids=["none", "string", "empty-dataclass"])
@pytest.mark.parametrize("backend", ["export", "state_dict"])
def test_12_13_forward_returning_no_tensor_never_passes(fn, words, backend):
    exc = failure(Lambda(fn).eval(), backend, factory=lambda: Lambda(fn).eval())
    assert exc.result.stage == "run"
    assert_words(str(exc), *words)


@pytest.mark.parametrize("backend", ["trace", "export"])
def test_14_a_string_output_names_its_path_for_graph_backends(backend):
    exc = failure(Lambda(lambda m, x: {"logits": m.fc(x), "label": "cat"}).eval(), backend)
    assert exc.result.stage == "run"
    assert_words(str(exc), "output['label'] is a str ('cat')", f"the {backend} artifact computes tensors only",
                 "fix: return tensors")


def test_14_a_string_output_is_compared_by_backends_that_run_the_python_class():
    def make():
        torch.manual_seed(0)
        return Lambda(lambda m, x: (m.fc(x), "cat")).eval()

    assert verify(make(), "state_dict", factory=make, examples=2, **BATCH).passed


def test_15_a_custom_object_among_the_outputs_names_its_path_and_type():
    exc = failure(Lambda(lambda m, x: (m.fc(x), Opaque())).eval())
    assert exc.result.stage == "run"
    assert_words(str(exc), "eager PyTorch returns an output pytest-deploy cannot compare",
                 f"output[1] is a {__name__}.Opaque",
                 "outputs must be tensors, Python numbers, or tuples, lists, dicts")


def test_16_none_among_traced_outputs_fails_at_export_with_the_alternative():
    exc = failure(Lambda(lambda m, x: (m.fc(x), None)).eval())
    assert exc.result.stage == "export"
    assert_words(str(exc), "Only tensors, lists, tuples of tensors, or dictionary of tensors",
                 "use script or export")


@pytest.mark.parametrize(("fn", "count"), [
    (lambda m, x: {"logp": torch.log(x), "y": m.fc(x)}, "output['logp'] has 5 NaN of 8 elements"),
    (lambda m, x: {"logp": m.fc(x), "y": x / (x > 0)}, "output['y'] has 5 Inf of 8 elements"),
], ids=["nan", "inf"])
def test_17_18_nan_or_inf_in_eager_outputs_says_where_and_how_many(fn, count):
    exc = failure(Lambda(fn).eval())
    assert exc.result.stage == "run"
    assert_words(str(exc), "eager PyTorch returns non-finite values on the first example", count,
                 "fix: restrict the inputs' value range with tensor(..., low=, high=)",
                 "first example:\n    x: float32[2, 4] range")


def test_17_18_intended_infinities_pass_with_allow_nonfinite_and_are_still_compared():
    masked = Lambda(lambda m, x: torch.where(x > 0, m.fc(x)[:, :1], torch.full_like(x[:, :1], -math.inf))).eval()
    spec = dict(inputs=[tensor("batch", 4)], dims={"batch": (1, 3)}, examples=3, isolate="none")
    assert verify(masked, "export", allow_nonfinite=True, **spec).passed
    with pytest.raises(DeployFailure, match="non-finite"):
        verify(masked, "export", **spec)

    class Frozen(torch.nn.Module):  # trace freezes where the -inf goes: the comparison still catches it
        def forward(self, x):
            mask = torch.zeros(x.shape[0], 1)
            mask[int(x.shape[0]) - 1:] = -math.inf
            return x[:, :1] + mask

    with pytest.raises(DeployFailure, match="stage branches: trace-frozen number at .*`mask\\[int\\(x.shape\\[0\\]\\)"):
        verify(Frozen().eval(), "trace", allow_nonfinite=True, **spec)


def test_17_a_positive_input_range_is_the_fix():
    # the fix the message gives works: log of inputs in [0.1, 2] is finite
    model = Lambda(lambda m, x: torch.log(x)).eval()
    assert verify(model, "trace", inputs=[tensor("batch", 4, low=0.1, high=2.0)], dims={"batch": (1, 3)},
                  examples=2).passed


def test_19_integer_outputs_must_match_exactly():
    # int() of a shape is frozen by tracing: other batch sizes return the traced size (blamed at the int() line,
    # stage branches, with the outputs' comparison below it)
    exc = failure(Lambda(lambda m, x: torch.zeros(x.shape[0], dtype=torch.long) + int(x.shape[0])).eval(),
                  examples=3)
    assert exc.result.stage == "branches" and "trace-frozen number" in str(exc)
    assert_words(str(exc), "outputs differ from eager PyTorch", "output [int64, shape (1,)]",
                 "(integer and bool outputs must match exactly)", "expected 1, got 2", "failing input")


def test_20_bool_outputs_must_match_exactly():
    exc = failure(Lambda(lambda m, x: (x[:, 0] * 0 + int(x.shape[0])) > 1.5).eval(), examples=3)
    assert exc.result.stage == "branches" and "trace-frozen number" in str(exc)
    assert_words(str(exc), "output [bool, shape (1,)]", "(integer and bool outputs must match exactly)",
                 "expected False, got True")


# --------------------------------------------------------------------------- the spec against forward


class Masked(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x, mask):
        return self.fc(x) * mask


def test_21_an_input_count_that_does_not_fit_forward():
    exc = failure(Masked().eval())
    assert exc.result.stage == "run"
    assert_words(str(exc), "inputs= declares 1 input(s) but Masked.forward takes 2 positional argument(s) (x, mask)",
                 "make inputs= match forward")


def test_22_a_dtype_that_does_not_fit_forward():
    exc = failure(nn.Embedding(10, 4).eval())
    assert exc.result.stage == "run"
    assert_words(str(exc), "eager PyTorch (the reference) fails on the first example", "Long, Int",
                 "fix: check that inputs= matches forward's arguments (count, dtypes, shapes)",
                 "first example:\n    input: float32[2, 4]")


class KeywordOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x, *, mask):
        return self.fc(x) * mask


class VarKeyword(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, **batch):
        return self.fc(batch["x"])


def test_23_keyword_only_forward_arguments():
    exc = failure(KeywordOnly().eval(), inputs=[tensor("batch", 4), tensor("batch", 4)])
    assert exc.result.stage == "run"
    assert_words(str(exc), "KeywordOnly.forward has keyword-only argument(s) mask",
                 "pytest-deploy passes inputs= positionally", "fix: make them positional (drop the *)")


def test_24_forward_taking_only_keyword_arguments():
    exc = failure(VarKeyword().eval())
    assert exc.result.stage == "run"
    assert_words(str(exc), "VarKeyword.forward takes its inputs as **batch", "passes inputs= positionally",
                 "fix: name the inputs as positional parameters of forward")


def test_25_dims_with_min_greater_than_max():
    message = refusal(linear(), dims={"batch": (8, 1)})
    assert_words(message, "dims['batch']=(8, 1): min > max; write (1, 8)")


@pytest.mark.parametrize("declaration", [
    '@deployable(backends=["trace"], inputs=[tensor("batch", 4)], dims={"batch": (8, 1)})\n'
    "def test_model():\n    return Linear()\n",
    '@pytest.mark.deployable(backends=["trace"], dims={"batch": (8, 1)})\n'
    "def test_model(deploy):\n    deploy(Linear(), inputs=[tensor('batch', 4)])\n",
], ids=["decorator", "marker"])
def test_26_dims_with_min_greater_than_max_in_the_declaration(pytester, declaration):
    result, out = run_user_file(pytester, declaration)
    result.assert_outcomes(errors=1)
    assert_words(out, "ERROR collecting", "dims['batch']=(8, 1): min > max; write (1, 8)")


def test_27_a_dim_that_is_not_bound():
    message = refusal(linear(), inputs=[tensor("batch", "width")], dims={"batch": (1, 3)})
    assert_words(message, "dim 'width' used by inputs[0] float32[batch, width]", "is not bound",
                 "add dims={'width': (min, max)}")


def test_28_no_inputs_declared():
    message = refusal(linear(), inputs=None, dims=None)
    assert_words(message, "no inputs declared", "pass inputs=[tensor(...), ...]", "(model, example_inputs)")


def test_29_an_input_that_is_neither_a_spec_nor_a_tensor():
    message = refusal(Masked().eval(), inputs=[tensor("batch", 4), [1.0, 0.0]])
    assert_words(message, "inputs[1] is list ([1.0, 0.0])", "each input must be tensor(...), mask(...), a torch.Tensor")


def test_30_an_example_too_large_for_memory_is_refused_before_allocation():
    # 10**12 x 4096 float32 elements could never be allocated: a SpecError proves nothing was
    message = refusal(Masked().eval(), inputs=[tensor("batch", 4096), tensor(4)], dims={"batch": (1, 10**12)})
    assert_words(message, "the largest example these inputs allow takes", "GiB of memory available",
                 "input 'x' float32[batch, 4096] in [-1, 1] alone takes", "at batch=1000000000000",
                 "refused before anything was allocated", "fix: lower the dims' upper bounds ('batch')")


# ---------------------------------------------------------------------------------- the declaration


def test_31_an_unknown_backend_name_in_verify():
    message = refusal(linear(), backend="onxx")
    assert_words(message, "unknown backend 'onxx'", "known backends:", "onnx [ort, onnxruntime]")


@pytest.mark.parametrize(("declaration", "words"), [
    ('@pytest.mark.deployable(backends=["trace", "torchscrpt"])\ndef test_model(deploy):\n    pass\n',
     ["unknown backend 'torchscrpt'", "known backends:", "script [torchscript-script]"]),
    ('@deployable(backends=["tensorrtt"], **INPUTS)\ndef test_model():\n    return Linear()\n',
     ["unknown backend 'tensorrtt'", "known backends:", "tensorrt [trt]"]),
    ('@pytest.mark.deployable(backends=[])\ndef test_model(deploy):\n    pass\n',
     ["backends=[] names no backend; list at least one, or omit it for all"]),
    ('@deployable(backends=[], **INPUTS)\ndef test_model():\n    return Linear()\n',
     ["backends=[] names no backend; list at least one, or omit it for all"]),
], ids=["unknown-marker", "unknown-decorator", "empty-marker", "empty-decorator"])
def test_32_33_unknown_or_empty_backends_in_the_declaration(pytester, declaration, words):
    result, out = run_user_file(pytester, declaration)
    result.assert_outcomes(errors=1)
    assert_words(out, "ERROR collecting", *words)


def test_34_examples_zero():
    assert_words(refusal(linear(), examples=0), "examples=0 must be a positive int")


def test_35_a_negative_tolerance():
    assert_words(refusal(linear(), atol=-1e-5), "atol=-1e-05 must be a non-negative number")


def test_36_a_misspelt_argument():
    assert_words(refusal(linear(), exampels=3), "unknown argument(s) exampels", "known: inputs, dims, examples")


# ------------------------------------------------------------------------- said once per model test


def test_a_mistake_in_the_declaration_is_said_once_per_model_test_and_warnings_point_at_the_test(pytester):
    """A dtype mistake fails eager PyTorch itself: the first backend's item says why in full, the model test's other
    items fail for the same reason in one line without running (it printed the same message once per backend). An
    input warning is issued once, at the user's test, not at a line inside pytest-deploy."""
    result, out = run_user_file(pytester, """
        @deployable(backends=["trace", "export", "state_dict"], inputs=[tensor("batch", 4, dtype=torch.int64)],
                    dims={"batch": (1, 3)}, examples=2)
        def test_wrong_dtype():
            return Linear().eval()

        class Masked(torch.nn.Module):
            def forward(self, x, attention_mask):
                return x * attention_mask

        @deployable(backends=["trace", "export"],
                    inputs=[tensor("batch", 4), tensor("batch", 4, dtype=torch.int64, low=0, high=2)],
                    dims={"batch": (1, 3)}, examples=2)
        def test_zero_one_input():
            return Masked()
    """)
    result.assert_outcomes(failed=3, passed=2)
    # the failures section only: where CI is set, pytest's short summary repeats each message in full
    failures = out.split("warnings summary", 1)[0]
    assert failures.count("fix: check that inputs= matches forward's arguments") == 1, out
    assert failures.count("fails for the same reason as this model test's trace check, before any backend runs") == 2
    warnings_part = out.split("warnings summary", 1)[1].split("-- Docs:", 1)[0]
    assert "pytest_deploy" not in warnings_part, warnings_part
    lines = [ln for ln in warnings_part.splitlines() if "InputWarning" in ln]
    assert len(lines) == 1 and "test_a_mistake_in_the_declaration" in lines[0], warnings_part
