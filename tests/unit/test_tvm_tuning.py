"""The TVM tuning's settings and its cheap ``inspect.stack`` (no TVM needed)."""

from __future__ import annotations

import inspect
import sys

import pytest

from pytest_deploy.backends import tvm_tuning

PROBE = """
import inspect
CHEAP, FULL = inspect.stack(), inspect.getouterframes(inspect.currentframe(), 1)
"""


def test_the_cheap_stack_gives_every_frame_and_the_first_lines_of_code_then_inspect_stack_is_restored(
        tmp_path, monkeypatch):
    (tmp_path / "stack_probe_mod.py").write_text(PROBE)
    monkeypatch.syspath_prepend(str(tmp_path))
    original = inspect.stack
    try:
        tvm_tuning._intrinsics_importer("stack_probe_mod")()
        probe = sys.modules["stack_probe_mod"]
    finally:
        sys.modules.pop("stack_probe_mod", None)
    assert inspect.stack is original
    cheap, full = probe.CHEAP, probe.FULL
    assert [(f.filename, f.lineno, f.function) for f in cheap] == [(f.filename, f.lineno, f.function) for f in full]
    assert [f.frame for f in cheap] == [f.frame for f in full]
    assert [f.code_context for f in cheap[:3]] == [f.code_context for f in full[:3]]
    assert cheap[0].code_context[0].startswith("CHEAP, FULL = inspect.stack()")


def test_inspect_stack_is_restored_when_the_import_fails():
    original = inspect.stack
    with pytest.raises(ModuleNotFoundError):
        tvm_tuning._intrinsics_importer("no_such_module_for_pytest_deploy")()
    assert inspect.stack is original


def test_the_search_settings_in_the_cache_key_name_the_strategy_its_parameters_and_the_cost_model(monkeypatch):
    monkeypatch.setattr(tvm_tuning, "have_xgboost", lambda: True)
    settings = tvm_tuning.search_settings()
    assert settings["strategy"] == "evolutionary" and settings["population_size"] == tvm_tuning.EVOLUTION[
        "population_size"]
    assert settings["cost_model"].startswith("xgb") and "XGBoost" in tvm_tuning.search_name()
    monkeypatch.setattr(tvm_tuning, "have_xgboost", lambda: False)
    assert tvm_tuning.search_settings()["cost_model"] == "random"
    assert "random cost model: xgboost is not installed" in tvm_tuning.search_name()
