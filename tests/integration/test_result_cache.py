"""Build once, cache by content: a check that passed before with the same key is not run again.

Builds are counted, not timed: the ``counting`` backend (registered below) appends a line to a log file
each time it builds, so a test can say how many builds a run made.
"""

from __future__ import annotations

import importlib
import json
import sys
import textwrap

import pytest
import torch

from pytest_deploy import Backend, register_backend, tensor, verify
from pytest_deploy.cache import RESULT_FILE
from pytest_deploy.fingerprint import check_key, reachable_files

SPEC = dict(inputs=[tensor("batch", 4)], dims={"batch": (1, 4)})


class Counting(Backend):
    """Runs the model itself; each build appends to the file named by the model's ``build_log``."""

    name = "counting"

    def build(self, ctx):
        with ctx.stage("compile"), open(ctx.model.build_log, "a") as fh:
            fh.write("build\n")
        model = ctx.model
        return lambda args: model(*args)


register_backend(Counting, replace=True)


class Net(torch.nn.Module):
    def __init__(self, log="", seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = torch.nn.Linear(4, 2)
        self.build_log = str(log)

    def forward(self, x):
        return self.fc(x)


def builds(log) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_one_build_per_check_however_many_examples_then_none_on_a_rerun(tmp_path):
    log, cache = tmp_path / "builds.log", tmp_path / "cache"
    first = verify(Net(log), "counting", examples=12, cache_dir=cache, isolate="none", **SPEC)
    assert first.examples == 12 and builds(log) == 1 and first.cached is False
    again = verify(Net(log), "counting", examples=12, cache_dir=cache, isolate="none", **SPEC)
    assert builds(log) == 1 and again.cached is True and again.passed
    assert "passed before" in again.details["reused"] and again.examples == 12
    assert again.timings == {"build": 0.0, "load": 0.0, "run": 0.0}  # nothing built or run this time
    assert again.details["original_timings"]["build"] == pytest.approx(first.timings["build"], abs=1e-4)
    # --deploy-recheck runs it again; --deploy-no-cache (no cache dir) always runs
    verify(Net(log), "counting", examples=12, cache_dir=cache, isolate="none", recheck=True, **SPEC)
    verify(Net(log), "counting", examples=12, isolate="none", **SPEC)
    assert builds(log) == 3


@pytest.mark.parametrize("change", ["weights", "examples", "seed", "dims", "tolerance", "backend option", "mode"])
def test_a_change_to_what_the_outcome_depends_on_misses_the_cache(tmp_path, change):
    log, cache = tmp_path / "builds.log", tmp_path / "cache"
    base = dict(examples=3, cache_dir=cache, isolate="none", **SPEC)
    verify(Net(log), "counting", **base)
    model, kw = Net(log), dict(base)
    if change == "weights":
        model = Net(log, seed=1)
    elif change == "examples":
        kw["examples"] = 4
    elif change == "seed":
        kw["seed"] = 1
    elif change == "dims":
        kw["dims"] = {"batch": (1, 5)}
    elif change == "tolerance":
        kw["atol"] = 1e-3
    elif change == "backend option":
        kw["backend_options"] = {"tvm_target": "llvm"}
    elif change == "mode":
        model = Net(log).eval()  # a module is in train mode until eval() is called
    result = verify(model, "counting", **kw)
    assert result.cached is False and builds(log) == 2
    assert verify(Net(log), "counting", **base).cached is True  # the original key still hits


def write(path, text):
    path.write_text(textwrap.dedent(text))
    importlib.invalidate_caches()


def test_the_key_covers_the_model_source_and_the_user_modules_it_reaches(tmp_path, monkeypatch):
    pkg = tmp_path / "src"
    pkg.mkdir()
    write(pkg / "cachedemo_helpers.py", "SCALE = 2.0\n")
    write(pkg / "cachedemo_unrelated.py", "X = 1\n")
    write(pkg / "cachedemo_model.py", """
        import torch
        import cachedemo_helpers

        class Scaled(torch.nn.Module):
            def forward(self, x):
                return x * cachedemo_helpers.SCALE
        """)
    monkeypatch.syspath_prepend(str(pkg))
    import cachedemo_model
    import cachedemo_unrelated  # noqa: F401  (loaded, but the model never refers to it)

    model = cachedemo_model.Scaled()
    files = reachable_files(model)
    assert str(pkg / "cachedemo_model.py") in files and str(pkg / "cachedemo_helpers.py") in files
    assert str(pkg / "cachedemo_unrelated.py") not in files
    assert not any("site-packages" in f for f in files)

    def key():
        return check_key(model, "trace", declared={"examples": 3}, options={})

    before = key()
    write(pkg / "cachedemo_unrelated.py", "X = 2\n")
    assert key() == before
    write(pkg / "cachedemo_helpers.py", "SCALE = 3.0\n")
    assert key() != before
    for name in ("cachedemo_model", "cachedemo_helpers", "cachedemo_unrelated"):
        sys.modules.pop(name, None)


def test_the_test_file_is_part_of_the_key(tmp_path):
    model = Net()
    test_file = tmp_path / "test_model.py"
    test_file.write_text("# v1\n")
    one = check_key(model, "trace", declared={}, options={}, files=[test_file])
    test_file.write_text("# v2\n")
    assert check_key(model, "trace", declared={}, options={}, files=[test_file]) != one


def test_a_corrupt_result_entry_is_discarded_and_the_check_runs_again(tmp_path):
    log, cache = tmp_path / "builds.log", tmp_path / "cache"
    verify(Net(log), "counting", examples=3, cache_dir=cache, isolate="none", **SPEC)
    (entry,) = list(cache.rglob(RESULT_FILE))
    data = json.loads(entry.read_text())
    data["outcome"] = "passed"
    data["examples"] = 99  # an edit the manifest's hash catches
    entry.write_text(json.dumps(data))
    again = verify(Net(log), "counting", examples=3, cache_dir=cache, isolate="none", **SPEC)
    assert again.cached is False and again.examples == 3 and builds(log) == 2
    (entry,) = list(cache.rglob(RESULT_FILE))
    assert json.loads(entry.read_text())["examples"] == 3  # rewritten by the rerun


def test_failures_are_not_cached(tmp_path):
    class Leaky(torch.nn.Module):
        def forward(self, x):
            return x + float(x.sum())  # a constant once traced

    cache = tmp_path / "cache"
    for _ in range(2):
        with pytest.raises(Exception, match="trace"):
            verify(Leaky(), "trace", examples=3, cache_dir=cache, isolate="none", **SPEC)
    assert not list(cache.rglob(RESULT_FILE))


XDIST_TESTS = """
import torch
from pytest_deploy import Backend, deployable, register_backend, tensor


class Counting(Backend):
    name = "counting"

    def build(self, ctx):
        def compile():
            with ctx.stage("compile"), open(LOG, "a") as fh:
                fh.write("build\\n")
            with open(ctx.path("artifact.txt"), "w") as fh:
                fh.write("what a compiler would write")

        ctx.cached_files("counting", {{}}, ["artifact.txt"], compile)
        model = ctx.model
        return lambda args: model(*args)


register_backend(Counting, replace=True)
LOG = {log!r}


def make():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 2)).eval()


# the same model twice (each test its own examples): whichever worker builds second waits for the first
# builder's lock, then loads the artifact it stored
@deployable(backends=["counting", "trace"], inputs=[tensor("batch", 4)], dims={{"batch": (1, 3)}}, examples=4)
def test_first():
    return make()


@deployable(backends=["counting", "trace"], inputs=[tensor("batch", 4)], dims={{"batch": (1, 3)}}, examples=4)
def test_second():
    return make()
"""


def test_two_xdist_workers_needing_the_same_artifact_build_it_once(pytester, tmp_path):
    log = tmp_path / "builds.log"
    pytester.makepyfile(test_twice=XDIST_TESTS.format(log=str(log)))
    result = pytester.runpytest_subprocess("-n", "2", f"--deploy-cache-dir={tmp_path / 'cache'}",
                                           "--deploy-report=report.json", timeout=240)
    result.assert_outcomes(passed=4)
    assert builds(log) == 1
    data = json.loads((pytester.path / "report.json").read_text())["results"]
    assert len(data) == 4 and all(r["outcome"] == "passed" for r in data)
    assert sorted(r["cached"] for r in data if r["backend"] == "counting") == [False, True]
    # a second session builds nothing and reports every check as cached
    again = pytester.runpytest_subprocess("-n", "2", f"--deploy-cache-dir={tmp_path / 'cache'}",
                                          "--deploy-report=report.json", timeout=240)
    again.assert_outcomes(passed=4)
    assert builds(log) == 1
    assert all(r["cached"] for r in json.loads((pytester.path / "report.json").read_text())["results"])


READONLY_TESTS = """
import torch
from pytest_deploy import deployable, tensor


@deployable(backends=["trace", "script"], inputs=[tensor("batch", 4)], dims={"batch": (1, 3)}, examples=3)
def test_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 2)).eval()
"""


@pytest.mark.parametrize("how", ["option", "ini"])
def test_a_read_only_cache_is_read_and_never_written(pytester, tmp_path, how):
    cache = tmp_path / "cache"
    pytester.makepyfile(test_ro=READONLY_TESTS)
    args = [f"--deploy-cache-dir={cache}", "--deploy-report=report.json", "-p", "no:cacheprovider"]
    if how == "ini":
        pytester.makeini("[pytest]\ndeploy_cache_readonly = true\n")
    readonly = ["--deploy-cache-readonly"] if how == "option" else []
    pytester.runpytest_inprocess(*args, *readonly).assert_outcomes(passed=2)
    assert not cache.exists() or not list(cache.rglob("*"))  # nothing written, not even a lock file
    # a cache filled by a trusted run is read (and verified) by the read-only one, and left as it was
    if how == "ini":
        pytester.makeini("[pytest]\n")
    pytester.runpytest_inprocess(*args).assert_outcomes(passed=2)
    if how == "ini":
        pytester.makeini("[pytest]\ndeploy_cache_readonly = true\n")
    before = sorted(str(p) for p in cache.rglob("*"))
    pytester.runpytest_inprocess(*args, *readonly).assert_outcomes(passed=2)
    assert all(r["cached"] for r in json.loads((pytester.path / "report.json").read_text())["results"])
    assert sorted(str(p) for p in cache.rglob("*")) == before
