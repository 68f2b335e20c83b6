"""The plugin's mechanics, driven as a user drives them: test files run through pytest's ``pytester``.

Collection (one item per backend, ids, selection by option and ini, usage errors), expected failures,
skips of unavailable backends, the three forms (decorator, ``deploy`` fixture, ``verify``), options,
the terminal summary, the JSON report, lazy imports and pytest-xdist. Models are tiny and only the
cheap backends (state_dict, trace, script) run, with ``examples=3``.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
import textwrap

# pytester's inline runs drop every module they imported when they end: hypothesis and pytest-deploy's check
# modules are imported here, once, so that each run does not import (and assertion-rewrite) them again.
import hypothesis  # noqa: F401
import pytest
import torch

import pytest_deploy
import pytest_deploy.check
import pytest_deploy.report
from pytest_deploy import DeployFailure, Result, backend_names, tensor, verify
from pytest_deploy import backends as registry

NO_CACHE = ("-p", "no:cacheprovider")

# Shared model definitions for the user test files below.
MODELS = """
import pytest
import torch
from pytest_deploy import deployable, tensor


class Linear(torch.nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.fc = torch.nn.Linear(width, 2)

    def forward(self, x):
        return self.fc(x)


class Leaky(torch.nn.Module):
    # float(x.sum()) becomes a constant when traced: any other input gives another output
    def forward(self, x):
        return x + float(x.sum())


INPUTS = dict(inputs=[tensor("batch", 4)], dims={"batch": (1, 3)}, examples=3)
"""

FAKE_CONFTEST = """
from pytest_deploy import Backend, register_backend


class FakeBackend(Backend):
    name = "fake"
    requires = ("module_that_does_not_exist_xyz",)
    extra = "fake"


register_backend(FakeBackend, replace=True)
"""


def user_tests(body: str) -> str:
    return MODELS + textwrap.dedent(body)


def run(pytester, *args):
    return pytester.runpytest(*NO_CACHE, *args)


def read_report(pytester, name="out.json") -> dict:
    return json.loads((pytester.path / name).read_text())


def by_backend(report: dict) -> dict[str, dict]:
    return {(r["test"].split("::")[-1], r["backend"]): r for r in report["results"]}


LEAKY_SOURCE = "return x + float(x.sum())"


def leaky_site(path) -> str:
    """``file.py:LINE  `source``` of Leaky's float() in a user test file: where a trace-lost decision is reported."""
    lines = path.read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if text.strip() == LEAKY_SOURCE)
    return f"{path.name}:{line}  `{LEAKY_SOURCE}`"


def lost_message_head(path) -> str:
    """How a trace failure of Leaky starts: the lost float() decision, at stage branches."""
    return f"trace: stage branches: trace-lost value at {leaky_site(path)}\n  traced with outcome "


def assert_leaky_lost(branches: list[dict], path) -> None:
    """The JSON branch record of a traced Leaky: its one float() site, lost and diverging."""
    assert len(branches) == 1, branches
    site = branches[0]
    assert f"{site['file']}:{site['line']}  `{site['source']}`" == leaky_site(path)
    assert site["kind"] == "float" and site["uncovered"] == []
    assert site["lost"] is True and site["diverged"] is True
    assert site["traced"] is not None and site["traced"] in site["outcomes"]
    assert len(site["outcomes"]) >= 2  # the traced value and the failing input's


@pytest.fixture
def fake_backend(pytester):
    """A registered but unavailable backend, from the user's conftest. Inline runs share this process, so the
    registry is restored afterwards."""
    from pytest_deploy import names

    tables = (registry._REGISTRY, registry._PENDING, names._NAMES, names._ALIASES)
    saved = [dict(t) for t in tables]
    pytester.makeconftest(FAKE_CONFTEST)
    yield "fake"
    for table, copy in zip(tables, saved):
        table.clear()
        table.update(copy)


# ------------------------------------------------------------------------------------ collection


def test_one_item_per_backend_with_canonical_ids_combined_with_parametrize(pytester):
    pytester.makepyfile(user_tests("""
        @deployable(backends=["state_dict", "torchscript-trace", "script"], **INPUTS)
        @pytest.mark.parametrize("seed", [0, 1], ids=["small", "big"])
        def test_linear(seed):
            torch.manual_seed(seed)
            return Linear().eval()
    """))
    result = run(pytester, "-v")
    result.assert_outcomes(passed=6)
    for param in ("small", "big"):
        for backend in ("state_dict", "trace", "script"):
            result.stdout.fnmatch_lines([f"*::test_linear[[]{param}-{backend}[]] PASSED*"])
    assert "torchscript-trace" not in result.stdout.str()


