"""--deploy-latency (issue 27): the artifact timed beside eager after it passed, the gates, the baseline.

No test here asserts on wall time: they check the figures' structure and consistency, and gates set far above or
below any figure this machine can measure (a speedup of 1000, of 0.0001)."""

from __future__ import annotations

import statistics
import sys

import pytest
import torch
from torch import nn

from pytest_deploy import DeployFailure, SpecError, tensor, verify
from pytest_deploy.backends import get_backend
from pytest_deploy.latency import parse_settings, summarise

#: a tiny budget: every test stays fast, whatever the rule decides
FAST = {"budget": 0.2, "min_runs": 5, "warmup": 1}


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()


def run(backend: str, latency, **kwargs):
    return verify(mlp(), backend, inputs=[tensor("batch", 16)], dims={"batch": (1, 8)}, examples=2, latency=latency,
                  **kwargs)


def needs(backend: str) -> None:
    reason = get_backend(backend).unavailable_reason()
    if reason:
        pytest.skip(reason)


def test_trace_is_timed_on_the_canonical_example_and_the_upper_corner():
    result = run("trace", FAST, isolate="none")
    lat = result.latency
    assert [s["label"] for s in lat["shapes"]] == ["canonical", "upper"]
    canonical, upper = lat["shapes"]
    assert upper["dims"] == {"batch": 8} and upper["shapes"] == [[8, 16]]
    assert canonical["dims"]["batch"] != 8
    for shape in lat["shapes"]:
        assert shape["runs"] == shape["eager"]["runs"] >= 2  # interleaved: one eager run per artifact run
        assert shape["stopped"] in ("stable", "budget", "max_runs")
        if shape["stopped"] == "stable":
            assert shape["runs"] >= FAST["min_runs"]
        assert 0 < shape["p50_ms"] <= shape["p90_ms"] <= shape["p99_ms"]
        # the median of the paired ratios (eager / artifact, run back to back), every sample kept below 200 runs
        if shape["runs"] <= 200:
            ratios = [e / a for e, a in zip(shape["eager_samples_ms"], shape["samples_ms"])]
            assert shape["speedup"] == pytest.approx(statistics.median(ratios), rel=1e-3)
        assert len(shape["samples_ms"]) == min(shape["runs"], 200)
        assert statistics.median(shape["samples_ms"]) == pytest.approx(shape["p50_ms"], rel=1e-3) or shape["runs"] > 200
    assert lat["p50_ms"] == canonical["p50_ms"] and lat["speedup"] == canonical["speedup"]
    assert lat["threads"]["torch"] == 1 and lat["knobs"]["threads"] == 1
    assert lat["statistics"].startswith("pyperf") == ("pyperf" in sys.modules or _has_pyperf())
    assert result.timings["latency"] > 0


def _has_pyperf() -> bool:
    import importlib.util

    return importlib.util.find_spec("pyperf") is not None


def test_threads_are_restored_after_the_check():
    before = torch.get_num_threads()
    run("trace", {**FAST, "threads": 1}, isolate="none")
    assert torch.get_num_threads() == before


def test_onnx_is_timed_in_its_worker_with_ort_threads_pinned():
    needs("onnx")
    result = run("onnx", {**FAST, "threads": 2})
    lat = result.latency
    assert result.details["isolated"] == "worker process"
    # a forked worker runs PyTorch on one thread, and ONNX Runtime gets the same
    assert lat["threads"]["torch"] == 1 and lat["threads"]["requested"] == 2 and "note" in lat["threads"]
    assert lat["knobs"]["onnxruntime_threads"] == 1
    assert lat["knobs"]["onnxruntime_provider"] == "CPUExecutionProvider"
    assert {s["label"] for s in lat["shapes"]} == {"canonical", "upper"}


def test_a_model_with_fixed_shapes_is_timed_on_its_example_only():
    model = mlp()
    result = verify(model, "trace", inputs=[tensor(3, 16)], examples=1, latency=FAST, isolate="none")
    assert [s["label"] for s in result.latency["shapes"]] == ["canonical"]


