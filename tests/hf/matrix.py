"""The Hugging Face corpus's model x backend matrix, as Markdown, from a pytest-deploy JSON report.

    python tests/hf/matrix.py hf-report.json                        # print it
    python tests/hf/matrix.py hf-report.json --write docs/hf-corpus.md  # replace the block between the markers
"""

from __future__ import annotations

import json
import re
import sys

BACKENDS = ("trace", "script", "export", "onnx", "tvm")


def cause(result: dict) -> str:
    """One line: the declared expected-failure reason, else the first line of the message after its stage."""
    reason = (result.get("details") or {}).get("xfail_reason")
    if reason:
        return reason.split(":", 1)[-1].strip()
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
        label = "FAIL" if outcome == "failed" else "defect"
        stage = result.get("stage") or (cause(result).split(":")[0] if outcome == "xfailed" else "?")
        return f"{label} ({result.get('stage') or stage})"
    return outcome.upper()


START, END = "<!-- matrix: written by tests/hf/matrix.py -->", "<!-- end of matrix -->"


def render(path: str) -> str:
    results = json.load(open(path))["results"]
    by_model: dict[str, dict[str, dict]] = {}
    for r in results:
        by_model.setdefault(r["test"].rsplit("::", 1)[-1].removeprefix("test_"), {})[r["backend"]] = r
    lines = ["| model | " + " | ".join(BACKENDS) + " |", "| --- | " + " | ".join("---" for _ in BACKENDS) + " |"]
    causes = []
    for model in sorted(by_model):
        row = by_model[model]
        lines.append(f"| {model} | " + " | ".join(cell(row.get(b)) for b in BACKENDS) + " |")
        for b in BACKENDS:
            r = row.get(b)
            if r is not None and r["outcome"] in ("failed", "xfailed") and b != "script":
                causes.append(f"- {model} / {b} ({r.get('stage')}): {cause(r)}")
    lines += ["", "One line per defect (script: every architecture, for the reason below):", "", *causes]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    table = render(argv[0])
    if len(argv) == 3 and argv[1] == "--write":
        text = open(argv[2]).read()
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        open(argv[2], "w").write(f"{head}{START}\n{table}\n{END}{tail}")
    else:
        print(table)


if __name__ == "__main__":
    main(sys.argv[1:])
