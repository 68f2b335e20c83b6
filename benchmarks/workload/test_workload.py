"""The benchmark workload as a user would write it: three models, five backends, 20 examples each.

    pytest benchmarks/workload                      # what benchmarks/bench_overhead.py times
    pytest benchmarks/workload -k mlp               # one model

``WORKLOAD_EXAMPLES`` (environment) overrides the example count, so the benchmarks' --quick mode
can run the same file with fewer examples (a marker's ``examples=`` wins over --deploy-examples).
"""

import os

from models import build

from pytest_deploy import deployable, tensor

BACKENDS = ["trace", "script", "export", "onnx", "tvm"]
EXAMPLES = int(os.environ.get("WORKLOAD_EXAMPLES", "20"))


@deployable(
    backends=BACKENDS,
    inputs=[tensor("batch", 3, 32, 32)],
    dims={"batch": (1, 8)},
    examples=EXAMPLES,
)
def test_cnn():
    return build("cnn")


@deployable(
    backends=BACKENDS,
    inputs=[tensor("batch", "seq", 32)],
    dims={"batch": (1, 8), "seq": (2, 16)},
    examples=EXAMPLES,
)
def test_transformer():
    return build("transformer")


@deployable(
    backends=BACKENDS,
    inputs=[tensor("batch", 64)],
    dims={"batch": (1, 8)},
    examples=EXAMPLES,
)
def test_mlp():
    return build("mlp")
