"""The ``onnx`` backend against real exporters and a real ONNX Runtime.

Models that pass (a CNN with BatchNorm, a transformer encoder with a padding mask, LSTM/GRU, an
embedding model on integer tokens, several inputs with dict outputs) are checked with dynamic
batch (and sequence) dims, and a spy on ``onnxruntime.InferenceSession.run`` proves that several
sizes really ran through the one exported graph, raw and simplified. Models that fail must fail at
the right stage with a message that locates the problem: the aten op and the user's line for an op
the exporter cannot convert, the node and op type for onnxruntime errors.

Most checks call ``verify`` directly (fast); a few run pytest through ``pytester`` for the
``--deploy-onnx-exporter``/``--deploy-onnx-opset`` options, the summary table and the JSON report.
Every model is tiny; exporting one costs about a second.
"""

from __future__ import annotations

import json
import os
import textwrap

import pytest

for _module in ("onnx", "onnxscript", "onnxsim", "onnxruntime"):
    pytest.importorskip(_module)

import helpers  # tests/integration/helpers.py
import numpy as np
import onnx
import onnxruntime
import onnxsim
import torch
import torch.onnx
from torch import nn

from pytest_deploy import Result, tensor, verify
from pytest_deploy.backends import onnx as onnx_backend

TORCHSCRIPT = {"onnx_exporter": "torchscript"}


def site(source: str) -> str:
    return helpers.site(__file__, source)


def check(model: nn.Module, inputs, dims, **kwargs) -> tuple[Result, str | None]:
    """verify() on the onnx backend; the result, and the failure message (None when it passed)."""
    return helpers.check("onnx", model, inputs, dims, **kwargs)


@pytest.fixture(scope="module", autouse=True)
def exporters_imported():
    """Export once with each exporter before any test of this file, so that the lazily imported parts of
    torch.onnx, onnxscript and onnxruntime are loaded before a ``pytester`` run could drop them."""
    for options in ({}, TORCHSCRIPT):
        verify(nn.Linear(4, 2).eval(), "onnx", inputs=[tensor("batch", 4)], dims={"batch": (1, 2)}, examples=1,
               backend_options=options)


@pytest.fixture
def ort_runs(monkeypatch):
    """Every ``InferenceSession.run`` on a saved graph in the test: ``(file name, {input: (dtype, shape)})``
    (onnxsim's own runs, on graphs in memory, are left out)."""
    runs = []
    real = onnxruntime.InferenceSession.run

    def run(self, output_names, input_feed, *args, **kwargs):
        if self._model_path:
            feeds = {name: (str(v.dtype), tuple(v.shape)) for name, v in input_feed.items()}
            runs.append((os.path.basename(self._model_path), feeds))
        return real(self, output_names, input_feed, *args, **kwargs)

    monkeypatch.setattr(onnxruntime.InferenceSession, "run", run)
    return runs


def sizes(runs, graph: str, name: str, axis: int) -> set[int]:
    return {feeds[name][1][axis] for model, feeds in runs if model == graph}


# ---------------------------------------------------------------------------------------- models


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = nn.functional.max_pool2d(x, 2)
        return self.head(x.flatten(1))


def trained_cnn() -> SmallCNN:
    """BatchNorm with running statistics that are not the identity (as after training)."""
    torch.manual_seed(0)
    model = SmallCNN()
    model.bn.running_mean.uniform_(-0.5, 0.5)
    model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


class Encoder(nn.Module):
    """A transformer encoder over padded sequences; position 0 (the CLS token) is never padding."""

    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)

    def forward(self, x, padding):
        padding = padding & (torch.arange(padding.shape[1]) > 0)
        return self.encoder(x, src_key_padding_mask=padding)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x, padding):
        return self.attn(x, x, x, key_padding_mask=padding, need_weights=False)[0]


