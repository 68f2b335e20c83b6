"""The HTML report: one self-contained file a person reads in a browser.

Styles and plots are inline (plots are PNGs in ``data:`` URIs), nothing is fetched from the network and no
script runs. The page holds the environment and the counts, the model x backend matrix (each cell links to its
check), one section per check (message, failing input, tolerances, timings, branch sites, details) and plots
drawn with matplotlib when it is installed (``pip install matplotlib``; without it the page says so in their
place).

Its input is the JSON report's ``results`` (:meth:`pytest_deploy.results.Result.to_json`, non-finite numbers
possibly written as the strings ``"inf"``/``"nan"``) and ``environment``. Standard library only at import time:
matplotlib is imported when the plots are drawn.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable
from typing import Any

from .compare import format_number
from .latency import facts_text as latency_facts
from .names import backend_names

OUTCOMES = ("passed", "failed", "skipped", "xfailed", "xpassed")

#: outcome -> (cell background, strong colour for text, borders and plot markers)
COLORS = {
    "passed": ("#d4efd6", "#1e7b34"),
    "failed": ("#fbd0cc", "#c62828"),
    "skipped": ("#e4e4e4", "#6b6b6b"),
    "xfailed": ("#ffe3a8", "#b26a00"),
    "xpassed": ("#ead5f5", "#7b1fa2"),
}
_STATUS = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP", "xfailed": "XFAIL", "xpassed": "XPASS"}

#: the backends' canonical order when the registry is not loaded (the report needs no backend imported)
_DEFAULT_ORDER = ("state_dict", "pickle", "checkpoint", "trace", "script", "export", "aoti", "onnx", "tvm",
                  "tensorrt")
#: environment keys shown first, in this order; the rest follow
_ENV_KEYS = ("python", "torch", "onnxruntime", "tvm", "tensorrt", "cuda", "machine")
#: a details value longer than this (as JSON) is cut, with a note of how much was left out
DETAIL_LIMIT = 300
#: plot text sizes (points at 100 dpi): read at the width the page shows a plot (about 720 px)
_FONT = {"tick": 11, "label": 12, "title": 13, "note": 10.5, "legend": 11}
_INSTALL_NOTE = "Plots need matplotlib, which is not installed here: pip install matplotlib"

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

def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any) -> float | None:
    """A number from the JSON report: floats, ints, and ``"inf"``/``"nan"`` as the report writes them."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _fmt(value: Any) -> str:
    number = _num(value)
    if number is None:
        return "-" if value is None else str(value)
    if math.isnan(number):
        return "nan"
    return format_number(number) if number >= 0 else "-" + format_number(-number)


def _tol(value: Any) -> str:
    number = _num(value)
    return "-" if number is None else f"{number:g}"


def _seconds(value: Any) -> str:
    number = _num(value) or 0.0
    return f"{number:.2f} s" if number < 10 else f"{number:.0f} s"


