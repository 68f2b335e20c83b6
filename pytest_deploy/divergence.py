"""Runs localisation for a failing check and puts what it found into the result and the message.

The check calls :func:`locate` once, for a failure at ``compare`` or ``branches``, on the shrunk failing
input; the backend's :meth:`~pytest_deploy.backends.base.Backend.localize` does the work (the shared
machinery is :mod:`pytest_deploy.localize`). Localisation is extra: whatever goes wrong inside it becomes
``divergence=None`` and ``details.divergence_error``, never a different failure.
"""

from __future__ import annotations

import time
from typing import Any

from . import isolation
from .backends import get_backend
from .localize import LocalizationError
from .sources import first_line

#: Seconds localisation may take per failing check, unless --deploy-localize-budget says otherwise.
DEFAULT_BUDGET = 60.0

#: The failures worth localising: outputs that differ, not a crash or a refusal (those name their line already).
STAGES = ("compare", "branches")


def locate(ctx, args: tuple, stage: str) -> str:
    """Localise the failure of ``ctx`` on ``args``; fill ``result.divergence`` and ``details``; return the lines
    to append to the failure message (empty when localisation is off or not for this stage)."""
    budget = ctx.options.get("localize_budget")
    budget = DEFAULT_BUDGET if budget is None else float(budget)
    if stage not in STAGES or budget <= 0:
        return ""
    timeout = getattr(ctx, "timeout", None)
    if timeout:
        # under --deploy-timeout a worker's parent kills a stage that runs too long, which would replace the
        # failure being explained: localisation gets a fresh stage clock and at most half of it
        budget = min(budget, timeout / 2)
        isolation.progress(stage)
    result = ctx.result
    result.divergence = None
    start = time.perf_counter()
    try:
        finding = get_backend(ctx.backend).localize(ctx, args, start + budget)
    except LocalizationError as exc:
        return _not_located(result, str(exc))
    except Exception as exc:  # never hide the original failure behind a broken localisation
        return _not_located(result, f"localisation itself failed: {first_line(exc)}")
    finally:
        result.details["localize_seconds"] = round(time.perf_counter() - start, 3)
    if finding.budget_exhausted:
        result.details["localize_budget_exhausted"] = (f"the {budget:g} s budget ran out; the divergence shown is the "
                                                       "first found so far")
    result.divergence = finding.divergence()
    table = finding.table()
    if table:
        result.details["node_errors"] = table
        result.details["node_errors_method"] = finding.how
    if finding.error:
        result.details["divergence_error"] = finding.error
    atol, _ = ctx.tol.float32
    return "\n" + finding.message(atol)


def _not_located(result: Any, why: str) -> str:
    result.divergence = None
    result.details["divergence_error"] = why
    return f"\ndiverges first at: not located ({why})"
