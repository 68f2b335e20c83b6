"""The terminal summary table and the JSON report."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import sys
from importlib import metadata

from .compare import format_number
from .results import Result

_STATUS = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP", "xfailed": "XFAIL", "xpassed": "XPASS"}


def cell(result: Result) -> str:
    status = _STATUS.get(result.outcome, result.outcome.upper())
    if result.outcome == "failed" and result.stage:
        status = f"FAIL({result.stage})"
    if result.outcome == "skipped":
        return status
    parts = [status]
    if result.max_abs_error is not None:
        parts.append(format_number(result.max_abs_error))
    build = result.timings.get("build", 0.0)
    if build:
        parts.append(f"{build:.2f}s" if build < 10 else f"{build:.0f}s")
    if result.cached:
        parts.append("cached")
    return " ".join(parts)


def summary_lines(results: list[Result]) -> list[str]:
    """Rows = model tests, columns = backends; each cell status, max abs error and build time."""
    backends: list[str] = []
    rows: dict[str, dict[str, Result]] = {}
    from .names import backend_names

    order = {name: i for i, name in enumerate(backend_names())}
    for r in results:
        if r.backend not in backends:
            backends.append(r.backend)
        rows.setdefault(r.test, {})[r.backend] = r
    backends.sort(key=lambda b: order.get(b, len(order)))
    header = ["model test", *backends]
    branch_rows = {test: _branch_source(by_backend) for test, by_backend in rows.items()}
    with_branches = any(r is not None for r in branch_rows.values())
    if with_branches:
        header.append("branches")
    table = [header]
    for test, by_backend in rows.items():
        row = [test, *(cell(by_backend[b]) if b in by_backend else "-" for b in backends)]
        if with_branches:
            row.append(_branch_cell(branch_rows[test]))
        table.append(row)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(val.ljust(w) for val, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    counts: dict[str, int] = {}
    for r in results:
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
    total_build = sum(r.timings.get("build", 0.0) for r in results)
    tally = ", ".join(f"{n} {outcome}" for outcome, n in counts.items())
    lines.append(f"{len(results)} checks: {tally}; build time {total_build:.1f}s "
                 "(cells: status, max abs error, build time; cached: the result, or the artifact, came from the cache)")
    lines.extend(_branch_lines(branch_rows))
    return lines


def _branch_source(by_backend: dict[str, Result]) -> Result | None:
    """The result whose branch record represents the row: trace's (it knows what was lost), else the largest."""
    candidates = [r for r in by_backend.values() if r.branches]
    if not candidates:
        return None
    return next((r for r in candidates if r.backend == "trace"), max(candidates, key=lambda r: len(r.branches)))


def _branch_cell(result: Result | None) -> str:
    if result is None:
        return "-"
    lost = sum(bool(b.get("lost")) for b in result.branches)
    uncovered = sum(bool(b.get("uncovered")) for b in result.branches)
    return f"{len(result.branches)} sites, lost {lost}, uncovered {uncovered}"


def _branch_lines(branch_rows: dict[str, Result | None]) -> list[str]:
    """Every lost or uncovered decision, with its site: what a user has to look at."""
    out = []
    for test, result in branch_rows.items():
        if result is None:
            continue
        notable = [b for b in result.branches if b.get("lost") or b.get("uncovered")]
        if not notable:
            continue
        out.append(f"{test} ({result.backend}):")
        for b in notable:
            outcomes = ", ".join(f"{k} x{v}" for k, v in b["outcomes"].items())
            status = []
            if b.get("lost"):
                status.append("LOST, outputs diverge" if b.get("diverged") else "lost, outputs unaffected")
            if b.get("uncovered"):
                status.append("never reached: " + "/".join(b["uncovered"]))
            traced = f"; traced {b['traced']}" if b.get("traced") is not None else ""
            out.append(f"  {b['file']}:{b['line']}  `{b['source']}`  seen {outcomes}{traced}; {'; '.join(status)}")
    if out:
        out.insert(0, "data-dependent decisions (lost: the traced artifact took another path; never reached: no input found it):")
    return out


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    cuda = None
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            cuda = bool(torch.cuda.is_available())
        except Exception:  # pragma: no cover - broken CUDA install
            cuda = False
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": _version("torch"),
        "hypothesis": _version("hypothesis"),
        "onnx": _version("onnx"),
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
        "tvm": _version("apache-tvm"),
        "tensorrt": _version("tensorrt"),
        "cuda": cuda,
        "pytest_deploy": _version("pytest-deploy"),
    }


def report_dict(results: list[Result], *, interrupted: bool = False) -> dict:
    return {
        "version": 1,
        "interrupted": interrupted,
        "environment": environment(),
        "results": [_finite(r.to_json()) for r in results],
    }


def _finite(obj):
    """JSON has no inf or NaN (``allow_nan=False`` keeps the file strict JSON): write them as strings.

    A max rel error is inf where eager gives exactly 0 and the backend does not, even in a passing check."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: str, results: list[Result], *, interrupted: bool = False) -> None:
    """Write atomically: a reader never sees half a report."""
    data = report_dict(results, interrupted=interrupted)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, default=_json_default, allow_nan=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _json_default(obj):
    return repr(obj)
