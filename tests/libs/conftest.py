"""The corpus beyond transformers: nothing is downloaded, every declared defect must fail at its declared stage,
and a false failure from a pytest-deploy bug being fixed is a non-strict ``PENDING-FIX`` expected failure."""

from __future__ import annotations

import os

import pytest
from corpora import hooks

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # diffusers


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "libs: a model of the corpus beyond transformers (tests/libs)")


def pytest_collection_modifyitems(config, items) -> None:
    """CI runs the corpus's CI subset; PYTEST_DEPLOY_LIBS=all (make libs-corpus) runs every model, and a
    comma-separated list of libraries or models runs those (tests/corpora/hooks.py)."""
    hooks.select(config, items, "libs", "PYTEST_DEPLOY_LIBS")
    hooks.mark_pending(items, "libs")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """An expected failure declared as ``"stage: cause"`` counts only when the check failed at that stage."""
    report = yield
    return hooks.check_declared_stage(item, call, report)
