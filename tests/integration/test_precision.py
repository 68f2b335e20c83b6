"""Reduced precision (``precision=``, ``--deploy-precision``) verified here, on CPU, through ONNX Runtime.

The onnx backend converts the exported float32 graph to float16 (onnxconverter-common, inputs and outputs kept
float32) and runs it; ONNX Runtime's CPU provider computes most float16 nodes in float32, so the check runs the
emulation graph that rounds every float16 value (pytest_deploy.backends.precision). A CNN passes with the fp16
tolerances; a model whose intermediate leaves float16's range fails naming the node, the submodule and its line.
Backends without a reduced-precision route skip with the reason; an unknown precision is a usage error.
"""

from __future__ import annotations

import os
import textwrap

import pytest

for _module in ("onnx", "onnxscript", "onnxsim", "onnxruntime", "onnxconverter_common"):
    pytest.importorskip(_module)

import helpers  # tests/integration/helpers.py
import torch
from torch import nn

from pytest_deploy import BackendUnavailable, DeployFailure, SpecError, tensor, verify
from pytest_deploy.compare import DEFAULT_TOLERANCES

INPUTS = [tensor("batch", 3, 16, 16)]
DIMS = {"batch": (1, 3)}


class Amplify(nn.Module):
    """Up to 1e5 for inputs up to 1: beyond float16's 65504."""

    def forward(self, x):
        return x * 1000.0 * 100.0


class Overflows(nn.Module):
    """Finite in float32 throughout (the amplified values are scaled back down), inf in float16."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.amplify = Amplify()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return self.head((self.amplify(y) * 1e-5).mean((2, 3)))


class SwiGLU(nn.Module):
    """A fused gate/up projection split with chunk: one node, two outputs (issue 26)."""

    def __init__(self):
        super().__init__()
        self.gate_up = nn.Linear(8, 32)
        self.down = nn.Linear(16, 8)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, -1)
        return self.down(nn.functional.silu(gate) * up)


class Pooled(nn.Module):
    """Returns a hidden state that its head reads too, as Hugging Face's models return the last hidden state and
    pool or project it: a graph output with readers inside the graph."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        hidden = torch.tanh(self.body(x))
        return hidden, self.head(hidden[:, 0])


class Positions(nn.Module):
    """Position features from an int64 arange over a dynamic length cast to float, as rotary and relative position
    embeddings compute them."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        pos = torch.arange(x.shape[1], device=x.device).float()
        return self.proj(x) + torch.sin(pos / 4.0)[None, :, None]


class Cancels(nn.Module):
    """Finite everywhere in float16, but a small value carried at 1000 loses its low bits (float16's spacing there
    is 0.5): fp16 rounding, not overflow, takes it past the tolerance."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        y = self.proj(x)
        return torch.tanh((y + 1000.0) - 1000.0)


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return helpers.SmallCNN().eval()


def test_cnn_passes_fp16_with_fp16_tolerances():
    result = verify(cnn(), "onnx", inputs=INPUTS, dims=DIMS, examples=3, precision="fp16", isolate="none")
    assert result.outcome == "passed"
    assert (result.atol, result.rtol) == DEFAULT_TOLERANCES["onnx"]["float16"]
    assert result.details["precision"] == "fp16"
    assert result.details["precision_converter"].startswith("onnxconverter-common ")
    assert "rounded to float16" in result.details["precision_emulation"]
    # the float16 graph really ran: its error is far above float32's round-off
    assert result.max_abs_error > 1e-5


def test_a_model_with_chunk_passes_fp16():
    """A node with several float16 outputs (Split) gets one uniquely named rounding per output: ONNX Runtime
    refused the emulation graph at load ("two nodes with same node name ...") when they shared the node's name."""
    torch.manual_seed(0)
    result = verify(SwiGLU().eval(), "onnx", inputs=[tensor("batch", 4, 8)], dims={"batch": (1, 3)}, examples=3,
                    precision="fp16", isolate="none")
    assert result.outcome == "passed", result.details
    assert (result.atol, result.rtol) == DEFAULT_TOLERANCES["onnx"]["float16"]


