"""Where it broke: real failing checks, each located to the module (and line) where its outputs start to differ.

Every divergence here is real, found on this machine, not injected:

- onnx: ``nn.AdaptiveAvgPool2d((2, 2))`` under a dynamic H=W. The ONNX exporter decomposes it into an
  ``AveragePool`` whose kernel is fixed from the export example (8 → kernel 4, stride 4) and drops the guard
  ``size % 2 == 0``, so ONNX Runtime silently averages the wrong windows for H=W=9 (error ~0.04 at the logits);
- trace: a data-dependent ``if`` inside a child module, frozen by the tracer;
- script: Python's unbounded ``int`` against TorchScript's int64 (a multiplicative hash of the length overflows);
- export: a child that takes another path while being exported (``torch.compiler.is_compiling()``);
- tvm: TVM's kernels round differently from eager (~1e-7) and the check asks for exact outputs (atol=rtol=0).
"""

from __future__ import annotations

import importlib.util
import json

import helpers  # tests/integration/helpers.py
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pytest_deploy import tensor

pytestmark = pytest.mark.filterwarnings("ignore")


def located(backend, model, inputs, dims, **kwargs):
    result, message = helpers.check(backend, model, inputs, dims, **kwargs)
    assert message is not None, f"{backend} was expected to fail"
    return result, message


# ---------------------------------------------------------------------------------------------- models


class PoolNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d((2, 2))
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


class BarePool(nn.Module):
    """No named children: localisation falls back to the graph node and its line."""

    def forward(self, x):
        return F.adaptive_avg_pool2d(x * 2, (2, 2)).flatten(1) + 1  # the pooling line


class Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        y = self.lin(x)
        if x[0, 0] > 0:
            return y * 2
        return y - 1


class GateNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.pre = nn.Linear(4, 4)
        self.gate = Gate()
        self.post = nn.Linear(4, 3)

    def forward(self, x):
        return self.post(self.gate(self.pre(x)))


class EarlyExit(nn.Module):
    """Takes ``deep`` only for some inputs: a trace built from the other path has no ``deep`` submodule."""

    def __init__(self):
        super().__init__()
        self.quick = nn.Linear(4, 3)
        self.deep = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x):
        if x.mean() > 0:
            return self.quick(x)
        return self.deep(x)


class PairGate(nn.Module):
    """A child whose output is a tuple."""

    def __init__(self):
        super().__init__()
        self.gate = Gate()

    def forward(self, x):
        y = self.gate(x)
        return y, y.sum(-1)


class DictNet(nn.Module):
    """Outputs a tuple holding a dict."""

    def __init__(self):
        super().__init__()
        self.pre = nn.Linear(4, 4)
        self.pair = PairGate()

    def forward(self, x):
        a, b = self.pair(self.pre(x))
        return {"features": a, "sum": b}, a.mean(-1)


class Shared(nn.Module):
    """One Gate called twice (weight sharing)."""

    def __init__(self):
        super().__init__()
        self.pre = nn.Linear(4, 4)
        self.gate = Gate()

    def forward(self, x):
        h = self.pre(x)
        return self.gate(self.gate(h))


class LengthHash(nn.Module):
    def forward(self, x):
        bucket = (x.size(-1) * 6364136223846793005) % 7  # Python: exact; TorchScript: int64 wraps around
        return x + bucket