def test_latency_off_leaves_no_figures():
    assert run("trace", None, isolate="none").latency is None
    assert run("trace", False, isolate="none").latency is None


def test_a_latency_check_is_never_answered_from_the_result_cache(tmp_path):
    first = run("trace", FAST, isolate="none", cache_dir=tmp_path)
    second = run("trace", FAST, isolate="none", cache_dir=tmp_path)
    assert not second.details.get("reused") and second.latency is not None
    assert first.latency is not None
    # and a check without latency is not answered by one that had it (nothing was stored)
    third = run("trace", None, isolate="none", cache_dir=tmp_path)
    assert not third.details.get("reused") and third.latency is None


@pytest.mark.parametrize(("value", "text"), [
    ("yes", "must be True, False or a dict"),
    ({"budgett": 1}, "unknown key(s) 'budgett'"),
    ({"budget": 0}, "latency['budget']=0 must be a positive number of seconds"),
    ({"min_runs": 0}, "must be a whole number of at least 1"),
    ({"min_speedup": -1}, "must be a positive number, or None"),
    ({"tolerance": 1.5}, "must be a fraction"),
    ({"min_runs": 10, "max_runs": 5}, "max_runs=5 is below min_runs=10"),
])
def test_bad_latency_settings_are_refused_with_the_key(value, text):
    with pytest.raises(SpecError, match=None) as info:
        run("trace", value, isolate="none")
    assert text in str(info.value) and "verify()" in str(info.value)


def test_statistics_fall_back_to_the_standard_library(monkeypatch):
    samples = [0.001 * (1 + (i * 7919 % 13) / 10) for i in range(60)]
    with_pyperf = summarise(samples) if _has_pyperf() else None
    monkeypatch.setitem(sys.modules, "pyperf", None)  # import pyperf now raises ImportError
    from pytest_deploy.latency import statistics_library

    assert statistics_library().startswith("statistics (Python's standard library")
    plain = summarise(samples)
    assert plain["p50_ms"] == pytest.approx(statistics.median(samples) * 1e3)
    assert plain["p90_ms"] <= plain["p99_ms"] <= max(samples) * 1e3
    if with_pyperf is not None:  # both libraries agree on the median, mean and standard deviation
        for key in ("p50_ms", "mean_ms", "stdev_ms"):
            assert with_pyperf[key] == pytest.approx(plain[key])


def test_parse_settings_fills_defaults():
    settings = parse_settings({"budget": 1}, "here")
    assert settings["budget"] == 1 and settings["threads"] == 1 and settings["min_speedup"] is None
    assert parse_settings(True, "here")["budget"] == 2.0
    assert parse_settings(False, "here") is None


def test_a_failure_at_parity_is_not_timed():
    def flaky(x):  # a trace that freezes a branch: parity fails, latency never runs
        return x * 2 if x.sum() > 0 else x * 3

    class Branchy(nn.Module):
        def forward(self, x):
            return flaky(x)

    with pytest.raises(DeployFailure) as info:
        verify(Branchy(), "trace", inputs=[tensor("batch", 4)], dims={"batch": (1, 4)}, examples=10, latency=FAST,
               isolate="none")
    assert info.value.result.stage != "latency" and info.value.result.latency is None


# ------------------------------------------------------------------------------------- reports (item 2)

MODELS = '''
import torch
from torch import nn
from pytest_deploy import deployable, tensor

SPEC = dict(inputs=[tensor("batch", 16)], dims={"batch": (1, 8)}, examples=2)


@deployable(backends=["trace", "script"], **SPEC)
def test_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()


@deployable(backends=["trace"], latency=False, **SPEC)
def test_not_timed():
    torch.manual_seed(0)
    return nn.Linear(16, 4).eval()
'''