def test_an_output_that_the_graph_reads_again_converts():
    """keep_io_types casts an output back to float32 under its name while the graph's other readers of it were
    converted to float16: ONNX Runtime refused the converted graph ("Type (tensor(float16)) of output arg ... does not
    match expected type"), failing every encoder and decoder of the Hugging Face corpus at compile."""
    torch.manual_seed(0)
    result = verify(Pooled().eval(), "onnx", inputs=[tensor("batch", 4, 8)], dims={"batch": (1, 3)}, examples=3,
                    precision="fp16", isolate="none")
    assert result.outcome == "passed", result.details
    assert result.max_abs_error > 1e-5  # float16 ran


def test_an_int64_value_cast_to_float_converts():
    """The converter types a Cast-to-float's output float16 but leaves its to=FLOAT: ONNX Runtime refused the graph
    ("Inferred elem type differs ... (1) vs (10)" at onnx.checker), failing Llama, T5, DeBERTa and every decoder with
    rotary positions at compile."""
    torch.manual_seed(0)
    result = verify(Positions().eval(), "onnx", inputs=[tensor("batch", "seq", 8)], dims={"batch": (1, 2),
                    "seq": (2, 9)}, examples=3, precision="fp16", isolate="none")
    assert result.outcome == "passed", result.details
    assert result.max_abs_error > 1e-5  # float16 ran


def test_a_rounding_failure_offers_a_verified_block_list_that_passes():
    """No overflow, only rounding: the message offers the float32 block list found by auto_convert_mixed_precision's
    search, verified on the failing example; given back as fp16_block_list=, the check passes."""
    torch.manual_seed(0)
    spec = dict(inputs=[tensor("batch", 8)], dims={"batch": (1, 3)}, examples=3, precision="fp16", isolate="none")
    with pytest.raises(DeployFailure) as info:
        verify(Cancels().eval(), "onnx", **spec)
    result = info.value.result
    assert result.stage == "compare"
    message = str(info.value)
    assert "float16 rounding: keeping" in message and "verified" in message, message
    assert "onnxsim changed" not in message
    block = result.details["precision_block_list"]
    assert block and len(block) < result.details["onnx_nodes"]["simplified"], result.details
    assert "float16 overflow" not in message
    again = verify(Cancels().eval(), "onnx", fp16_block_list=block, **spec)
    assert again.outcome == "passed"
    assert again.max_abs_error > 1e-6  # the rest of the graph still ran in float16


def test_a_bad_fp16_block_list_is_refused():
    with pytest.raises(SpecError, match="fp16_block_list"):
        verify(cnn(), "onnx", inputs=INPUTS, dims=DIMS, precision="fp16", fp16_block_list="node_add")


def test_user_tolerances_are_kept_at_fp16():
    result = verify(cnn(), "onnx", inputs=INPUTS, dims=DIMS, examples=1, precision="fp16", isolate="none",
                    atol=5e-2, rtol=5e-2)
    assert (result.atol, result.rtol) == (5e-2, 5e-2)


def test_the_fp16_graph_really_runs():
    """Held to float32 round-off (the serialization backends' float32 tolerance), the fp16 CNN fails at compare,
    while the fp32 one passes: the float16 graph, not the float32 one, is what ran."""
    fp32 = DEFAULT_TOLERANCES["state_dict"]["float32"]
    assert verify(cnn(), "onnx", inputs=INPUTS, dims=DIMS, examples=2, isolate="none",
                  atol=fp32[0] * 10, rtol=fp32[1] * 10).outcome == "passed"
    with pytest.raises(DeployFailure) as info:
        verify(cnn(), "onnx", inputs=INPUTS, dims=DIMS, examples=2, precision="fp16", isolate="none",
               atol=fp32[0] * 10, rtol=fp32[1] * 10)
    assert info.value.result.stage == "compare"


