"""int8 (``precision="int8"`` / ``"int8-dynamic"``) verified here, on CPU, through ONNX Runtime's real quantizer.

The onnx backend quantizes the exported graph (static QDQ calibrated on generated examples or on ``calibration=``;
dynamic for MatMul/Gemm weights) and judges it by agreement with eager PyTorch (pytest_deploy.agreement): a CNN
classifier and a transformer encoder layer pass the default gates and record every metric; a calibration input that
does not match the declaration fails before anything is quantized; a model whose activation has a few huge outlier
channels feeding a matmul fails the gate. Backends with no int8 route skip with the reason.
"""

from __future__ import annotations

import json
import textwrap

import pytest

for _module in ("onnx", "onnxscript", "onnxsim", "onnxruntime"):
    pytest.importorskip(_module)

import helpers  # tests/integration/helpers.py
import torch
from torch import nn

from pytest_deploy import BackendUnavailable, DeployFailure, SpecError, tensor, verify

IMAGES = [tensor("batch", 3, 16, 16)]
IMAGE_DIMS = {"batch": (1, 3)}


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return helpers.SmallCNN().eval()


def encoder() -> nn.Module:
    torch.manual_seed(0)
    return nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True).eval()


class Outliers(nn.Module):
    """A hidden activation whose first three channels are 2000 times the others (as LLM activations' outlier
    features are), feeding a matmul whose weights scale them back: in float32 every channel counts, but one int8
    range per tensor spans the outliers, so the other channels all round to a step or two."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(16, 64)
        scale = torch.ones(64)
        scale[:3] = 2000.0
        self.register_buffer("scale", scale)
        self.out = nn.Linear(64, 10)
        with torch.no_grad():
            self.out.weight[:, :3] /= 2000.0

    def forward(self, x):
        return self.out(torch.relu(self.inp(x)) * self.scale)


def test_a_cnn_classifier_passes_int8_with_the_default_gates():
    result = verify(cnn(), "onnx", inputs=IMAGES, dims=IMAGE_DIMS, examples=6, precision="int8", isolate="none")
    assert result.outcome == "passed"
    figures = result.details["agreement"]["output"]
    assert set(figures) == {"top1", "cosine", "sqnr_db"}
    assert figures["top1"] >= 0.99 and figures["cosine"] >= 0.99 and figures["sqnr_db"] >= 20
    # [batch, classes]: top-1 is gated beside cosine and SQNR
    assert result.details["agreement_gate"]["output"] == {"top1": 0.99, "cosine": 0.99, "sqnr": 20.0}
    assert result.details["quantization"]["format"] == "QDQ"
    assert result.details["quantization"]["calibration"] == {"inputs": 16, "from": "generated examples", "seed": 0}
    size = result.details["model_size"]
    assert size["float_bytes"] > 0 and size["quantized_bytes"] > 0
    # the int8 graph really ran: its errors are far beyond float32's round-off
    assert result.max_abs_error > 1e-4


def test_the_quantized_graph_is_cached_under_its_settings(tmp_path):
    first = verify(cnn(), "onnx", inputs=IMAGES, dims=IMAGE_DIMS, examples=2, precision="int8", isolate="none",
                   cache_dir=tmp_path, calibration_examples=4)
    again = verify(cnn(), "onnx", inputs=IMAGES, dims=IMAGE_DIMS, examples=2, precision="int8", isolate="none",
                   cache_dir=tmp_path, calibration_examples=4, recheck=True)
    other = verify(cnn(), "onnx", inputs=IMAGES, dims=IMAGE_DIMS, examples=2, precision="int8", isolate="none",
                   cache_dir=tmp_path, calibration_examples=5, recheck=True)
    assert not first.cached and again.cached and not other.cached
    assert first.details["cache_key"] == again.details["cache_key"] != other.details["cache_key"]
    assert first.details["agreement"] == again.details["agreement"]


def test_a_transformer_encoder_layer_passes_int8_with_the_default_gates():
    result = verify(encoder(), "onnx", inputs=[tensor("batch", "seq", 32)], dims={"batch": (1, 3), "seq": (2, 8)},
                    examples=6, precision="int8", isolate="none")
    figures = result.details["agreement"]["output"]
    assert figures["cosine"] >= 0.99 and figures["sqnr_db"] >= 20
    # [batch, seq, features] is no classifier's output: cosine and SQNR gate it, top-1 is only recorded
    assert result.details["agreement_gate"]["output"] == {"cosine": 0.99, "sqnr": 20.0}
    assert figures["top1"] is not None


@pytest.mark.parametrize("form", ["tuples", "dicts"])
def test_calibration_on_user_data(form):
    def batches():
        gen = torch.Generator().manual_seed(1)
        for _ in range(5):
            x = torch.rand(2, 3, 16, 16, generator=gen) * 2 - 1
            yield (x,) if form == "tuples" else {"x": x}

    result = verify(cnn(), "onnx", inputs=IMAGES, dims=IMAGE_DIMS, examples=4, precision="int8", isolate="none",
                    calibration=batches)
    calibration = result.details["quantization"]["calibration"]
    assert calibration["inputs"] == 5 and calibration["from"] == "calibration="
    assert result.details["agreement"]["output"]["cosine"] >= 0.99


def test_a_calibration_input_that_does_not_match_fails_before_quantizing():
    calibration = [(torch.rand(2, 3, 16, 16),), (torch.rand(2, 3, 8, 16),)]
    with pytest.raises(DeployFailure) as info:
        verify(cnn(), "onnx", inputs=IMAGES, dims=IMAGE_DIMS, examples=2, precision="int8", isolate="none",
               calibration=calibration)
    result = info.value.result
    assert result.stage == "compile"
    text = str(info.value)
    assert "calibration input 1, input 'x': expected float32[batch, 3, 16, 16] in [-1, 1], batch in [1, 3]" in text
    assert "got float32[2, 3, 8, 16] (dim 2 is 8, declared 16)" in text
    assert "fix: yield inputs as inputs= declares them" in text
    assert "model_size" not in result.details  # nothing was quantized
    with pytest.raises(DeployFailure, match=r"calibration input 0 has keys \['y'\] but the inputs are named \['x'\]"):
        verify(cnn(), "onnx", inputs=IMAGES, dims=IMAGE_DIMS, examples=2, precision="int8", isolate="none",
               calibration=[{"y": torch.rand(1, 3, 16, 16)}])


def test_outlier_channels_feeding_a_matmul_fail_the_agreement_gate():
    """The same verdict on every run with one seed (run 5 times when it was written: top-1 0%, cosine 0.43)."""
    with pytest.raises(DeployFailure) as info:
        verify(Outliers().eval(), "onnx", inputs=[tensor("batch", 16)], dims={"batch": (1, 8)}, examples=6,
               precision="int8", isolate="none", seed=0)
    result = info.value.result
    assert result.stage == "compare"
    text = str(info.value)
    assert "int8 agreement below its gate: output top1 " in text and "< 99.0% over 6 example(s)" in text
    assert "worst example (top1 " in text and "x: float32[" in text
    assert "fix: calibrate on representative inputs (calibration=)" in text
    figures = result.details["agreement"]["output"]
    assert figures["top1"] < 0.5 and figures["cosine"] < 0.9 and figures["sqnr_db"] < 10
    # the same model passes at fp32: the failure is int8's
    assert verify(Outliers().eval(), "onnx", inputs=[tensor("batch", 16)], dims={"batch": (1, 8)}, examples=2,
                  isolate="none").outcome == "passed"


def test_a_gate_the_model_meets_passes_and_one_it_misses_fails():
    kwargs = dict(inputs=[tensor("batch", 16)], dims={"batch": (1, 8)}, examples=3, precision="int8", isolate="none")
    passed = verify(Outliers().eval(), "onnx", agreement={"cosine": 0.1}, **kwargs)
    assert passed.details["agreement_gate"]["output"] == {"cosine": 0.1}
    with pytest.raises(DeployFailure, match=r"output sqnr .* dB < 60\.0 dB"):
        verify(cnn(), "onnx", inputs=IMAGES, dims=IMAGE_DIMS, examples=2, precision="int8", isolate="none",
               agreement={"sqnr": 60})


def test_int8_dynamic_on_a_linear_model_passes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    # in the default worker process (the other tests run in this one)
    result = verify(model, "onnx", inputs=[tensor("batch", 32)], dims={"batch": (1, 4)}, examples=4,
                    precision="int8-dynamic")
    assert result.details["isolated"] == "worker process"
    assert result.details["quantization"]["method"] == "quantize_dynamic"
    assert "calibration" not in result.details["quantization"]
    assert result.details["agreement"]["output"]["cosine"] >= 0.99


@pytest.mark.parametrize(("backend", "precision", "words"), [
    ("tensorrt", "int8-dynamic", "quantizes activations at run time, which TensorRT does not do; use "
                                 "precision='int8'"),
    ("trace", "int8", "has no int8 route here; precision=int8 is checked by the onnx backend only"),
])
def test_backends_without_an_int8_route_skip_with_the_reason(backend, precision, words):
    with pytest.raises(BackendUnavailable, match=words.replace("(", r"\(").replace(")", r"\)")):
        verify(cnn(), backend, inputs=IMAGES, dims=IMAGE_DIMS, examples=1, precision=precision)


def test_the_tensorrt_qdq_graph_is_symmetric_int8_and_agrees_with_eager(tmp_path):
    """TensorRT takes symmetric int8 Q/DQ only: the graph its int8 route builds has int8 zero points, all 0 (the onnx
    route's activations are uint8 with zero points); run by ONNX Runtime here, that same graph agrees with eager."""
    import onnx
    import onnxruntime
    from onnx import numpy_helper

    from pytest_deploy.agreement import sqnr_db
    from pytest_deploy.backends.quantize import quantize_to

    model = cnn()
    src, feeds = str(tmp_path / "model.onnx"), []
    torch.onnx.export(model, (torch.randn(2, 3, 16, 16),), src, input_names=["x"], dynamo=True)
    torch.manual_seed(1)
    batches = [torch.rand(2, 3, 16, 16) * 2 - 1 for _ in range(8)]
    feeds = [{"x": b.numpy()} for b in batches]

    class Ctx:
        def note(self, *args):
            pass

    for target, dtype, symmetric in (("tensorrt", onnx.TensorProto.INT8, True),
                                     ("onnxruntime", onnx.TensorProto.UINT8, False)):
        dst = str(tmp_path / f"{target}.onnx")
        quantize_to(Ctx(), src, dst, "int8", feeds, None, target)
        graph = onnx.load(dst).graph
        values = {t.name: t for t in graph.initializer}
        points = [values[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
        assert points and all(p.data_type == dtype for p in points), target
        assert all(not numpy_helper.to_array(p).any() for p in points) == symmetric, target
        session = onnxruntime.InferenceSession(dst, providers=["CPUExecutionProvider"])
        got = torch.cat([torch.from_numpy(session.run(None, f)[0]) for f in feeds])
        with torch.no_grad():
            want = torch.cat([model(b) for b in batches])
        assert sqnr_db(float((want ** 2).sum()), float(((want - got) ** 2).sum())) >= 20, target


def test_bad_agreement_and_calibration_settings_are_refused():
    with pytest.raises(SpecError, match="unknown metric 'top-one'"):
        verify(cnn(), "onnx", inputs=IMAGES, examples=1, precision="int8", agreement="top-one")
    with pytest.raises(SpecError, match="calibration_examples=0 must be a positive int"):
        verify(cnn(), "onnx", inputs=IMAGES, examples=1, precision="int8", calibration_examples=0)


def test_int8_through_the_marker_writes_the_metrics_to_the_json_and_markdown_reports(pytester):
    pytester.makepyfile(textwrap.dedent("""
        import torch
        from torch import nn
        from pytest_deploy import deployable, tensor

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 8, 3, padding=1)
                self.head = nn.Linear(8, 5)

            def forward(self, x):
                return self.head(torch.relu(self.conv(x)).mean((2, 3)))

        @deployable(backends=["onnx"], inputs=[tensor("batch", 3, 8, 8)], dims={"batch": (1, 2)},
                                examples=3, precision="int8", calibration_examples=4)
        def test_net():
            torch.manual_seed(0)
            return Net().eval()
    """))
    result = pytester.runpytest("-p", "no:cacheprovider", "--deploy-report=r.json", "--deploy-markdown=r.md",
                                "--deploy-isolate=none")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*PASS*cos 0.99*dB top1 100%*"])
    check = json.loads((pytester.path / "r.json").read_text())["results"][0]
    assert set(check["details"]["agreement"]["output"]) == {"top1", "cosine", "sqnr_db"}
    assert check["details"]["quantization"]["calibration"]["inputs"] == 4
    markdown = (pytester.path / "r.md").read_text()
    assert "### Agreement (quantized checks)" in markdown and "| onnx | int8 | output |" in markdown


def test_a_failing_int8_gate_names_where_it_breaks_and_an_exclusion_that_passes_pasted_back():
    """Issue 28: the first node whose SQNR collapses (with the module and the user's line), the per-node SQNR in
    details, and the smallest int8_exclude= found that passes; pasted back, the same check passes."""
    kwargs = dict(inputs=[tensor("batch", 16)], dims={"batch": (1, 8)}, examples=6, precision="int8",
                  isolate="none", seed=0)
    with pytest.raises(DeployFailure) as info:
        verify(Outliers().eval(), "onnx", **kwargs)
    text, details = str(info.value), info.value.result.details
    assert "  diverges first at node 'node_linear_1' (op Gemm, SQNR " in text
    assert "dB < 20.0 dB; its inputs " in text and "in module 'out' (Linear)" in text
    assert "test_int8.py:" in text and "`return self.out(torch.relu(self.inp(x)) * self.scale)`" in text
    rows = details["int8_sqnr"]
    assert [r["node"] for r in rows] == ["node_linear", "node_mul_4", "node_linear_1"]
    assert rows[-1]["op"] == "Gemm" and rows[-1]["sqnr_db"] < 20 <= rows[0]["sqnr_db"]
    suggested = details["int8_exclude_suggested"]
    assert suggested == ["node_mul_4", "node_linear_1"]
    assert f"  fix, proven: int8_exclude={suggested!r} (those nodes kept in float) passes the gate on the same 6 " \
           "example(s): output top1 100.0%" in text
    # the same verdict on a rerun, and the suggestion pasted back passes
    with pytest.raises(DeployFailure) as again:
        verify(Outliers().eval(), "onnx", **kwargs)
    assert again.value.result.details["int8_sqnr"] == rows
    passed = verify(Outliers().eval(), "onnx", int8_exclude=suggested, **kwargs)
    assert passed.outcome == "passed"
    assert passed.details["quantization"]["nodes_to_exclude"] == suggested
    assert passed.details["agreement"]["output"]["top1"] == 1.0
    assert details["int8_sqnr_first"] == {"node": "node_linear_1", "threshold_db": 20.0}
    # the HTML report: the failing card's per-node SQNR plot, each card's agreement figures and model size
    pytest.importorskip("matplotlib")
    from pytest_deploy.report_html import render_html

    page = render_html([info.value.result.to_json(), passed.to_json()], {})
    assert page.count('alt="per-node SQNR of ') == 1
    assert page.count("<div><dt>agreement</dt>") == 2 and "output: top1 100.0% cos " in page and " int8</dd>" in page


def test_when_no_exclusion_passes_the_message_says_so(monkeypatch):
    from pytest_deploy.backends import int8_debug

    monkeypatch.setattr(int8_debug, "MAX_RETRIES", 1)  # the first collapsing node alone is not enough here
    with pytest.raises(DeployFailure) as info:
        verify(Outliers().eval(), "onnx", inputs=[tensor("batch", 16)], dims={"batch": (1, 8)}, examples=4,
               precision="int8", isolate="none")
    text = str(info.value)
    assert "  diverges first at node 'node_linear_1'" in text
    assert "  no exclusion tried passes the gate (kept in float: 1 node(s); at most 1 retries in 60 s)" in text
    assert info.value.result.details["int8_exclude_suggested"] is None


def test_int8_exclude_is_refused_unless_a_list_of_node_names():
    with pytest.raises(SpecError, match=r"int8_exclude='node_mul_4' must be a list of ONNX node names"):
        verify(cnn(), "onnx", inputs=IMAGES, examples=1, precision="int8", int8_exclude="node_mul_4")


def test_with_latency_the_float_graph_is_timed_beside_the_int8_one():
    """Issue 28 item 5: the int8 speedup over fp32 in the same run (latency.variants.fp32.ratio: the float graph's p50
    over the int8 graph's), beside the model sizes; the fp32 check has no such variant."""
    latency = {"budget": 0.3, "min_runs": 10, "warmup": 1}
    result = verify(cnn(), "onnx", inputs=IMAGES, dims=IMAGE_DIMS, examples=4, precision="int8", latency=latency)
    variant = result.latency["variants"]["fp32"]
    assert set(variant) == {shape["label"] for shape in result.latency["shapes"]}
    for label, figures in variant.items():
        assert figures["p50_ms"] > 0 and figures["ratio"] > 0, figures
        mine = next(s for s in result.latency["shapes"] if s["label"] == label)
        assert figures["ratio"] == pytest.approx(figures["p50_ms"] / mine["p50_ms"])
    assert result.details["model_size"]["quantized_bytes"] < result.details["model_size"]["float_bytes"]
    plain = verify(cnn(), "onnx", inputs=IMAGES, dims=IMAGE_DIMS, examples=2, latency=latency)
    assert "variants" not in plain.latency
