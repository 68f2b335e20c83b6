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
    return " ".join(parts)


def summary_lines(results: list[Result]) -> list[str]:
    """Rows = model tests, columns = backends; each cell status, max abs error and build time."""
    backends: list[str] = []
    rows: dict[str, dict[str, Result]] = {}
    from .backends import backend_names

    order = {name: i for i, name in enumerate(backend_names())}
    for r in results:
        if r.backend not in backends:
            backends.append(r.backend)
        rows.setdefault(r.test, {})[r.backend] = r
    backends.sort(key=lambda b: order.get(b, len(order)))
    header = ["model test", *backends]
    table = [header]
    for test, by_backend in rows.items():
        table.append([test, *(cell(by_backend[b]) if b in by_backend else "-" for b in backends)])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(val.ljust(w) for val, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    counts: dict[str, int] = {}
    for r in results:
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
    total_build = sum(r.timings.get("build", 0.0) for r in results)
    tally = ", ".join(f"{n} {outcome}" for outcome, n in counts.items())
    lines.append(f"{len(results)} checks: {tally}; build time {total_build:.1f}s "
                 "(cells: status, max abs error, build time)")
    return lines


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