def test_deploy_backends_option_deselects_the_other_backends(pytester):
    pytester.makepyfile(user_tests("""
        @deployable(backends=["state_dict", "trace", "script"], **INPUTS)
        def test_linear():
            return Linear().eval()
    """))
    result = run(pytester, "-v", "--deploy-backends=trace")
    result.assert_outcomes(passed=1, deselected=2)
    result.stdout.fnmatch_lines(["*::test_linear[[]trace[]] PASSED*", "*1 passed, 2 deselected*"])


@pytest.mark.parametrize(
    ("option", "kept"),
    [
        ("torchscript-script", ["script"]),
        ("TorchScript-Trace, script", ["trace", "script"]),
        ("all", ["state_dict", "trace", "script"]),
    ],
)
def test_deploy_backends_option_takes_aliases_and_all(pytester, option, kept):
    pytester.makepyfile(user_tests("""
        @deployable(backends=["state_dict", "trace", "script"], **INPUTS)
        def test_linear():
            return Linear().eval()
    """))
    result = run(pytester, "--collect-only", "-q", f"--deploy-backends={option}")
    assert result.ret == 0
    for backend in ("state_dict", "trace", "script"):
        line = f"*::test_linear[[]{backend}[]]"
        if backend in kept:
            result.stdout.fnmatch_lines([line])
        else:
            result.stdout.no_fnmatch_line(line)
    if len(kept) < 3:
        result.stdout.fnmatch_lines([f"*{len(kept)}/3 tests collected ({3 - len(kept)} deselected)*"])


def test_ini_deploy_backends_narrows_and_the_command_line_wins(pytester):
    pytester.makeini("[pytest]\ndeploy_backends = torchscript-script\n")
    pytester.makepyfile(user_tests("""
        @deployable(backends=["state_dict", "trace", "script"], **INPUTS)
        def test_linear():
            return Linear().eval()
    """))
    result = run(pytester, "-v")
    result.assert_outcomes(passed=1, deselected=2)
    result.stdout.fnmatch_lines(["*::test_linear[[]script[]] PASSED*"])

    result = run(pytester, "-v", "--deploy-backends=state_dict,trace")
    result.assert_outcomes(passed=2, deselected=1)
    result.stdout.no_fnmatch_line("*::test_linear[[]script[]]*")


def test_unknown_backend_on_the_command_line_is_a_usage_error(pytester):
    pytester.makepyfile("def test_plain():\n    pass\n")
    result = run(pytester, "--deploy-backends=trace,tensorrtt")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "--deploy-backends" in err and "'tensorrtt'" in err
    for name in backend_names():
        assert name in err, f"known backend {name} not listed in: {err}"
    assert "torchscript-trace" in err and "all" in err
    assert "INTERNALERROR" not in result.stdout.str() + err


def test_unknown_backend_in_ini_is_a_usage_error(pytester):
    pytester.makeini("[pytest]\ndeploy_backends = onnx-ish\n")
    pytester.makepyfile("def test_plain():\n    pass\n")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "ini deploy_backends" in result.stderr.str() and "'onnx-ish'" in result.stderr.str()


@pytest.mark.parametrize(
    ("declaration", "words"),
    [
        ('@pytest.mark.deployable(backends=["trace", "torchscrpt"])\ndef test_model(deploy):\n    pass\n',
         ["unknown backend 'torchscrpt'", "known backends:", "trace [torchscript-trace]"]),
        ('@pytest.mark.deployable(backends=[])\ndef test_model(deploy):\n    pass\n',
         ["backends=[] names no backend"]),
        ('@deployable(backends=["torchscrpt"], inputs=[tensor(2, 4)])\ndef test_model():\n    return Linear()\n',
         ["unknown backend 'torchscrpt'", "known backends:"]),
        ('@deployable(backends=[], inputs=[tensor(2, 4)])\ndef test_model():\n    return Linear()\n',
         ["backends=[] names no backend"]),
    ],
    ids=["marker-unknown", "marker-empty", "decorator-unknown", "decorator-empty"],
)
def test_bad_backends_in_the_declaration_are_collection_errors(pytester, declaration, words):
    pytester.makepyfile(MODELS + declaration)
    result = run(pytester)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert "ERROR collecting" in out
    assert "During handling of the above exception" not in out  # the message is shown once
    for word in words:
        assert word in out, f"{word!r} missing from:\n{out}"
    assert "INTERNALERROR" not in out + result.stderr.str()


