"""Branch analysis against a corpus of control-flow models with known ground truth.

The models live in ``branch_corpus.py``. Each line there that holds a data-dependent decision ends
in a marker, ``# LOST: <case>`` (torch.jit.trace freezes it and outputs change: trace fails at stage
branches naming the line), ``# SAME: <case>`` (frozen, outputs unchanged: reported, trace passes) or
``# UNCOVERED: <case>`` (no declared input reaches its other outcome: reported as uncovered). The
expected lines are read from those markers, never written here. Models without a marker take no
data-dependent decision: nothing may be reported for them.

Most checks call ``verify`` directly (fast); a few run pytest through ``pytester`` for the summary
table's branches column, the list of lost/uncovered decisions under it and the JSON report.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import branch_corpus as corpus

# pytester's inline runs drop every module they imported when they end: import these once, here
import hypothesis  # noqa: F401
import pytest
import torch

import pytest_deploy.check
import pytest_deploy.report  # noqa: F401
from pytest_deploy import DeployFailure, Result, tensor, verify
from pytest_deploy.backends.base import short_path

CORPUS = Path(corpus.__file__)
SOURCE = CORPUS.read_text()
MARKER = re.compile(r"#\s*(LOST|SAME|UNCOVERED):\s*(\w+)\s*$")
EXAMPLES = 8
FIX = "fix: "  # the fix line follows, in the words of its kind (tests/integration/test_fix_lines.py)


def read_markers(source: str) -> dict[str, dict[int, str]]:
    """case → {line: LOST | SAME | UNCOVERED}, from the trailing markers of ``source``."""
    out: dict[str, dict[int, str]] = {}
    for number, text in enumerate(source.splitlines(), 1):
        m = MARKER.search(text)
        if m:
            out.setdefault(m.group(2), {})[number] = m.group(1)
    return out


MARKS = read_markers(SOURCE)
SOURCE_LINES = SOURCE.splitlines()


def source_at(line: int) -> str:
    return SOURCE_LINES[line - 1].strip()


BATCH = (tensor("batch", 4),)


@dataclass(frozen=True)
class Case:
    name: str  # the tag of its markers
    model: type
    decision: str  # what kind of decision it takes, for people reading the table
    inputs: tuple = BATCH
    dims: dict = field(default_factory=lambda: {"batch": (1, 4)})
    scriptable: bool = True

    def lines(self, *kinds: str) -> set[int]:
        return {line for line, kind in MARKS.get(self.name, {}).items() if not kinds or kind in kinds}

    @property
    def diverges(self) -> bool:
        return bool(self.lines("LOST"))

    def check(self, backend: str = "trace", **kwargs) -> tuple[Result, str | None]:
        """verify(); the result, and the failure message (None when it passed)."""
        kwargs.setdefault("examples", EXAMPLES)
        try:
            return verify(self.model().eval(), backend, inputs=list(self.inputs), dims=self.dims, **kwargs), None
        except DeployFailure as exc:
            return exc.result, str(exc)


CASES = [
    Case("reduction", corpus.IfReduction, "if on a reduction"),
    Case("item", corpus.ItemCompare, "if on an .item() comparison"),
    Case("while", corpus.WhileTensorBound, "while bounded by a tensor value",
         inputs=(tensor("batch", 4, low=-4, high=4),)),
    Case("early_return", corpus.EarlyReturn, "early return (one-line if)"),
    Case("submodule", corpus.SubmoduleBranch, "if in a submodule"),
    Case("helper", corpus.HelperBranch, "if in a helper function"),
    Case("tolist", corpus.ToListLoop, "loop over .tolist()", scriptable=False),
    Case("int_slice", corpus.IntSlice, "slice with int(t)", inputs=(tensor("batch", 8),)),
    Case("shape", corpus.ShapeBranch, "if on x.shape[0], batch dynamic"),
    Case("nested", corpus.Nested, "nested ifs"),
    Case("rare", corpus.RareBranch, "if taken by rare inputs (max > 0.95 in [-1, 1])",
         inputs=(tensor("batch", 2),), dims={"batch": (1, 2)}),
    Case("identical", corpus.IdenticalOutcomes, "if whose outcomes compute the same"),
    Case("elif", corpus.ElifChain, "if/elif chain on one reduction"),
    Case("float", corpus.FloatValue, "float(t) in arithmetic"),
    Case("len", corpus.LenValue, "len(t) in arithmetic, batch dynamic"),
    Case("flags", corpus.IntegerFlags, "if on integer flags, other outcome only at the all-zero corner",
         inputs=(tensor("batch", 4), tensor("batch", 16, dtype=torch.int64, low=0, high=2))),
    Case("unreachable", corpus.Unreachable, "if no input in range takes"),
    Case("mlp", corpus.MLP, "none"),
    Case("static", corpus.StaticControl, "none: flags, loop over layers, counted while, rank/size checks"),
    Case("static_batch", corpus.ShapeBranch, "none: if on x.shape[0], batch static", dims={"batch": 3}),
    Case("static_shapes", corpus.StaticShapes, "none: view/slice/range/len on shapes the trace keeps"),
    Case("layers", corpus.StandardLayers, "none: conv, batchnorm, attention, layernorm",
         inputs=(tensor("batch", "seq", 4),), dims={"batch": (1, 3), "seq": (2, 5)}),
]
BY_NAME = {case.name: case for case in CASES}
FLOW = [case for case in CASES if case.lines()]
NO_FLOW = [case for case in CASES if not case.lines()]

LOST_HEAD = re.compile(
    r"trace: stage branches: trace-lost (?P<what>branch|value) at (?P<file>\S+):(?P<line>\d+)  `(?P<source>.+)`"
    r"(?: \(occurrence (?P<occurrence>\d+)\))?\n"
    r"  (?:traced with outcome (?P<traced>.+?)|not reached when tracing); the failing input "
    r"(?:takes (?P<other>.+?)|does not reach it); max abs error (?P<error>\S+) > atol (?P<atol>\S+)\n"
    r"  " + re.escape(FIX) + r".+\n"
)


def by_line(result: Result) -> dict[int, dict]:
    return {b["line"]: b for b in result.branches}


# ---------------------------------------------------------------------------------------- corpus


def test_the_corpus_covers_what_it_claims():
    assert len(CASES) >= 15 and len(FLOW) >= 13 and len(NO_FLOW) >= 3
    # every marker belongs to a case, every marked line holds an if/while or a tensor conversion
    assert set(MARKS) == {case.name for case in FLOW}
    for case in FLOW:
        for line in case.lines():
            assert re.match(r"(if|elif|while|for|return|k =) ", source_at(line)), source_at(line)
    assert {case.name for case in FLOW if case.diverges} >= {
        "reduction", "item", "while", "early_return", "submodule", "helper", "tolist", "int_slice", "shape",
        "nested", "rare", "elif", "float", "len", "flags"}
    assert BY_NAME["identical"].lines() == BY_NAME["identical"].lines("SAME")
    assert BY_NAME["unreachable"].lines() == BY_NAME["unreachable"].lines("UNCOVERED")


@pytest.mark.parametrize("case", FLOW, ids=lambda c: c.name)
def test_trace_reports_exactly_the_marked_decisions(case):
    result, message = case.check()
    sites = by_line(result)
    # every decision at its file and line, with its source text; nothing else
    assert {b["file"] for b in result.branches} == {short_path(str(CORPUS))}
    assert set(sites) == case.lines(), result.branches
    for line, site in sites.items():
        assert site["source"] == source_at(line)
    assert {line for line, s in sites.items() if s["lost"]} == case.lines("LOST", "SAME"), result.branches
    assert {line for line, s in sites.items() if s["uncovered"]} == case.lines("UNCOVERED"), result.branches
    for line in case.lines("UNCOVERED"):
        assert sites[line]["uncovered"] == ["True"] and not sites[line]["lost"]
    for line in case.lines("SAME"):
        assert sites[line]["diverged"] is False
    if not case.diverges:
        assert message is None and result.passed
        return
    # fails at stage branches, naming the site, its source, both outcomes, the error and the fix
    assert result.outcome == "failed" and result.stage == "branches"
    head = LOST_HEAD.match(message)
    assert head, message
    line = int(head["line"])
    assert head["file"] == short_path(str(CORPUS)) and line in case.lines("LOST")
    assert head["source"] == source_at(line)
    site = sites[line]
    assert site["diverged"] is True
    assert head["what"] == ("branch" if site["kind"] in ("branch", "bool") else "value")
    assert head["traced"] != head["other"]
    if head["traced"] is not None and head["occurrence"] is None:  # "traced" is the first occurrence's
        assert head["traced"] == site["traced"]
    if head["other"] is not None:
        assert head["other"] in site["outcomes"]
    assert float(head["error"]) > float(head["atol"]) == 1e-5
    assert "outputs differ from eager PyTorch" in message  # the comparison follows


@pytest.mark.parametrize("case", NO_FLOW, ids=lambda c: c.name)
@pytest.mark.parametrize("seed", [0, 1])
def test_no_false_flags_without_data_dependent_control_flow(case, seed):
    result, message = case.check(seed=seed)
    assert message is None and result.passed
    assert result.branches == []
    assert "branch_summary" not in result.details


def test_the_rare_branch_is_reached_by_the_search():
    case = BY_NAME["rare"]
    # no example hypothesis draws is needed: the canonical input and the search are enough
    result, message = case.check(examples=1)
    assert result.stage == "branches" and result.details["branch_search_runs"] >= 1
    assert f"{short_path(str(CORPUS))}:{min(case.lines())}" in message
    assert "failing input (found by the branch search)" in message
    assert by_line(result)[min(case.lines())]["outcomes"].keys() == {"True", "False"}


SEARCHED = [case for case in FLOW if case.name in (
    "reduction", "item", "early_return", "submodule", "helper", "shape", "nested", "rare", "identical", "elif",
    "flags")]


@pytest.mark.parametrize("case", SEARCHED, ids=lambda c: c.name)
def test_the_search_alone_finds_each_lost_if(case):
    """With ``examples=1`` only the traced input and what the branch search finds run: every if
    whose other outcome some declared input takes is still found, at the same line."""
    result, message = case.check(examples=1)
    sites = by_line(result)
    assert {line for line, s in sites.items() if s["lost"]} == case.lines("LOST", "SAME"), result.branches
    assert all(not s["uncovered"] for s in sites.values())
    assert (message is not None) == case.diverges
    if message:
        assert int(LOST_HEAD.match(message)["line"]) in case.lines("LOST")


def test_a_shape_branch_is_lost_only_when_the_dim_varies():
    """A branch on the batch size is lost only when the batch dim varies."""
    static, dynamic = BY_NAME["static_batch"].check(), BY_NAME["shape"].check()
    assert static[0].passed and static[0].branches == []
    assert dynamic[0].stage == "branches"


# ------------------------------------------------------------------------------- other backends


@pytest.mark.parametrize("case", [c for c in FLOW if c.scriptable], ids=lambda c: c.name)
def test_script_keeps_the_branches(case):
    result, message = case.check("script")
    assert message is None and result.passed
    # the decisions are still recorded (from eager), and none is lost: script compiles both sides
    assert set(by_line(result)) == case.lines()
    assert not any(b["lost"] or b["diverged"] for b in result.branches)


@pytest.mark.parametrize("case", [c for c in FLOW if c.name not in ("tolist", "shape", "len")], ids=lambda c: c.name)
def test_export_refuses_the_same_line_and_names_torch_cond(case):
    result, message = case.check("export", examples=1)
    assert result.stage == "export", message
    first = min(case.lines())
    assert f"at {short_path(str(CORPUS))}:{first}  `{source_at(first)}`" in message
    assert "torch.cond" in message


# ----------------------------------------------------------------------------- through pytest

USER_TESTS = """
import corpus_models as m
from pytest_deploy import deployable, tensor

