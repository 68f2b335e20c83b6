"""A corpus's model x backend matrix, as Markdown, from a pytest-deploy JSON report (tests/hf, tests/libs)."""

from __future__ import annotations

import json
import re

BACKENDS = ("trace", "script", "export", "onnx", "tvm")
END = "<!-- end of matrix -->"


def start_marker(writer: str) -> str:
    return f"<!-- matrix: written by {writer} -->"


def cause(result: dict) -> str:
    """One line: the declared expected-failure reason, else the first line of the message after its stage."""
    reason = (result.get("details") or {}).get("xfail_reason")
    if reason:
        reason = reason.removeprefix("reason: ")
        return reason if reason.startswith("PENDING-FIX") else reason.split(":", 1)[-1].strip()
    message = (result.get("message") or "").splitlines()[0] if result.get("message") else ""
    return re.sub(r"^\w+: stage \w+: ", "", message)[:160]


def cell(result: dict | None) -> str:
    if result is None:
        return "-"
    outcome = result["outcome"]
    if outcome == "passed":
        err = result.get("max_abs_error")
        return "PASS" + (f" {err:.2g}" if err else "")
    if outcome in ("failed", "xfailed"):
        pending = cause(result).startswith("PENDING-FIX")
        label = "FAIL" if outcome == "failed" else "pending fix" if pending else "defect"
        stage = result.get("stage") or (cause(result).split(":")[0] if outcome == "xfailed" and not pending else "?")
        return f"{label} ({stage})"
    return outcome.upper()


def render(path: str, *, backends=BACKENDS, groups: dict[str, str] | None = None, skip_causes=(),
           causes_intro: str = "One line per failure:") -> str:
    """The table (a group column first when ``groups`` maps model -> group), then one line per failure cause;
    failures of the backends in ``skip_causes`` are left out of the cause lines (``causes_intro`` says why)."""
    results = json.load(open(path))["results"]
    by_model: dict[str, dict[str, dict]] = {}
    for r in results:
        by_model.setdefault(r["test"].rsplit("::", 1)[-1].removeprefix("test_"), {})[r["backend"]] = r
    head = ["library"] if groups else []
    lines = ["| " + " | ".join([*head, "model", *backends]) + " |",
             "| " + " | ".join("---" for _ in [*head, "model", *backends]) + " |"]
    order = sorted(by_model, key=lambda m: ((groups or {}).get(m, ""), m))
    causes = []
    for model in order:
        row = by_model[model]
        first = [groups.get(model, "?")] if groups else []
        lines.append("| " + " | ".join([*first, model, *(cell(row.get(b)) for b in backends)]) + " |")
        for b in backends:
            r = row.get(b)
            if r is not None and r["outcome"] in ("failed", "xfailed") and b not in skip_causes:
                causes.append(f"- {model} / {b} ({r.get('stage')}): {cause(r)}")
    lines += ["", causes_intro, "", *causes]
    return "\n".join(lines)


def write(table: str, doc: str, writer: str) -> None:
    """Replace the block between ``writer``'s start marker and the end marker in ``doc``."""
    text = open(doc).read()
    head, rest = text.split(start_marker(writer), 1)
    _, tail = rest.split(END, 1)
    open(doc, "w").write(f"{head}{start_marker(writer)}\n{table}\n{END}{tail}")
