"""The ``tvm`` backend against a real Apache TVM (Relax): import, ``tvm.compile`` for llvm, ``export_library``,
load, and the Relax VM.

Models that pass (a CNN with BatchNorm, an MLP, a token encoder with a padding mask and dict outputs) are
checked with a dynamic batch (and sequence) dim, and a spy on the Relax VM proves that several sizes really
ran through the one compiled module. An op the exported-program importer lacks but the ONNX route converts
goes through the ONNX fallback, and the report says so; ops neither route converts fail at stage export
naming the aten op and the user's line. Two inputs sharing a batch dim declared ``(1, 2)``, which torch.export
gives a symbol each, go through the ONNX route as one symbol (the graph's dims named from the spec): after an
importer refusal, and after the exported program's import fails to compile; with the names dropped (the old
fallback) they fail, the message saying the model went through ONNX, or keeping the first error and one line
on the fallback's. A construct TVM 0.27 cannot lower with a symbolic dim (slicing a
fixed-size table to a dynamic length) fails at stage compile naming the operator and the clamped shape.
Targets: a JSON dict target compiles, a bad one fails at stage compile, and a CUDA target without a device
is unavailable (skipped through pytest, failed under ``--deploy-strict``).

Most checks call ``verify`` directly; a few run pytest through ``pytester`` for ``--deploy-tvm-target``, the
ini option, the summary table and the JSON report. Every model is tiny; importing and compiling one costs
one to three seconds.
"""

from __future__ import annotations

import importlib.util
import json
import re
import textwrap

import pytest

tvm = pytest.importorskip("tvm")

import helpers  # tests/integration/helpers.py
import torch
from torch import nn
from tvm.runtime.vm import VirtualMachine

from pytest_deploy import BackendUnavailable, Result, tensor, verify

HAS_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="the ONNX fallback needs onnx and onnxscript")


def site(source: str) -> str:
    return helpers.site(__file__, source)


def check(model: nn.Module, inputs, dims, **kwargs) -> tuple[Result, str | None]:
    """verify() on the tvm backend; the result, and the failure message (None when it passed)."""
    return helpers.check("tvm", model, inputs, dims, **kwargs)


@pytest.fixture(scope="module", autouse=True)
def tvm_imported():
    """Import, compile and run once through each importer before any test of this file, so that the lazily
    imported parts of TVM, torch.onnx and onnxscript are loaded before any ``pytester`` run: such a run drops
    the modules it imported, and the next would import them a second time in the same process."""
    verify(nn.Linear(4, 2).eval(), "tvm", inputs=[tensor("batch", 4)], dims={"batch": (1, 2)}, examples=1)
    if HAS_ONNX:
        verify(Histogram().eval(), "tvm", inputs=[tensor("batch", 4)], dims={"batch": (1, 2)}, examples=1)


@pytest.fixture
def vm_runs(monkeypatch):
    """Every call of a loaded Relax VM's function in the test: one ``((dtype, shape), ...)`` per call."""
    runs = []
    real = VirtualMachine.__getitem__

    def getitem(self, name):
        function = real(self, name)

        def call(*args):
            runs.append(tuple((str(a.dtype), tuple(int(d) for d in a.shape)) for a in args))
            return function(*args)

        return call

    monkeypatch.setattr(VirtualMachine, "__getitem__", getitem)
    return runs


def sizes(runs, arg: int, axis: int) -> set[int]:
    return {run[arg][1][axis] for run in runs}


# ---------------------------------------------------------------------------------------- models


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 5)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.head(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


def trained_cnn() -> SmallCNN:
    """BatchNorm with running statistics that are not the identity (as after training)."""
    torch.manual_seed(0)
    model = SmallCNN()
    model.bn.running_mean.uniform_(-0.5, 0.5)
    model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.GELU(), nn.LayerNorm(16), nn.Linear(16, 3)).eval()