def test_marker_without_backends_means_every_registered_backend(pytester):
    pytester.makepyfile(user_tests("""
        @deployable(inputs=[tensor(2, 4)])
        def test_linear():
            return Linear().eval()
    """))
    result = run(pytester, "--collect-only", "-q")
    names = backend_names()
    assert len(names) >= 6
    result.stdout.fnmatch_lines([f"*::test_linear[[]{name}[]]" for name in names], consecutive=True)
    result.stdout.fnmatch_lines([f"{len(names)} tests collected*"])


def test_a_registered_backend_joins_the_default_set(pytester, fake_backend):
    pytester.makepyfile(user_tests("""
        @deployable(inputs=[tensor(2, 4)])
        def test_linear():
            return Linear().eval()
    """))
    result = run(pytester, "--collect-only", "-q")
    result.stdout.fnmatch_lines(["*::test_linear[[]trace[]]", "*::test_linear[[]fake[]]"])


# ----------------------------------------------------------------------------------------- xfail


def test_xfail_is_a_strict_expected_failure(pytester):
    path = pytester.makepyfile(user_tests("""
        @deployable(backends=["trace", "script"], xfail={"torchscript-trace": "float() is a constant"}, **INPUTS)
        def test_leaky():
            return Leaky()

        @deployable(backends=["trace"], xfail={"trace": "thought it would break"}, **INPUTS)
        def test_fine():
            return Linear().eval()
    """))
    result = run(pytester, "-v", "-rxX", "--deploy-report=out.json")
    result.assert_outcomes(passed=1, xfailed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*::test_leaky[[]trace[]] XFAIL*",
        "*::test_leaky[[]script[]] PASSED*",
        "*::test_fine[[]trace[]] FAILED*",
    ])
    result.stdout.fnmatch_lines(["*[[]XPASS(strict)[]] thought it would break*"])
    result.stdout.fnmatch_lines(["XFAIL *::test_leaky[[]trace[]] - float() is a constant"])
    report = by_backend(read_report(pytester))
    assert report["test_leaky", "trace"]["outcome"] == "xfailed"
    assert report["test_leaky", "trace"]["stage"] == "branches"
    assert report["test_leaky", "trace"]["message"].startswith(lost_message_head(path))
    assert report["test_fine", "trace"]["outcome"] == "failed"
    assert "XPASS(strict)" in report["test_fine", "trace"]["message"]


# ------------------------------------------------------------------------------------------ skips


def test_unavailable_backend_is_skipped_with_reason_and_install_hint(pytester, fake_backend):
    pytester.makepyfile(user_tests("""
        @deployable(backends=["fake", "trace"], **INPUTS)
        def test_linear():
            return Linear().eval()
    """))
    result = run(pytester, "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines([
        "SKIPPED*fake: module_that_does_not_exist_xyz not installed; pip install 'pytest-deploy[[]fake[]]'*"
    ])


@pytest.mark.parametrize("how", ["option", "ini"])
def test_deploy_strict_turns_the_skip_into_a_failure(pytester, fake_backend, how):
    pytester.makepyfile(user_tests("""
        @deployable(backends=["fake", "trace"], **INPUTS)
        def test_linear():
            return Linear().eval()
    """))
    if how == "ini":
        pytester.makefile(".ini", pytest="[pytest]\ndeploy_strict = true\n")
        result = run(pytester)
    else:
        result = run(pytester, "--deploy-strict")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*module_that_does_not_exist_xyz not installed*failing because of --deploy-strict*",
        "FAILED*::test_linear[[]fake[]]*",
    ])


# ------------------------------------------------------------------------------------- the forms


