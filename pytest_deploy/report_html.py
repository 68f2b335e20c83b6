"""The HTML report: one self-contained file a person reads in a browser.

Styles and plots are inline (plots are PNGs in ``data:`` URIs), nothing is fetched from the network and no
script runs. The page holds the environment and the counts, the model x backend matrix (each cell links to its
check), one section per check (message, failing input, tolerances, timings, branch sites, details) and plots
drawn with matplotlib when it is installed (``pip install matplotlib``; without it the page says so in their
place).

Its input is the JSON report's ``results`` (:meth:`pytest_deploy.results.Result.to_json`, non-finite numbers
possibly written as the strings ``"inf"``/``"nan"``) and ``environment``. Standard library only at import time:
matplotlib is imported when the plots are drawn.

This module assembles the page (header, matrix, the check cards, the CSS) and writes it; the plots, and the outcome
colours they share with the page, are in :mod:`pytest_deploy.report_plots`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable
from typing import Any

from .agreement import facts_text as agreement_facts
from .compare import format_number
from .latency import facts_text as latency_facts
from .names import backend_names
from .report_plots import COLORS, OUTCOMES, as_number, escape, outcome_of, plots_section

_STATUS = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP", "xfailed": "XFAIL", "xpassed": "XPASS"}

#: the backends' canonical order when the registry is not loaded (the report needs no backend imported)
_DEFAULT_ORDER = ("state_dict", "pickle", "checkpoint", "trace", "script", "export", "aoti", "onnx", "tvm",
                  "tensorrt")
#: environment keys shown first, in this order; the rest follow
_ENV_KEYS = ("python", "torch", "onnxruntime", "tvm", "tensorrt", "cuda", "machine")
#: a details value longer than this (as JSON) is cut, with a note of how much was left out
DETAIL_LIMIT = 300

_CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1d1d1f;
       background: #fafafa; margin: 0; padding: 24px 32px 64px; }
h1 { font-size: 24px; margin: 0 0 12px; }
h2 { font-size: 19px; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 1px solid #d0d0d0; }
h3 { font-size: 16px; margin: 0 0 8px; word-break: break-all; }
h4 { font-size: 13px; margin: 14px 0 4px; color: #444; text-transform: uppercase; letter-spacing: .04em; }
code, pre, .mono { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, "DejaVu Sans Mono", monospace;
                   font-size: 12.5px; }
a { color: #0b57d0; }
header { display: flex; flex-wrap: wrap; gap: 16px 40px; align-items: flex-start; }
table { border-collapse: collapse; }
.env th { text-align: left; font-weight: 600; padding: 2px 14px 2px 0; color: #444; vertical-align: top; }
.env td { padding: 2px 0; }
dl.facts { display: flex; flex-wrap: wrap; gap: 4px 28px; margin: 4px 0 6px; }
dl.facts div { display: flex; gap: 6px; }
dl.facts dt { font-weight: 600; color: #444; }
dl.facts dd { margin: 0; }
.counts { display: flex; flex-wrap: wrap; gap: 8px; margin: 4px 0 8px; padding: 0; list-style: none; }
.counts li { padding: 6px 12px; border-radius: 6px; font-weight: 600; border-left: 5px solid; }
.counts .n { font-size: 20px; margin-right: 6px; }
.summary-line { color: #444; margin: 4px 0; }
.problems { margin: 6px 0 0; padding-left: 20px; }
.matrix { background: #fff; box-shadow: 0 0 0 1px #d0d0d0; }
.matrix th { background: #f0f0f0; padding: 6px 10px; text-align: left; border: 1px solid #d0d0d0; }
.matrix th.test { font-weight: normal; font-family: ui-monospace, Menlo, Consolas, "DejaVu Sans Mono", monospace;
                  font-size: 12.5px; max-width: 420px; word-break: break-all; background: #fff; }
.matrix td { border: 1px solid #d0d0d0; padding: 0; min-width: 92px; vertical-align: top; }
.matrix td a { display: block; padding: 5px 9px; color: inherit; text-decoration: none; }
.matrix td a:hover { outline: 2px solid #1d1d1f; outline-offset: -2px; }
.matrix td.missing { color: #999; text-align: center; padding: 5px 9px; background: #fff; }
.cell .status { font-weight: 700; display: block; }
.cell .stage, .cell .err { display: block; font-size: 12px; }
.legend { margin: 8px 0; font-size: 12.5px; color: #444; }
.legend span { display: inline-block; padding: 1px 8px; margin-right: 6px; border-radius: 4px; border-left: 4px solid; }
section.check { background: #fff; border: 1px solid #d0d0d0; border-left: 6px solid; border-radius: 4px; padding: 12px 16px;
         margin: 14px 0; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 4px; font-size: 13px; margin-right: 6px;
         border: 1px solid; }
.backend { color: #444; font-weight: 600; }
pre { background: #f6f6f6; border: 1px solid #e0e0e0; border-radius: 4px; padding: 8px 10px; margin: 4px 0;
      white-space: pre-wrap; word-break: break-word; overflow-x: auto; }
pre .failing-input { display: block; background: #fff4d6; border-left: 3px solid #b26a00; margin: 4px -10px 0;
                     padding: 2px 7px; }
.divergence { background: #fff4d6; border: 1px solid #e6c46a; border-radius: 4px; padding: 6px 10px; margin: 8px 0; }
.branches { margin: 4px 0; }
.branches th, .branches td { border: 1px solid #d0d0d0; padding: 3px 8px; text-align: left; vertical-align: top; }
.branches th { background: #f0f0f0; }
.branches tr.lost td { background: #fbd0cc; }
.branches tr.uncovered td { background: #fff4d6; }
details.kv-block > summary { cursor: pointer; font-weight: 600; color: #444; margin-top: 10px; }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 6px 0; }
dl.kv dt { font-weight: 600; color: #444; }
dl.kv dd { margin: 0; word-break: break-all; }
.cut { color: #888; font-style: italic; }
.note { background: #fff4d6; border: 1px solid #e6c46a; border-radius: 4px; padding: 8px 12px; }
.plots { display: flex; flex-wrap: wrap; gap: 8px 24px; align-items: flex-start; }
.plots figure { flex: 0 1 720px; }
figure { margin: 10px 0 18px; max-width: 100%; }
figure img { width: 100%; max-width: 900px; height: auto; border: 1px solid #e0e0e0; background: #fff; }
figcaption { color: #444; font-size: 12.5px; max-width: 640px; }
.top { margin: 8px 0 0; font-size: 12.5px; }
footer { margin-top: 40px; color: #777; font-size: 12px; }
"""