class TokenEncoder(nn.Module):
    """Token embedding + learned positions + a transformer encoder that ignores padded tokens, mean-pooled
    into logits. Position 0 is never padding, so every row attends to something."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(50, 8)
        self.pos = nn.Parameter(torch.randn(16, 8) * 0.1)
        layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(8, 2)

    def positions(self, seq):
        return self.pos[torch.arange(seq)]  # gathered: the rows' shape is (seq, 8)

    def forward(self, tokens, padding):
        seq = tokens.shape[1]
        padding = padding & (torch.arange(seq) > 0)
        h = self.encoder(self.embed(tokens) + self.positions(seq), src_key_padding_mask=padding)
        keep = (~padding).unsqueeze(-1).to(h.dtype)
        return {"tokens": h, "logits": self.head((h * keep).sum(1) / keep.sum(1))}


class SlicedPositions(TokenEncoder):
    """The common way to write it: slice the table. The slice's shape is min(seq, 16), not seq."""

    def positions(self, seq):
        return self.pos[:seq]


class Histogram(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x), torch.histc(x, bins=4, min=-1.0, max=1.0)


class HistogramOfSum(nn.Module):
    """Two inputs sharing the batch dim (added together) and an op only the ONNX route converts."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 3)

    def forward(self, x, y):
        return self.fc(x) + y, torch.histc(x, bins=4, min=-1.0, max=1.0)


class Conditioned(nn.Module):
    """Features plus a class embedding, each input with the batch dim (as a DiT adds its timestep and class
    embeddings). Declared ``batch: (1, 2)``, torch 2.13's export gives each input's batch its own symbol."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 4)
        self.classes = nn.Embedding(10, 4)

    def forward(self, x, label):
        return self.fc(x) + self.classes(label)


class Eigen(nn.Module):
    def forward(self, x):
        return torch.linalg.eigvals(x).real


class Spectrum(nn.Module):
    def forward(self, x):
        return torch.fft.fft(x).abs()


class Erfinv(nn.Module):
    def forward(self, x):
        return torch.special.erfinv(x * 0.9)


BATCH = [tensor("batch", 4)]
SHARED = [tensor("batch", 4), tensor("batch", 3)]
CONDITIONED = [tensor("batch", 4), tensor("batch", dtype=torch.int64, low=0, high=10)]
PAIR = {"batch": (1, 2)}
TOKENS = [tensor("batch", "seq", dtype=torch.int64, low=0, high=50), tensor("batch", "seq", dtype=torch.bool)]
SEQ_DIMS = {"batch": (1, 4), "seq": (2, 6)}


# ----------------------------------------------------------------------- models that deploy


def test_cnn_with_batchnorm_passes_at_several_batch_sizes(vm_runs):
    result, message = check(trained_cnn(), [tensor("batch", 3, 8, 8)], {"batch": (1, 6)})
    assert message is None and result.passed
    assert result.examples >= 5 and result.max_abs_error <= 1e-4
    assert result.details["tvm_importer"] == "exported_program" and result.details["tvm_target"] == "llvm"
    assert "tvm_importer_refusal" not in result.details
    # one compiled module, several batch sizes
    batches = sizes(vm_runs, 0, 0)
    assert len(batches) >= 3 and batches <= set(range(1, 7))
    assert {run[0][1][1:] for run in vm_runs} == {(3, 8, 8)}


def test_mlp_with_a_dynamic_batch_passes_at_several_batch_sizes(vm_runs):
    result, message = check(mlp(), BATCH, {"batch": (1, 32)}, examples=6)
    assert message is None and result.passed
    assert result.examples >= 6 and result.max_abs_error <= 1e-4
    batches = sizes(vm_runs, 0, 0)
    assert len(batches) >= 3 and batches <= set(range(1, 33))
    assert set(result.timings) >= {"build", "load", "run"}


def test_token_encoder_with_padding_mask_passes_across_batch_and_sequence(vm_runs):
    result, message = check(TokenEncoder(), TOKENS, SEQ_DIMS)
    assert message is None and result.passed
    assert result.max_abs_error <= 1e-4
    assert result.details["tvm_importer"] == "exported_program"
    # integer tokens and a bool mask fed as such, at several (batch, seq) shapes of the one module
    assert {(run[0][0], run[1][0]) for run in vm_runs} == {("int64", "bool")}
    assert all(run[0][1] == run[1][1] for run in vm_runs)
    assert len(sizes(vm_runs, 0, 0)) >= 3 and len(sizes(vm_runs, 0, 1)) >= 3


