"""AOTInductor through pytest-deploy, for real: compile (tens of seconds), cache, reload, run.

These are the slowest tests of the suite (one real C++ compile, then cache hits); CI runs them.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from pytest_deploy import BackendUnavailable, DeployFailure, tensor, verify
from pytest_deploy.backends import aoti as aoti_backend

pytestmark = pytest.mark.slow


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))

    def forward(self, x):
        return self.net(x)


SPEC = dict(inputs=[tensor("batch", 16)], dims={"batch": (1, 8)}, examples=6)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("aoti-cache")


@pytest.fixture(scope="module")
def cold(cache_dir):
    """One real compile, shared by the tests below; records the batch sizes eager saw."""
    model = MLP().eval()
    sizes = []
    def hook(module, args, out):  # eager runs only: during export the hook sees symbolic sizes
        if isinstance(args[0].shape[0], int):
            sizes.append(args[0].shape[0])

    model.register_forward_hook(hook)
    return verify(model, "aoti", cache_dir=cache_dir, isolate="none", **SPEC), sizes


def test_aoti_compiles_runs_and_matches_eager_across_batch_sizes(cold):
    result, sizes = cold
    assert result.outcome == "passed" and result.backend == "aoti"
    assert result.cached is False and result.timings["build"] > 0
    assert result.examples == 6 and result.max_abs_error <= result.atol
    assert len(set(sizes)) >= 3, f"only batch sizes {sorted(set(sizes))} ran"


def test_inductor_keeps_its_precompiled_headers_in_the_artifact_cache(cold, cache_dir):
    """283 MB of headers: under the artifact cache (reused next session), never in a check's work directory or
    the system temp dir, whichever check first imported inductor's code cache."""
    import sys
    from pathlib import Path

    codecache = sys.modules["torch._inductor.codecache"]
    assert Path(codecache._HEADER_DIR) == cache_dir / "inductor" / "precompiled_headers"
    headers = list((cache_dir / "inductor" / "precompiled_headers").glob("*.gch"))
    assert headers, "the compile precompiled no header in the artifact cache"


def test_second_run_loads_the_package_from_the_cache(cold, cache_dir):
    first, _ = cold
    # recheck: run the check again (not reuse its passing result), so the package is loaded from the cache
    again = verify(MLP().eval(), "aoti", cache_dir=cache_dir, recheck=True, **SPEC)
    assert again.outcome == "passed" and again.cached is True
    assert again.details["cache_key"] == first.details["cache_key"]
    # changed weights are another program: a miss, compiled afresh (not run here: it costs a compile)
    from pytest_deploy.cache import make_key, program_fingerprint

    x = torch.randn(3, 16)
    dims = {0: torch.export.Dim("batch", min=1, max=8)}
    a = program_fingerprint(torch.export.export(MLP().eval(), (x,), dynamic_shapes=(dims,)))
    changed = MLP().eval()
    with torch.no_grad():
        changed.net[0].bias.add_(1)
    b = program_fingerprint(torch.export.export(changed, (x,), dynamic_shapes=(dims,)))
    assert a != b and make_key("aoti", a) != make_key("aoti", b)


def test_a_corrupt_cache_entry_is_rebuilt_not_loaded(cold, cache_dir, tmp_path):
    # copy the warm cache, then truncate the package in the copy
    copy = tmp_path / "cache"
    shutil.copytree(cache_dir, copy, ignore=shutil.ignore_patterns("inductor"))
    (copy / "inductor").symlink_to(cache_dir / "inductor")  # inductor's headers (283 MB) shared, not copied
    (package,) = list(copy.rglob(aoti_backend.PACKAGE))
    package.write_bytes(package.read_bytes()[:100])
    result = verify(MLP().eval(), "aoti", cache_dir=copy, recheck=True, **SPEC)
    assert result.outcome == "passed" and result.cached is False
    assert any("does not match its recorded hash" in e for e in result.details["cache_events"])
    (rebuilt,) = list(copy.rglob(aoti_backend.PACKAGE))
    assert rebuilt.stat().st_size > 100


def test_aoti_without_a_compiler_is_unavailable(monkeypatch):
    monkeypatch.setattr(aoti_backend.shutil, "which", lambda name: None)
    with pytest.raises(BackendUnavailable, match="no C\\+\\+ compiler .* on PATH"):
        verify(MLP().eval(), "aoti", **SPEC)


def test_aoti_refuses_data_dependent_control_flow_at_export():
    class Branchy(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return x * 2
            return x

    with pytest.raises(DeployFailure) as info:
        verify(Branchy(), "aoti", **SPEC)
    assert info.value.result.stage == "export"
    assert "refuses data-dependent control flow" in str(info.value) and "if x.sum() > 0:" in str(info.value)