def test_form1_takes_fixtures_and_is_called_again_as_the_factory(pytester):
    pytester.makepyfile(user_tests("""
        CALLS = []


        @pytest.fixture
        def width():
            return 4


        @deployable(backends=["state_dict"], **INPUTS)
        def test_linear(width):
            CALLS.append(width)
            return Linear(width).eval()


        def test_zz_factory_was_called_twice():
            # once for the model, once more for the fresh instance state_dict loads into
            assert CALLS == [4, 4]
    """))
    result = run(pytester, "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*::test_linear[[]state_dict[]] PASSED*",
                                 "*::test_zz_factory_was_called_twice PASSED*"])


def test_form1_returning_model_and_example_inputs(pytester):
    pytester.makepyfile(user_tests("""
        @deployable(backends=["trace", "script"], examples=3)
        def test_linear():
            return Linear().eval(), (torch.rand(5, 4) * 4 - 2,)
    """))
    result = run(pytester, "--deploy-report=out.json")
    result.assert_outcomes(passed=2)
    for entry in read_report(pytester)["results"]:
        assert entry["outcome"] == "passed"
        assert entry["examples"] > 1


def test_form1_returning_something_else_fails_with_a_clear_message(pytester):
    pytester.makepyfile(user_tests("""
        @deployable(backends=["trace"], **INPUTS)
        def test_none():
            Linear()

        @deployable(backends=["trace"], **INPUTS)
        def test_string():
            return "model"
    """))
    result = run(pytester)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["test_none[[]trace[]] returned None; a @deployable test must return the model*"])
    result.stdout.fnmatch_lines(["trace: the test returned builtins.str, not a torch.nn.Module*"])
    assert "During handling of the above exception" not in result.stdout.str()


def test_form2_deploy_fixture_returns_the_result(pytester):
    pytester.makepyfile(user_tests("""
        @pytest.mark.deployable(backends=["state_dict", "trace"])
        def test_linear(deploy, deploy_backend):
            result = deploy(Linear().eval(), factory=Linear, inputs=[tensor("batch", 4)], dims={"batch": (1, 3)},
                            examples=3)
            assert result.backend == deploy_backend
            assert result.outcome == "passed"
            assert result.examples == 3
            assert result.max_abs_error is not None and result.max_abs_error <= 1e-5
            assert result.atol is not None
    """))
    result = run(pytester, "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*::test_linear[[]state_dict[]] PASSED*", "*::test_linear[[]trace[]] PASSED*"])


def test_form2_failure_shows_the_check_message(pytester):
    path = pytester.makepyfile(user_tests("""
        @pytest.mark.deployable(backends=["trace"])
        def test_leaky(deploy):
            deploy(Leaky(), **INPUTS)

        @pytest.mark.deployable(backends=["trace"])
        def test_typo(deploy):
            deploy(Linear(), inputs=[tensor(2, 4)], exampels=3)
    """))
    result = run(pytester)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([
        f"trace: stage branches: trace-lost value at {leaky_site(path)}",
        "  traced with outcome *; the failing input takes *; max abs error * > atol 1e-05",
        "  fix: keep it a tensor: drop the conversion (`float()`)*",
        "outputs differ from eager PyTorch",
    ], consecutive=True)
    result.stdout.fnmatch_lines(["outputs differ from eager PyTorch", "*failing input*"])
    result.stdout.fnmatch_lines(["deploy(): unknown argument(s) exampels; known: inputs, dims, examples*"])
    assert "During handling of the above exception" not in result.stdout.str()


def test_marker_without_deploy_fixture_or_decorator_is_a_collection_error(pytester):
    pytester.makepyfile(user_tests("""
        @pytest.mark.deployable(backends=["trace"])
        def test_forgot():
            assert Linear()
    """))
    result = run(pytester)
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert "test_forgot is marked deployable but neither returns its model through @deployable(...)" in out
    assert "deploy fixture" in out
    assert "INTERNALERROR" not in out


class LeakyModel(torch.nn.Module):
    def forward(self, x):
        return x + float(x.sum())


def _linear():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 2).eval()


def test_form3_verify_returns_a_result():
    result = verify(_linear(), backend="torchscript-trace", inputs=[tensor("batch", 4)], dims={"batch": (1, 3)},
                    examples=3)
    assert isinstance(result, Result)
    assert result.backend == "trace" and result.outcome == "passed"
    assert result.examples == 3  # the canonical example, then 2 generated
    assert result.max_abs_error is not None and result.max_abs_error <= result.atol