# ------------------------------------------------------------- a construct TVM cannot lower


def test_positions_sliced_to_a_dynamic_length_fail_at_compile_naming_the_operator_and_shape():
    """TVM 0.27 types ``table[:seq]`` as ``min(max(seq, 0), 16)`` rows, cannot prove that equals ``seq``
    (it ignores the dim's upper bound here), so the broadcast add has no known shape, ``LegalizeOps``
    leaves it and everything after it, and VM codegen refuses."""
    result, message = check(SlicedPositions(), TOKENS, SEQ_DIMS)
    assert result.stage == "compile"
    assert message.startswith("tvm: stage compile: tvm.compile fails for target llvm: ")
    assert "CodeGenVM cannot emit this Relax operator directly" in message
    assert "\n  Relax operators left unlowered (no TIR for these shapes): relax.add, " in message
    # the first unlowered operator, with its operands' shapes in the spec's dim names
    assert ("\n  the first, whose output shape TVM could not infer: relax.add("
            'R.Tensor((batch, seq, 8), dtype="float32"), R.Tensor((T.min(') in message
    assert "gather the rows instead (table[torch.arange(seq)])" in message
    assert "\n  fix: try static dims (min == max) for this model, or another TVM version\n" in message
    if HAS_ONNX:  # the ONNX route is tried too, and fails: one line on why
        assert message.splitlines()[-1].startswith("  the ONNX fallback fails too: TVM's ONNX frontend: ")
    assert "tvm_fallback" not in result.details


def test_positions_sliced_to_a_static_length_pass_with_a_dynamic_batch(vm_runs):
    static = [tensor("batch", 5, dtype=torch.int64, low=0, high=50), tensor("batch", 5, dtype=torch.bool)]
    result, message = check(SlicedPositions(), static, {"batch": (1, 4)})
    assert message is None and result.passed
    assert result.max_abs_error <= 1e-4
    assert len(sizes(vm_runs, 0, 0)) >= 3 and sizes(vm_runs, 0, 1) == {5}


# ---------------------------------------------------------------------------------- importers


@needs_onnx
def test_an_op_only_the_onnx_route_converts_passes_through_the_fallback(vm_runs):
    result, message = check(Histogram(), BATCH, {"batch": (1, 6)})
    assert message is None and result.passed
    assert result.max_abs_error <= 1e-4
    refused = "torch.export import failed: TVM's exported-program importer has no conversion for aten.histc.default"
    assert result.details["tvm_importer"] == f"onnx (fallback: {refused})"
    assert result.details["tvm_fallback"] == f"tvm: imported through ONNX ({refused})"
    refusal = result.details["tvm_importer_refusal"]
    assert refusal.startswith("TVM's exported-program importer has no conversion for aten.histc.default\n")
    assert f"aten.histc.default at {site('return self.fc(x), torch.histc(x, bins=4, min=-1.0, max=1.0)')}" in refusal
    # the ONNX graph keeps the batch dynamic: one module, several batch sizes
    assert len(sizes(vm_runs, 0, 0)) >= 3


@pytest.fixture
def onnx_imports(monkeypatch):
    """Every Relax module TVM's ONNX frontend returns during the test."""
    from tvm.relax.frontend import onnx as frontend

    modules = []
    real = frontend.from_onnx

    def from_onnx(*args, **kwargs):
        modules.append(real(*args, **kwargs))
        return modules[-1]

    monkeypatch.setattr(frontend, "from_onnx", from_onnx)
    return modules


def batch_symbols(module) -> list:
    """The first dim of each input of ``main``, as the module holds it."""
    return [param.ty.shape.values[0] for param in module["main"].params]


@pytest.fixture
def unnamed_onnx_dims(monkeypatch):
    """The ONNX export as it was before it named the graph's dims from the spec: torch.export's symbols."""
    from pytest_deploy.backends import onnx_export

    monkeypatch.setattr(onnx_export, "name_dynamic_axes", lambda onnx_program, space: None)


