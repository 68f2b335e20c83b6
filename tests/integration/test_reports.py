"""Reports people read: a terminal table that fits, Markdown for CI pages (and GitHub's step summary), junit XML
properties, and the rough edges of a session (an empty selection, skip locations, plurals)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

MODELS = '''
import torch
from torch import nn
from pytest_deploy import Backend, deployable, register_backend, tensor


class Unavailable(Backend):
    """Registered, never runnable here: its items skip with the reason."""
    name = "unavailable_backend"
    requires = ("module_that_does_not_exist_xyz",)
    extra = "nothing"


register_backend(Unavailable, replace=True)


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


# cheap backends only (no worker process, no export): each test here is a whole pytest run
BACKENDS = ["state_dict", "checkpoint", "trace", "script", "unavailable_backend"]
SPEC = dict(inputs=[tensor("batch", 4)], dims={"batch": (1, 3)}, examples=3)


@deployable(backends=BACKENDS, **SPEC)
def test_a_linear_classifier_with_a_rather_long_descriptive_name():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()


@deployable(backends=BACKENDS, xfail={"trace": "a data-dependent if"}, **SPEC)
def test_branchy_model_whose_trace_freezes_an_if():
    torch.manual_seed(0)
    return Branchy().eval()
'''




def run(pytester, *args, columns: int | None = None, env: dict | None = None):
    pytester.makepyfile(test_models=MODELS)
    if columns is not None:
        pytester._monkeypatch.setenv("COLUMNS", str(columns))
    for key, value in (env or {}).items():
        pytester._monkeypatch.setenv(key, value)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=300)


def summary(result) -> list[str]:
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if "pytest-deploy summary" in line)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("=")), len(lines))
    return lines[start + 1:end]


@pytest.mark.parametrize("columns", [80, 100, 120])
def test_the_summary_is_never_wider_than_the_terminal(pytester, columns):
    result = run(pytester, "--deploy-markdown=summary.md", columns=columns)
    lines = summary(result)
    assert lines, result.stdout.str()
    assert max(len(line) for line in lines) <= columns, "\n".join(line for line in lines if len(line) > columns)
    text = "\n".join(lines)
    # the compact layout keeps what the full one says: status codes with a legend, the numbers below
    assert "legend: ok passed" in text and "xfail" in text and "skip" in text
    assert "test_branchy_model_whose_trace_freezes_an_if" in text
    assert "state_dict PASS" in text  # the numbers per check moved below the table
    assert "if x.sum() > 0:" in text  # the lost branch, wrapped to the width
    assert "10 checks: " in text


def test_a_wide_terminal_gets_the_full_table(pytester):
    lines = summary(run(pytester, columns=400))
    assert lines[0].split()[:2] == ["model", "test"] and "state_dict" in lines[0]
    assert any("PASS" in line and "test_a_linear_classifier" in line for line in lines)


def test_markdown_summary_and_github_step_summary(pytester):
    step = pytester.path / "step_summary.md"
    step.write_text("earlier step\n")
    run(pytester, "--deploy-markdown=out/summary.md", env={"GITHUB_STEP_SUMMARY": str(step)})
    text = (pytester.path / "out" / "summary.md").read_text()
    assert text.startswith("## pytest-deploy")
    assert "| model test | state_dict | checkpoint | trace | script | unavailable_backend |" in text
    assert "| `test_branchy_model_whose_trace_freezes_an_if` |" in text and "XFAIL" in text
    assert "### Data-dependent decisions" in text and "`if x.sum() > 0:`" in text
    # appended to what earlier steps wrote, not replacing it
    assert step.read_text() == "earlier step\n" + text


def test_no_step_summary_option(pytester):
    step = pytester.path / "step_summary.md"
    run(pytester, "--deploy-no-step-summary", env={"GITHUB_STEP_SUMMARY": str(step)})
    assert not step.exists()


def test_markdown_lists_failures_with_stage_and_cause(pytester):
    pytester.makepyfile(test_fails="""
import torch
from pytest_deploy import deployable, tensor

