"""Unit tests for pytest_deploy.report: summary cells, the summary table and the JSON report."""

from __future__ import annotations

import json
import math
import os
import re

import pytest

from pytest_deploy import report
from pytest_deploy.report import cell, summary_lines, write_json
from pytest_deploy.results import Result


def res(test="tests/test_m.py::test_a", backend="trace", outcome="passed", **kw) -> Result:
    return Result(test=test, backend=backend, outcome=outcome, **kw)


# ------------------------------------------------------------------------------------- cell


@pytest.mark.parametrize(
    "result, text",
    [
        (res(), "PASS"),
        (res(max_abs_error=1.2e-7, timings={"build": 3.14159}), "PASS 1.2e-07 3.14s"),
        (res(max_abs_error=0.0, timings={"build": 12.6}), "PASS 0 13s"),
        (res(outcome="failed", stage="compare", max_abs_error=1.96, timings={"build": 0.5}), "FAIL(compare) 1.96 0.50s"),
        (res(outcome="failed", stage="export"), "FAIL(export)"),
        (res(outcome="failed"), "FAIL"),
        (res(outcome="failed", stage="compare", max_abs_error=math.inf), "FAIL(compare) inf"),
        (res(outcome="skipped", max_abs_error=0.1, timings={"build": 2.0}), "SKIP"),
        (res(outcome="xfailed", max_abs_error=0.25), "XFAIL 0.25"),
        (res(outcome="xpassed"), "XPASS"),
    ],
)
def test_cell(result, text):
    assert cell(result) == text


# -------------------------------------------------------------------------------- summary


def columns(line: str) -> list[str]:
    return re.split(r" {2,}", line.strip())