def test_an_intermediate_beyond_float16_fails_naming_the_node_and_the_submodule():
    torch.manual_seed(0)
    with pytest.raises(DeployFailure) as info:
        verify(Overflows().eval(), "onnx", inputs=[tensor("batch", 3, 8, 8)], dims={"batch": (1, 2)}, examples=2,
               precision="fp16", isolate="none")
    message = str(info.value)
    assert info.value.result.stage == "compare"
    assert "float16 overflow" in message and "65504" in message
    assert "(op Mul) in module 'amplify' (Amplify)" in message
    assert helpers.site(__file__, "return x * 1000.0 * 100.0") in message
    overflow = info.value.result.details["precision_overflow"]
    assert overflow["module"] == "amplify" and overflow["op"] == "Mul"
    # the same model passes at fp32: the failure is float16's
    torch.manual_seed(0)
    assert verify(Overflows().eval(), "onnx", inputs=[tensor("batch", 3, 8, 8)], dims={"batch": (1, 2)},
                  examples=1, isolate="none").outcome == "passed"


def test_fp16_on_a_backend_without_a_reduced_precision_route_is_skipped():
    with pytest.raises(BackendUnavailable, match=r"trace has no reduced-precision route; it checks float32"):
        verify(cnn(), "trace", inputs=INPUTS, dims=DIMS, examples=1, precision="fp16")


def test_the_old_trt_fp16_backend_option_means_fp16():
    """backend_options={"trt_fp16": True}, as verify() took it before precisions: fp16, never a float32 pass."""
    with pytest.raises(BackendUnavailable, match=r"trace has no reduced-precision route"):
        verify(cnn(), "trace", inputs=INPUTS, dims=DIMS, examples=1, backend_options={"trt_fp16": True})


def test_bf16_on_onnx_is_skipped_with_the_reason():
    with pytest.raises(BackendUnavailable, match=r"onnx: bf16 .* onnxconverter-common converts to float16 only"):
        verify(cnn(), "onnx", inputs=INPUTS, dims=DIMS, examples=1, precision="bf16")


def test_an_unknown_precision_in_a_call_is_refused():
    with pytest.raises(SpecError, match=r"unknown precision 'fp8'; use one of fp32, fp16, bf16"):
        verify(cnn(), "onnx", inputs=INPUTS, dims=DIMS, precision="fp8")


MODEL_TEST = """
    import torch
    from pytest_deploy import deployable, tensor

    @deployable(backends=["trace"], inputs=[tensor(2, 4)], examples=1)
    def test_linear():
        return torch.nn.Linear(4, 2).eval()
"""


@pytest.mark.parametrize("args, words", [
    (["--deploy-precision=fp8"], "--deploy-precision: unknown precision 'fp8'; use one of fp32, fp16, bf16"),
    (["--deploy-precision=bf16", "--deploy-trt-fp16"], "--deploy-trt-fp16 is an alias of --deploy-precision=fp16"),
])
def test_an_unknown_precision_on_the_command_line_is_a_usage_error(pytester, args, words):
    pytester.makepyfile(textwrap.dedent(MODEL_TEST))
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert words in result.stderr.str()


def test_an_unknown_precision_in_ini_is_a_usage_error(pytester):
    pytester.makeini("[pytest]\ndeploy_precision = half\n")
    pytester.makepyfile(textwrap.dedent(MODEL_TEST))
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "ini deploy_precision: unknown precision 'half'" in result.stderr.str()


def test_an_unknown_precision_in_a_marker_fails_at_collection(pytester):
    pytester.makepyfile(textwrap.dedent(MODEL_TEST).replace("examples=1", "examples=1, precision='int4'"))
    result = pytester.runpytest()
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*unknown precision 'int4'; use one of fp32, fp16, bf16*"])


