"""The benchmark workload written for pytest-torch (https://pypi.org/project/pytest-torch/), the closest peer.

Same three models (``models.py``, shared with ``benchmarks/workload/test_workload.py``), the backends both
tools have (TorchScript trace, torch.export, ONNX Runtime) and the same example count (``WORKLOAD_EXAMPLES``,
default 20) with the same dims: batch 1-8 (and seq 2-16 for the transformer), the first input at the sizes
pytest-deploy builds from (batch 2, seq 3), values uniform in [-1, 1]. Two styles, both pytest-torch's idiom:

* ``test_*_examples``: pytest-torch has no generated examples, so the test loops over the inputs itself
  (drawn with its ``make_tensor`` fixture, dims from a seeded ``random.Random``). Its parity helpers build
  the artifact from the inputs they are given: ``assert_torchscript_parity`` traces and
  ``assert_onnx_parity`` exports once per call, so the loop calls them once per input (20 traces, 20 ONNX
  exports per model, each checked on the one input it was built from); ``assert_export_parity`` takes
  further inputs (``*more_inputs``) for one exported program with ``dynamic_shapes``, so export is built
  once and checked on all 20.
* ``TestSuite*``: ``ModelSuite`` with checks torchscript, export and onnx, what pytest-torch's docs put
  first: one input per check (export with ``dynamic_batch``: the input and a half batch).

Tolerances are pytest-torch's defaults. Nothing is saved to disk and loaded back except the ONNX file
(the helpers keep the traced module and the exported program in memory).
"""

import os
import random

import pytest

pytest.importorskip("pytest_torch", reason="pytest-torch is a benchmark-only dependency: requirements-bench.txt")

import torch  # noqa: E402
from models import SPECS, build  # noqa: E402

from pytest_torch import ModelSuite, assert_export_parity, assert_onnx_parity, assert_torchscript_parity  # noqa: E402

EXAMPLES = int(os.environ.get("WORKLOAD_EXAMPLES", "20"))
MODELS = ["cnn", "transformer", "mlp"]
FIRST = {"batch": 2, "seq": 3}  # pytest-deploy's canonical sizes for these specs


def inputs(name, make_tensor, count=EXAMPLES, seed=0):
    """``count`` inputs for model ``name``: the first at FIRST's sizes, then dims drawn within bounds."""
    shape, dims = SPECS[name]["shape"], SPECS[name]["dims"]
    rng = random.Random(seed)
    out = []
    for i in range(count):
        sizes = FIRST if i == 0 else {d: rng.randint(lo, hi) for d, (lo, hi) in dims.items()}
        out.append(make_tensor(*[sizes[d] if isinstance(d, str) else d for d in shape], kind="uniform"))
    return out


@pytest.mark.parametrize("name", MODELS)
def test_trace_examples(name, make_tensor):
    model = build(name)
    for x in inputs(name, make_tensor):
        assert_torchscript_parity(model, x, mode="trace")


@pytest.mark.parametrize("name", MODELS)
def test_export_examples(name, make_tensor):
    model = build(name)
    first, *more = inputs(name, make_tensor)
    shape, dims = SPECS[name]["shape"], SPECS[name]["dims"]
    made = {d: torch.export.Dim(d, min=lo, max=hi) for d, (lo, hi) in dims.items()}
    dynamic = ({axis: made[d] for axis, d in enumerate(shape) if d in made},)
    assert_export_parity(model, first, *more, dynamic_shapes=dynamic)


@pytest.mark.parametrize("name", MODELS)
def test_onnx_examples(name, make_tensor):
    model = build(name)
    for x in inputs(name, make_tensor):
        # dynamo=True: the exporter pytest-deploy uses (also torch 2.13's default)
        assert_onnx_parity(model, x, export_kwargs={"dynamo": True})


class _Suite(ModelSuite):
    checks = ("torchscript", "export", "onnx")
    dynamic_batch = True  # export: also run a half batch through the program
    name = ""

    def make_model(self):
        return build(self.name)

    def make_inputs(self, make_tensor):
        return inputs(self.name, make_tensor, count=1)[0].repeat_interleave(2, 0)  # batch 4: dynamic_batch halves it


class TestSuiteCnn(_Suite):
    name = "cnn"


class TestSuiteTransformer(_Suite):
    name = "transformer"


class TestSuiteMlp(_Suite):
    name = "mlp"