def _outcome(result: dict) -> str:
    outcome = str(result.get("outcome") or "passed")
    return outcome if outcome in COLORS else "skipped"


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
        return _e(text)
    return f'{_e(text[:limit])}<span class="cut">\u2026 ({len(text) - limit} more characters)</span>'


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
        rows.append(f"<tr><th>{_e(key)}</th><td>{_e(text)}</td></tr>")
    counts = dict.fromkeys(OUTCOMES, 0)
    for r in results:
        counts[_outcome(r)] += 1
    shown = [o for o in OUTCOMES if o != "xpassed" or counts[o]]
    count_items = "".join(f'<li class="outcome-{o}"><span class="n">{counts[o]}</span>{o}</li>' for o in shown)
    tests = len({r.get("test") for r in results})
    build = sum(_num((r.get("timings") or {}).get("build")) or 0.0 for r in results)
    cached = sum(bool(r.get("cached")) for r in results)
    problems = [(r, a) for r, a in zip(results, anchors) if _outcome(r) in ("failed", "xpassed")]
    problem_list = ""
    if problems:
        items = "".join(
            f'<li><a href="#{_e(a)}"><code>{_e(r.get("test"))}</code> [{_e(r.get("backend"))}]</a> '
            f'{_e(_status(r))}{_e(" at " + str(r["stage"])) if r.get("stage") else ""}</li>' for r, a in problems)
        problem_list = f'<p class="summary-line">Needs a look:</p><ul class="problems">{items}</ul>'
    return (
        f"<header><div><h1>{_e(title)}</h1>"
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
    head = "".join(f'<th scope="col">{_e(b)}</th>' for b in backends)
    body = []
    for test, by_backend in rows.items():
        cells = []
        for backend in backends:
            if backend not in by_backend:
                cells.append('<td class="cell missing">-</td>')
                continue
            r, anchor = by_backend[backend]
            outcome = _outcome(r)
            parts = [f'<span class="status">{_e(_status(r))}</span>']
            if outcome in ("failed", "xfailed", "xpassed") and r.get("stage"):
                parts.append(f'<span class="stage">{_e(r["stage"])}</span>')
            if r.get("max_abs_error") is not None:
                parts.append(f'<span class="err">max abs {_e(_fmt(r["max_abs_error"]))}</span>')
            label = f"{test} [{backend}]: {outcome}"
            cells.append(f'<td class="cell outcome-{outcome}" data-backend="{_e(backend)}">'
                         f'<a href="#{_e(anchor)}" title="{_e(label)}">{"".join(parts)}</a></td>')
        body.append(f'<tr><th scope="row" class="test">{_e(test)}</th>{"".join(cells)}</tr>')
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
        return f'<pre class="message">{_e(message)}</pre>'
    before, after = "".join(lines[:start]), "".join(lines[start:])
    return f'<pre class="message">{_e(before)}<span class="failing-input">{_e(after)}</span></pre>'


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
            f'<tr class="{css}"><td class="mono">{_e(b.get("file"))}:{_e(b.get("line"))}</td>'
            f"<td><code>{_e(b.get('source') or '')}</code></td><td>{_e(b.get('kind') or '')}</td>"
            f"<td>{_e(seen)}</td><td>{_e('-' if b.get('traced') is None else b.get('traced'))}</td>"
            f"<td>{_e(lost)}</td>"
            f"<td>{_e('/'.join(map(str, uncovered)) if isinstance(uncovered, list) else uncovered)}</td></tr>")
    return ('<table class="branches"><thead><tr><th>site</th><th>source</th><th>kind</th><th>outcomes seen</th>'
            f'<th>traced</th><th>lost</th><th>never reached</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _divergence(result: dict) -> str:
    div = result.get("divergence")
    if isinstance(div, dict):
        where = f"{div.get('file')}:{div.get('line')}" if div.get("file") else ""
        kind = f" ({div['type']})" if div.get("type") else ""
        module = div.get("module")
        name = "the model itself" if module == "" else f"<code>{_e(module or '?')}</code>"
        parts = [f"diverges first at {name}{_e(kind)}"]
        if where:
            parts.append(f"<span class=\"mono\">{_e(where)}</span>")
        if div.get("node"):
            parts.append(f"node <code>{_e(div['node'])}</code>")
        parts.append(f"max abs error {_e(_fmt(div.get('max_abs_error')))} while its inputs differ by "
                     f"{_e(_fmt(div.get('input_max_abs_error')))}")
        return f'<p class="divergence">{"; ".join(parts)}</p>'
    reason = (result.get("details") or {}).get("divergence_error")
    if "divergence" in result and reason:
        return f'<p class="divergence">where it diverges could not be located: {_e(reason)}</p>'
    return ""


def _check(result: dict, anchor: str, node_plot: str | None, same_branches: tuple[str, str] | None = None) -> str:
    """One check's card. ``same_branches`` (backend, anchor) names an earlier card of the model test with the same
    branch sites: a passing card then links to that table instead of repeating it."""
    outcome = _outcome(result)
    timings = result.get("timings") or {}
    facts = [("outcome", _e(outcome)), ("stage", _e(result.get("stage") or "-"))]
    facts.append(("examples", _e(result.get("examples", "-"))))
    facts.append(("max abs error", _e(_fmt(result.get("max_abs_error")))))
    facts.append(("max rel error", _e(_fmt(result.get("max_rel_error")))))
    facts.append(("tolerance", f"atol {_e(_tol(result.get('atol')))}, rtol {_e(_tol(result.get('rtol')))}"))
    facts.append(("timings", ", ".join(f"{_e(k)} {_e(_seconds(v))}" for k, v in timings.items()) or "-"))
    facts.append(("cached", "yes" if result.get("cached") else "no"))
    latency = latency_facts(result.get("latency"))
    if latency:
        facts.append(("latency", _e(latency)))
    for key in ("seed", "artifact"):
        if result.get(key) is not None:
            facts.append((key, f'<span class="mono">{_e(result[key])}</span>'))
    parts = [
        f'<section class="check outcome-{outcome}" id="{_e(anchor)}">',
        f'<h3><span class="badge outcome-{outcome}">{_e(_status(result))}</span><code>{_e(result.get("test"))}</code> '
        f'<span class="backend">[{_e(result.get("backend"))}]</span></h3>',
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
                     f'<a href="#{_e(same_branches[1])}">[{_e(same_branches[0])}]</a>\'s</p>')
    elif branches:
        parts.append(f"<h4>branch sites ({len(branches)})</h4>" + _branch_table(branches))
    details = result.get("details") or {}
    if details:
        items = "".join(f"<dt>{_e(k)}</dt><dd><code>{_json(v)}</code></dd>" for k, v in details.items())
        is_open = " open" if outcome in ("failed", "xpassed") else ""
        parts.append(f'<details class="kv-block"{is_open}><summary>details ({len(details)})</summary>'
                     f'<dl class="kv">{items}</dl></details>')
    parts.append('<p class="top"><a href="#matrix">back to the matrix</a></p></section>')
    return "".join(parts)


# ------------------------------------------------------------------------------------------------ plots

def _finite_errors(results: list[dict]) -> list[tuple[dict, float]]:
    out = []
    for r in results:
        err = _num(r.get("max_abs_error"))
        if err is not None and not math.isnan(err):
            out.append((r, err))
    return out


def _node_errors(result: dict) -> list[dict]:
    nodes = (result.get("details") or {}).get("node_errors")
    if not isinstance(nodes, list):
        return []
    return [n for n in nodes if isinstance(n, dict)]


def _figure_uri(fig: Any) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _log_floor(values: Iterable[float]) -> float:
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    return min(positive) / 10 if positive else 1e-12


def _marker(outcome: str) -> dict[str, Any]:
    """One outcome's marker, the same on the plot and in its legend (scatter sizes are areas: size**2)."""
    failed = outcome in ("failed", "xpassed")
    return {"marker": "X" if failed else "o", "size": 9.5 if failed else 6.0, "color": COLORS[outcome][1],
            "edge": "black" if failed else COLORS[outcome][1]}


def _plot_errors(results: list[dict], backends: list[str]) -> str | None:
    """Max abs error per check against its atol, one column per backend (log scale); failures marked. A check that
    failed before any output was compared (no error) sits in a band at the top, labelled with its stage, so a
    column of failures never looks clean."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    points = _finite_errors(results)
    early = [r for r in results if _num(r.get("max_abs_error")) is None and _outcome(r) in ("failed", "xpassed")]
    if not points and not early:
        return None
    columns = [b for b in backends if any(str(r.get("backend")) == b for r in [p for p, _ in points] + early)]
    atols = [a for r, _ in points if (a := _num(r.get("atol"))) is not None]
    floor = _log_floor([e for _, e in points] + atols)
    ceiling = max([e for _, e in points if math.isfinite(e)] + atols + [floor * 10]) * 10
    band = ceiling * 100  # failures without an error, above every error
    fig = Figure(figsize=(max(7.5, 1.4 * len(columns) + 3.5), 4.8), dpi=100)
    ax = fig.add_subplot()
    seen: set[str] = set()
    for x, backend in enumerate(columns):
        group: list[tuple[dict, float | None]] = [(r, e) for r, e in points if str(r.get("backend")) == backend]
        group += [(r, None) for r in early if str(r.get("backend")) == backend]
        for i, (r, err) in enumerate(group):
            offset = 0.0 if len(group) == 1 else -0.28 + 0.56 * i / (len(group) - 1)
            y = band if err is None else (floor if err <= 0 else (ceiling if math.isinf(err) else err))
            outcome = _outcome(r)
            m = _marker(outcome)
            ax.scatter([x + offset], [y], s=m["size"] ** 2, marker=m["marker"], color=m["color"],
                       edgecolors=m["edge"], linewidths=0.8, zorder=3)
            label = (str(r.get("stage") or "?") if err is None
                     else "0" if err <= 0 else "inf" if math.isinf(err) else None)
            if label:  # beside a lone marker; above and below in turn where markers share a column
                xytext, ha = ((7, 0), "left") if len(group) == 1 else ((0, 9 if i % 2 == 0 else -17), "center")
                ax.annotate(label, (x + offset, y), xytext=xytext, textcoords="offset points", va="bottom",
                            ha=ha, fontsize=_FONT["note"], color=m["color"])
            seen.add(outcome)
        for atol in sorted({a for r, _ in group if (a := _num(r.get("atol"))) is not None}):
            ax.hlines(atol, x - 0.4, x + 0.4, colors="#1d1d1f", linestyles="--", linewidth=1.5, zorder=2)
    ax.set_yscale("log")
    if early:  # the band has no scale: no error was measured there
        from matplotlib.ticker import FuncFormatter

        ax.axhspan(band / 20, band * 20, color="#fbd0cc", alpha=0.35, zorder=1, linewidth=0)
        scale = ax.yaxis.get_major_formatter()
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, pos: "" if v > ceiling * 1.01 else scale(v, pos)))
    ax.set_ylim(floor / 3, band * 20 if early else ceiling * 3)
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels(columns, fontsize=_FONT["tick"])
    ax.tick_params(axis="y", labelsize=_FONT["tick"])
    ax.set_xlim(-0.6, len(columns) - 0.4)
    ax.set_ylabel("max abs error (log)", fontsize=_FONT["label"])
    ax.grid(axis="y", which="major", color="#e0e0e0", zorder=0)
    ax.set_title("max abs error per check against atol", fontsize=_FONT["title"])
    handles: list[Any] = []
    for o in OUTCOMES:
        if o in seen:
            m = _marker(o)
            handles.append(Line2D([], [], linestyle="none", marker=m["marker"], markersize=m["size"],
                                  markerfacecolor=m["color"], markeredgecolor=m["edge"], markeredgewidth=0.8, label=o))
    handles.append(Line2D([], [], linestyle="--", color="#1d1d1f", label="atol"))
    if early:
        from matplotlib.patches import Patch

        handles.append(Patch(color="#fbd0cc", alpha=0.6, label="failed before compare\n(no error; its stage)"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=_FONT["legend"])
    fig.tight_layout()
    return _figure_uri(fig)


def _plot_timings(results: list[dict], backends: list[str]) -> str | None:
    """Build, load and run time per backend, summed over its checks, as stacked bars."""
    from matplotlib.figure import Figure

    stages = ("build", "load", "run")
    sums = {b: dict.fromkeys(stages, 0.0) for b in backends}
    for r in results:
        for stage in stages:
            value = _num((r.get("timings") or {}).get(stage))
            if value is not None and math.isfinite(value) and value > 0:
                sums[str(r.get("backend"))][stage] += value
    columns = [b for b in backends if sum(sums[b].values()) > 0]
    if not columns:
        return None
    fig = Figure(figsize=(max(6.5, 1.2 * len(columns) + 3.0), 4.2), dpi=100)
    ax = fig.add_subplot()
    bottom = [0.0] * len(columns)
    for stage, color in zip(stages, ("#3b6ea8", "#e0a030", "#3f9f8f")):
        heights = [sums[b][stage] for b in columns]
        ax.bar(range(len(columns)), heights, bottom=bottom, color=color, label=stage, width=0.6, zorder=3)
        bottom = [a + h for a, h in zip(bottom, heights)]
    for x, total in enumerate(bottom):
        ax.annotate(f"{total:.1f} s", (x, total), ha="center", va="bottom", fontsize=_FONT["note"], xytext=(0, 2),
                    textcoords="offset points")
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels(columns, fontsize=_FONT["tick"])
    ax.tick_params(axis="y", labelsize=_FONT["tick"])
    ax.set_ylabel("seconds (sum over checks)", fontsize=_FONT["label"])
    ax.set_ylim(0, max(bottom) * 1.15)
    ax.grid(axis="y", color="#e0e0e0", zorder=0)
    ax.set_title("time per backend", fontsize=_FONT["title"])
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=_FONT["legend"])
    fig.tight_layout()
    return _figure_uri(fig)


def _latency_rows(results: list[dict]) -> list[tuple[dict, dict]]:
    """(result, timed shape) of every check with latency figures, at most 24."""
    rows = []
    for r in results:
        for shape in ((r.get("latency") or {}).get("shapes") or []):
            if shape.get("samples_ms") and shape.get("eager_samples_ms"):
                rows.append((r, shape))
    return rows[:24]


def _plot_latency(results: list[dict], backends: list[str]) -> str | None:
    """Each timed artifact's latency distribution beside eager's, one pair of boxes per check and shape (log scale)."""
    from matplotlib.figure import Figure

    rows = _latency_rows(results)
    if not rows:
        return None
    fig = Figure(figsize=(max(6.5, 1.1 * len(rows) + 3.0), 4.6), dpi=100)
    ax = fig.add_subplot()
    style: dict[str, Any] = {"whis": (5, 95), "showfliers": False, "patch_artist": True, "widths": 0.35}
    for i, (r, shape) in enumerate(rows):
        eager = ax.boxplot([shape["eager_samples_ms"]], positions=[i - 0.2], **style)
        mine = ax.boxplot([shape["samples_ms"]], positions=[i + 0.2], **style)
        for box, color in ((eager, "#b0b0b0"), (mine, COLORS["passed"][1] if _outcome(r) == "passed"
                                                        else COLORS["failed"][1])):
            for patch in box["boxes"]:
                patch.set_facecolor(color)
            for line in box["medians"]:
                line.set_color("black")
        speedup = shape.get("speedup")
        if speedup is not None:
            ax.annotate(f"×{speedup:.2g}", (i, 1.0), xycoords=("data", "axes fraction"), ha="center", va="bottom",
                        fontsize=_FONT["note"], xytext=(0, 2), textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{str(r.get('test')).split('::')[-1]}\n{r.get('backend')} {shape['label']}"
                        for r, shape in rows], fontsize=_FONT["tick"] - 2, rotation=30, ha="right")
    ax.set_ylabel("ms per run (log)", fontsize=_FONT["label"])
    ax.grid(axis="y", color="#e0e0e0", zorder=0)
    ax.set_title("latency: artifact beside eager PyTorch", fontsize=_FONT["title"], pad=18)
    fig.tight_layout()
    return _figure_uri(fig)


def _plot_latency_sizes(results: list[dict], backends: list[str]) -> str | None:
    """Median latency against the timed input's size (the first named dim), for checks that timed several sizes."""
    from matplotlib.figure import Figure

    series = []
    for r in results:
        shapes = [s for s in ((r.get("latency") or {}).get("shapes") or []) if s.get("dims")]
        if len(shapes) < 2:
            continue
        dim = sorted(shapes[0]["dims"])[0]
        points = sorted((s["dims"][dim], s["p50_ms"], s["eager"]["p50_ms"]) for s in shapes if dim in s["dims"])
        series.append((r, dim, points))
    if not series:
        return None
    fig = Figure(figsize=(7.5, 4.4), dpi=100)
    ax = fig.add_subplot()
    for r, _dim, points in series[:12]:
        label = f"{str(r.get('test')).split('::')[-1]} {r.get('backend')}"
        line = ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)[0]
        ax.plot([p[0] for p in points], [p[2] for p in points], linestyle="--", color=line.get_color(), alpha=0.6)
    dims = sorted({dim for _, dim, _ in series})
    ax.set_xlabel(f"size of dim {', '.join(dims)}", fontsize=_FONT["label"])
    ax.set_ylabel("median ms per run (eager dashed)", fontsize=_FONT["label"])
    ax.grid(color="#e0e0e0", zorder=0)
    ax.set_title("latency against input size", fontsize=_FONT["title"])
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=_FONT["legend"] - 2)
    fig.tight_layout()
    return _figure_uri(fig)


