"""Unit tests for pytest_deploy.decisions and .branches: recording data-dependent decisions, and comparing them with a trace.

The models are defined here, so this file is the "user's file" whose lines the recorder reports. Each line a
test expects a decision at ends in a marker comment ``# @name``; :func:`line` finds it, so no line number is
hard-coded.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from pytest_deploy.branches import BranchAnalysis, Divergence, describe_divergence, fix_for
from pytest_deploy.decisions import _CONVERSIONS, Recorder, Run, Site, record

FILE = __file__
SOURCE = Path(FILE).read_text().splitlines()


def line(tag: str) -> int:
    """The line of this file that ends in ``# @tag``."""
    found = [i for i, text in enumerate(SOURCE, 1) if text.rstrip().endswith(f"# @{tag}")]
    assert len(found) == 1, f"marker @{tag} found {len(found)} times"
    return found[0]


def site(tag: str) -> Site:
    return Site(FILE, line(tag))


def events(run: Run) -> list[tuple[int, int, str, str]]:
    """The run's events as (line, occurrence, kind, outcome); every one must be in this file."""
    files = {s.file for s, _, _, _ in run.events}
    assert files <= {FILE}, f"decisions attributed outside the user's file: {files - {FILE}}"
    return [(s.line, n, kind, outcome) for s, n, kind, outcome in run.events]


def decisions(run: Run) -> dict[tuple[int, int], tuple[str, str]]:
    return {(s.line, n): v for (s, n), v in run.decisions().items()}


@pytest.fixture(autouse=True)
def free_tracer():
    """The line tracer needs sys.settrace: suspend one this session runs under (coverage, a debugger)."""
    previous = sys.gettrace()
    sys.settrace(None)
    yield
    sys.settrace(previous)


# ------------------------------------------------------------------------------------------ models


class Conversions(nn.Module):
    def forward(self, x, n):
        positive = bool(x.sum() > 0)  # @bool
        top = x.max().item()  # @item
        rows = x[: int(n)]  # @int
        mean = float(x.mean())  # @float
        first = x[0].tolist()  # @tolist
        steps = list(range(n))  # @index
        size = len(x)  # @len
        return rows * positive + top + mean + sum(first) + len(steps) + size


def scale_of(x):
    return float(x.abs().max())  # @helper