@pytest.mark.parametrize("args, ini, expected", [
    ([], "", None),
    (["--deploy-trt-fp16"], "", "fp16"),
    (["--deploy-precision=FP16"], "", "fp16"),
    ([], "bf16", "bf16"),
    (["--deploy-precision=int8"], "", "int8"),
    ([], "int8-dynamic", "int8-dynamic"),
    (["--deploy-precision=fp32"], "fp16", "fp32"),  # the command line wins over ini
])
def test_precision_options_parse(pytester, args, ini, expected):
    if ini:
        pytester.makeini(f"[pytest]\ndeploy_precision = {ini}\n")
    pytester.makeconftest("""
        def pytest_configure(config):
            from pytest_deploy.options import read_settings
            config._precision = read_settings(config).backend_options.get("precision")
    """)
    pytester.makepyfile("def test_x(request):\n    print('PRECISION', request.config._precision)\n")
    result = pytester.runpytest("-s", *args)
    result.stdout.fnmatch_lines([f"*PRECISION {expected}"])


def test_the_marker_wins_over_the_command_line(pytester):
    """--deploy-precision=fp16 skips trace; a marker's precision='fp32' checks it at float32."""
    pytester.makepyfile(textwrap.dedent(MODEL_TEST) + textwrap.dedent("""
        @deployable(backends=["trace"], inputs=[tensor(2, 4)], examples=1, precision="fp32")
        def test_linear_fp32():
            return torch.nn.Linear(4, 2).eval()
    """))
    result = pytester.runpytest("--deploy-precision=fp16", "-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*trace has no reduced-precision route*"])


def test_fp16_of_a_graph_with_external_data_passes_without_in_memory_shape_inference(monkeypatch):
    """A model over 2 GiB is exported with external data; there protobuf refuses onnx.shape_inference.infer_shapes
    (made to refuse here, for a small model given external data by its threshold): the float16 conversion
    infers shapes from the file instead."""
    import onnx

    def too_big(*args, **kwargs):
        raise ValueError("Message onnx.ModelProto exceeds maximum protobuf size of 2GB: 2400000000")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", too_big)
    result = verify(cnn(), "onnx", inputs=INPUTS, dims=DIMS, examples=2, precision="fp16", isolate="none",
                    backend_options={"onnx_external_data_threshold": 0})
    assert result.outcome == "passed", result.message
    assert result.details["onnx_external_data"] is True
    assert "rounded to float16" in result.details["precision_emulation"]


class TinyScale(nn.Module):
    """x * 1e-12 / 1e-6 (x * 1e-6): float16 conversion raises the 1e-12 to the converter's min_positive_val, 1e-7,
    so the float16 graph gives about 0.1 x."""

    def forward(self, x):
        return x * 1e-12 / 1e-6


def test_a_tiny_constant_the_converter_raises_is_named_in_the_failure():
    with pytest.raises(DeployFailure) as info:
        verify(TinyScale(), "onnx", inputs=[tensor("batch", 8)], dims={"batch": (1, 2)}, examples=2,
               precision="fp16", isolate="none")
    result = info.value.result
    assert result.stage == "compare"
    raised = result.details["precision_raised"]
    assert [c["min_abs"] for c in raised] == [pytest.approx(1e-12)] and raised[0]["node"]
    assert (f"float16 conversion raised tiny constant(s) '{raised[0]['name']}' (smallest nonzero |value| 1e-12"
            in str(info.value))