class Hashed(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.hash = LengthHash()

    def forward(self, x):
        return self.hash(self.lin(x))


class SharedHash(nn.Module):
    """One LengthHash called twice: on width 1 (no overflow, agrees), then on width 4 (overflows)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.hash = LengthHash()

    def forward(self, x):
        h = self.lin(x)
        first = self.hash(h[..., :1])
        return self.hash(h) + first


class Attention(nn.Module):
    """Self-attention with a data-dependent temperature: a branch the tracer freezes."""

    def __init__(self, d):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, -1)
        scores = q @ k.transpose(-1, -2) / q.size(-1) ** 0.5
        if scores.amax() > 0.5:
            scores = scores / 2
        return self.out(scores.softmax(-1) @ v)


class Layer(nn.Module):
    def __init__(self, d, attention):
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = attention
        self.norm2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.ff(self.norm2(x))


class PlainAttention(Attention):
    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, -1)
        return self.out((q @ k.transpose(-1, -2) / q.size(-1) ** 0.5).softmax(-1) @ v)


class Transformer(nn.Module):
    """Two pre-norm layers; the second one's attention has the data-dependent branch."""

    def __init__(self, d=8):
        super().__init__()
        self.embed = nn.Linear(4, d)
        self.layers = nn.ModuleList([Layer(d, PlainAttention(d)), Layer(d, Attention(d))])
        self.head = nn.Linear(d, 2)

    def forward(self, x):
        x = self.embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


# ---------------------------------------------------------------------------------------------- onnx


def test_onnx_adaptive_avg_pool_located_to_the_submodule():
    torch.manual_seed(0)
    result, message = located("onnx", PoolNet(), [tensor(1, 3, "s", "s")], {"s": (8, 11)})
    assert result.stage == "compare"
    div = result.divergence
    assert div is not None, result.details.get("divergence_error")
    assert (div["module"], div["type"], div["node"]) == ("pool", "AdaptiveAvgPool2d", "adaptive_avg_pool2d")
    assert div["file"].endswith("test_localize.py")
    assert div["max_abs_error"] > result.atol and div["input_max_abs_error"] <= result.atol
    assert "\ndiverges first at pool (AdaptiveAvgPool2d, node adaptive_avg_pool2d) at " in message
    assert "outputs differ from eager PyTorch" in message  # the original failure stays
    rows = result.details["node_errors"]
    assert [r["node"] for r in rows][:3] == ["conv2d", "relu", "adaptive_avg_pool2d"]
    assert json.loads(json.dumps(result.to_json()))["divergence"]["module"] == "pool"


def test_onnx_localised_through_the_spawned_runtime_as_cuda_checks_run():
    torch.manual_seed(0)
    result, message = located("onnx", PoolNet(), [tensor(1, 3, "s", "s")], {"s": (8, 11)},
                              backend_options={"spawn_runtime": True})
    assert result.details["isolated"].startswith("spawned worker process")
    div = result.divergence
    assert div is not None, result.details.get("divergence_error")
    assert (div["module"], div["node"]) == ("pool", "adaptive_avg_pool2d")


def test_onnx_model_without_children_located_to_the_node_and_line():
    result, message = located("onnx", BarePool(), [tensor(1, 3, "s", "s")], {"s": (8, 11)})
    div = result.divergence
    assert div is not None, result.details.get("divergence_error")
    assert (div["module"], div["type"], div["node"]) == ("", "BarePool", "adaptive_avg_pool2d")
    assert div["line"] == helpers.line_of(__file__, "return F.adaptive_avg_pool2d(x * 2, (2, 2)).flatten(1) + 1  # the pooling line")
    assert "diverges first at the model itself (BarePool, node adaptive_avg_pool2d)" in message


# ---------------------------------------------------------------------------------------------- trace, script


def test_trace_data_dependent_if_located_to_the_child():
    torch.manual_seed(0)
    result, message = located("trace", GateNet(), [tensor("batch", 4)], {"batch": (1, 4)})
    assert result.stage == "branches"  # the trace-lost branch message stays first
    assert message.startswith("trace: stage branches: trace-lost branch at ")
    div = result.divergence
    assert (div["module"], div["type"], div["input_max_abs_error"]) == ("gate", "Gate", 0.0)
    assert div["line"] == helpers.line_of(__file__, "def forward(self, x):", after="class Gate(nn.Module):")
    assert "\ndiverges first at gate (Gate) at " in message
    assert [r["module"] for r in result.details["node_errors"]] == ["", "pre", "gate", "gate.lin"]


def test_trace_lost_branch_whose_submodule_the_artifact_lacks_says_so():
    torch.manual_seed(0)
    result, message = located("trace", EarlyExit(), [tensor("batch", 4)], {"batch": (1, 4)})
    assert result.stage == "branches"
    div = result.divergence
    assert div is not None and div["module"] == "", result.details.get("divergence_error")  # the model itself
    error = result.details["divergence_error"]
    missing = "quick" if "could not replay quick, which is not in the artifact" in error else "deep"
    assert f"could not replay {missing}, which is not in the artifact" in error
    assert "a traced artifact keeps only the submodules its traced path called" in error


def test_script_int_overflow_located_to_the_child():
    result, message = located("script", Hashed(), [tensor(2, 3, "n")], {"n": (1, 9)})
    div = result.divergence
    assert (div["module"], div["type"]) == ("hash", "LengthHash")
    assert "\ndiverges first at hash (LengthHash) at " in message
    assert result.details["node_errors"][1] == {"module": "lin", "node": "lin", "max_abs_error": 0.0,
                                                "input_max_abs_error": 0.0}


def test_trace_dict_and_tuple_outputs():
    torch.manual_seed(0)
    result, message = located("trace", DictNet(), [tensor("batch", 4)], {"batch": (1, 4)})
    div = result.divergence
    assert div is not None, result.details.get("divergence_error")
    assert (div["module"], div["type"]) == ("pair.gate", "Gate")  # descended through the tuple-returning child
    assert [r["module"] for r in result.details["node_errors"]][:4] == ["", "pre", "pair", "pair.gate"]


def test_script_module_called_twice_reports_which_call():
    result, message = located("script", SharedHash(), [tensor("batch", 4)], {"batch": (1, 3)})
    div = result.divergence
    assert (div["module"], div["call"], div["node"]) == ("hash", 1, "hash#1")  # the first call agrees
    assert [r["node"] for r in result.details["node_errors"]] == ["(model)", "lin", "hash", "hash#1"]
    assert "\ndiverges first at hash (LengthHash, call 2) at " in message


def test_trace_module_called_twice_says_replay_cannot_tell_the_calls_apart():
    torch.manual_seed(0)
    result, message = located("trace", Shared(), [tensor("batch", 4)], {"batch": (1, 4)})
    div = result.divergence
    # trace keeps one traced forward for gate: replayed alone, neither call diverges; the model does
    assert (div["module"], div["type"]) == ("", "Shared")
    assert "gate (2 calls) called several times here" in result.details["divergence_error"]
    assert [r["node"] for r in result.details["node_errors"]] == ["(model)", "pre", "gate", "gate#1"]
    assert "diverges first at the model itself (Shared)" in message


def test_two_layer_transformer_located_within_the_budget():
    torch.manual_seed(0)
    result, message = located("trace", Transformer(), [tensor(1, "seq", 4)], {"seq": (2, 6)})
    div = result.divergence
    assert div is not None, result.details.get("divergence_error")
    assert (div["module"], div["type"]) == ("layers.1.attn", "Attention")
    assert result.details["localize_seconds"] < 60 and "budget_exhausted" not in div
    modules = [r["module"] for r in result.details["node_errors"]]
    assert modules.index("layers.1") > modules.index("layers.0")  # layer 0 replayed, agreed, passed over


# ---------------------------------------------------------------------------------------------- never hides


def test_localisation_that_raises_keeps_the_original_failure(monkeypatch):
    import pytest_deploy.backends.torchscript as ts

    def broken(*args, **kwargs):
        raise RuntimeError("replay exploded")

    monkeypatch.setattr(ts, "replay", broken)
    result, message = located("script", Hashed(), [tensor(2, 3, "n")], {"n": (1, 9)})
    assert result.stage == "compare" and result.divergence is None
    assert result.details["divergence_error"] == "localisation itself failed: RuntimeError: replay exploded"
    assert "outputs differ from eager PyTorch" in message
    assert "diverges first at: not located (localisation itself failed: RuntimeError: replay exploded)" in message


def test_budget_zero_turns_it_off_and_a_tiny_budget_reports_so():
    result, message = located("script", Hashed(), [tensor(2, 3, "n")], {"n": (1, 9)},
                              backend_options={"localize_budget": 0})
    assert result.divergence is None and "diverges first" not in message
    assert "divergence_error" not in result.details
    result, message = located("script", Hashed(), [tensor(2, 3, "n")], {"n": (1, 9)},
                              backend_options={"localize_budget": 1e-9})
    assert "localize_budget_exhausted" in result.details
    assert "outputs differ from eager PyTorch" in message


def test_keep_artifacts_writes_the_node_table_and_plot(tmp_path):
    torch.manual_seed(0)
    result, message = located("trace", GateNet(), [tensor("batch", 4)], {"batch": (1, 4)},
                              keep_artifacts=str(tmp_path))
    [kept] = [p.parent for p in tmp_path.rglob("node_errors.csv")]
    lines = (kept / "node_errors.csv").read_text().splitlines()
    assert lines[0] == "order,module,node,max_abs_error,input_max_abs_error"
    assert lines[3].startswith("2,gate,gate,")
    assert (kept / "node_errors.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------------------------- tvm


@pytest.mark.skipif(importlib.util.find_spec("tvm") is None, reason="apache-tvm not installed")
def test_tvm_module_level_and_says_it_cannot_go_finer():
    torch.manual_seed(0)
    result, message = located("tvm", helpers.SmallCNN(), [tensor(1, 3, 8, 8)], {}, atol=0, rtol=0, examples=2)
    div = result.divergence
    assert div is not None, result.details.get("divergence_error")
    assert div["module"].startswith("features") and div["method"] == "replay"
    assert result.details["divergence_error"].startswith("tvm: located to a module, not finer")
    assert "diverges first at features" in message


# ---------------------------------------------------------------------------------------------- export


class FastGelu(nn.Module):
    """Takes another path under torch.export (is_compiling() is True while exporting), as library code does."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        y = self.lin(x)
        if torch.compiler.is_compiling():
            return y * torch.sigmoid(1.702 * y)  # the sigmoid approximation of GELU, ~1e-3 off
        return F.gelu(y)


class GeluNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.pre = nn.Linear(4, 4)
        self.act = FastGelu()
        self.post = nn.Linear(4, 2)

    def forward(self, x):
        return self.post(self.act(self.pre(x)))


def test_export_located_through_the_unflattened_program():
    torch.manual_seed(0)
    result, message = located("export", GeluNet(), [tensor("batch", 4)], {"batch": (1, 4)})
    div = result.divergence
    assert div is not None, result.details.get("divergence_error")
    assert (div["module"], div["type"], div["method"]) == ("act", "FastGelu", "replay")
    assert [r["module"] for r in result.details["node_errors"]] == ["", "pre", "act", "act.lin"]
    assert "\ndiverges first at act (FastGelu) at " in message


# ---------------------------------------------------------------------------------------------- the option


PLUGIN_TEST = '''
import torch
from torch import nn

from pytest_deploy import deployable, tensor


class LengthHash(nn.Module):
    def forward(self, x):
        return x + (x.size(-1) * 6364136223846793005) % 7


class Hashed(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.hash = LengthHash()

    def forward(self, x):
        return self.hash(self.lin(x))


@deployable(backends=["script"], inputs=[tensor(2, 4)], examples=2)
def test_hashed():
    return Hashed().eval()
'''


@pytest.mark.parametrize("flags, located_there", [((), True), (("--deploy-localize-budget=0",), False)])
def test_the_option_reaches_the_check(pytester, flags, located_there):
    pytester.makepyfile(test_hashed=PLUGIN_TEST)
    result = pytester.runpytest("-p", "no:cacheprovider", "--deploy-report=out.json", *flags)
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    line = helpers.line_of(str(pytester.path / "test_hashed.py"), "def forward(self, x):")  # LengthHash's
    assert (f"\ndiverges first at hash (LengthHash) at test_hashed.py:{line}\n" in text) is located_there
    [entry] = json.loads((pytester.path / "out.json").read_text())["results"]
    assert (entry["divergence"] is not None) is located_there
    assert entry["stage"] == "compare"


def test_the_ini_budget_is_validated(pytester):
    pytester.makeini("[pytest]\ndeploy_localize_budget = soon\n")
    pytester.makepyfile(test_hashed=PLUGIN_TEST)
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert "ini deploy_localize_budget: 'soon' is not a number of seconds" in result.stdout.str() + result.stderr.str()