HISTC_REFUSED = "TVM's exported-program importer has no conversion for aten.histc.default"
SPLIT = r"batch is 2 symbols \((s\d+), (s\d+)\)"


@needs_onnx
def test_two_inputs_sharing_the_batch_dim_pass_through_the_onnx_fallback_as_one_symbol(vm_runs, onnx_imports):
    """torch.export gives each input's batch (declared (1, 2)) its own symbol; the ONNX graph names both
    ``batch`` from the spec, so TVM's ONNX frontend makes them one symbol and the sum compiles."""
    result, message = check(HistogramOfSum(), SHARED, PAIR, examples=3)
    assert message is None and result.passed
    assert result.max_abs_error <= 1e-4
    assert result.details["tvm_importer"] == f"onnx (fallback: torch.export import failed: {HISTC_REFUSED})"
    assert result.details["tvm_fallback"] == f"tvm: imported through ONNX (torch.export import failed: {HISTC_REFUSED})"
    assert result.details["tvm_importer_refusal"].startswith(HISTC_REFUSED + "\n")
    assert "tvm_compile_failure" not in result.details
    (module,) = onnx_imports
    x, y = batch_symbols(module)
    assert x.same_as(y) and str(x) == "batch"
    assert sizes(vm_runs, 0, 0) == {1, 2} and all(run[0][1][0] == run[1][1][0] for run in vm_runs)


@needs_onnx
def test_with_the_dim_names_dropped_the_fallback_fails_at_compile_and_the_message_says_it_went_through_onnx(
        unnamed_onnx_dims):
    """The fallback as it was: the ONNX graph keeps torch.export's two symbols, TVM cannot prove the sum's
    operands have one batch, and the failure says the model went through the ONNX route."""
    result, message = check(HistogramOfSum(), SHARED, PAIR, examples=2)
    assert result.stage == "compile"
    first, second = message.splitlines()[:2]
    assert first.startswith("tvm: stage compile: tvm.compile fails for target llvm: ")
    assert second == f"  tvm: imported through ONNX (torch.export import failed: {HISTC_REFUSED})"
    assert re.search(rf"\n  {SPLIT} that TVM cannot prove equal: torch.export gave a dim shared by several inputs "
                     "a symbol per input\n", message)
    assert result.details["tvm_fallback"] == second.strip()


@needs_onnx
def test_what_the_exported_program_import_cannot_compile_for_a_dynamic_dim_passes_through_the_onnx_fallback(
        vm_runs, onnx_imports):
    result, message = check(Conditioned(), CONDITIONED, PAIR, examples=3)
    assert message is None and result.passed
    assert result.max_abs_error <= 1e-4
    # the exported-program route imported, did not compile, and says why
    assert result.details["tvm_compile_failure"].startswith("tvm.compile fails for target llvm: ")
    m = re.fullmatch(rf"tvm: imported through ONNX \(torch.export import does not compile: relax.add left unlowered: "
                     rf"{SPLIT} that TVM cannot prove equal\)", result.details["tvm_fallback"])
    assert m, result.details["tvm_fallback"]
    reason = result.details["tvm_fallback"].removeprefix("tvm: imported through ONNX (")
    assert result.details["tvm_importer"] == f"onnx (fallback: {reason}"
    assert "tvm_importer_refusal" not in result.details
    # the first unlowered operator names both symbols, not two dims that read the same
    assert (f'relax.add(R.Tensor((batch, 4), dtype="float32"), R.Tensor(({m.group(2)}, 4), dtype="float32"))'
            in result.details["tvm_compile_failure"])
    (module,) = onnx_imports
    x, label = batch_symbols(module)
    assert x.same_as(label)
    assert sizes(vm_runs, 0, 0) == {1, 2}


@needs_onnx
def test_when_the_onnx_fallback_fails_too_the_first_compile_error_is_kept_and_the_fallback_is_one_line(
        unnamed_onnx_dims):
    result, message = check(Conditioned(), CONDITIONED, PAIR, examples=2)
    assert result.stage == "compile"
    lines = message.splitlines()
    assert lines[0].startswith("tvm: stage compile: tvm.compile fails for target llvm: ")
    assert lines[-2] == "  fix: try static dims (min == max) for this model, or another TVM version"
    assert re.fullmatch(rf"  the ONNX fallback fails too: relax.add left unlowered: {SPLIT} that TVM cannot prove "
                        "equal", lines[-1]), lines[-1]
    assert "tvm_fallback" not in result.details and "imported through ONNX" not in message
    assert result.details["tvm_compile_failure"] in message