class Inner(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # @inner-if
            return x
        return -x


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = Inner()

    def forward(self, x):
        scale = scale_of(x)  # @call-helper
        return self.inner(x) / scale  # @call-inner


class RowLoop(nn.Module):
    def forward(self, x):
        total = 0.0
        for row in x:
            total += row.sum().item()  # @loop-item
        return x * total


class RowBranches(nn.Module):
    def forward(self, x):
        out = []
        for row in x:
            if row.sum() > 0:  # @loop-if
                out.append(row)
            else:
                out.append(-row)
        return torch.stack(out)


class ShapeBranch(nn.Module):
    def forward(self, x):
        if x.shape[0] > 2:  # @shape-if
            return x[:2]
        return x


class OneLineReturn(nn.Module):
    def forward(self, x):
        wide = x.shape[1] > 2
        if wide: return x[:, :2]  # noqa: E701  # @one-line-return
        return x


class OneLineAssign(nn.Module):
    def forward(self, x):
        if x.shape[1] > 2: x = x[:, :2]  # noqa: E701  # @one-line-assign
        return x * 2


class MultiLineCondition(nn.Module):
    def forward(self, x):
        if (x.shape[0] > 1  # @multi-line-if
                and x.shape[1] > 1):
            return x.sum(0)
        return x


class Elif(nn.Module):
    def forward(self, x):
        if x.sum() > 10:  # @if
            y = x * 3
        elif x.sum() > 0:  # @elif
            y = x * 2
        else:
            y = x
        return y


class While(nn.Module):
    def forward(self, x):
        i = 0
        while i < x.shape[0]:  # @while
            i += 1
        return x * i


class Contains(nn.Module):
    def forward(self, x):
        return x * (2 in x)  # @contains


class TorchInternals(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        x = nn.functional.dropout(self.fc(x), 0.5, training=False)  # @torch-calls
        return nn.functional.relu(x)


# -------------------------------------------------------------------------------- conversions


def test_each_conversion_is_recorded_with_its_kind_outcome_and_line():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    out, run = record(Conversions(), x, torch.tensor(3))
    assert out.shape == (2, 2)
    assert events(run) == [
        (line("bool"), 0, "bool", "True"),
        (line("item"), 0, "item", "4"),
        (line("int"), 0, "int", "3"),
        (line("float"), 0, "float", "2.5"),
        (line("tolist"), 0, "tolist", "[1.0, 2.0]"),
        (line("index"), 0, "index", "3"),
        (line("len"), 0, "len", "2"),
    ]


def test_a_conversion_outcome_follows_the_input():
    _, run = record(Conversions(), -torch.ones(3, 2), torch.tensor(1))
    assert [(ln, kind, outcome) for ln, _, kind, outcome in events(run)] == [
        (line("bool"), "bool", "False"),
        (line("item"), "item", "-1"),
        (line("int"), "int", "1"),
        (line("float"), "float", "-1"),
        (line("tolist"), "tolist", "[-1.0, -1.0]"),
        (line("index"), "index", "1"),
        (line("len"), "len", "3"),
    ]


def test_a_helper_function_and_a_submodule_decide_on_their_own_lines():
    x = torch.tensor([[1.0, -3.0]])
    _, run = record(Outer(), x)
    assert events(run) == [
        (line("helper"), 0, "float", "3"),
        (line("inner-if"), 0, "bool", "False"),
        (line("inner-if"), 1, "branch", "False"),
    ]
    lines = {ln for ln, _, _, _ in events(run)}
    assert line("call-helper") not in lines and line("call-inner") not in lines


def test_loop_iterations_are_occurrences_of_one_site():
    x = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    _, run = record(RowLoop(), x)
    assert events(run) == [(line("loop-item"), n, "item", v) for n, v in enumerate(["2", "4", "6"])]


def test_loop_iterations_of_a_branch_are_numbered_in_the_decisions():
    x = torch.tensor([[1.0], [-1.0], [2.0]])
    _, run = record(RowBranches(), x)
    assert decisions(run) == {
        (line("loop-if"), 0): ("branch", "True"),
        (line("loop-if"), 1): ("branch", "False"),
        (line("loop-if"), 2): ("branch", "True"),
    }


def test_a_conversion_torch_makes_inside_its_own_code_is_attributed_to_the_user_line():
    # Tensor.__contains__ (torch/_tensor.py) calls .item(): the decision is the user's `in`
    _, run = record(Contains(), torch.tensor([1.0, 2.0]))
    assert events(run) == [(line("contains"), 0, "item", "True")]
    _, run = record(Contains(), torch.tensor([1.0, 3.0]))
    assert events(run) == [(line("contains"), 0, "item", "False")]


def test_frames_inside_torch_are_never_traced():
    # nn.Module.__call__, F.dropout and F.relu hold if statements of their own: none is recorded
    torch.manual_seed(0)
    out, run = record(TorchInternals(), torch.ones(2, 3))
    assert out.shape == (2, 3)
    assert run.events == []


def test_a_conversion_with_no_user_frame_on_its_stack_is_ignored():
    t = torch.tensor(2.5)
    with Recorder() as rec:
        worker = threading.Thread(target=float, args=(t,))  # float() runs from threading.py, no user code
        worker.start()
        worker.join()
        value = scale_of(t)  # the same conversion from user code is recorded
    assert value == 2.5
    assert events(rec.run) == [(line("helper"), 0, "float", "2.5")]


# ---------------------------------------------------------------------------------- branches


@pytest.mark.parametrize(("rows", "taken"), [(3, "True"), (2, "False")])
def test_a_branch_on_a_shape_has_no_conversion_but_is_recorded(rows, taken):
    _, run = record(ShapeBranch(), torch.ones(rows, 2))
    assert events(run) == [(line("shape-if"), 0, "branch", taken)]


@pytest.mark.parametrize(("model", "tag"), [(OneLineReturn, "one-line-return"), (OneLineAssign, "one-line-assign")])
@pytest.mark.parametrize(("width", "taken"), [(3, "True"), (2, "False")])
def test_a_one_line_if_records_whether_its_body_ran(model, tag, width, taken):
    out, run = record(model(), torch.ones(2, width))
    assert out.shape == (2, 2)
    assert events(run) == [(line(tag), 0, "branch", taken)]


@pytest.mark.parametrize(("shape", "taken"), [((2, 2), "True"), ((2, 1), "False"), ((1, 2), "False")])
def test_a_multi_line_condition_is_one_decision_at_the_if_line(shape, taken):
    _, run = record(MultiLineCondition(), torch.ones(shape))
    assert events(run) == [(line("multi-line-if"), 0, "branch", taken)]


@pytest.mark.parametrize(
    ("total", "expected"),
    [
        (20.0, {"if": "True"}),
        (5.0, {"if": "False", "elif": "True"}),
        (-5.0, {"if": "False", "elif": "False"}),
    ],
)
def test_an_elif_is_a_decision_of_its_own_reached_only_when_the_if_fails(total, expected):
    _, run = record(Elif(), torch.tensor([total]))
    assert decisions(run) == {(line(tag), 0): ("branch", outcome) for tag, outcome in expected.items()}


def test_a_while_loop_records_each_test():
    _, run = record(While(), torch.ones(3, 1))
    assert decisions(run) == {(line("while"), n): ("branch", o) for n, o in enumerate(["True"] * 3 + ["False"])}


def test_decisions_prefer_the_branch_outcome_over_the_conversion_on_its_line():
    x = torch.tensor([[1.0], [-1.0]])
    _, run = record(RowBranches(), x)
    # the recorder saw bool() and the branch on the same line, one counter for both
    assert events(run) == [
        (line("loop-if"), 0, "bool", "True"), (line("loop-if"), 1, "branch", "True"),
        (line("loop-if"), 2, "bool", "False"), (line("loop-if"), 3, "branch", "False"),
    ]
    assert decisions(run) == {(line("loop-if"), 0): ("branch", "True"), (line("loop-if"), 1): ("branch", "False")}


def test_decisions_keep_conversions_on_lines_without_a_branch():
    a, b = site("item"), site("float")
    run = Run([(a, 0, "item", "1"), (b, 0, "float", "2"), (a, 1, "item", "3")])
    assert run.decisions() == {(a, 0): ("item", "1"), (b, 0): ("float", "2"), (a, 1): ("item", "3")}


# ------------------------------------------------------------------------------ the recorder


def test_the_recorder_restores_tensor_methods_and_the_tracer():
    before = {name: torch.Tensor.__dict__.get(name) for name in _CONVERSIONS}
    x = torch.ones(2)
    with Recorder() as rec:
        assert rec.line_tracing is True
        assert sys.gettrace() is not None
        assert all(torch.Tensor.__dict__.get(name) is not before[name] for name in _CONVERSIONS)
        scale_of(x)
    assert {name: torch.Tensor.__dict__.get(name) for name in _CONVERSIONS} == before
    assert torch.Tensor.__bool__ is torch._C.TensorBase.__bool__
    assert sys.gettrace() is None
    scale_of(x)  # no longer recorded
    assert events(rec.run) == [(line("helper"), 0, "float", "1")]


def test_the_recorder_restores_everything_when_the_block_raises():
    before = {name: torch.Tensor.__dict__.get(name) for name in _CONVERSIONS}
    with pytest.raises(RuntimeError, match="boom"), Recorder() as rec:
        scale_of(torch.ones(2))
        raise RuntimeError("boom")
    assert {name: torch.Tensor.__dict__.get(name) for name in _CONVERSIONS} == before
    assert sys.gettrace() is None
    assert events(rec.run) == [(line("helper"), 0, "float", "1")]


def test_under_another_tracer_only_conversions_are_recorded_and_that_tracer_stays():
    calls = []

    def other_tracer(frame, event, arg):
        calls.append(frame.f_code.co_name)

    before = {name: torch.Tensor.__dict__.get(name) for name in _CONVERSIONS}
    x = torch.tensor([[1.0], [-1.0]])
    sys.settrace(other_tracer)
    try:
        with Recorder() as rec:
            RowBranches()(x)
        after = sys.gettrace()
    finally:
        sys.settrace(None)
    assert rec.line_tracing is False
    assert after is other_tracer
    assert "forward" in calls  # the other tracer kept seeing calls while recording
    # the bool() conversions, not the if outcomes
    assert decisions(rec.run) == {(line("loop-if"), 0): ("bool", "True"), (line("loop-if"), 1): ("bool", "False")}
    assert {name: torch.Tensor.__dict__.get(name) for name in _CONVERSIONS} == before


def test_record_returns_the_value_and_the_run():
    out, run = record(ShapeBranch(), torch.ones(3, 2))
    assert out.shape == (2, 2)
    assert isinstance(run, Run) and len(run.events) == 1


# ---------------------------------------------------------------------------------- analysis


def run_of(*decisions: tuple[str, str, str]) -> Run:
    """A Run from (marker, kind, outcome) triples, numbering repeated sites as the recorder does."""
    run, counts = Run(), {}
    for tag, kind, outcome in decisions:
        s = site(tag)
        counts[s] = counts.get(s, -1) + 1
        run.events.append((s, counts[s], kind, outcome))
    return run


def test_no_divergence_on_the_traced_path():
    traced = run_of(("if", "branch", "True"), ("float", "float", "2"))
    analysis = BranchAnalysis(traced)
    assert analysis.observe(run_of(("if", "branch", "True"), ("float", "float", "2"))) == []
    assert not any(s.lost for s in analysis.sites.values())
    assert analysis.summary() == {"branches": 2, "lost": 0, "uncovered": 1}


def test_divergences_come_in_execution_order_first_divergence_first():
    traced = run_of(("if", "branch", "False"), ("elif", "branch", "True"), ("float", "float", "2"))
    example = run_of(("if", "branch", "False"), ("elif", "branch", "False"), ("float", "float", "3"))
    found = BranchAnalysis(traced).divergences(example)
    assert found == [
        Divergence(site("elif"), 0, "branch", "True", "False"),
        Divergence(site("float"), 0, "float", "2", "3"),
    ]


def test_a_decision_only_one_side_reaches_is_a_divergence():
    # the example reaches a site the trace never did; at a site both reached, a loop that ran fewer times
    traced = run_of(("if", "branch", "False"), ("loop-if", "branch", "True"), ("loop-if", "branch", "True"))
    example = run_of(("if", "branch", "False"), ("loop-if", "branch", "True"), ("float", "float", "2"))
    found = BranchAnalysis(traced).divergences(example)
    assert found == [
        Divergence(site("float"), 0, "float", None, "2"),
        Divergence(site("loop-if"), 1, "branch", "True", None),
    ]


def test_a_traced_site_the_example_never_reaches_is_the_other_side_of_a_listed_divergence():
    traced = run_of(("if", "branch", "True"), ("item", "item", "1"))
    example = run_of(("if", "branch", "False"), ("elif", "branch", "True"))
    found = BranchAnalysis(traced).divergences(example)
    assert [(d.site, d.traced, d.example) for d in found] == [(site("if"), "True", "False"),
                                                              (site("elif"), None, "True")]


def test_observe_marks_lost_sites_and_counts_outcomes():
    analysis = BranchAnalysis(run_of(("if", "branch", "True"), ("float", "float", "2")))
    analysis.observe(run_of(("if", "branch", "True"), ("float", "float", "2")))
    found = analysis.observe(run_of(("if", "branch", "True"), ("float", "float", "5")))
    assert [d.site for d in found] == [site("float")]
    stats = analysis.sites
    assert stats[site("float")].lost is True and stats[site("if")].lost is False
    assert stats[site("float")].outcomes == {"2": 1, "5": 1} and stats[site("float")].traced == "2"
    assert stats[site("if")].outcomes == {"True": 2} and stats[site("if")].traced == "True"
    assert stats[site("float")].diverged is False
    analysis.mark_diverged(site("float"))
    assert stats[site("float")].diverged is True and stats[site("if")].diverged is False


def test_uncovered_outcomes_of_branches_and_bool_conversions_but_not_of_values():
    analysis = BranchAnalysis()
    analysis.observe(run_of(("if", "branch", "True"), ("bool", "bool", "False"), ("float", "float", "2")))
    analysis.observe(run_of(("if", "branch", "True"), ("bool", "bool", "False"), ("float", "float", "3")))
    assert analysis.sites[site("if")].uncovered == ["False"]
    assert analysis.sites[site("bool")].uncovered == ["True"]
    assert analysis.sites[site("float")].uncovered == []
    assert analysis.missing_outcomes() == {(site("if"), "False"), (site("bool"), "True")}
    assert analysis.divergences(run_of(("if", "branch", "False"))) == []  # nothing traced: nothing to lose
    assert analysis.summary() == {"branches": 3, "lost": 0, "uncovered": 2}


def test_the_traced_outcome_counts_as_covered():
    analysis = BranchAnalysis(run_of(("if", "branch", "False")))
    analysis.observe(run_of(("if", "branch", "True")))
    stats = analysis.sites[site("if")]
    assert stats.outcomes == {"True": 1} and stats.traced_outcomes == {"False"}
    assert stats.uncovered == [] and stats.lost is True
    assert analysis.missing_outcomes() == set()
    assert (site("if"), "False") in analysis.seen() and (site("if"), "True") in analysis.seen()
    assert analysis.summary() == {"branches": 1, "lost": 1, "uncovered": 0}


def test_to_json_describes_each_site_in_file_order():
    analysis = BranchAnalysis(run_of(("if", "branch", "False"), ("float", "float", "2")))
    analysis.observe(run_of(("float", "float", "2"), ("if", "branch", "True")))
    analysis.mark_diverged(site("if"))
    entries = analysis.to_json()
    assert [e["line"] for e in entries] == sorted([line("if"), line("float")])
    by_line = {e["line"]: e for e in entries}
    branch = by_line[line("if")]
    assert set(branch) == {"file", "line", "source", "kind", "outcomes", "traced", "lost", "diverged", "uncovered"}
    assert branch["file"].endswith("test_decisions.py")
    assert branch["source"] == "if x.sum() > 10:  # @if"
    assert branch == {**branch, "kind": "branch", "outcomes": {"True": 1}, "traced": "False", "lost": True,
                      "diverged": True, "uncovered": []}
    value = by_line[line("float")]
    assert value["source"].startswith("mean = float(x.mean())")
    assert value == {**value, "kind": "float", "outcomes": {"2": 1}, "traced": "2", "lost": False,
                     "diverged": False, "uncovered": []}


def test_recorded_runs_compare_against_a_recorded_trace():
    model = RowBranches()
    _, traced = record(model, torch.tensor([[1.0], [1.0]]))
    analysis = BranchAnalysis(traced)
    _, same = record(model, torch.tensor([[2.0], [3.0]]))
    assert analysis.observe(same) == []
    _, other = record(model, torch.tensor([[2.0], [-3.0]]))
    assert analysis.observe(other) == [Divergence(site("loop-if"), 1, "branch", "True", "False")]
    stats = analysis.sites[site("loop-if")]
    assert stats.lost and stats.outcomes == {"True": 3, "False": 1} and stats.uncovered == []


@pytest.mark.parametrize(
    ("occurrence", "kind", "traced", "example", "text"),
    [
        (0, "branch", "True", "False",
         "trace-lost branch at {where}\n  traced with outcome True; the failing input takes False"),
        (2, "bool", None, "True",
         "trace-lost branch at {where} (occurrence 3)\n  not reached when tracing; the failing input takes True"),
        (0, "float", "2", None,
         "trace-lost value at {where}\n  traced with outcome 2; the failing input does not reach it"),
    ],
)
def test_describe_divergence(occurrence, kind, traced, example, text):
    where = site("if").describe()
    assert where.endswith(f"test_decisions.py:{line('if')}  `if x.sum() > 10:  # @if`")
    divergence = Divergence(site("if"), occurrence, kind, traced, example)
    assert describe_divergence(divergence, "the failing input") == text.format(where=where)


@pytest.mark.parametrize(("kind", "plain", "starts"), [
    ("item", False, "keep it a tensor: drop the conversion (`.item()`)"),
    ("float", False, "keep it a tensor: drop the conversion (`float()`)"),
    ("tolist", False, "keep it a tensor: drop the conversion (`.tolist()`)"),
    ("numpy", False, "do it in torch: replace the numpy call with the torch op"),
    ("len", False, "read the size from the tensor: `x.size(0)`"),
    ("bool", False, "compute both sides and pick with torch.where(condition, a, b)"),
    ("branch", False, "compute both sides and pick with torch.where(condition, a, b)"),
    ("branch", True, "a branch on a shape: torch.export decides it per dim range"),
])
def test_each_kind_of_decision_gets_its_own_fix(kind, plain, starts):
    assert fix_for(Divergence(site("if"), 0, kind, "1", "2"), plain=plain).startswith(starts)


def test_a_decision_on_a_random_draw_gets_the_randomness_fix(tmp_path):
    source = tmp_path / "coin.py"
    source.write_text("import random\nif random.random() < 0.5:\n    pass\n")
    fix = fix_for(Divergence(Site(str(source), 2), 0, "branch", "True", "False"), plain=True)
    assert fix.startswith("randomness in forward: trace freezes the draw of Python's or numpy's RNG")
