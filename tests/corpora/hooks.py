"""The corpora's pytest hooks, imported by each corpus's conftest.py (tests/hf, tests/libs).

* **Subset selection.** A corpus test carries ``corpus`` (``"hf"``, ``"libs"``), ``in_ci_subset`` (bool) and
  ``corpus_group`` (its library or family); a corpus's hooks touch only its own tests (pytest gives every
  conftest's ``pytest_collection_modifyitems`` the whole session's items). The corpus's environment variable (``PYTEST_DEPLOY_HF``, ``PYTEST_DEPLOY_LIBS``) chooses: ``ci``
  (the default) keeps the CI subset, ``all`` keeps every test, and a comma-separated list keeps the tests whose
  group or model name it lists (``PYTEST_DEPLOY_LIBS=monai,kornia``).
* **Declared defects at their stage.** A strict expected failure declared as ``"stage: cause"`` counts only
  when the check failed at that stage; a failure at another stage fails the item.
* **Pending fixes.** ``pending_fix`` on a corpus test maps a backend to a reason starting ``PENDING-FIX``: a
  false failure caused by a known pytest-deploy bug whose fix is under way. It becomes a non-strict
  expected failure (a pass shows as XPASS and does not fail the run), to be removed once the fix lands.
"""

from __future__ import annotations

import os

import pytest

PENDING = "PENDING-FIX"


def _name(item) -> str:
    return getattr(getattr(item, "function", None), "__name__", "").removeprefix("test_")


def _corpus(item) -> str | None:
    return getattr(getattr(item, "function", None), "corpus", None)


def select(config, items, corpus: str, env_var: str) -> None:
    """Deselect the items of ``corpus`` that its environment variable leaves out (see the module doc)."""
    choice = os.environ.get(env_var, "ci").strip()
    if choice == "all":
        return
    wanted = None if choice == "ci" else {part.strip() for part in choice.split(",") if part.strip()}
    keep, drop = [], []
    for item in items:
        function = getattr(item, "function", None)
        if _corpus(item) != corpus:
            kept = True
        elif wanted is None:
            kept = getattr(function, "in_ci_subset", True)
        else:
            kept = getattr(function, "corpus_group", None) in wanted or _name(item) in wanted
        (keep if kept else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def mark_pending(items, corpus: str) -> None:
    """Each ``pending_fix`` backend of a corpus test becomes a non-strict expected failure of that item."""
    from pytest_deploy.plugin import PARAM

    for item in items:
        if _corpus(item) != corpus:
            continue
        pending = getattr(getattr(item, "function", None), "pending_fix", None) or {}
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get(PARAM) if callspec is not None else None
        if backend in pending:
            if not pending[backend].startswith(PENDING):
                raise ValueError(f"{item.nodeid}: a pending fix's reason must start with {PENDING!r}")
            item.add_marker(pytest.mark.xfail(strict=False, reason=pending[backend]))


def check_declared_stage(item, call, report):
    """A strict expected failure declared as ``"stage: cause"`` counts only when the check failed at that stage."""
    if call.when != "call" or not hasattr(report, "wasxfail") or not report.skipped:
        return report
    from pytest_deploy.plugin import PARAM, SESSION_KEY

    reason = report.wasxfail.removeprefix("reason: ")
    if reason.startswith(PENDING):
        return report
    declared = reason.split(":", 1)[0].strip()
    result = item.config.stash[SESSION_KEY].results.get(item.nodeid)
    stage = getattr(result, "stage", None)
    if result is not None and stage != declared:
        report.outcome = "failed"
        report.longrepr = (f"{item.callspec.params[PARAM]}: declared to fail at stage {declared!r} but failed at "
                           f"{stage!r}:\n{result.message}")
        del report.wasxfail
    return report