@needs_onnx
def test_a_library_from_the_cache_keeps_how_it_was_imported(tmp_path):
    spec = dict(inputs=CONDITIONED, dims=PAIR, examples=2, cache_dir=tmp_path, isolate="none")
    built = verify(Conditioned().eval(), "tvm", **spec)
    loaded = verify(Conditioned().eval(), "tvm", recheck=True, **spec)  # the library, not the passing result
    assert built.passed and not built.cached and loaded.passed and loaded.cached
    assert loaded.timings["build"] < built.timings["build"]
    for key in ("tvm_importer", "tvm_compile_failure", "tvm_fallback"):
        assert loaded.details[key] == built.details[key]


@needs_onnx
@pytest.mark.parametrize("model, inputs, ops, source, fallback", [
    pytest.param(Eigen(), [tensor("batch", 3, 3)], ["aten.linalg_eig.default", "aten.view_as_real.default"],
                 "return torch.linalg.eigvals(x).real", "torch.onnx cannot convert aten.linalg_eig: ", id="eigvals"),
    pytest.param(Spectrum(), [tensor("batch", 8)], ["aten._fft_r2c.default"], "return torch.fft.fft(x).abs()",
                 "TVM's ONNX frontend: OpNotImplemented: The following operators are not supported for frontend ONNX: "
                 "DFT", id="fft"),
    pytest.param(Erfinv(), BATCH, ["aten.erfinv.default"], "return torch.special.erfinv(x * 0.9)",
                 "torch.onnx cannot convert prims.erf_inv: ", id="erfinv"),
])
def test_an_op_neither_importer_converts_fails_at_export_naming_the_aten_op_and_the_users_line(
        model, inputs, ops, source, fallback):
    result, message = check(model, inputs, {"batch": (1, 4)}, examples=2)
    assert result.stage == "export"
    assert message.startswith(f"tvm: stage export: TVM's exported-program importer has no conversion for "
                              f"{', '.join(ops)}\n")
    # each op the importer names (from the program it decomposed) is located in the user's source
    for op in ops:
        assert f"\n  {op} at {site(source)}\n" in message
    assert "fix: rewrite those calls with supported ops, or register a custom_convert_map for them" in message
    assert f"\n  the ONNX fallback fails too: {fallback}" in message
    assert result.details["tvm_importer_refusal"] in message
    assert "tvm_importer" not in result.details


# -------------------------------------------------------------------------------------- targets


def test_a_json_target_dict_is_accepted(vm_runs):
    target = '{"kind": "llvm", "opt-level": 3}'
    result, message = check(mlp(), BATCH, {"batch": (1, 8)}, examples=4, backend_options={"tvm_target": target})
    assert message is None and result.passed
    assert result.details["tvm_target"] == "llvm"
    assert len(sizes(vm_runs, 0, 0)) >= 3


@pytest.mark.parametrize("target, why", [
    ("nonsense", 'Target kind "nonsense" is not defined'),
    ("llvm -mcpu=native", 'CLI target string form (e.g. "llvm -mcpu=xxx") is no longer supported'),
], ids=["unknown-kind", "cli-string"])
def test_a_target_tvm_cannot_parse_fails_at_compile_naming_it(target, why):
    result, message = check(mlp(), BATCH, {"batch": (1, 4)}, examples=2, backend_options={"tvm_target": target})
    assert result.stage == "compile"
    assert message.startswith(f"tvm: stage compile: TVM cannot parse target {target!r}: ValueError: ")
    assert why in message
    assert message.endswith("""fix: pass a target kind such as llvm or cuda, or a JSON dict like """
                            """'{"kind": "llvm", "mcpu": "native"}'""")


no_cuda = pytest.mark.skipif(tvm.cuda(0).exist, reason="a CUDA device is visible: the CUDA target is available")


