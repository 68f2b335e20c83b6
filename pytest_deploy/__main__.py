"""The ``pytest-deploy`` command (also ``python -m pytest_deploy``), for what happens outside a pytest session.

``pytest-deploy init MODULE:FACTORY`` writes the ``@deployable`` test of a model factory, its inputs inferred
(docs/zero-code.md); ``pytest-deploy check MODULE:FACTORY`` runs that test's checks without writing it (pytest with
``--deploy-model``). ``pytest-deploy merge a.json b.json ...`` joins the JSON reports of several runs (CI shards,
matrix jobs) into one report, one table, one Markdown summary and one HTML report (and, with
``--latency-save``, one latency baseline). A check seen in several reports
keeps its worst outcome (a failure is never hidden by a later pass), the disagreements are listed, and each result
keeps the environment of the run that produced it. ``pytest-deploy backends`` lists every backend, its
aliases, and whether it can run on this machine (and if not, what to install).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from dataclasses import dataclass, field
from typing import Any

from .report import environment as current_environment
from .report import summary_lines, write_json, write_markdown
from .results import Result

#: How bad an outcome is, worst last: of one check seen in several reports, the worst is kept.
SEVERITY = ("passed", "xfailed", "skipped", "xpassed", "failed")
#: A report's top-level fields (``environments`` in a merged report); others are ignored with a warning.
REPORT_FIELDS = {"version", "interrupted", "environment", "environments", "results"}
RESULT_FIELDS = {f.name for f in dataclasses.fields(Result)}
#: environment keys kept beside each result (``details.environment``): where the check ran
ENVIRONMENT_KEYS = ("platform", "python", "torch", "cuda", "gpu")


@dataclass
class Merged:
    """The reports joined: one result per (test, backend), the worst of those seen."""

    results: list[Result]
    #: each report's environment, in the order given: ``{"report": path, "environment": {...}}``
    environments: list[dict[str, Any]]
    interrupted: bool
    #: one line per check whose reports disagree
    conflicts: list[str] = field(default_factory=list)
    #: fields this version does not know, with the report that had them
    unknown: dict[str, set[str]] = field(default_factory=dict)


def merge_reports(paths: list[str]) -> Merged:
    """Every result of the reports; of one (test, backend) seen in several, the worst outcome (a failure wins over
    a pass, whichever report came last), each result keeping its own run's environment in
    ``details.environment``; the checks whose reports disagree; whether any run was interrupted."""
    seen: dict[tuple[str, str], list[tuple[Result, str]]] = {}
    environments: list[dict[str, Any]] = []
    interrupted = False
    unknown: dict[str, set[str]] = {}
    for path in paths:
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"pytest-deploy merge: cannot read {path}: {exc}") from None
        if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(data.get("results"), list):
            raise SystemExit(f"pytest-deploy merge: {path} is not a pytest-deploy JSON report (version 1); write one "
                             "with --deploy-report=PATH")
        for name in set(data) - REPORT_FIELDS:
            unknown.setdefault(name, set()).add(path)
        given = data.get("environment")
        env: dict[str, Any] = given if isinstance(given, dict) else {}
        if isinstance(data.get("environments"), list):  # a merged report: the runs it came from
            environments.extend(data["environments"])
        else:
            environments.append({"report": path, "environment": env})
        interrupted = interrupted or bool(data.get("interrupted"))
        for i, entry in enumerate(data["results"]):
            if not isinstance(entry, dict) or not isinstance(entry.get("test"), str) \
                    or not isinstance(entry.get("backend"), str):
                raise SystemExit(f"pytest-deploy merge: {path}: result #{i + 1} is not a check's result (it needs "
                                 "'test' and 'backend'); is the file a pytest-deploy JSON report?")
            for name in set(entry) - RESULT_FIELDS:
                unknown.setdefault(name, set()).add(path)
            try:
                result = Result(**{k: _number(v) if k in _NUMBERS else v for k, v in entry.items()
                                   if k in RESULT_FIELDS})
            except TypeError as exc:
                raise SystemExit(f"pytest-deploy merge: {path}: result #{i + 1} cannot be read: {exc}") from None
            if not isinstance(result.details, dict):
                result.details = {}
            # kept from an earlier merge, which recorded the run itself
            here = {"report": path, **{k: env[k] for k in ENVIRONMENT_KEYS if k in env}}
            result.details.setdefault("environment", here)
            seen.setdefault((result.test, result.backend), []).append((result, path))
    results, conflicts = [], []
    for (test, backend), runs in seen.items():
        worst = max(runs, key=lambda run: _severity(run[0].outcome))[0]  # the first of the worst, on a tie
        results.append(worst)
        if len({r.outcome for r, _ in runs}) > 1:
            where = ", ".join(f"{r.outcome} in {path}{_where(r)}" for r, path in runs)
            conflicts.append(f"{test} [{backend}]: {where}; kept {worst.outcome}")
    return Merged(results, environments, interrupted, conflicts, unknown)


def _severity(outcome: str) -> int:
    return SEVERITY.index(outcome) if outcome in SEVERITY else len(SEVERITY)  # an unknown outcome is no pass


def _where(result: Result) -> str:
    """`` (platform, GPU, precision)`` of the run that produced ``result``, as far as its report says."""
    env = result.details.get("environment", {})
    gpu = env.get("gpu")
    parts = [env.get("platform"), gpu.get("name") if isinstance(gpu, dict) else gpu, result.details.get("precision")]
    parts = [str(p) for p in parts if p]
    return f" ({', '.join(parts)})" if parts else ""


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
    merge = commands.add_parser(
        "merge", help="merge the JSON reports of several runs (shards) into one",
        description="Merge the JSON reports of several runs (CI shards, matrix jobs) into one report. A check seen in "
                    "several reports keeps its worst outcome (failed > xpassed > skipped > xfailed > passed) and the "
                    "disagreements are listed; each result keeps its run's environment (details.environment). "
                    "Exits 1 when any merged check failed.")
    merge.add_argument("reports", nargs="+", metavar="REPORT.json")
    merge.add_argument("-o", "--output", metavar="PATH", help="write the merged JSON report here")
    merge.add_argument("--markdown", metavar="PATH", help="write the merged Markdown summary here")
    merge.add_argument("--html", metavar="PATH", help="write the merged HTML report here")
    merge.add_argument("--latency-save", metavar="PATH",
                       help="write the shards' latency figures as one baseline file (for --deploy-latency-baseline)")
    init = commands.add_parser("init", help="write the @deployable test of a model factory, its inputs inferred",
                               description="Write tests/test_deploy_<name>.py: the @deployable test that "
                                           "'pytest --deploy-model=MODULE:FACTORY' runs, with the inferred inputs "
                                           "spelled out and a comment on each guess (docs/zero-code.md).")
    init.add_argument("target", metavar="MODULE:FACTORY", help="a dotted module importable from here, a colon, and "
                                                               "a callable returning the model")
    init.add_argument("--out", metavar="PATH", help="where to write it (default tests/test_deploy_<name>.py)")
    init.add_argument("--backends", metavar="LIST", help="write backends=[...] (default: every backend)")
    init.add_argument("--inputs", metavar="LINE", help="declare the inputs on one line instead of inferring them")
    init.add_argument("--examples", type=int, metavar="N", help="write examples=N")
    init.add_argument("--force", action="store_true", help="overwrite the file if it exists")
    init.add_argument("--no-format", action="store_true", help="do not run ruff (imports, format) on the file")
    check = commands.add_parser("check", help="run a model factory's checks without writing a test (pytest "
                                              "--deploy-model)",
                                description="Check the model MODULE:FACTORY returns against every backend (or "
                                            "--backends), its inputs inferred: pytest --deploy-model=MODULE:FACTORY "
                                            "run here, with the same summary table, reports and exit code. "
                                            "Arguments after -- go to pytest.")
    check.add_argument("targets", nargs="+", metavar="MODULE:FACTORY")
    check.add_argument("--backends", metavar="LIST", help="comma-separated backends (default: every backend)")
    check.add_argument("--inputs", metavar="LINE", help="declare the inputs on one line instead of inferring them")
    check.add_argument("--examples", metavar="N", help="hypothesis examples per backend (default 20)")
    check.add_argument("--report", metavar="PATH", help="write the JSON report here")
    check.add_argument("--markdown", metavar="PATH", help="write the Markdown summary here")
    check.add_argument("--html", metavar="PATH", help="write the HTML report here")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    args = parser.parse_args(argv)
    if args.command == "check":
        return check_models(args, extra)
    if args.command == "backends":
        return list_backends()
    if args.command == "init":
        return init_test(args)
    merged = merge_reports(args.reports)
    results, interrupted = merged.results, merged.interrupted
    env = merged.environments[0]["environment"] if merged.environments else {}
    if merged.unknown:
        names = ", ".join(f"{name} ({', '.join(sorted(paths))})" for name, paths in sorted(merged.unknown.items()))
        print(f"pytest-deploy merge: warning: ignored fields this version does not know: {names}; a newer "
              "pytest-deploy may have written them", file=sys.stderr)
    width = shutil.get_terminal_size().columns
    print("\n".join(summary_lines(results, width=width)))
    if merged.conflicts:
        print(f"{len(merged.conflicts)} check(s) differ between reports (the worst outcome is kept):")
        for line in merged.conflicts:
            print(f"  {line}")
    if args.output:
        write_json(args.output, results, interrupted=interrupted, environment=env,
                   extra={"environments": merged.environments})
        print(f"JSON report: {args.output}")
    if args.markdown:
        write_markdown(args.markdown, results)
        print(f"Markdown summary: {args.markdown}")
    if args.html:
        from .report import report_dict
        from .report_html import write_html

        data = report_dict(results, interrupted=interrupted, environment=env)
        write_html(args.html, data["results"], env or current_environment())
        print(f"HTML report: {args.html}")
    if args.latency_save:
        from .latency import baseline_dict, write_baseline

        write_baseline(args.latency_save, results)
        print(f"latency baseline: {args.latency_save} ({len(baseline_dict(results)['entries'])} checks)")
    return 1 if any(r.outcome in ("failed", "xpassed") for r in results) else 0


def init_test(args) -> int:
    """``pytest-deploy init``: write the model test; 0, or 2 with the reason on stderr."""
    import os

    from .errors import SpecError
    from .zero import call_factory, declaration_for, ensure_path, format_file, load_factory, parse_target, render_test

    ensure_path(os.getcwd())
    try:
        target = parse_target(args.target)
        backends = None
        if args.backends:
            from .names import parse_backends

            backends = list(parse_backends(args.backends, where="--backends"))
        if args.examples is not None and args.examples < 1:
            raise SpecError(f"--examples={args.examples} must be a positive int")
        model, example = call_factory(target, load_factory(target))
        decl = declaration_for(target, model, example, args.inputs)
    except SpecError as exc:
        print(f"pytest-deploy init: {exc}", file=sys.stderr)
        return 2
    out = args.out or os.path.join("tests", f"test_deploy_{target.name}.py")
    if os.path.exists(out) and not args.force:
        print(f"pytest-deploy init: {out} exists; pass --force to overwrite it, or --out to write elsewhere",
              file=sys.stderr)
        return 2
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w", encoding="utf-8") as fh:
        fh.write(render_test(target, decl, backends=backends, examples=args.examples))
    problem = None if args.no_format else format_file(out)
    if problem:
        print(f"pytest-deploy init: {problem}", file=sys.stderr)
    print(f"wrote {out}" + (f" (inputs: {decl.line()})" if decl is not None else ""))
    print(f"run it: pytest {out}")
    return 0


def check_args(args, extra: list[str]) -> list[str]:
    """The pytest command line ``pytest-deploy check`` runs."""
    out = [f"--deploy-model={t}" for t in args.targets]
    for option in ("backends", "inputs", "examples", "report", "markdown", "html"):
        value = getattr(args, option)
        if value is not None:
            out.append(f"--deploy-{option}={value}")
    if not _plugin_installed():
        out += ["-p", "pytest_deploy.plugin"]
    return [*out, *extra]


def _plugin_installed() -> bool:
    """Whether pytest loads pytest-deploy by its entry point (installed), rather than needing ``-p``."""
    from importlib.metadata import entry_points

    return any(ep.value == "pytest_deploy.plugin" for ep in entry_points(group="pytest11"))


def check_models(args, extra: list[str]) -> int:
    """``pytest-deploy check``: pytest with ``--deploy-model``, in this process; pytest's exit code."""
    import pytest

    command = check_args(args, extra)
    print("pytest " + " ".join(command), flush=True)
    return int(pytest.main(command))


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
