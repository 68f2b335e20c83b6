"""Unit tests for pytest_deploy.check: the arity check and the reference (eager determinism) check."""

from __future__ import annotations

import pytest
import torch

import pytest_deploy
from pytest_deploy import DeployFailure, tensor
from pytest_deploy.compare import format_number
from pytest_deploy.errors import StageError
from pytest_deploy.reference import check_arity


class TwoArgs(torch.nn.Module):
    def forward(self, x, mask):
        return x * mask


class OptionalArg(torch.nn.Module):
    def forward(self, x, scale=None):
        return x if scale is None else x * scale


class VarArgs(torch.nn.Module):
    def forward(self, *xs):
        return sum(xs)


class NoArgs(torch.nn.Module):
    def forward(self):
        return torch.zeros(1)


def test_check_arity_names_forwards_arguments():
    with pytest.raises(StageError) as info:
        check_arity(TwoArgs(), 1)
    assert info.value.stage == "run"
    assert str(info.value) == (
        "inputs= declares 1 input(s) but TwoArgs.forward takes 2 positional argument(s) (x, mask); "
        "make inputs= match forward"
    )


def test_check_arity_with_optional_arguments_gives_the_range():
    check_arity(OptionalArg(), 1)
    check_arity(OptionalArg(), 2)
    with pytest.raises(StageError, match=r"declares 3 input\(s\) but OptionalArg.forward takes 1 to 2 positional "
                                         r"argument\(s\) \(x, scale\)"):
        check_arity(OptionalArg(), 3)


def test_check_arity_no_arguments():
    with pytest.raises(StageError, match=r"takes 0 positional argument\(s\) \(\(none\)\)"):
        check_arity(NoArgs(), 1)


def test_check_arity_accepts_var_positional():
    check_arity(VarArgs(), 5)  # no exception: *args takes any count
    result = pytest_deploy.verify(VarArgs(), "trace", inputs=[tensor(2), tensor(2), tensor(2)], examples=2)
    assert result.passed and result.examples == 2


def test_verify_reports_arity_mismatch_as_failure():
    with pytest.raises(DeployFailure) as info:
        pytest_deploy.verify(TwoArgs().eval(), backend="trace", inputs=[tensor(2)], examples=1)
    assert "trace: stage run: inputs= declares 1 input(s)" in str(info.value)
    assert info.value.result.outcome == "failed" and info.value.result.stage == "run"


def test_nondeterministic_model_fails_the_reference_check():
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Dropout(0.5))
    model.train()
    with pytest.raises(DeployFailure) as info:
        pytest_deploy.verify(model, backend="trace", inputs=[tensor(4, 16)], examples=1)
    msg = str(info.value)
    assert msg.startswith("trace: stage run: ")
    assert "nondeterministic" in msg
    assert "model.eval()" in msg
    assert info.value.result.stage == "run"


def test_deterministic_model_in_eval_mode_passes_trace():
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Dropout(0.5)).eval()
    result = pytest_deploy.verify(model, backend="trace", inputs=[tensor("batch", 16)], dims={"batch": (1, 3)},
                                  examples=3)
    assert result.passed and result.backend == "trace"
    assert result.examples >= 1
    assert result.max_abs_error is not None and result.max_abs_error < 1e-3