def test_form3_verify_state_dict_needs_and_uses_a_factory():
    with pytest.raises(DeployFailure, match=r"state_dict: stage load: .*factory="):
        verify(_linear(), backend="state_dict", inputs=[tensor(2, 4)], examples=3)
    result = verify(_linear(), backend="state_dict", factory=_linear, inputs=[tensor(2, 4)], examples=3)
    assert result.outcome == "passed"


def test_form3_verify_raises_deploy_failure_naming_backend_and_stage():
    with pytest.raises(DeployFailure) as excinfo:
        verify(LeakyModel(), backend="trace", inputs=[tensor(2, 3)], examples=3)
    failure = excinfo.value
    lines, first = inspect.getsourcelines(LeakyModel.forward)
    line = first + next(i for i, text in enumerate(lines) if text.strip() == LEAKY_SOURCE)
    head, *rest = str(failure).splitlines()
    assert re.fullmatch(rf"trace: stage branches: trace-lost value at \S*test_plugin\.py:{line}  "
                        rf"`{re.escape(LEAKY_SOURCE)}`", head), head
    assert re.fullmatch(r"  traced with outcome \S+; the failing input takes \S+; max abs error \S+ > atol \S+",
                        rest[0]), rest[0]
    assert rest[1].startswith("  fix: keep it a tensor: drop the conversion (`float()`)")
    assert rest[2] == "outputs differ from eager PyTorch"
    assert "max abs error" in str(failure) and "failing input" in str(failure)
    assert failure.result.outcome == "failed" and failure.result.stage == "branches"
    assert len(failure.result.branches) == 1 and failure.result.branches[0]["line"] == line
    assert failure.result.branches[0]["lost"] is True and failure.result.branches[0]["diverged"] is True
    assert isinstance(failure, AssertionError)


def test_form3_verify_unknown_backend_or_argument():
    with pytest.raises(pytest_deploy.SpecError,
                       match=r"unknown backend 'onxx' \(did you mean 'onnx'\?\); known backends: .*trace \[torchscript-trace\]"):
        verify(_linear(), backend="onxx", inputs=[tensor(2, 4)])
    with pytest.raises(pytest_deploy.SpecError, match="unknown argument.*xfail"):
        verify(_linear(), backend="trace", inputs=[tensor(2, 4)], xfail={"trace": "no"})


# ---------------------------------------------------------------------------------------- options


def test_deploy_examples_option_and_marker_precedence(pytester):
    pytester.makepyfile(user_tests("""
        @deployable(backends=["trace"], inputs=[tensor("batch", 4)], dims={"batch": (1, 3)})
        def test_default():
            return Linear().eval()

        @deployable(backends=["trace"], inputs=[tensor("batch", 4)], dims={"batch": (1, 3)}, examples=3)
        def test_marker():
            return Linear().eval()
    """))
    for n in (2, 5):
        result = run(pytester, f"--deploy-examples={n}", f"--deploy-report=out{n}.json")
        result.assert_outcomes(passed=2)
        report = by_backend(read_report(pytester, f"out{n}.json"))
        # a check runs the canonical example, then the generated ones
        assert report["test_default", "trace"]["examples"] == n
        assert report["test_marker", "trace"]["examples"] == 3


def test_ini_deploy_examples(pytester):
    pytester.makeini("[pytest]\ndeploy_examples = 2\n")
    pytester.makepyfile(user_tests("""
        @deployable(backends=["trace"], inputs=[tensor(2, 4)])
        def test_default():
            return Linear().eval()
    """))
    result = run(pytester, "--deploy-report=out.json")
    result.assert_outcomes(passed=1)
    assert read_report(pytester)["results"][0]["examples"] == 2


@pytest.mark.parametrize(("value", "words"), [("0", "0 must be at least 1"), ("abc", "'abc' is not an integer")])
def test_bad_deploy_examples_is_a_usage_error(pytester, value, words):
    pytester.makepyfile("def test_plain():\n    pass\n")
    result = run(pytester, f"--deploy-examples={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--deploy-examples" in result.stderr.str() and words in result.stderr.str()


def test_help_lists_every_deploy_option(pytester):
    result = run(pytester, "--help")
    assert result.ret == 0
    out = result.stdout.str()
    for option in ("--deploy-backends=LIST", "--deploy-examples=N", "--deploy-strict", "--deploy-report=PATH",
                   "--deploy-seed=SEED"):
        assert option in out, f"{option} missing from --help"
    for ini in ("deploy_backends", "deploy_examples", "deploy_strict", "deploy_report"):
        assert ini in out, f"ini {ini} missing from --help"
    assert "pytest-deploy" in out


def test_markers_lists_deployable_with_its_signature(pytester):
    result = run(pytester, "--markers")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["@pytest.mark.deployable(backends=None, inputs=None, dims=None, examples=None*"])


