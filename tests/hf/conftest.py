"""The Hugging Face corpus: nothing is downloaded, and every declared defect must fail at its declared stage."""

from __future__ import annotations

import os

import pytest
from corpora import hooks

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "hf: a Hugging Face architecture of the corpus (tests/hf)")


def pytest_collection_modifyitems(config, items) -> None:
    """CI runs the corpus's CI subset; PYTEST_DEPLOY_HF=all (make hf-corpus) runs every architecture, and a
    comma-separated list of families or architectures runs those (tests/corpora/hooks.py)."""
    hooks.select(config, items, "hf", "PYTEST_DEPLOY_HF")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """An expected failure declared as ``"stage: cause"`` counts only when the check failed at that stage."""
    report = yield
    return hooks.check_declared_stage(item, call, report)