def test_reports_carry_the_latency_figures(pytester):
    import json
    import re
    import xml.etree.ElementTree as ET

    pytester.makepyfile(test_models=MODELS)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--deploy-latency", "--deploy-latency-budget=0.2", "--deploy-report=r.json",
        "--deploy-markdown=s.md", "--deploy-html=r.html", "--junitxml=j.xml", timeout=300)
    assert result.ret == 0, result.stdout.str()
    data = json.loads((pytester.path / "r.json").read_text())
    by = {(r["test"].split("::")[-1], r["backend"]): r for r in data["results"]}
    assert by[("test_not_timed", "trace")]["latency"] is None  # the marker's latency=False wins
    for backend in ("trace", "script"):
        lat = by[("test_mlp", backend)]["latency"]
        assert [s["label"] for s in lat["shapes"]] == ["canonical", "upper"]
        for key in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "stdev_ms", "runs", "speedup"):
            assert key in lat["shapes"][0]
        assert lat["eager_p50_ms"] == lat["shapes"][0]["eager"]["p50_ms"]
        assert lat["rule"]["budget"] == 0.2  # --deploy-latency-budget
    # the terminal table: each timed cell ends with "p50 ×speedup"
    table = result.stdout.str()
    row = next(line for line in table.splitlines() if line.startswith("test_models.py::test_mlp "))
    assert len(re.findall(r"PASS [^ ]+ [0-9.]+s [0-9.]+ (?:ms|µs|s) ×[0-9.]+", row)) == 2, row
    assert "latency p50 and ×speedup over eager" in table
    # Markdown: the latency table, one row per check and shape
    md = (pytester.path / "s.md").read_text()
    assert "### Latency" in md
    assert len([ln for ln in md.splitlines() if ln.startswith("| `test_mlp` |") and "canonical (batch=" in ln]) == 2
    # junit: the canonical p50 and the speedup as numbers
    props = {}
    for case in ET.parse(pytester.path / "j.xml").getroot().iter("testcase"):
        props[case.get("name")] = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert float(props["test_mlp[trace]"]["deploy_latency_p50_ms"]) == pytest.approx(
        by[("test_mlp", "trace")]["latency"]["p50_ms"], rel=1e-4)
    assert float(props["test_mlp[script]"]["deploy_speedup"]) > 0
    assert "deploy_latency_p50_ms" not in props["test_not_timed[trace]"]
    # HTML: the distribution plot and the plot against size (two sizes were timed), and each card's figures
    page = (pytester.path / "r.html").read_text()
    assert 'alt="latency plot"' in page and 'alt="latency by size plot"' in page
    assert page.count("<dt>latency</dt>") == 2


# ------------------------------------------------------------------------------------- gates and baselines (item 3)


def test_a_speedup_gate_far_above_any_measurement_fails_at_stage_latency():
    with pytest.raises(DeployFailure) as info:
        run("trace", {**FAST, "min_speedup": 1000}, isolate="none")
    result = info.value.result
    assert result.stage == "latency" and result.outcome == "failed"
    text = str(info.value)
    assert text.startswith("trace: stage latency: latency gate: canonical (batch=")
    assert "is below min_speedup 1000" in text and "also upper (batch=8)" in text
    assert "eager p50" in text and "trace's knobs: threads 1" in text
    assert result.latency["gate"] == "failed" and len(result.latency["shapes"]) == 2  # the figures are kept


def test_gates_far_below_any_measurement_pass():
    result = run("trace", {**FAST, "min_speedup": 0.0001, "max_p99_ms": 1e6}, isolate="none")
    assert result.latency["gate"] == "passed"


def test_a_p99_gate_fails_with_the_backends_knobs_from_its_worker():
    needs("onnx")
    with pytest.raises(DeployFailure) as info:
        run("onnx", {**FAST, "max_p99_ms": 1e-6})
    text = str(info.value)
    assert info.value.result.stage == "latency" and "is above max_p99_ms 1e-06 ms" in text
    assert "onnxruntime_provider CPUExecutionProvider" in text and "onnxruntime_threads 1" in text


def test_a_speedup_below_its_baseline_fails_and_one_within_tolerance_passes():
    with pytest.raises(DeployFailure) as info:
        run("trace", {**FAST, "baseline": {"canonical": 1000.0}}, isolate="none")
    assert info.value.result.stage == "latency"
    assert "below the baseline's ×1e+03 (tolerance 40%" in str(info.value)
    passed = run("trace", {**FAST, "baseline": {"canonical": 0.0001, "upper": 0.0001}}, isolate="none")
    assert passed.latency["gate"] == "passed"


