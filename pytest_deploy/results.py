"""The result of one check: what a test, ``verify`` and the reports all see."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Result:
    """Outcome of checking one model against one backend.

    ``max_abs_error``/``max_rel_error`` are the worst errors over every example run;
    ``atol``/``rtol`` the tolerance applied to float32 outputs (other dtypes: ``tolerances``).
    """

    test: str
    backend: str
    outcome: str = "passed"  # passed | failed | skipped | xfailed | xpassed
    stage: str | None = None
    message: str | None = None
    examples: int = 0
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    atol: float | None = None
    rtol: float | None = None
    timings: dict[str, float] = field(default_factory=lambda: {"build": 0.0, "load": 0.0, "run": 0.0})
    cached: bool = False
    seed: int | None = None
    artifact: str | None = None
    branches: list[dict[str, Any]] = field(default_factory=list)
    #: where a comparison failure starts: the first diverging module (pytest_deploy.localize); None when not located
    divergence: dict[str, Any] | None = None
    #: --deploy-latency's figures (pytest_deploy.latency): p50/p99 per timed shape beside eager's, the speedup; None
    #: when latency was not measured
    latency: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.outcome == "passed"

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["timings"] = {k: round(v, 4) for k, v in self.timings.items()}
        return data