def test_inductor_imported_during_a_check_keeps_its_headers_out_of_the_work_directory(tmp_path):
    """torch._inductor.codecache fixes its precompiled-header directory from the temp dir when first imported;
    imported inside a check, that is the check's work directory, which later compiles would re-create."""
    import subprocess
    import sys

    code = f"""
from pathlib import Path
import torch
from pytest_deploy.check import _temporary_files_in
work, home = Path({str(tmp_path / "work")!r}), Path({str(tmp_path / "home")!r})
with _temporary_files_in(work / "tmp", str(home)):
    import torch._inductor.codecache as codecache
    assert Path(codecache._HEADER_DIR).is_relative_to(work), codecache._HEADER_DIR  # what inductor chose
print(codecache._HEADER_DIR)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path / "home" / "precompiled_headers")
    assert not (tmp_path / "work" / "tmp").exists()


def test_a_failure_says_which_error_the_reports_show_when_the_failing_input_is_not_the_worst():
    """The message's errors are the failing (shrunk) input's; the reports show the worst over the run. When the two
    differ the message says so, with the reports' figure (a newcomer saw 0.0627 in one and 0.0639 in the other)."""
    from pytest_deploy import Backend, names, register_backend
    from pytest_deploy import backends as registry

    saved = [dict(t) for t in (registry._REGISTRY, registry._PENDING, names._NAMES, names._ALIASES)]

    class Drifts(Backend):  # off by 0.01 per row once a batch has more than 2 rows: worse as batches grow
        name = "drift_demo"

        def build(self, ctx):
            model = ctx.model
            return lambda args: model(*args) + (0.01 * args[0].shape[0] if args[0].shape[0] > 2 else 0.0)

    try:
        register_backend(Drifts, replace=True)
        with pytest.raises(DeployFailure) as info:
            pytest_deploy.verify(torch.nn.Linear(4, 3), "drift_demo", inputs=[tensor("batch", 4)],
                                 dims={"batch": (1, 16)}, examples=10)
    finally:
        for table, copy in zip((registry._REGISTRY, registry._PENDING, names._NAMES, names._ALIASES), saved):
            table.clear()
            table.update(copy)
    result = info.value.result
    message = result.message
    worst = format_number(result.max_abs_error)
    assert result.max_abs_error > 0.031  # a batch larger than the failing input's 3 rows was run
    assert f"the worst over every example run is max abs error {worst}, the figure the reports show" in message
    assert "max abs error 0.03," in message  # the failing input's own, 3 rows


# ------------------------------------------------------- Python numbers computed from shapes (issue 22 item 5)


class CentredByWidth(torch.nn.Module):
    def forward(self, x):
        w = x.shape[-1]
        centre = float(w - 1) / 2  # trace freezes the float: the centre of the traced width
        return x - centre


class CentredByWidthFixed(torch.nn.Module):
    def forward(self, x):
        w = x.shape[-1]
        centre = (w - 1) / 2  # the fix the message gives
        return x - centre


class HalfByWidth(torch.nn.Module):
    def forward(self, x):
        half = int(x.shape[-1] * 0.5)
        return x[..., :half] * 2


def _line_of(cls, text: str) -> int:
    import inspect

    lines, start = inspect.getsourcelines(cls)
    return start + next(i for i, ln in enumerate(lines) if text in ln)


@pytest.mark.parametrize("cls, text", [(CentredByWidth, "centre = float(w - 1) / 2"),
                                       (HalfByWidth, "half = int(x.shape[-1] * 0.5)")])
def test_a_number_computed_from_a_shape_that_trace_froze_is_blamed_at_the_conversion(cls, text):
    with pytest.raises(DeployFailure) as info:
        pytest_deploy.verify(cls().eval(), "trace", inputs=[tensor(2, "w")], dims={"w": (2, 8)}, examples=4)
    result = info.value.result
    line = _line_of(cls, text)
    first, second, fix = info.value.message.splitlines()[:3]
    assert first.startswith(f"trace: stage branches: trace-frozen number at tests/unit/test_check.py:{line}  `{text}")
    assert "computed from a tensor's shape" in first
    assert second.startswith("  traced with value ") and "; the failing input gives " in second
    assert fix.startswith("  fix: keep it on the shape, without float()/int(): `(w - 1) / 2`")
    assert "fix: torch.jit.script, or torch.cond" not in info.value.message
    site = next(b for b in result.branches if b["line"] == line)
    assert site["kind"] == "shape" and site["lost"] and site["diverged"] and len(site["outcomes"]) == 2


@pytest.mark.parametrize("backend", ["trace", "export"])
def test_the_fix_given_for_a_frozen_shape_number_works_under_trace_and_export(backend):
    result = pytest_deploy.verify(CentredByWidthFixed().eval(), backend, inputs=[tensor(2, "w")], dims={"w": (2, 8)},
                                  examples=6)
    assert result.outcome == "passed" and result.examples >= 4


class ReshapeByFrozenBatch(torch.nn.Module):
    def forward(self, x):
        return x.reshape(int(x.shape[0]), 3, 1) * 2


def test_a_run_failure_from_a_frozen_shape_number_names_the_conversion():
    with pytest.raises(DeployFailure) as info:
        pytest_deploy.verify(ReshapeByFrozenBatch().eval(), "trace", inputs=[tensor("batch", 3)],
                             dims={"batch": (1, 4)}, examples=3)
    message = info.value.message
    line = _line_of(ReshapeByFrozenBatch, "x.reshape(int(x.shape[0])")
    assert info.value.result.stage == "run"
    assert message.splitlines()[0].startswith("trace: stage run: RuntimeError: shape '[2, 3, 1]' is invalid")
    assert f"trace-frozen number at tests/unit/test_check.py:{line}  `return x.reshape(int(x.shape[0]), 3, 1) * 2`" in message