def _css() -> str:
    rules = []
    for outcome, (background, strong) in COLORS.items():
        rules.append(f".outcome-{outcome} {{ background: {background}; border-color: {strong}; }}")
        rules.append(f".outcome-{outcome} .status, .badge.outcome-{outcome}, .counts .outcome-{outcome} {{ color: {strong}; }}")
        rules.append(f"section.check.outcome-{outcome} {{ border-left-color: {strong}; }}")
    return _CSS + "\n".join(rules) + "\n"


# ------------------------------------------------------------------------------------------------ helpers

def _fmt(value: Any) -> str:
    number = as_number(value)
    if number is None:
        return "-" if value is None else str(value)
    if math.isnan(number):
        return "nan"
    return format_number(number) if number >= 0 else "-" + format_number(-number)


def _tol(value: Any) -> str:
    number = as_number(value)
    return "-" if number is None else f"{number:g}"


def _seconds(value: Any) -> str:
    number = as_number(value) or 0.0
    return f"{number:.2f} s" if number < 10 else f"{number:.0f} s"


def _status(result: dict) -> str:
    outcome = str(result.get("outcome") or "passed")
    if outcome == "failed" and result.get("stage") == "internal":
        return "BUG"  # pytest-deploy failed inside itself: a bug, not a verdict
    return _STATUS.get(outcome, outcome.upper())


def _backend_order(results: Iterable[dict]) -> list[str]:
    """Backends present, in registration order (the default order when nothing is registered), others after."""
    order = {name: i for i, name in enumerate(backend_names() or _DEFAULT_ORDER)}
    seen: list[str] = []
    for r in results:
        backend = str(r.get("backend"))
        if backend not in seen:
            seen.append(backend)
    return sorted(seen, key=lambda b: (order.get(b, len(order)), seen.index(b)))


def _anchors(results: list[dict]) -> list[str]:
    """One id per check, from its test and backend (stable between runs), unique within the page."""
    out: list[str] = []
    taken: set[str] = set()
    for r in results:
        base = "check-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{r.get('test')}-{r.get('backend')}").strip("-")
        anchor, n = base, 1
        while anchor in taken:
            n += 1
            anchor = f"{base}-{n}"
        taken.add(anchor)
        out.append(anchor)
    return out