class Recurrent(nn.Module):
    def __init__(self, cell: str):
        super().__init__()
        self.rnn = getattr(nn, cell)(4, 6, batch_first=True)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        out, state = self.rnn(x)
        return self.head(out), state


class Embedder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(50, 8)
        self.proj = nn.Linear(8, 4)

    def forward(self, ids):
        return self.proj(self.embedding(ids).mean(1))


class TwoInTwoOut(nn.Module):
    """Several inputs; dict outputs whose keys are not in sorted order and whose leaves share a shape,
    so that outputs paired in the wrong order would not pass."""

    def __init__(self):
        super().__init__()
        self.image = nn.Linear(4, 3)
        self.side = nn.Linear(2, 3)

    def forward(self, x, side):
        a, b = self.image(x), self.side(side)
        return {"z_image": a, "a_meta": b, "fused": {"sum": (a * b).sum(-1)}}


class Eigen(nn.Module):
    def forward(self, x):
        return torch.linalg.eigvals(x).real


class Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        if x.mean() > 0:
            return self.fc(x)
        return self.fc(-x)


class NumpyExp(torch.autograd.Function):
    """A custom autograd Function whose forward leaves torch for numpy."""

    @staticmethod
    def forward(ctx, x):
        return torch.from_numpy(np.exp(x.detach().numpy()))

    @staticmethod
    def backward(ctx, grad):
        return grad


class NumpyHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return NumpyExp.apply(self.fc(x))


