"""The ``pytest-deploy`` command (also ``python -m pytest_deploy``), for what happens outside a pytest session.

``pytest-deploy merge a.json b.json ...`` joins the JSON reports of several runs (CI shards, matrix jobs) into one
report, one table, one Markdown summary and one HTML report, and (``--latency-save``) one latency baseline. ``pytest-deploy backends`` lists every backend, its
aliases, and whether it can run on this machine (and if not, what to install).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from typing import Any

from .report import environment as current_environment
from .report import summary_lines, write_json, write_markdown
from .results import Result


def load_results(paths: list[str]) -> tuple[list[Result], dict[str, Any], bool]:
    """Every result of the reports, the later report winning for one (test, backend); the first report's
    environment; whether any run was interrupted."""
    merged: dict[tuple[str, str], Result] = {}
    env: dict[str, Any] | None = None
    interrupted = False
    for path in paths:
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"pytest-deploy merge: cannot read {path}: {exc}") from None
        if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(data.get("results"), list):
            raise SystemExit(f"pytest-deploy merge: {path} is not a pytest-deploy JSON report (version 1); write one "
                             "with --deploy-report=PATH")
        env = env or data.get("environment") or {}
        interrupted = interrupted or bool(data.get("interrupted"))
        for entry in data["results"]:
            result = Result(**{k: _number(v) if k in _NUMBERS else v for k, v in entry.items()})
            merged[(result.test, result.backend)] = result
    return list(merged.values()), env or {}, interrupted


#: Fields the JSON report writes as "inf"/"nan" strings when they are not finite.
_NUMBERS = ("max_abs_error", "max_rel_error", "atol", "rtol")


def _number(value: Any) -> Any:
    return float(value) if value in ("inf", "-inf", "nan") else value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pytest-deploy", description="Tools around pytest-deploy's checks, which themselves run under pytest.",
        epilog="The checks run under pytest: 'pytest --deploy-backends=onnx,tvm' (every option: 'pytest --help', "
               "section deploy). Documentation: docs/ in the project's repository.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("backends", help="list the backends, their aliases, and whether each can run here",
                        description="List every registered backend with its aliases and whether it can run on this "
                                    "machine; for one that cannot, why and what to install.")
    merge = commands.add_parser("merge", help="merge the JSON reports of several runs (shards) into one")
    merge.add_argument("reports", nargs="+", metavar="REPORT.json")
    merge.add_argument("-o", "--output", metavar="PATH", help="write the merged JSON report here")
    merge.add_argument("--markdown", metavar="PATH", help="write the merged Markdown summary here")
    merge.add_argument("--html", metavar="PATH", help="write the merged HTML report here")
    merge.add_argument("--latency-save", metavar="PATH",
                       help="write the shards' latency figures as one baseline file (for --deploy-latency-baseline)")
    args = parser.parse_args(argv)
    if args.command == "backends":
        return list_backends()
    results, env, interrupted = load_results(args.reports)
    width = shutil.get_terminal_size().columns
    print("\n".join(summary_lines(results, width=width)))
    if args.output:
        write_json(args.output, results, interrupted=interrupted)
        print(f"JSON report: {args.output}")
    if args.markdown:
        write_markdown(args.markdown, results)
        print(f"Markdown summary: {args.markdown}")
    if args.html:
        from .report import report_dict
        from .report_html import write_html

        data = report_dict(results, interrupted=interrupted)
        write_html(args.html, data["results"], env or current_environment())
        print(f"HTML report: {args.html}")
    if args.latency_save:
        from .latency import baseline_dict, write_baseline

        write_baseline(args.latency_save, results)
        print(f"latency baseline: {args.latency_save} ({len(baseline_dict(results)['entries'])} checks)")
    return 1 if any(r.outcome in ("failed", "xpassed") for r in results) else 0


def list_backends() -> int:
    """Print one line per backend: name, aliases, and "runs here" or why not."""
    from .backends import get_backend
    from .names import backend_names

    rows = []
    for name in backend_names():
        backend = get_backend(name)
        aliases = ", ".join(backend.aliases)
        rows.append((name, aliases, backend.unavailable_reason() or "runs here"))
    width = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    print(f"{'backend':<{width[0]}}  {'aliases':<{width[1]}}  here")
    for name, aliases, state in rows:
        print(f"{name:<{width[0]}}  {aliases:<{width[1]}}  {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