def _plot_nodes(result: dict) -> str | None:
    """Max abs error per node in execution order, against the check's atol; the first node beyond it marked."""
    from matplotlib.figure import Figure

    nodes = _node_errors(result)
    errors = [_num(n.get("max_abs_error")) for n in nodes]
    if not nodes or all(e is None for e in errors):
        return None
    atol = _num(result.get("atol"))
    floor = _log_floor([e for e in errors if e is not None] + ([atol] if atol else []))
    ys = [floor if e is None or math.isnan(e) or e <= 0 else e for e in errors]
    labels = [str(n.get("module") or n.get("node") or i) for i, n in enumerate(nodes)]
    many = len(nodes) > 40
    fig = Figure(figsize=(9.0, 4.0 if many else 4.8), dpi=100)
    ax = fig.add_subplot()
    ax.plot(range(len(ys)), ys, marker="." if many else "o", markersize=4 if many else 5, color="#3b6ea8",
            linewidth=1.2, zorder=3)
    if atol:
        ax.axhline(atol, color="#1d1d1f", linestyle="--", linewidth=1.2, label=f"atol {atol:g}")
    div = result.get("divergence") if isinstance(result.get("divergence"), dict) else {}
    first = next((i for i, n in enumerate(nodes) if div and n.get("node") == div.get("node")), None)
    if first is None and atol:
        first = next((i for i, e in enumerate(errors) if e is not None and e > atol), None)
    if first is not None:
        ax.scatter([first], [ys[first]], s=90, marker="X", color=COLORS["failed"][1], edgecolors="black", zorder=4,
                   label=f"first beyond atol: {labels[first]}")
    ax.set_yscale("log")
    ax.set_xlabel("node, in execution order", fontsize=_FONT["label"])
    ax.set_ylabel("max abs error (log)", fontsize=_FONT["label"])
    ax.tick_params(axis="y", labelsize=_FONT["tick"])
    if not many:
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=_FONT["note"])
    ax.grid(axis="y", color="#e0e0e0", zorder=0)
    ax.set_title(f"per-node error: {result.get('test')} [{result.get('backend')}]", fontsize=_FONT["title"])
    if atol or first is not None:
        ax.legend(loc="upper left", fontsize=_FONT["legend"], frameon=False)
    fig.tight_layout()
    return _figure_uri(fig)