class Int16Activations(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        q = (self.fc(x) * 100).to(torch.int16)
        return torch.relu(q)


class Int16Gram(nn.Module):
    def forward(self, x):
        q = x.to(torch.int16)
        return q @ q.T


BATCH = [tensor("batch", 4)]
BATCH_DIMS = {"batch": (1, 4)}
SEQ_DIMS = {"batch": (1, 4), "seq": (2, 6)}


# ----------------------------------------------------------------------- models that deploy


def test_cnn_with_batchnorm_passes_at_several_batch_sizes(ort_runs):
    result, message = check(trained_cnn(), [tensor("batch", 3, 8, 8)], {"batch": (1, 6)})
    assert message is None and result.passed
    assert result.examples >= 5 and result.max_abs_error <= 1e-4
    assert result.details["onnx_exporter"] == "dynamo"
    # the exported graph keeps the batch dynamic, under the spec's name
    assert result.details["onnx_inputs"] == ["x[batch, 3, 8, 8]"]
    # one graph, several batch sizes, raw and simplified alike
    batches = sizes(ort_runs, "model.onnx", "x", 0)
    assert len(batches) >= 3 and batches <= set(range(1, 7))
    assert sizes(ort_runs, "model.sim.onnx", "x", 0) == batches


def test_transformer_encoder_with_padding_mask_passes_across_batch_and_sequence(ort_runs):
    result, message = check(Encoder(), [tensor("batch", "seq", 8), tensor("batch", "seq", dtype=torch.bool)],
                            SEQ_DIMS)
    assert message is None and result.passed
    assert result.max_abs_error <= 1e-4
    assert result.details["onnx_inputs"] == ["x[batch, seq, 8]", "padding[batch, seq]"]
    shapes = {feeds["padding"] for graph, feeds in ort_runs if graph == "model.onnx"}
    assert {dtype for dtype, _ in shapes} == {"bool"}
    assert len({shape[0] for _, shape in shapes}) >= 3 and len({shape[1] for _, shape in shapes}) >= 3


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_recurrent_model_passes_with_a_dynamic_sequence_through_the_torchscript_exporter(cell, ort_runs):
    result, message = check(Recurrent(cell), [tensor("batch", "seq", 4)], SEQ_DIMS, backend_options=TORCHSCRIPT)
    assert message is None and result.passed
    assert result.details["onnx_exporter"] == "torchscript"
    assert result.details["onnx_inputs"] == ["x[batch, seq, 4]"]
    assert len(sizes(ort_runs, "model.onnx", "x", 0)) >= 3
    assert len(sizes(ort_runs, "model.onnx", "x", 1)) >= 3


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_recurrent_model_fails_with_the_dynamo_exporter_naming_the_specialised_sequence(cell):
    """torch.export specialises nn.LSTM/nn.GRU's sequence length (a limitation of the exporter): the
    check must say so at stage export, naming the dim, not pass for one length only."""
    result, message = check(Recurrent(cell), [tensor("batch", "seq", 4)], SEQ_DIMS)
    assert result.stage == "export"
    assert "torch.export specialised a dim declared dynamic" in message
    assert "seq (declared 2 to 6 in dims=) is fixed to " in message
    assert "`out, state = self.rnn(x)`  (the guard seq == " in message  # the model's line that calls the cell
    assert "or declare seq static in the spec" in message and "suggests" not in message


def test_embedding_model_with_integer_tokens_passes(ort_runs):
    result, message = check(Embedder(), [tensor("batch", "seq", dtype=torch.int64, low=0, high=50)], SEQ_DIMS)
    assert message is None and result.passed
    assert result.details["onnx_inputs"] == ["ids[batch, seq]"]
    feeds = [feeds["ids"] for graph, feeds in ort_runs if graph == "model.onnx"]
    assert {dtype for dtype, _ in feeds} == {"int64"}
    assert len({shape for _, shape in feeds}) >= 3


def test_several_inputs_and_dict_outputs_pass(ort_runs):
    result, message = check(TwoInTwoOut(), [tensor("batch", 4), tensor("batch", 2)], {"batch": (1, 5)})
    assert message is None and result.passed
    assert result.details["onnx_inputs"] == ["x[batch, 4]", "side[batch, 2]"]
    # both inputs fed by name, with the same batch, at several batch sizes
    assert all(set(feeds) == {"x", "side"} and feeds["x"][1][0] == feeds["side"][1][0] for _, feeds in ort_runs)
    assert len(sizes(ort_runs, "model.onnx", "x", 0)) >= 3


def test_the_report_records_the_provider_and_opset_that_ran():
    result, _ = check(nn.Linear(4, 2), BATCH, BATCH_DIMS, examples=2, backend_options={"onnx_opset": 17})
    provider = result.details["onnxruntime_provider"]
    # CUDA exactly when onnxruntime-gpu and a CUDA device are both there; the CPU provider otherwise
    cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers() and torch.cuda.is_available()
    assert provider == ("CUDAExecutionProvider" if cuda else "CPUExecutionProvider")
    assert result.details["onnx_opset"] == 17  # converted down from the dynamo exporter's own opset 18


# ------------------------------------------------------------------------------ export failures


@pytest.mark.parametrize("exporter, op, other", [
    ("dynamo", "aten.linalg_eig", "torchscript"),  # torch.export decomposes eigvals into linalg_eig
    ("torchscript", "aten.linalg_eigvals", "dynamo"),
])
def test_an_op_the_exporter_cannot_convert_names_the_aten_op_and_the_users_line(exporter, op, other):
    result, message = check(Eigen(), [tensor("batch", 3, 3)], BATCH_DIMS, backend_options={"onnx_exporter": exporter})
    assert result.stage == "export"
    assert message.startswith(f"onnx: stage export: torch.onnx cannot convert {op}: ")
    assert f"\n  at {site('return torch.linalg.eigvals(x).real')}\n" in message
    assert "fix: rewrite that call with ops ONNX supports" in message
    assert message.endswith(f"or try --deploy-onnx-exporter={other}")


def test_data_dependent_control_flow_is_refused_at_export_with_the_line():
    result, message = check(Gate(), BATCH, BATCH_DIMS)
    assert result.stage == "export"
    assert "torch.export refuses data-dependent control flow" in message
    assert f"at {site('if x.mean() > 0:')}" in message
    assert "torch.cond" in message


def test_the_torchscript_exporter_gets_the_trace_lost_branch_analysis():
    result, message = check(Gate(), BATCH, BATCH_DIMS, backend_options=TORCHSCRIPT)
    assert result.stage == "branches"
    assert message.startswith(f"onnx: stage branches: trace-lost branch at {site('if x.mean() > 0:')}\n")
    assert "fix: compute both sides and pick with torch.where(condition, a, b)" in message
    assert "outputs differ from eager PyTorch" in message
    (branch,) = result.branches
    assert branch["lost"] and branch["diverged"] and set(branch["outcomes"]) == {"True", "False"}


def test_a_custom_autograd_function_that_leaves_torch_does_not_pass_silently():
    result, message = check(NumpyHead(), BATCH, BATCH_DIMS)
    assert result.outcome == "failed" and result.stage == "export"
    assert ".numpy()" in message
    assert f"at {site('return torch.from_numpy(np.exp(x.detach().numpy()))')}" in message
    # the TorchScript exporter keeps the Function as an opaque PythonOp and then cannot export what it wraps
    result, message = check(NumpyHead(), BATCH, BATCH_DIMS, backend_options=TORCHSCRIPT)
    assert result.outcome == "failed" and result.stage == "export"
    assert message.startswith("onnx: stage export: torch.onnx cannot convert aten.lift_fresh: ")


def test_an_opset_the_dynamo_exporter_cannot_write_fails_instead_of_shipping_another():
    """The dynamo exporter builds its graph at opset 18 and converts down only where the ONNX version
    converter has adapters (none for Relu 14 → 13); where it has none it keeps opset 18, without raising."""
    model = nn.Sequential(nn.Linear(4, 2), nn.ReLU())
    result, message = check(model, BATCH, BATCH_DIMS, backend_options={"onnx_opset": 13})
    assert result.stage == "export"
    assert "torch.onnx did not produce opset 13: the exported graph is opset 18" in message
    assert "--deploy-onnx-exporter=torchscript" in message


# ------------------------------------------------------------------------ graph and shape checks


def test_the_checker_rejects_an_invalid_graph_naming_the_node():
    result, message = check(Int16Gram(), [tensor("batch", 4, low=0, high=5)], BATCH_DIMS)
    assert result.stage == "check"
    assert "onnx.checker rejects the exported graph" in message
    assert "op_type:MatMul, node name: node_matmul" in message and "tensor(int16)" in message


def test_a_graph_that_fixes_a_dim_declared_dynamic_fails_at_check(monkeypatch):
    """Simulated: exporters today either keep a declared dim dynamic or refuse (see the LSTM/GRU
    test), so the export is patched to write a graph whose input fixes the batch at the exported size,
    as an exporter that silently specialised it would. This tests pytest-deploy's guard."""
    real = onnx_backend.export_torchscript

    def specialising_export(ctx, path, *args):
        real(ctx, path, *args)
        model = onnx.load(path)
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
        onnx.save(model, path)

    monkeypatch.setattr(onnx_backend, "export_torchscript", specialising_export)
    result, message = check(nn.Linear(4, 2), BATCH, BATCH_DIMS, backend_options=TORCHSCRIPT)
    assert result.stage == "check"
    assert "the ONNX graph fixes input 'input' dim 0 ('batch') to 2, but dims= declares batch in [1, 4]" in message
    assert result.details["onnx_inputs"] == ["input[2, 4]"]


def test_a_simplification_that_changes_outputs_fails_at_simplify(monkeypatch):
    """Simulated: onnxsim is patched to return its graph with one weight perturbed, as a faulty
    simplification pass would. This tests pytest-deploy's detection (raw graph right, simplified
    graph wrong → stage simplify), not onnxsim."""
    real = onnxsim.simplify

    def perturbing_simplify(model, *args, **kwargs):
        simplified, ok = real(model, *args, **kwargs)
        weight = max(simplified.graph.initializer, key=lambda t: np.prod(t.dims))
        values = onnx.numpy_helper.to_array(weight) + 0.5
        weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
        return simplified, ok

    monkeypatch.setattr(onnxsim, "simplify", perturbing_simplify)
    result, message = check(nn.Linear(4, 2), BATCH, BATCH_DIMS, backend_options=TORCHSCRIPT)
    assert result.stage == "simplify"
    assert ("onnxsim changed the outputs: the raw ONNX graph matches eager PyTorch, the simplified one does not"
            in message)
    assert "simplified output [float32" in message
    assert "fix: simplify with fewer passes" in message


# --------------------------------------------------------------------------- onnxruntime errors


def test_an_onnxruntime_run_error_names_the_node_and_op_type():
    """The TorchScript exporter bakes nn.MultiheadAttention's batch * heads into a Reshape, so the
    graph runs at the exported batch only; onnxruntime's error must name that node."""
    result, message = check(Attention(), [tensor("batch", "seq", 8), tensor("batch", "seq", dtype=torch.bool)],
                            SEQ_DIMS, backend_options=TORCHSCRIPT)
    assert result.stage == "run"
    assert message.startswith("onnx: stage run: onnxruntime fails at node '/attn/Reshape")
    assert "' (op Reshape): " in message and "cannot be reshaped" in message
    assert "failing input" in message and "dims: batch=" in message


def test_an_onnxruntime_load_error_names_the_node_op_type_and_the_users_line():
    result, message = check(Int16Activations(), BATCH, BATCH_DIMS)
    assert result.stage == "load"
    assert message.startswith("onnx: stage load: onnxruntime fails at node 'node_relu' (op Relu): ")
    assert "Could not find an implementation for Relu" in message
    assert f"from {site('return torch.relu(q)')}" in message


# --------------------------------------------------------------------------------- external data


@pytest.mark.parametrize("options", [{}, TORCHSCRIPT], ids=["dynamo", "torchscript"])
def test_weights_above_the_threshold_are_saved_as_external_data(tmp_path, options, ort_runs):
    """Models over 2 GB are saved with external data; the threshold is lowered to test it on a small one."""
    result, message = check(trained_cnn(), [tensor("batch", 3, 8, 8)], {"batch": (1, 4)}, workdir=tmp_path,
                            backend_options={**options, "onnx_external_data_threshold": 1})
    assert message is None and result.passed
    assert result.details["onnx_external_data"] is True
    head = trained_cnn().head.weight.numel() * 4
    for graph in ("model.onnx", "model.sim.onnx"):
        # the largest weight (the head's, 1280 bytes) lives in the .data file next to the graph, not in it
        assert (tmp_path / f"{graph}.data").stat().st_size >= head
        external = [t for t in onnx.load(tmp_path / graph, load_external_data=False).graph.initializer
                    if t.data_location == onnx.TensorProto.EXTERNAL]
        assert max(np.prod(t.dims) for t in external) * 4 == head
        assert {e.key: e.value for e in external[0].external_data}["location"] == f"{graph}.data"
    # and onnxruntime ran both graphs from there
    assert {graph for graph, _ in ort_runs} == {"model.onnx", "model.sim.onnx"}


def test_small_weights_stay_inside_the_graph_by_default(tmp_path):
    result, _ = check(nn.Linear(4, 2), BATCH, BATCH_DIMS, examples=2, workdir=tmp_path)
    assert result.details["onnx_external_data"] is False
    assert not list(tmp_path.glob("*.data"))


# -------------------------------------------------------------------------------- through pytest

PRELUDE = """\
import torch
from torch import nn

from pytest_deploy import deployable, tensor


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = nn.functional.max_pool2d(x, 2)
        return self.head(x.flatten(1))


class Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        if x.mean() > 0:
            return self.fc(x)
        return self.fc(-x)

"""


def run_with_report(pytester, source: str, *args: str):
    pytester.makepyfile(PRELUDE + textwrap.dedent(source))
    result = pytester.runpytest("-p", "no:cacheprovider", "--deploy-report=report.json", *args)
    report = json.loads((pytester.path / "report.json").read_text())
    return result, report, {r["test"].split("::")[-1]: r for r in report["results"]}


def test_pytest_run_with_the_default_exporter(pytester):
    result, report, entries = run_with_report(pytester, """
        @deployable(backends=["ort"], inputs=[tensor("batch", 3, 8, 8)], dims={"batch": (1, 6)}, examples=4)
        def test_cnn():
            torch.manual_seed(0)
            return SmallCNN().eval()

        @deployable(backends=["onnxruntime"], inputs=[tensor("batch", 3, 3)], dims={"batch": (1, 4)}, examples=2)
        def test_eigen():
            class Eigen(nn.Module):
                def forward(self, x):
                    return torch.linalg.eigvals(x).real
            return Eigen()
    """, "--deploy-onnx-exporter=dynamo")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["FAILED *::test_eigen[[]onnx[]] - onnx:*"])  # aliases give the canonical id
    result.stdout.fnmatch_lines([
        "*onnx: stage export: torch.onnx cannot convert aten.linalg_eig: *",
        "*at test_pytest_run_with_the_default_exporter.py:*  `return torch.linalg.eigvals(x).real`",
        "*fix: rewrite that call with ops ONNX supports*",
    ])
    result.stdout.fnmatch_lines(["*pytest-deploy summary*", "*test_cnn*PASS*", "*test_eigen*FAIL(export)*"])
    assert report["environment"]["onnxruntime"] == onnxruntime.__version__
    cnn = entries["test_cnn"]
    assert cnn["backend"] == "onnx" and cnn["outcome"] == "passed" and cnn["examples"] >= 4
    assert cnn["details"]["onnx_exporter"] == "dynamo"
    assert cnn["details"]["onnxruntime_provider"] in onnxruntime.get_available_providers()
    assert cnn["details"]["onnx_inputs"] == ["x[batch, 3, 8, 8]"]
    assert entries["test_eigen"]["stage"] == "export"


