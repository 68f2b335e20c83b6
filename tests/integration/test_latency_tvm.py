"""--deploy-tvm-tune beside --deploy-latency (issue 27 item 4, in part): the tuned module timed beside the untuned one
in the same run; a second run reuses the tuning records."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pytest_deploy import tensor, verify
from pytest_deploy.backends import get_backend

pytestmark = pytest.mark.slow  # each tunes (4 trials) and compiles twice

FAST = {"budget": 0.2, "min_runs": 5, "warmup": 1}


class MatMuls(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(64, 64), nn.Linear(64, 64)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


@pytest.fixture
def tvm_here():
    reason = get_backend("tvm").unavailable_reason()
    if reason:
        pytest.skip(reason)


def test_a_tuned_module_is_timed_beside_its_untuned_twin_its_records_are_reused_and_no_twin_without_latency(
        tvm_here, tmp_path):
    """One test, one tuning (4 trials take minutes on 2 cores): the later checks reuse its records from the cache."""
    torch.manual_seed(0)

    def check(**kwargs):
        # a static shape: MetaSchedule tunes static-shape kernels only
        return verify(MatMuls().eval(), "tvm", inputs=[tensor(8, 64)], examples=1,
                      backend_options={"tvm_tune": 4}, cache_dir=tmp_path, **kwargs)

    first = check(latency=FAST)
    assert first.details["tvm_tuning"].startswith("tuned ")
    untuned = first.latency["variants"]["untuned"]["canonical"]
    assert untuned["ratio"] == pytest.approx(untuned["p50_ms"] / first.latency["shapes"][0]["p50_ms"])
    assert untuned["runs"] >= 2 and untuned["speedup"] > 0
    assert first.latency["knobs"]["tvm_tune_trials"] == 4
    second = check(latency=FAST)
    assert second.details["tvm_tuning"].startswith("database reused from the cache")
    assert "untuned" in second.latency["variants"]
    # without --deploy-latency nothing is timed, so no untuned twin is built
    plain = check(isolate="none", recheck=True)
    assert "tvm_untuned" not in plain.details and plain.latency is None