@no_cuda
@pytest.mark.parametrize("target", ["cuda", '{"kind": "cuda"}'])
def test_a_cuda_target_without_a_device_is_unavailable(target):
    with pytest.raises(BackendUnavailable) as info:
        verify(mlp(), "tvm", inputs=BATCH, dims={"batch": (1, 4)}, backend_options={"tvm_target": target})
    assert str(info.value) == (
        f"tvm: target {target!r} needs a CUDA device, but no CUDA device is visible here (cuda:0 does not exist); "
        "run on a machine with one, or choose a CPU target (--deploy-tvm-target=llvm)")


def test_without_a_compiler_to_link_with_tvm_is_unavailable(monkeypatch):
    """export_library links with the system compiler: without one the check is skipped with the reason, instead of
    failing at save with a TypeError from inside TVM."""
    import shutil

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(BackendUnavailable, match=r"tvm: export_library links .* with a C/C\+\+ compiler, and none is on "
                                                 r"PATH .*apt-get install g\+\+"):
        verify(mlp(), "tvm", inputs=BATCH, dims={"batch": (1, 4)})


# -------------------------------------------------------------------------------- through pytest

PRELUDE = """\
import torch
from torch import nn

from pytest_deploy import deployable, tensor


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.GELU(), nn.Linear(16, 3)).eval()


class Eigen(nn.Module):
    def forward(self, x):
        return torch.linalg.eigvals(x).real


class Conditioned(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 4)
        self.classes = nn.Embedding(10, 4)

    def forward(self, x, label):
        return self.fc(x) + self.classes(label)

"""

MLP_TEST = """
    @deployable(backends=["tvm"], inputs=[tensor("batch", 4)], dims={"batch": (1, 8)}, examples=4)
    def test_mlp():
        return mlp()
"""


def run_with_report(pytester, source: str, *args: str):
    pytester.makepyfile(PRELUDE + textwrap.dedent(source))
    result = pytester.runpytest("-p", "no:cacheprovider", "--deploy-report=report.json", "-rs", *args)
    report = json.loads((pytester.path / "report.json").read_text())
    return result, report, {r["test"].split("::")[-1]: r for r in report["results"]}


def test_pytest_run_with_the_target_option(pytester):
    result, report, entries = run_with_report(pytester, MLP_TEST + """
    @deployable(backends=["tvm"], inputs=[tensor("batch", 3, 3)], dims={"batch": (1, 4)}, examples=2)
    def test_eigen():
        return Eigen()
    """, "--deploy-tvm-target=llvm")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "tvm: stage export: TVM's exported-program importer has no conversion for aten.linalg_eig.default, "
        "aten.view_as_real.default",
        "*aten.linalg_eig.default at test_pytest_run_with_the_target_option.py:*  "
        "`return torch.linalg.eigvals(x).real`",
    ])
    result.stdout.fnmatch_lines(["*pytest-deploy summary*", "*test_mlp*PASS*", "*test_eigen*FAIL(export)*"])
    assert report["environment"]["tvm"].startswith(tvm.__version__.split(".post")[0])
    mlp_entry = entries["test_mlp"]
    assert mlp_entry["backend"] == "tvm" and mlp_entry["outcome"] == "passed" and mlp_entry["examples"] >= 4
    assert mlp_entry["details"]["tvm_target"] == "llvm"
    assert mlp_entry["details"]["tvm_importer"] == "exported_program"
    assert mlp_entry["timings"]["build"] > 0
    eigen = entries["test_eigen"]
    assert eigen["stage"] == "export" and "aten.linalg_eig.default at " in eigen["details"]["tvm_importer_refusal"]


@needs_onnx
def test_the_json_report_of_a_pass_through_the_onnx_fallback_says_so(pytester):
    result, _, entries = run_with_report(pytester, """
    @deployable(backends=["tvm"], inputs=[tensor("batch", 4), tensor("batch", dtype=torch.int64, low=0, high=10)],
                dims={"batch": (1, 2)}, examples=2)
    def test_conditioned():
        return Conditioned().eval()
    """)
    result.assert_outcomes(passed=1)
    entry = entries["test_conditioned"]
    assert entry["outcome"] == "passed" and entry["message"] is None
    assert entry["details"]["tvm_fallback"].startswith(
        "tvm: imported through ONNX (torch.export import does not compile: relax.add left unlowered: batch is 2 symbols")
    assert entry["details"]["tvm_importer"].startswith("onnx (fallback: torch.export import does not compile: ")