def test_summary_table_one_row_per_test_one_column_per_backend():
    results = [
        res("t.py::test_a", "script", max_abs_error=1e-6, timings={"build": 1.0}),
        res("t.py::test_a", "trace", outcome="failed", stage="compare", max_abs_error=0.5),
        res("t.py::test_b", "trace", outcome="skipped"),
    ]
    lines = summary_lines(results)
    assert len(lines) == 1 + 1 + 2 + 1  # header, rule, two tests, tally
    # columns follow registration order (trace before script), not the order results came in
    assert columns(lines[0]) == ["model test", "trace", "script"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert columns(lines[2]) == ["t.py::test_a", "FAIL(compare) 0.5", "PASS 1e-06 1.00s"]
    assert columns(lines[3]) == ["t.py::test_b", "SKIP", "-"]
    # every column starts at the same offset on every row
    script_at = lines[0].index("script")
    assert lines[2][script_at:].startswith("PASS") and lines[3][script_at:] == "-"
    assert lines[4].startswith("3 checks: 1 passed, 1 failed, 1 skipped; build time 1.0s")


def test_summary_counts_unaffected_library_sites_per_file_and_lists_the_rest():
    """Lost or unreached decisions inside installed packages that left the outputs alone are one line per file in the
    terminal and the Markdown summary; the user's sites and any site that changed the outputs are listed one by one,
    and the JSON report keeps every site (issue 22 item 5)."""
    lib = "/venv/lib/python3.11/site-packages"

    def site(file, line, lost=True, diverged=False, uncovered=()):
        return {"file": file, "line": line, "source": f"line {line}", "kind": "branch", "outcomes": {"True": 2},
                "traced": "True", "lost": lost, "diverged": diverged, "uncovered": list(uncovered)}

    branches = ([site(f"{lib}/einops/einops.py", n) for n in range(100, 400)]
                + [site(f"{lib}/einops/einops.py", 500, lost=False, uncovered=["False"])]
                + [site(f"{lib}/einx/op.py", n) for n in range(10, 30)]
                + [site(f"{lib}/einx/backend.py", 7, diverged=True)]  # changed the outputs: listed
                + [site("models/net.py", 12), site("models/net.py", 40, lost=False, uncovered=["True"])])
    results = [res("t.py::test_a", "trace", branches=branches)]
    lines = summary_lines(results)
    decisions = lines[lines.index(next(ln for ln in lines if ln.startswith("data-dependent decisions"))):]
    assert "  300 sites" not in "\n".join(decisions)
    assert "  301 sites in einops/einops.py, outputs unaffected (lost 300, never reached 1)" in decisions
    assert "  20 sites in einx/op.py, outputs unaffected (lost 20)" in decisions
    assert any(ln.startswith(f"  {lib}/einx/backend.py:7  ") and "LOST, outputs diverge" in ln for ln in decisions)
    assert any(ln.startswith("  models/net.py:12  ") and "lost, outputs unaffected" in ln for ln in decisions)
    assert any(ln.startswith("  models/net.py:40  ") and "never reached: True" in ln for ln in decisions)
    assert not any("einops/einops.py:" in ln or "einx/op.py:" in ln for ln in lines)
    assert len(decisions) < 10
    assert decisions[-1].startswith("(sites inside installed libraries whose outputs were unaffected are counted")
    md = report.markdown(results)
    assert md.count("einops/einops.py") == 1 and "301 sites in einops/einops.py, outputs unaffected" in md
    assert "`models/net.py:12`" in md and "einx/backend.py`:7" not in md and "einx/backend.py:7`" in md
    # the table's count still covers every site
    assert "324 sites, lost 322, uncovered 2" in lines[2]


def test_summary_unregistered_backend_goes_last():
    lines = summary_lines([res(backend="mine"), res(backend="export"), res(backend="state_dict")])
    assert columns(lines[0]) == ["model test", "state_dict", "export", "mine"]
    assert columns(lines[2]) == ["tests/test_m.py::test_a", "PASS", "PASS", "PASS"]


# ------------------------------------------------------------------------------ JSON report


def test_write_json(tmp_path):
    path = tmp_path / "sub" / "dir" / "report.json"  # missing folders are created
    results = [
        res(max_abs_error=1.2e-7, max_rel_error=3.1e-6, atol=1e-5, rtol=1e-4, examples=20,
            timings={"build": 3.123456, "load": 0.02, "run": 0.4},
            branches=[{"file": "m.py", "line": 27, "source": "if x.sum() > 0:", "outcomes": {"True": 12}}]),
        res(backend="export", outcome="failed", stage="export", message="export: boom"),
    ]
    write_json(str(path), results)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["version"] == 1
    assert data["interrupted"] is False
    assert {"python", "torch", "onnxruntime", "tvm", "tensorrt", "cuda"} <= set(data["environment"])
    assert data["environment"]["torch"]  # installed here
    first, second = data["results"]
    for key in ("test", "backend", "outcome", "stage", "message", "examples", "max_abs_error", "max_rel_error",
                "atol", "rtol", "timings", "cached", "branches"):
        assert key in first
    assert first["test"] == "tests/test_m.py::test_a" and first["outcome"] == "passed"
    assert first["max_abs_error"] == 1.2e-7 and first["examples"] == 20
    assert first["timings"] == {"build": 3.1235, "load": 0.02, "run": 0.4}
    assert first["branches"][0]["line"] == 27
    assert (second["backend"], second["outcome"], second["stage"], second["message"]) == (
        "export", "failed", "export", "export: boom")
    assert os.listdir(path.parent) == ["report.json"]  # no temporary file left behind


def test_write_json_interrupted_and_overwrite(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("{not json")
    write_json(str(path), [res()], interrupted=True)
    data = json.loads(path.read_text())
    assert data["interrupted"] is True and len(data["results"]) == 1


def test_write_json_is_strict_json_for_infinite_errors(tmp_path):
    # eager 0 against a tiny backend value gives max rel error inf even in a passing check
    path = tmp_path / "report.json"
    write_json(str(path), [res(max_abs_error=1e-9, max_rel_error=math.inf),
                           res(outcome="failed", max_abs_error=math.nan, details={"worst": -math.inf})])
    text = path.read_text()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} in the report"))
    assert data["results"][0]["max_rel_error"] == "inf"
    assert data["results"][1]["max_abs_error"] == "nan"
    assert data["results"][1]["details"] == {"worst": "-inf"}


def test_write_json_never_leaves_half_a_report(tmp_path, monkeypatch):
    path = tmp_path / "report.json"
    write_json(str(path), [res(backend="trace")])
    before = path.read_text()

    def broken_dump(data, fh, **kw):
        fh.write('{"version": 1, "resu')
        raise OSError("disk full")

    monkeypatch.setattr(report.json, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        write_json(str(path), [res(backend="export")])
    assert path.read_text() == before
    assert os.listdir(tmp_path) == ["report.json"]


def test_write_json_unserialisable_details_are_written_as_repr(tmp_path):
    class Thing:
        def __repr__(self):
            return "<thing>"

    path = tmp_path / "r.json"
    write_json(str(path), [res(details={"obj": Thing()})])
    assert json.loads(path.read_text())["results"][0]["details"] == {"obj": "<thing>"}


# ------------------------------------------------------------------------- environment: GPU, onnxruntime-gpu


def test_environment_records_the_gpu_build_of_onnxruntime(monkeypatch):
    from pytest_deploy import report as report_module

    versions = {"onnxruntime-gpu": "1.23.2"}
    monkeypatch.setattr(report_module, "_version", lambda name: versions.get(name))
    assert report_module.environment()["onnxruntime"] == "1.23.2 (onnxruntime-gpu)"
    versions = {"onnxruntime": "1.32.0"}
    assert report_module.environment()["onnxruntime"] == "1.32.0"


def test_environment_records_the_gpu_only_with_cuda():
    import torch

    from pytest_deploy import report as report_module

    env = report_module.environment()
    assert "gpu" in env and "polygraphy" in env and "onnxconverter_common" in env
    if not torch.cuda.is_available():
        assert env["cuda"] is False and env["gpu"] is None


def test_the_result_key_covers_the_gpu(monkeypatch):
    """The GPU's name, driver and CUDA version are part of every result key: a pass on one GPU is not reused on
    another. (Here torch sees no GPU, so the GPU is stood in for by a value: this tests the key, not CUDA.)"""
    import torch

    from pytest_deploy import fingerprint

    if not torch.cuda.is_available():
        assert fingerprint.gpu_environment() is None
    model = torch.nn.Linear(2, 2)

    def key(gpu):
        monkeypatch.setattr(fingerprint, "gpu_environment", lambda: gpu)
        fingerprint.environment.cache_clear()
        return fingerprint.check_key(model, "onnx", declared={}, options={})

    try:
        h100 = {"gpu": "NVIDIA H100", "driver": "580.65", "cuda": "12.8"}
        keys = {key(None), key(h100), key({**h100, "gpu": "NVIDIA A100"}), key({**h100, "driver": "590.1"}),
                key({**h100, "cuda": "13.0"})}
        assert len(keys) == 5
    finally:
        fingerprint.environment.cache_clear()