# ------------------------------------------------------------------------- summary and JSON report

SUMMARY_TESTS = """
    @deployable(backends=["state_dict", "trace", "fake"], **INPUTS)
    def test_good():
        return Linear().eval()

    @deployable(backends=["trace", "script"], **INPUTS)
    def test_leaky():
        return Leaky()

    @deployable(backends=["trace"], xfail={"trace": "constant"}, **INPUTS)
    def test_expected():
        return Leaky()
"""


def test_terminal_summary_table(pytester, fake_backend):
    path = pytester.makepyfile(user_tests(SUMMARY_TESTS))
    result = run(pytester)
    result.assert_outcomes(passed=3, failed=1, skipped=1, xfailed=1)
    lines = result.stdout.lines
    title = next(i for i, line in enumerate(lines) if "pytest-deploy summary" in line)
    assert lines[title].startswith("=")
    header = lines[title + 1].split()
    assert header[:2] == ["model", "test"]
    # a trailing branches column, since some results recorded data-dependent decisions
    assert header[2:] == ["state_dict", "trace", "script", "fake", "branches"]
    rows = {line.split()[0].split("::")[-1]: line for line in lines[title + 3:title + 6]}
    assert set(rows) == {"test_good", "test_leaky", "test_expected"}
    columns = [lines[title + 1].index(name) for name in header[2:]]

    def cells(row):
        return [row[start:end].strip() for start, end in zip(columns, columns[1:] + [None])]

    good, leaky, expected = cells(rows["test_good"]), cells(rows["test_leaky"]), cells(rows["test_expected"])
    # columns: state_dict, trace, script, fake, branches
    assert good[0].startswith("PASS ") and good[1].startswith("PASS ") and good[2] == "-" and good[3] == "SKIP"
    assert leaky[0] == "-" and re.match(r"FAIL\(branches\) \d[\d.e+-]* \d", leaky[1]) and leaky[2].startswith("PASS ")
    assert expected[1].startswith("XFAIL ") and expected[0] == expected[2] == expected[3] == "-"
    assert good[4] == "-"  # Linear takes no data-dependent decision
    assert leaky[4] == expected[4] == "1 sites, lost 1, uncovered 0"
    assert "6 checks: " in lines[title + 6]
    # under the table: each lost decision, with its site, per model test
    assert lines[title + 7].startswith("data-dependent decisions (lost: ")
    site = leaky_site(path)
    for offset, name in ((8, "test_leaky"), (10, "test_expected")):
        assert lines[title + offset] == f"{path.name}::{name} (trace):"
        assert re.fullmatch(rf"  {re.escape(site)}  seen .+ x\d+, .+ x\d+; traced \S+; LOST, outputs diverge",
                            lines[title + offset + 1]), lines[title + offset + 1]
    assert "test_good" not in "\n".join(lines[title + 7:title + 12])


def test_no_summary_without_deployable_tests(pytester):
    pytester.makepyfile("def test_plain():\n    pass\n")
    result = run(pytester, "--deploy-report=out.json")
    result.assert_outcomes(passed=1)
    assert "pytest-deploy summary" not in result.stdout.str()
    assert not (pytester.path / "out.json").exists()


RESULT_KEYS = {"test", "backend", "outcome", "stage", "message", "examples", "max_abs_error", "max_rel_error",
               "atol", "rtol", "timings", "cached", "branches"}