def _figure(uri: str, caption: str, alt: str) -> str:
    return f'<figure><img src="{_e(uri)}" alt="{_e(alt)}"><figcaption>{_e(caption)}</figcaption></figure>'


def _failed_plot(what: str, exc: Exception) -> str:
    return f'<p class="note">The {_e(what)} plot could not be drawn: {_e(type(exc).__name__)}: {_e(exc)}</p>'


def _plots(results: list[dict], backends: list[str]) -> tuple[str, list[str | None]]:
    """The plots section, and each check's node-error figure (None where it has none)."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends import backend_agg  # noqa: F401
    except ImportError:
        note = f'<p class="note plots-missing">{_e(_INSTALL_NOTE)}</p>'
        return note, [note if _node_errors(r) else None for r in results]
    parts = []
    for what, draw, caption in (
        ("error", _plot_errors, "Max abs error of each check (one marker; failed checks as a large X) against the "
                                "atol it was held to (dashed), per backend. Log scale; an error of 0 sits at the bottom, "
                                "and a check that failed before any output was compared sits in the red band at the "
                                "top, labelled with its stage."),
        ("timing", _plot_timings, "Build, load and run time per backend, summed over its checks "
                                  "(cached checks count what this run spent)."),
        ("latency", _plot_latency, "Latency of each timed artifact (colour) beside eager PyTorch's (grey) on the same "
                                   "input, interleaved in the same process (--deploy-latency): boxes span p25-p75, "
                                   "whiskers p5-p95, the line is the median; the label gives the speedup."),
        ("latency by size", _plot_latency_sizes, "Median latency against the size of the timed input (the dims' "
                                                 "canonical value and upper bound), per backend; eager dashed."),
    ):
        try:
            uri = draw(results, backends)
        except Exception as exc:  # a report is still written when one plot fails
            parts.append(_failed_plot(what, exc))
            continue
        if uri:
            parts.append(_figure(uri, caption, f"{what} plot"))
    nodes: list[str | None] = []
    for r in results:
        if not _node_errors(r):
            nodes.append(None)
            continue
        try:
            uri = _plot_nodes(r)
        except Exception as exc:
            nodes.append(_failed_plot("per-node error", exc))
            continue
        nodes.append(_figure(uri, "Max abs error of each node's output against eager PyTorch, in execution order.",
                             f"per-node error of {r.get('test')} [{r.get('backend')}]") if uri else None)
    if not parts:
        parts.append('<p class="note">No check has errors or timings to plot.</p>')
    return f'<div class="plots">{"".join(parts)}</div>', nodes


# ------------------------------------------------------------------------------------------------ entry points

def render_html(results: list[dict], environment: dict, *, title: str = "pytest-deploy report") -> str:
    """The whole report as one HTML document: no external resource, nothing to fetch, no script."""
    results = list(results)
    anchors = _anchors(results)
    backends = _backend_order(results)
    plots, node_plots = _plots(results, backends)
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
        if r.get("branches") and _outcome(r) not in ("failed", "xpassed"):
            shown.setdefault(key, (str(r.get("backend")), anchors[i]))
    checks = "".join(cards)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_css()}</style></head><body>"
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
