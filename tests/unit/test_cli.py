"""The ``pytest-deploy`` command outside a pytest session: its help and ``backends``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pytest_deploy.__main__ import main
from pytest_deploy.names import backend_names


def test_help_names_every_command_and_where_the_checks_run():
    out = subprocess.run([sys.executable, "-m", "pytest_deploy", "--help"], capture_output=True, text=True,
                         check=True, env={"COLUMNS": "100", "PATH": ""}).stdout
    assert "usage: pytest-deploy" in out
    for command in ("backends", "merge"):
        assert command in out
    assert "pytest --help" in out
    assert "``" not in out  # no raw reST
    assert out.rstrip().endswith("repository.")  # the epilog is whole, not cut mid-sentence


def test_backends_lists_every_backend_with_whether_it_runs_here(capsys):
    assert main(["backends"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["backend", "aliases", "here"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert list(rows) == backend_names()
    assert "torchscript-trace" in rows["trace"]
    assert rows["state_dict"].endswith("runs here")  # needs only torch
    from pytest_deploy.backends import get_backend

    reason = get_backend("tensorrt").unavailable_reason()
    assert rows["tensorrt"].endswith(reason or "runs here")


def test_an_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["mrege"])
    assert info.value.code == 2
    assert "invalid choice: 'mrege'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- merge

def _report(path, results, *, env=None, **extra):
    import json

    data = {"version": 1, "interrupted": False, "environment": env or {}, "results": results, **extra}
    path.write_text(json.dumps(data))
    return str(path)


def _result(outcome, backend="trace", test="t.py::test_net", **fields):
    return {"test": test, "backend": backend, "outcome": outcome, **fields}


@pytest.mark.parametrize("order", ["failed-first", "failed-last"])
def test_merge_keeps_a_failure_whichever_report_comes_last_and_exits_1(tmp_path, capsys, order):
    import json

    failed = _report(tmp_path / "gpu.json", [_result("failed", message="trace: outputs differ",
                                                     details={"precision": "fp16"})],
                     env={"platform": "Linux-gpu", "gpu": {"name": "H200"}})
    passed = _report(tmp_path / "cpu.json", [_result("passed")], env={"platform": "Linux-cpu"})
    reports = [failed, passed] if order == "failed-first" else [passed, failed]
    assert main(["merge", *reports, "-o", str(tmp_path / "merged.json")]) == 1
    out = capsys.readouterr().out
    assert "1 check(s) differ between reports" in out
    conflict = next(line for line in out.splitlines() if "t.py::test_net [trace]" in line)
    assert "failed in" in conflict and "gpu.json (Linux-gpu, H200, fp16)" in conflict and "kept failed" in conflict
    merged = json.loads((tmp_path / "merged.json").read_text())
    (only,) = merged["results"]
    assert only["outcome"] == "failed" and only["message"] == "trace: outputs differ"
    assert only["details"]["environment"] == {"report": failed, "platform": "Linux-gpu", "gpu": {"name": "H200"}}
    assert [e["report"] for e in merged["environments"]] == reports  # every run's environment, not the merger's
    assert merged["environment"]["platform"] == ("Linux-gpu" if order == "failed-first" else "Linux-cpu")


def test_merge_of_agreeing_reports_lists_no_conflict_and_keeps_each_runs_environment(tmp_path, capsys):
    import json

    a = _report(tmp_path / "a.json", [_result("passed", backend="trace")], env={"platform": "A"})
    b = _report(tmp_path / "b.json", [_result("passed", backend="export"), _result("passed", backend="trace")],
                env={"platform": "B"})
    assert main(["merge", a, b, "-o", str(tmp_path / "m.json")]) == 0
    assert "differ" not in capsys.readouterr().out
    merged = {r["backend"]: r for r in json.loads((tmp_path / "m.json").read_text())["results"]}
    assert merged["export"]["details"]["environment"]["platform"] == "B"
    assert merged["trace"]["details"]["environment"]["platform"] == "A"  # the first of equal outcomes
    # a merged report merges again, each result keeping the run it came from
    assert main(["merge", str(tmp_path / "m.json"), "-o", str(tmp_path / "m2.json")]) == 0
    again = json.loads((tmp_path / "m2.json").read_text())
    assert {r["backend"]: r["details"]["environment"]["report"] for r in again["results"]} == {"trace": a, "export": b}
    assert [e["report"] for e in again["environments"]] == [a, b]


@pytest.mark.parametrize("outcomes, kept", [(("passed", "skipped"), "skipped"), (("xfailed", "xpassed"), "xpassed"),
                                            (("skipped", "failed", "passed"), "failed")])
def test_merge_keeps_the_worst_outcome(tmp_path, capsys, outcomes, kept):
    import json

    paths = [_report(tmp_path / f"r{i}.json", [_result(o)]) for i, o in enumerate(outcomes)]
    code = main(["merge", *paths, "-o", str(tmp_path / "m.json")])
    assert json.loads((tmp_path / "m.json").read_text())["results"][0]["outcome"] == kept
    assert code == (1 if kept in ("failed", "xpassed") else 0)


def test_merge_ignores_unknown_fields_with_one_warning(tmp_path, capsys):
    import json

    a = _report(tmp_path / "a.json", [_result("passed", new_field=1), _result("passed", backend="export",
                                                                              new_field=2, other=3)],
                generator="pytest-deploy 9")
    b = _report(tmp_path / "b.json", [_result("passed", backend="script", new_field=1)])
    assert main(["merge", a, b, "-o", str(tmp_path / "m.json")]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warnings) == 1, captured.err
    for name in ("new_field", "other", "generator"):
        assert name in warnings[0]
    assert len(json.loads((tmp_path / "m.json").read_text())["results"]) == 3


def test_merge_names_a_result_that_is_not_one(tmp_path):
    bad = _report(tmp_path / "bad.json", [{"outcome": "passed"}])
    with pytest.raises(SystemExit, match=r"bad.json: result #1 is not a check's result"):
        main(["merge", bad])


def test_merge_help_says_the_worst_outcome_is_kept():
    out = subprocess.run([sys.executable, "-m", "pytest_deploy", "merge", "--help"], capture_output=True, text=True,
                         check=True, env={"COLUMNS": "100", "PATH": ""}).stdout
    assert "worst outcome" in out and "Exits 1 when any merged check failed" in " ".join(out.split())