def test_the_overflow_is_located_where_the_session_runs(monkeypatch):
    """A CUDA check's session lives in a spawned worker, where its float16 kernels overflow; pytest's process has
    the CPU provider only, which computes float16 nodes in float32 and finds nothing. The probe therefore runs in
    the worker, on the graph its session runs. Here the spawn_runtime option takes that route on CPU (the session
    runs the emulation graph), and the probe is refused in pytest's process: the node is still named."""
    from pytest_deploy.backends import precision

    def refuse(*args, **kwargs):
        raise AssertionError("the overflow probe ran in pytest's process, not where the session lives")

    monkeypatch.setattr(precision, "locate_overflow", refuse)
    torch.manual_seed(0)
    with pytest.raises(DeployFailure) as info:
        verify(Overflows().eval(), "onnx", inputs=[tensor("batch", 3, 8, 8)], dims={"batch": (1, 2)}, examples=2,
               precision="fp16", isolate="none", cache_dir=None, backend_options={"spawn_runtime": True})
    details = info.value.result.details
    assert details["isolated"].startswith("spawned worker process")
    assert "precision_overflow_error" not in details
    assert details["precision_overflow"]["module"] == "amplify" and details["precision_overflow"]["op"] == "Mul"
    assert "(op Mul) in module 'amplify' (Amplify)" in str(info.value)


class SessionCount:
    """Stands in for ``spawned_runtime``: builds the :class:`OrtRuntime` in this process and counts the sessions
    opened (their graphs) and still open. With ``claim_cuda`` its ``info`` says the CUDA provider ran it (the
    provider the check asked for), though ONNX Runtime here has the CPU provider only and ran it on CPU: enough for
    the check to take its CUDA route, whose sessions are what is counted; nothing CUDA computes is checked."""

    def __init__(self, claim_cuda: bool):
        self.claim_cuda = claim_cuda
        self.opened: list[str] = []
        self.open: set[int] = set()
        self.most_open = 0

    def __call__(self, ctx, label, factory, config):
        from pytest_deploy.backends.onnx import OrtRuntime

        count = self

        class Counted(OrtRuntime):
            def close(self):
                count.open.discard(id(self))
                super().close()

        runtime = Counted(config)
        if self.claim_cuda:
            runtime.info = {**runtime.info, "provider": "CUDAExecutionProvider"}
        ctx.cleanup.callback(runtime.close)
        self.opened.append(os.path.basename(config["path"]))
        self.open.add(id(runtime))
        self.most_open = max(self.most_open, len(self.open))
        return runtime


@pytest.mark.filterwarnings("ignore:Specified provider .CUDAExecutionProvider.:UserWarning")
def test_an_fp16_check_on_cuda_opens_one_session_per_graph_that_runs(monkeypatch):
    """On CUDA each session is a spawned worker with its own CUDA context. _reduce's session on each converted graph
    is the one that runs it: two sessions (raw and simplified), not four (see SessionCount for what is pretended)."""
    from pytest_deploy.backends import onnx as onnx_backend

    count = SessionCount(claim_cuda=True)
    monkeypatch.setattr(onnx_backend, "providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnx_backend, "spawned_runtime", count)
    result = verify(cnn(), "onnx", inputs=INPUTS, dims=DIMS, examples=2, precision="fp16", cache_dir=None)
    assert result.passed, result.message
    assert result.details["onnxruntime_provider"] == "CUDAExecutionProvider"  # the route taken: no emulation
    assert result.details["precision_emulation"] is None
    assert count.opened == ["model.fp16.onnx", "model.sim.fp16.onnx"]
    assert count.most_open == 2 and not count.open  # all closed when the check ended


def test_an_fp16_check_on_cpu_closes_the_sessions_that_only_load_the_converted_graph(monkeypatch):
    """On CPU (spawn_runtime option, sessions counted as above, the CPU provider reported as it is) the converted
    graphs are loaded, then their emulation graphs run: the loading sessions are closed first."""
    from pytest_deploy.backends import onnx as onnx_backend

    count = SessionCount(claim_cuda=False)
    monkeypatch.setattr(onnx_backend, "spawned_runtime", count)
    result = verify(cnn(), "onnx", inputs=INPUTS, dims=DIMS, examples=2, precision="fp16", isolate="none",
                    cache_dir=None, backend_options={"spawn_runtime": True})
    assert result.passed, result.message
    assert count.opened == ["model.fp16.onnx", "model.sim.fp16.onnx", "model.fp16.emulated.onnx",
                            "model.sim.fp16.emulated.onnx"]
    assert count.most_open == 2 and not count.open