def test_pytest_options_choose_the_torchscript_exporter_and_the_opset(pytester):
    result, _, entries = run_with_report(pytester, """
        @deployable(backends=["onnx"], inputs=[tensor("batch", 3, 8, 8)], dims={"batch": (1, 6)}, examples=4)
        def test_cnn():
            torch.manual_seed(0)
            return SmallCNN().eval()

        @deployable(backends=["onnx"], inputs=[tensor("batch", 4)], dims={"batch": (1, 4)}, examples=5)
        def test_gate():
            torch.manual_seed(0)
            return Gate().eval()
    """, "--deploy-onnx-exporter=torchscript", "--deploy-onnx-opset=13")
    result.assert_outcomes(passed=1, failed=1)
    cnn = entries["test_cnn"]
    assert cnn["outcome"] == "passed"
    assert cnn["details"]["onnx_exporter"] == "torchscript"
    assert cnn["details"]["onnx_opset"] == 13
    assert cnn["details"]["onnx_inputs"] == ["x[batch, 3, 8, 8]"]
    assert cnn["details"]["onnxruntime_provider"] in onnxruntime.get_available_providers()
    # the TorchScript exporter traces: the branch it froze is found as for the trace backend
    result.stdout.fnmatch_lines([
        "*onnx: stage branches: trace-lost branch at test_pytest_options_*.py:*  `if x.mean() > 0:`",
        "*fix: compute both sides and pick with torch.where(condition, a, b)*",
    ])
    result.stdout.fnmatch_lines(["*test_gate*FAIL(branches)*1 sites, lost 1, uncovered 0*"])
    gate = entries["test_gate"]
    assert gate["stage"] == "branches" and gate["details"]["onnx_exporter"] == "torchscript"
    (branch,) = gate["branches"]
    assert branch["source"] == "if x.mean() > 0:" and branch["lost"] is True