B = dict(inputs=[tensor("batch", 4)], dims={"batch": (1, 4)}, examples=8)


@deployable(backends=["trace", "script"], **B)
def test_reduction():
    return m.IfReduction()


@deployable(backends=["trace"], **B)
def test_identical():
    return m.IdenticalOutcomes()


@deployable(backends=["trace"], **B)
def test_unreachable():
    return m.Unreachable()


@deployable(backends=["trace"], **B)
def test_static():
    return m.StaticControl()


@deployable(backends=["trace"], **B)
def test_mlp():
    return m.MLP()
"""


@pytest.fixture
def corpus_run(pytester):
    """The corpus (as ``corpus_models.py``) and a user test file on five of its models, run by pytest."""
    pytester.makepyfile(corpus_models=SOURCE, test_corpus=USER_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "--deploy-report=out.json")
    report = json.loads((pytester.path / "out.json").read_text())
    return result, {(r["test"].split("::")[-1], r["backend"]): r for r in report["results"]}


def corpus_site(case: str) -> tuple[int, str]:
    (line,) = BY_NAME[case].lines()
    return line, f"corpus_models.py:{line}  `{source_at(line)}`"


def test_summary_lists_the_lost_and_uncovered_decisions(corpus_run):
    result, _ = corpus_run
    result.assert_outcomes(passed=5, failed=1)
    lines = result.stdout.lines
    title = next(i for i, line in enumerate(lines) if "pytest-deploy summary" in line)
    header = lines[title + 1]
    assert header.split()[2:] == ["trace", "script", "branches"]
    rows = {line.split()[0].split("::")[-1]: line for line in lines[title + 3:title + 8]}
    branches = {name: row[header.index("branches"):].strip() for name, row in rows.items()}
    assert branches == {
        "test_reduction": "1 sites, lost 1, uncovered 0",
        "test_identical": "1 sites, lost 1, uncovered 0",
        "test_unreachable": "1 sites, lost 0, uncovered 1",
        "test_static": "-",
        "test_mlp": "-",
    }
    assert rows["test_reduction"][header.index("trace"):].startswith("FAIL(branches)")
    listing = lines[title + 9:]
    assert listing[0].startswith("data-dependent decisions (lost: ")
    expected = {
        "test_reduction": (corpus_site("reduction")[1], r"traced \S+; LOST, outputs diverge"),
        "test_identical": (corpus_site("identical")[1], r"traced \S+; lost, outputs unaffected"),
        "test_unreachable": (corpus_site("unreachable")[1], r"traced False; never reached: True"),
    }
    for name, (site, status) in expected.items():
        at = listing.index(f"test_corpus.py::{name} (trace):")
        assert re.fullmatch(rf"  {re.escape(site)}  seen .+; {status}", listing[at + 1]), listing[at + 1]
    text = "\n".join(listing)
    assert "test_static" not in text and "test_mlp" not in text


def test_json_report_has_the_branch_records(corpus_run):
    _, results = corpus_run
    for (test, backend), entry in results.items():
        case = test.removeprefix("test_")
        marks = BY_NAME[case].lines()
        assert [(b["file"], b["line"]) for b in entry["branches"]] == [("corpus_models.py", n) for n in sorted(marks)]
        for b in entry["branches"]:
            assert b["source"] == source_at(b["line"]) and b["kind"] == "branch"
            assert b["traced"] == (None if backend == "script" else "False")
    reduction = results["test_reduction", "trace"]
    assert reduction["outcome"] == "failed" and reduction["stage"] == "branches"
    (site,) = reduction["branches"]
    assert site["lost"] is True and site["diverged"] is True and site["uncovered"] == []
    assert set(site["outcomes"]) == {"True", "False"}
    (site,) = results["test_reduction", "script"]["branches"]
    assert results["test_reduction", "script"]["outcome"] == "passed"
    assert site["lost"] is False and site["diverged"] is False
    (site,) = results["test_identical", "trace"]["branches"]
    assert results["test_identical", "trace"]["outcome"] == "passed"
    assert site["lost"] is True and site["diverged"] is False
    (site,) = results["test_unreachable", "trace"]["branches"]
    assert site["lost"] is False and site["uncovered"] == ["True"] and site["outcomes"].keys() == {"False"}
    for name in ("test_static", "test_mlp"):
        assert results[name, "trace"]["outcome"] == "passed" and results[name, "trace"]["branches"] == []