def _json(value: Any, limit: int = DETAIL_LIMIT) -> str:
    """A compact JSON rendering, escaped, cut at ``limit`` characters with a note of how many were left out."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str, separators=(", ", ": "))
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) <= limit:
        return escape(text)
    return f'{escape(text[:limit])}<span class="cut">\u2026 ({len(text) - limit} more characters)</span>'


_FAILING_INPUT = re.compile(r"\s*failing input\b")


def failing_input_start(message: str) -> int | None:
    """Index (in ``message.splitlines(keepends=True)``) of the line that opens the failing input
    (``  failing input (shrunk by hypothesis):``), or None; a line that only mentions it ("the failing input
    takes False") does not count."""
    for i, line in enumerate(message.splitlines(keepends=True)):
        if _FAILING_INPUT.match(line):
            return i
    return None


# ------------------------------------------------------------------------------------------------ page parts

def _header(results: list[dict], environment: dict, title: str, anchors: list[str]) -> str:
    env = dict(environment)
    if "machine" not in env and "platform" in env:
        env["machine"] = env.pop("platform")
    rows = []
    for key in [*_ENV_KEYS, *(k for k in env if k not in _ENV_KEYS)]:
        if key not in env and key not in _ENV_KEYS:
            continue
        value = env.get(key)
        if key == "cuda":
            text = "available" if value is True else "not available" if value is False else str(value or "unknown")
        elif value is None:
            text = "unknown" if key in ("python", "machine") else "not installed"
        else:
            text = str(value)
        rows.append(f"<tr><th>{escape(key)}</th><td>{escape(text)}</td></tr>")
    counts = dict.fromkeys(OUTCOMES, 0)
    for r in results:
        counts[outcome_of(r)] += 1
    shown = [o for o in OUTCOMES if o != "xpassed" or counts[o]]
    count_items = "".join(f'<li class="outcome-{o}"><span class="n">{counts[o]}</span>{o}</li>' for o in shown)
    tests = len({r.get("test") for r in results})
    build = sum(as_number((r.get("timings") or {}).get("build")) or 0.0 for r in results)
    cached = sum(bool(r.get("cached")) for r in results)
    problems = [(r, a) for r, a in zip(results, anchors) if outcome_of(r) in ("failed", "xpassed")]
    problem_list = ""
    if problems:
        items = "".join(
            f'<li><a href="#{escape(a)}"><code>{escape(r.get("test"))}</code> [{escape(r.get("backend"))}]</a> '
            f'{escape(_status(r))}{escape(" at " + str(r["stage"])) if r.get("stage") else ""}</li>' for r, a in problems)
        problem_list = f'<p class="summary-line">Needs a look:</p><ul class="problems">{items}</ul>'
    return (
        f"<header><div><h1>{escape(title)}</h1>"
        f'<ul class="counts">{count_items}</ul>'
        f'<p class="summary-line">{len(results)} checks of {tests} model tests on '
        f"{len(_backend_order(results))} backends; build time {build:.1f} s; {cached} cached</p>"
        f"{problem_list}</div>"
        f'<table class="env" aria-label="environment">{"".join(rows)}</table></header>'
    )


def _matrix(results: list[dict], anchors: list[str]) -> str:
    if not results:
        return '<h2 id="matrix">Matrix</h2><p class="note">No deployable checks ran.</p>'
    backends = _backend_order(results)
    rows: dict[str, dict[str, tuple[dict, str]]] = {}
    for r, anchor in zip(results, anchors):
        rows.setdefault(str(r.get("test")), {})[str(r.get("backend"))] = (r, anchor)
    head = "".join(f'<th scope="col">{escape(b)}</th>' for b in backends)
    body = []
    for test, by_backend in rows.items():
        cells = []
        for backend in backends:
            if backend not in by_backend:
                cells.append('<td class="cell missing">-</td>')
                continue
            r, anchor = by_backend[backend]
            outcome = outcome_of(r)
            parts = [f'<span class="status">{escape(_status(r))}</span>']
            if outcome in ("failed", "xfailed", "xpassed") and r.get("stage"):
                parts.append(f'<span class="stage">{escape(r["stage"])}</span>')
            if r.get("max_abs_error") is not None:
                parts.append(f'<span class="err">max abs {escape(_fmt(r["max_abs_error"]))}</span>')
            label = f"{test} [{backend}]: {outcome}"
            cells.append(f'<td class="cell outcome-{outcome}" data-backend="{escape(backend)}">'
                         f'<a href="#{escape(anchor)}" title="{escape(label)}">{"".join(parts)}</a></td>')
        body.append(f'<tr><th scope="row" class="test">{escape(test)}</th>{"".join(cells)}</tr>')
    legend = "".join(f'<span class="outcome-{o}">{_STATUS[o]} {o}</span>' for o in OUTCOMES)
    return (
        '<h2 id="matrix">Matrix</h2>'
        f'<table class="matrix"><thead><tr><th scope="col">model test</th>{head}</tr></thead>'
        f'<tbody>{"".join(body)}</tbody></table>'
        f'<p class="legend">{legend} &mdash; cells show the status, the failing stage and the max abs error; '
        "BUG (stage internal): pytest-deploy failed inside itself, a bug to report, not a verdict; "
        "click one for the check's details.</p>"
    )


def _message(message: str) -> str:
    lines = message.splitlines(keepends=True)
    start = failing_input_start(message)
    if start is None:
        return f'<pre class="message">{escape(message)}</pre>'
    before, after = "".join(lines[:start]), "".join(lines[start:])
    return f'<pre class="message">{escape(before)}<span class="failing-input">{escape(after)}</span></pre>'


def _branch_table(branches: list[dict]) -> str:
    rows = []
    for b in branches:
        outcomes = b.get("outcomes") or {}
        seen = ", ".join(f"{k} \u00d7{v}" for k, v in outcomes.items()) if isinstance(outcomes, dict) else str(outcomes)
        uncovered = b.get("uncovered") or []
        lost = "yes" if b.get("lost") else "no"
        if b.get("lost"):
            lost += ", outputs diverge" if b.get("diverged") else ", outputs unaffected"
        css = "lost" if b.get("lost") else ("uncovered" if uncovered else "")
        rows.append(
            f'<tr class="{css}"><td class="mono">{escape(b.get("file"))}:{escape(b.get("line"))}</td>'
            f"<td><code>{escape(b.get('source') or '')}</code></td><td>{escape(b.get('kind') or '')}</td>"
            f"<td>{escape(seen)}</td><td>{escape('-' if b.get('traced') is None else b.get('traced'))}</td>"
            f"<td>{escape(lost)}</td>"
            f"<td>{escape('/'.join(map(str, uncovered)) if isinstance(uncovered, list) else uncovered)}</td></tr>")
    return ('<table class="branches"><thead><tr><th>site</th><th>source</th><th>kind</th><th>outcomes seen</th>'
            f'<th>traced</th><th>lost</th><th>never reached</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _divergence(result: dict) -> str:
    div = result.get("divergence")
    if isinstance(div, dict):
        where = f"{div.get('file')}:{div.get('line')}" if div.get("file") else ""
        kind = f" ({div['type']})" if div.get("type") else ""
        module = div.get("module")
        name = "the model itself" if module == "" else f"<code>{escape(module or '?')}</code>"
        parts = [f"diverges first at {name}{escape(kind)}"]
        if where:
            parts.append(f"<span class=\"mono\">{escape(where)}</span>")
        if div.get("node"):
            parts.append(f"node <code>{escape(div['node'])}</code>")
        parts.append(f"max abs error {escape(_fmt(div.get('max_abs_error')))} while its inputs differ by "
                     f"{escape(_fmt(div.get('input_max_abs_error')))}")
        return f'<p class="divergence">{"; ".join(parts)}</p>'
    reason = (result.get("details") or {}).get("divergence_error")
    if "divergence" in result and reason:
        return f'<p class="divergence">where it diverges could not be located: {escape(reason)}</p>'
    return ""


def _check(result: dict, anchor: str, node_plot: str | None, same_branches: tuple[str, str] | None = None) -> str:
    """One check's card. ``same_branches`` (backend, anchor) names an earlier card of the model test with the same
    branch sites: a passing card then links to that table instead of repeating it."""
    outcome = outcome_of(result)
    timings = result.get("timings") or {}
    facts = [("outcome", escape(outcome)), ("stage", escape(result.get("stage") or "-"))]
    facts.append(("examples", escape(result.get("examples", "-"))))
    facts.append(("max abs error", escape(_fmt(result.get("max_abs_error")))))
    facts.append(("max rel error", escape(_fmt(result.get("max_rel_error")))))
    facts.append(("tolerance", f"atol {escape(_tol(result.get('atol')))}, rtol {escape(_tol(result.get('rtol')))}"))
    facts.append(("timings", ", ".join(f"{escape(k)} {escape(_seconds(v))}" for k, v in timings.items()) or "-"))
    facts.append(("cached", "yes" if result.get("cached") else "no"))
    latency = latency_facts(result.get("latency"))
    if latency:
        facts.append(("latency", escape(latency)))
    agreement = agreement_facts(result.get("details") or {})
    if agreement:
        facts.append(("agreement", escape(agreement)))
    for key in ("seed", "artifact"):
        if result.get(key) is not None:
            facts.append((key, f'<span class="mono">{escape(result[key])}</span>'))
    parts = [
        f'<section class="check outcome-{outcome}" id="{escape(anchor)}">',
        f'<h3><span class="badge outcome-{outcome}">{escape(_status(result))}</span><code>{escape(result.get("test"))}</code> '
        f'<span class="backend">[{escape(result.get("backend"))}]</span></h3>',
        '<dl class="facts">' + "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in facts) + "</dl>",
        _divergence(result),
    ]
    message = result.get("message")
    if message:
        parts.append("<h4>message</h4>" + _message(str(message)))
    if node_plot:
        parts.append(node_plot)
    branches = result.get("branches") or []
    if branches and same_branches and outcome not in ("failed", "xpassed"):
        parts.append(f'<h4>branch sites ({len(branches)})</h4><p class="same-sites">the same as '
                     f'<a href="#{escape(same_branches[1])}">[{escape(same_branches[0])}]</a>\'s</p>')
    elif branches:
        parts.append(f"<h4>branch sites ({len(branches)})</h4>" + _branch_table(branches))
    details = result.get("details") or {}
    if details:
        items = "".join(f"<dt>{escape(k)}</dt><dd><code>{_json(v)}</code></dd>" for k, v in details.items())
        is_open = " open" if outcome in ("failed", "xpassed") else ""
        parts.append(f'<details class="kv-block"{is_open}><summary>details ({len(details)})</summary>'
                     f'<dl class="kv">{items}</dl></details>')
    parts.append('<p class="top"><a href="#matrix">back to the matrix</a></p></section>')
    return "".join(parts)


# ------------------------------------------------------------------------------------------------ entry points

def render_html(results: list[dict], environment: dict, *, title: str = "pytest-deploy report") -> str:
    """The whole report as one HTML document: no external resource, nothing to fetch, no script."""
    results = list(results)
    anchors = _anchors(results)
    backends = _backend_order(results)
    plots, node_plots = plots_section(results, backends)
    # checks in matrix order: row by row, backends left to right
    rows: dict[str, list[int]] = {}
    for i, r in enumerate(results):
        rows.setdefault(str(r.get("test")), []).append(i)
    position = {b: i for i, b in enumerate(backends)}
    ordered = [i for indices in rows.values() for i in sorted(indices, key=lambda i: position[str(results[i].get("backend"))])]
    shown: dict[tuple[str, str], tuple[str, str]] = {}  # (test, branch sites as JSON) -> the card with the table
    cards = []
    for i in ordered:
        r = results[i]
        key = (str(r.get("test")), json.dumps(r.get("branches") or [], sort_keys=True, default=str))
        cards.append(_check(r, anchors[i], node_plots[i], shown.get(key)))
        if r.get("branches") and outcome_of(r) not in ("failed", "xpassed"):
            shown.setdefault(key, (str(r.get("backend")), anchors[i]))
    checks = "".join(cards)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_css()}</style></head><body>"
        f"{_header(results, environment, title, anchors)}"
        f"{_matrix(results, anchors)}"
        f'<h2 id="plots">Plots</h2>{plots}'
        f'<h2 id="checks">Checks</h2>{checks or "<p>No checks.</p>"}'
        "<footer>Written by pytest-deploy. Self-contained: styles and images are inline.</footer>"
        "</body></html>\n"
    )


def write_html(path: str, results: list[dict], environment: dict, *, title: str = "pytest-deploy report") -> None:
    """Write the report atomically (a temporary file in the same directory, then ``os.replace``)."""
    text = render_html(results, environment, title=title)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
