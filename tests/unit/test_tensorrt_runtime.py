"""The ``tensorrt`` backend's runtime and build plumbing on CPU: what ``TrtRuntime`` feeds Polygraphy's ``TrtRunner``
(a stub standing in for it, holding to the rules runner.py states), the copies of its outputs and its close, the
builder worker started only for a build, the timing cache's lock, trtexec's process handling (a fake ``trtexec``
script) and the ONNX export's external-data threshold. TensorRT itself runs in ``tests/integration/test_tensorrt.py``.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from pytest_deploy.backends.tensorrt_engine import TrtRuntime

polygraphy_array = pytest.importorskip("polygraphy.util.array")


class StubEngine:
    """The engine's one question the runtime asks: is an input a shape tensor (its values read on the host)?"""

    def __init__(self, shape_inputs=()):
        self.shape_inputs = set(shape_inputs)

    def is_shape_inference_io(self, name: str) -> bool:
        return name in self.shape_inputs


class StubRunner:
    """Stands in for Polygraphy's ``TrtRunner``: keeps each feed, refuses a shape tensor outside host memory as
    ``TrtRunner._infer_impl`` does, and returns views of one host buffer per output that every infer overwrites (what
    ``copy_outputs_to_host=True`` gives: ``_get_array_on_cpu`` reuses ``host_output_buffers``)."""

    def __init__(self, engine: StubEngine):
        self.engine = engine
        self.feeds: list[OrderedDict] = []
        self.host_buffer = torch.zeros(4)
        self.is_active = True
        self.deactivations = 0

    def infer(self, feed, copy_outputs_to_host=None):
        for name, array in feed.items():
            if self.engine.is_shape_inference_io(name) and not polygraphy_array.is_on_cpu(array):
                raise AssertionError(f"TrtRunner refuses shape tensor {name} outside host memory")
        self.feeds.append(feed)
        self.host_buffer.fill_(len(self.feeds))  # this infer's result, in the reused buffer
        return OrderedDict(out=self.host_buffer[:2])

    def deactivate(self):
        self.is_active = False
        self.deactivations += 1


def runtime(inputs=("x",), shape_inputs=(), device="cpu") -> tuple[TrtRuntime, StubRunner]:
    rt = object.__new__(TrtRuntime)
    rt.runner = StubRunner(StubEngine(shape_inputs))
    rt.declared = list(inputs)
    rt.inputs = list(inputs)
    rt.outputs = ["out"]
    rt.device = device
    return rt, rt.runner


# ------------------------------------------------------------------------------ TrtRuntime


def test_shape_tensor_inputs_stay_on_the_host_and_the_others_go_to_the_device():
    """The meta device stands in for CUDA: anything not on the CPU is what TrtRunner refuses for a shape tensor."""
    rt, runner = runtime(inputs=("x", "target"), shape_inputs={"target"}, device="meta")
    x, target = torch.randn(2, 3).t(), torch.tensor([3, 2])
    rt.run((x, target))
    feed = runner.feeds[0]
    assert feed["target"].device.type == "cpu" and torch.equal(feed["target"], target)
    assert feed["x"].device.type == "meta" and feed["x"].is_contiguous() and feed["x"].shape == (3, 2)