BASELINE_MODELS = '''
import os
import torch
from torch import nn
from pytest_deploy import deployable, tensor

# TEST ONLY: SLOWDOWN extra runs of the artifact in every timed call, a deliberately slowed build
SLOWDOWN = int(os.environ.get("SLOWDOWN", "0"))


@deployable(backends=["trace"], inputs=[tensor("batch", 16)], dims={"batch": (1, 8)}, examples=2,
            latency={"budget": 0.3, "min_runs": 10, "slowdown": SLOWDOWN})
def test_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4)).eval()
'''


def test_a_slowed_artifact_fails_the_saved_baseline(pytester, monkeypatch):
    import json

    from pytest_deploy.latency import read_baseline

    pytester.makepyfile(test_models=BASELINE_MODELS)
    first = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--deploy-latency-save=base/b.json",
                                          "--deploy-latency", timeout=300)
    assert first.ret == 0, first.stdout.str()
    assert "latency baseline: base/b.json" in first.stdout.str()
    saved = read_baseline(str(pytester.path / "base" / "b.json"), "here")
    assert set(saved["test_models.py::test_mlp::trace"]) == {"canonical", "upper"}
    monkeypatch.setenv("SLOWDOWN", "30")
    slowed = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--deploy-latency-baseline=base/b.json",
                                           "--deploy-report=r.json", timeout=300)
    assert slowed.ret == 1
    slowed.stdout.fnmatch_lines(["*trace: stage latency: latency gate: canonical (batch=*: speedup ×* fell *% below "
                                 "the baseline's ×* (tolerance 40%, --deploy-latency-tolerance)*"])
    report = json.loads((pytester.path / "r.json").read_text())["results"][0]
    assert report["stage"] == "latency" and report["latency"]["slowdown"] == 30
    monkeypatch.setenv("SLOWDOWN", "0")  # unchanged: within a (wide) tolerance of its own baseline
    same = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--deploy-latency-baseline=base/b.json",
                                         "--deploy-latency-tolerance=90%", timeout=300)
    assert same.ret == 0, same.stdout.str()


def test_baseline_options_refuse_bad_input(pytester):
    pytester.makepyfile(test_models=BASELINE_MODELS)
    missing = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--deploy-latency-baseline=nope.json")
    assert missing.ret == 4
    missing.stderr.fnmatch_lines(["*--deploy-latency-baseline=nope.json: no such file; write one first with "
                                  "--deploy-latency-save=nope.json*"])
    (pytester.path / "other.json").write_text('{"version": 1, "results": []}')
    wrong = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--deploy-latency-baseline=other.json")
    assert wrong.ret == 4
    wrong.stderr.fnmatch_lines(["*other.json: not a latency baseline*"])
    alone = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--deploy-latency-save=b.json")
    assert alone.ret == 4
    alone.stderr.fnmatch_lines(["*--deploy-latency-save=b.json: nothing would be measured; add --deploy-latency*"])
    bad = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--deploy-latency-tolerance=150%")
    assert bad.ret == 4
    bad.stderr.fnmatch_lines(["*150% must be from 0 up to (not including) 100%*"])


def test_merge_combines_the_shards_latency_figures(tmp_path, capsys):
    from pytest_deploy.__main__ import main
    from pytest_deploy.latency import read_baseline
    from pytest_deploy.report import write_json

    shards = []
    for i, backend in enumerate(("trace", "script")):
        result = run(backend, FAST, isolate="none")
        result.test = "tests/test_m.py::test_mlp"
        shards.append(str(tmp_path / f"shard{i}.json"))
        write_json(shards[-1], [result])
    assert main(["merge", *shards, "--latency-save", str(tmp_path / "b.json")]) == 0
    assert "latency baseline:" in capsys.readouterr().out
    merged = read_baseline(str(tmp_path / "b.json"), "here")
    assert set(merged) == {"tests/test_m.py::test_mlp::trace", "tests/test_m.py::test_mlp::script"}
    assert all(set(v) == {"canonical", "upper"} for v in merged.values())