class Branchy(torch.nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x * 3

@deployable(backends=["trace"], inputs=[tensor("batch", 4)], dims={"batch": (1, 3)}, examples=4)
def test_fails():
    return Branchy()
""")
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "test_fails.py", "--deploy-markdown=m.md", timeout=300)
    text = (pytester.path / "m.md").read_text()
    assert "### Failures" in text
    assert "- `test_fails` on **trace** at stage `branches`: trace-lost branch at test_fails.py:6" in text


def test_junit_xml_carries_the_deploy_properties(pytester):
    run(pytester, "--junitxml=junit.xml")
    cases = ET.parse(pytester.path / "junit.xml").getroot().iter("testcase")
    props = {case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")} for case in cases}
    assert len(props) == 10
    for name, values in props.items():
        assert values["deploy_backend"] == name.rsplit("[", 1)[1].rstrip("]")
        assert set(values) >= {"deploy_backend", "deploy_outcome", "deploy_stage", "deploy_max_abs_error", "deploy_atol"}
    passed = props["test_a_linear_classifier_with_a_rather_long_descriptive_name[trace]"]
    assert passed["deploy_outcome"] == "passed" and float(passed["deploy_max_abs_error"]) >= 0
    assert float(passed["deploy_atol"]) == 1e-5
    assert props["test_branchy_model_whose_trace_freezes_an_if[trace]"]["deploy_outcome"] == "xfailed"
    assert props["test_branchy_model_whose_trace_freezes_an_if[trace]"]["deploy_stage"] == "branches"
    assert props["test_a_linear_classifier_with_a_rather_long_descriptive_name[unavailable_backend]"][
        "deploy_outcome"] == "skipped"


def test_an_empty_selection_explains_itself(pytester):
    result = run(pytester, "--deploy-backends=trt")
    assert result.ret == 5  # no tests ran
    result.stdout.fnmatch_lines(["*pytest-deploy: no collected test declares tensorrt*add tensorrt to a test's "
                                 "backends=, or omit backends= to check every backend*"])


def test_skips_point_at_the_users_test_and_say_why(pytester):
    result = run(pytester, "-rs")
    skipped = [line for line in result.stdout.lines if line.startswith("SKIPPED")]
    assert len(skipped) == 2, result.stdout.str()
    for line in skipped:
        assert line.startswith("SKIPPED [1] test_models.py:")  # the user's test, not pytest-deploy's plugin.py
        assert line.endswith("unavailable_backend: module_that_does_not_exist_xyz not installed; "
                             "pip install 'pytest-deploy[nothing]'")


def test_one_check_is_singular(pytester):
    pytester.makepyfile(test_one="""
import torch
from pytest_deploy import deployable, tensor

@deployable(backends=["trace"], inputs=[tensor(4)], examples=2)
def test_one():
    return torch.nn.Identity()
""")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "test_one.py", timeout=120)
    result.stdout.fnmatch_lines(["1 check: 1 passed; *"])


def test_html_report_from_a_real_session(pytester):
    run(pytester, "--deploy-html=out/report.html", "--deploy-report=out/report.json")
    page = (pytester.path / "out" / "report.html").read_text()
    assert page.lstrip().lower().startswith("<!doctype html>")
    for name in ("test_a_linear_classifier_with_a_rather_long_descriptive_name", "test_branchy_model_whose_trace_freezes_an_if",
                 "if x.sum() &gt; 0:", "unavailable_backend: module_that_does_not_exist_xyz not installed"):
        assert name in page
    assert "http://" not in page and "https://" not in page
    import importlib.util

    if importlib.util.find_spec("matplotlib") is not None:
        assert page.count('src="data:image/png;base64,') >= 2  # error against tolerance, time per backend


@pytest.mark.parametrize("option", ["--deploy-html", "--deploy-report", "--deploy-markdown"])
def test_a_report_path_that_is_a_directory_is_refused_before_any_check_runs(pytester, option):
    (pytester.path / "reports").mkdir()
    result = run(pytester, f"{option}=reports")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    result.stderr.fnmatch_lines([f"*{option}=reports: is a directory; the report is one file: give a file path, "
                                 "such as reports/deploy-*"])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()
    assert "passed" not in result.stdout.str()  # refused at start-up: no check ran


def test_a_report_under_a_file_is_refused_and_one_that_fails_late_keeps_the_summary(pytester):
    (pytester.path / "taken").write_text("a file")
    result = run(pytester, "--deploy-report=taken/report.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--deploy-report=taken/report.json: *taken is a file, not a directory*"])
    # a path that becomes unwritable during the run: the summary and the other reports survive, the run fails
    pytester.makeconftest('''
import os, shutil
def pytest_sessionfinish(session):
    os.makedirs("late/report.json", exist_ok=True)
''')
    result = run(pytester, "--deploy-report=late/report.json", "--deploy-markdown=summary.md")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.fnmatch_lines(["*pytest-deploy summary*", "*pytest-deploy: could not write the JSON report to "
                                 "late/report.json: *", "Markdown summary: summary.md"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    assert "test_branchy_model_whose_trace_freezes_an_if" in (pytester.path / "summary.md").read_text()