def test_pytest_run_with_a_target_tvm_cannot_parse(pytester):
    result, _, entries = run_with_report(pytester, MLP_TEST, "--deploy-tvm-target=nonsense")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*tvm: stage compile: TVM cannot parse target 'nonsense': ValueError: *",
                                 "*fix: pass a target kind such as llvm or cuda*"])
    result.stdout.fnmatch_lines(["*test_mlp*FAIL(compile)*"])
    assert entries["test_mlp"]["stage"] == "compile"


@no_cuda
def test_pytest_run_with_a_cuda_target_skips_and_fails_under_strict(pytester):
    pytester.makeini("[pytest]\ndeploy_tvm_target = cuda\n")
    reason = ("tvm: target 'cuda' needs a CUDA device, but no CUDA device is visible here (cuda:0 does not exist); "
              "run on a machine with one, or choose a CPU target (--deploy-tvm-target=llvm)")
    result, _, entries = run_with_report(pytester, MLP_TEST)
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines([f"SKIPPED * {reason}"])
    result.stdout.fnmatch_lines(["*test_mlp*SKIP*"])
    assert entries["test_mlp"]["outcome"] == "skipped" and entries["test_mlp"]["message"] == reason

    result = pytester.runpytest("-p", "no:cacheprovider", "--deploy-strict")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*{reason} (failing because of --deploy-strict)"])


# ------------------------------------------------------------------------------------ tuning


TUNING_SCRIPT = """
import json, sys, torch
from pytest_deploy import tensor, verify

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
spec = dict(inputs=[tensor(2, 16)], examples=4, cache_dir=sys.argv[1], backend_options={"tvm_tune": 4})
cold = verify(model, "tvm", **spec)
warm = verify(model, "tvm", recheck=True, **spec)  # run again (not reuse the passing result): the DB from the cache
print(json.dumps([cold.to_json(), warm.to_json()]))
"""


@pytest.mark.slow
def test_metaschedule_tuning_is_paid_once_then_the_database_comes_from_the_cache(tmp_path):
    """A real MetaSchedule run with a tiny budget (a minute or two here), then the same check again.

    In a fresh interpreter, as a user's script runs it. (It moved there when tuning in this suite's process took
    5 minutes: MetaSchedule imports TVM's tensor intrinsics, some 250 TVMScript functions each calling
    inspect.stack(), whose cost grows with the loaded modules; tvm_tuning now imports them with a cheap one.)"""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", TUNING_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    cold, warm = json.loads(run.stdout.strip().splitlines()[-1])
    assert cold["outcome"] == "passed" and cold["cached"] is False
    assert cold["details"]["tvm_tuning"].startswith("tuned ") and "kept in the cache" in cold["details"]["tvm_tuning"]
    assert cold["max_abs_error"] <= cold["atol"]
    records = list(tmp_path.rglob("database_tuning_record.json"))
    assert len(records) == 1 and records[0].read_text().strip()
    assert warm["outcome"] == "passed" and warm["cached"] is True
    assert warm["details"]["tvm_tuning"] == "database reused from the cache (4 trials)"


def test_tuning_a_model_whose_kernels_all_have_symbolic_dims_says_there_is_nothing_to_tune(tmp_path):
    model = torch.nn.Sequential(torch.nn.GELU(), torch.nn.Tanh()).eval()  # elementwise only: no static weight kernels
    result = verify(model, "tvm", inputs=[tensor("batch", 16)], dims={"batch": (1, 8)}, examples=3,
                    cache_dir=tmp_path, backend_options={"tvm_tune": 4})
    assert result.outcome == "passed" and result.cached is False
    assert result.details["tvm_tuning"].startswith("nothing to tune: MetaSchedule tunes static-shape kernels only")