# ------------------------------------------- torch.export specialising a dynamic dim (issue 22 item 5)


class FloatOfWidth(torch.nn.Module):
    def forward(self, x):
        w = x.shape[-1]
        return x - float(w - 1) / 2


def test_a_specialised_dim_is_blamed_at_the_line_that_added_the_guard_with_a_fix_in_spec_terms():
    with pytest.raises(DeployFailure) as info:
        pytest_deploy.verify(FloatOfWidth().eval(), "export", inputs=[tensor(2, "w")], dims={"w": (2, 8)}, examples=3)
    message = info.value.message
    line = _line_of(FloatOfWidth, "float(w - 1)")
    first, at, fix = message.splitlines()[:3]
    assert first == "export: stage export: torch.export specialised a dim declared dynamic: w (declared 2 to 8 in " \
                    "dims=) is fixed to 3"
    assert at == (f"  at tests/unit/test_check.py:{line}  `return x - float(w - 1) / 2`  (the guard w - 1 == 2 is added "
                  "there, as torch.export.draft_export reports)")
    assert fix.startswith("  fix: keep the number on the shape, without float()/int() (`(w - 1) / 2`")
    assert fix.endswith("or declare w static in the spec (dims={'w': (3, 3)}) if the model supports only that size")
    for advice in ("mark_dynamic", "Dim.DYNAMIC", "suggests", "w = 3", "TORCH_LOGS"):
        assert advice not in message, advice
    guard = info.value.result.details["export_guard"]
    assert guard["line"] == line and guard["guard"].startswith("Eq(")


def test_a_failing_draft_export_leaves_the_specialisation_verdict_clear(monkeypatch):
    """draft_export is extra: when it raises, the verdict and its message stand, without the line."""
    from pytest_deploy.backends import export as export_backend

    def broken(*args, **kwargs):
        raise RuntimeError("draft_export broke")

    monkeypatch.setattr(torch.export, "draft_export", broken)
    export_backend._PROGRAMS.clear()
    with pytest.raises(DeployFailure) as info:
        pytest_deploy.verify(FloatOfWidth().eval(), "export", inputs=[tensor(2, "w")], dims={"w": (2, 8)}, examples=3)
    result = info.value.result
    assert result.stage == "export"
    assert info.value.message.startswith("export: stage export: torch.export specialised a dim declared dynamic: w ")
    assert "draft_export broke" not in info.value.message and "declare w static in the spec" in info.value.message
    assert result.details["export_guard"].startswith("not found")


class CentreThenBranch(torch.nn.Module):
    def forward(self, x):
        w = x.shape[-1]
        centre = float(w - 1) / 2
        shift = torch.full((1,), centre)
        if shift.item() > 0.75:  # a symptom: it follows the frozen number (traced at w=3: True)
            return x - shift
        return x + shift


def test_a_frozen_shape_number_is_blamed_before_the_decisions_it_changes_further_on():
    with pytest.raises(DeployFailure) as info:
        pytest_deploy.verify(CentreThenBranch().eval(), "trace", inputs=[tensor(2, "w")], dims={"w": (2, 8)},
                             examples=6)
    message = info.value.message
    conversion, symptom = _line_of(CentreThenBranch, "float(w - 1)"), _line_of(CentreThenBranch, "if shift.item()")
    assert message.startswith(f"trace: stage branches: trace-frozen number at tests/unit/test_check.py:{conversion}  ")
    assert "fix: torch.jit.script, or torch.cond" not in message
    assert f"the failing input also leaves the traced path at: tests/unit/test_check.py:{symptom}" in message


def test_the_mask_probe_a_worker_ran_reaches_the_model_tests_other_checks():
    """A forked worker sends back what it added to the model test's shared work: the mask probe too, so the
    next backend does not run eager PyTorch on it again."""
    from pytest_deploy.modeltest import Work

    key = (((2, 3),), (1,))
    worker = Work()
    worker.mark()
    assert worker.added() is None
    worker.mask_probes[key] = ({1: (1, 4)}, {"output['hidden']": (1, 4, 8)}, None, {})
    parent = Work()
    parent.merge(worker.added())
    assert parent.mask_probes == worker.mask_probes
    worker.mark()
    assert worker.added() is None  # sent once