def test_json_report(pytester, fake_backend):
    path = pytester.makepyfile(user_tests(SUMMARY_TESTS))
    result = run(pytester, "--deploy-report=reports/out.json")
    result.assert_outcomes(passed=3, failed=1, skipped=1, xfailed=1)
    result.stdout.fnmatch_lines(["JSON report: reports/out.json"])
    report = read_report(pytester, "reports/out.json")
    assert report["version"] == 1
    env = report["environment"]
    assert {"python", "torch", "onnxruntime", "tvm", "tensorrt", "cuda"} <= set(env)
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert isinstance(env["torch"], str) and isinstance(env["cuda"], bool)

    results = by_backend(report)
    assert len(report["results"]) == 6 == len(results)
    for entry in report["results"]:
        assert set(entry) >= RESULT_KEYS, RESULT_KEYS - set(entry)
        assert set(entry["timings"]) == {"build", "load", "run"}
        assert entry["test"].startswith("test_json_report.py::test_")
        assert isinstance(entry["branches"], list)

    good = results["test_good", "trace"]
    assert good["outcome"] == "passed" and good["stage"] is None and good["message"] is None
    assert good["examples"] == 3 and good["max_abs_error"] <= good["atol"]
    assert good["cached"] is False and good["timings"]["build"] > 0
    assert good["branches"] == []

    leaky = results["test_leaky", "trace"]
    assert leaky["outcome"] == "failed" and leaky["stage"] == "branches"
    assert leaky["message"].startswith(lost_message_head(path)) and leaky["max_abs_error"] > leaky["atol"]
    assert "\noutputs differ from eager PyTorch\n" in leaky["message"]
    assert_leaky_lost(leaky["branches"], path)

    assert results["test_expected", "trace"]["outcome"] == "xfailed"
    assert_leaky_lost(results["test_expected", "trace"]["branches"], path)
    assert results["test_leaky", "script"]["outcome"] == "passed"

    skipped = results["test_good", "fake"]
    assert skipped["outcome"] == "skipped" and "module_that_does_not_exist_xyz" in skipped["message"]


# --------------------------------------------------------------------------------- lazy imports

LAZY_SESSION = """
import sys
import pytest
code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", sys.argv[1]])
loaded = "pytest_deploy.plugin" in sys.modules
heavy = sorted(m for m in ("torch", "hypothesis", "onnx", "onnxruntime", "tvm", "tensorrt") if m in sys.modules)
print("RESULT", int(code), loaded, ",".join(heavy) or "-")
"""


def test_loading_the_plugin_imports_no_heavy_module(tmp_path):
    (tmp_path / "test_plain.py").write_text("def test_plain():\n    pass\n")
    # the hypothesis plugin is disabled: it would import hypothesis itself
    proc = subprocess.run(
        [sys.executable, "-c", LAZY_SESSION, str(tmp_path / "test_plain.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**_clean_env(), "PYTEST_ADDOPTS": "-p no:hypothesispytest"},
    )
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    assert line == "RESULT 0 True -", f"{line}\n{proc.stdout}"


def test_importing_pytest_deploy_imports_no_heavy_module():
    code = ("import sys, pytest_deploy; "
            "print(sorted(m for m in ('torch', 'hypothesis', 'onnx', 'tvm') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=_clean_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def _clean_env():
    return {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS")}


# ---------------------------------------------------------------------------------------- xdist


def test_xdist_gives_the_same_outcomes_and_a_complete_report(pytester):
    # slower than the rest: starts a pytest process and two xdist workers, each importing torch
    path = pytester.makepyfile(user_tests("""
        @deployable(backends=["trace", "script"], **INPUTS)
        def test_linear():
            return Linear().eval()

        @deployable(backends=["trace", "script"], **INPUTS)
        def test_leaky():
            return Leaky()
    """))
    serial = run(pytester, "--deploy-report=serial.json")
    serial.assert_outcomes(passed=3, failed=1)
    result = pytester.runpytest_subprocess(*NO_CACHE, "-n", "2", "--deploy-report=xdist.json")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*2 workers*", "*pytest-deploy summary*",
                                 "*::test_leaky *FAIL(branches) *1 sites, lost 1, uncovered 0"])

    def outcomes(name):
        return {key: r["outcome"] for key, r in by_backend(read_report(pytester, name)).items()}

    assert outcomes("xdist.json") == outcomes("serial.json") == {
        ("test_linear", "trace"): "passed", ("test_linear", "script"): "passed",
        ("test_leaky", "trace"): "failed", ("test_leaky", "script"): "passed",
    }
    failed = by_backend(read_report(pytester, "xdist.json"))["test_leaky", "trace"]
    assert failed["stage"] == "branches" and failed["message"].startswith(lost_message_head(path))
    assert_leaky_lost(failed["branches"], path)
    assert failed["branches"] == by_backend(read_report(pytester, "serial.json"))["test_leaky", "trace"]["branches"]
