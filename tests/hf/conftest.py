"""The Hugging Face corpus: nothing is downloaded, and every declared defect must fail at its declared stage."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "hf: a Hugging Face architecture of the corpus (tests/hf)")


def pytest_collection_modifyitems(config, items) -> None:
    """CI runs the corpus's CI subset; PYTEST_DEPLOY_HF=all (make hf-corpus) runs every architecture."""
    if os.environ.get("PYTEST_DEPLOY_HF", "ci") == "all":
        return
    keep, drop = [], []
    for item in items:
        (keep if getattr(getattr(item, "function", None), "in_ci_subset", True) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """An expected failure declared as ``"stage: cause"`` counts only when the check failed at that stage."""
    report = yield
    if call.when != "call" or not hasattr(report, "wasxfail") or not report.skipped:
        return report
    from pytest_deploy.plugin import PARAM, SESSION_KEY

    declared = report.wasxfail.removeprefix("reason: ").split(":", 1)[0].strip()
    result = item.config.stash[SESSION_KEY].results.get(item.nodeid)
    stage = getattr(result, "stage", None)
    if result is not None and stage != declared:
        report.outcome = "failed"
        report.longrepr = (f"{item.callspec.params[PARAM]}: declared to fail at stage {declared!r} but failed at "
                           f"{stage!r}:\n{result.message}")
        del report.wasxfail
    return report
