"""The HTML report's plots, drawn with matplotlib, and the outcome colours and number reading the page shares.

Each plot is a PNG in a ``data:`` URI: the error of every check against its atol per backend, build/load/run time per
backend, latency beside eager PyTorch (per check, and against the input's size), and each failing check's per-node
error. :func:`plots_section` draws them all into the page's plots section; a plot that fails to draw leaves a note
in its place, and without matplotlib (``pip install matplotlib``) one note says so. matplotlib is imported only
when the plots are drawn.

The outcome colours (:data:`COLORS`), :func:`as_number` (a number from the JSON report) and :func:`outcome_of` live here
because the plots use them as the page does. The page itself (header, matrix, one card per check, the CSS) is
:mod:`pytest_deploy.report_html`.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable
from typing import Any

OUTCOMES = ("passed", "failed", "skipped", "xfailed", "xpassed")

#: outcome -> (cell background, strong colour for text, borders and plot markers)
COLORS = {
    "passed": ("#d4efd6", "#1e7b34"),
    "failed": ("#fbd0cc", "#c62828"),
    "skipped": ("#e4e4e4", "#6b6b6b"),
    "xfailed": ("#ffe3a8", "#b26a00"),
    "xpassed": ("#ead5f5", "#7b1fa2"),
}

#: plot text sizes (points at 100 dpi): read at the width the page shows a plot (about 720 px)
_FONT = {"tick": 11, "label": 12, "title": 13, "note": 10.5, "legend": 11}
_INSTALL_NOTE = "Plots need matplotlib, which is not installed here: pip install matplotlib"


def escape(value: Any) -> str:
    """``value`` as HTML text, quotes escaped too."""
    return html.escape(str(value), quote=True)


def as_number(value: Any) -> float | None:
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


def outcome_of(result: dict) -> str:
    """A result's outcome, one of :data:`COLORS`' keys (one it does not know shows as skipped)."""
    outcome = str(result.get("outcome") or "passed")
    return outcome if outcome in COLORS else "skipped"


# ------------------------------------------------------------------------------------------------ plots

def _finite_errors(results: list[dict]) -> list[tuple[dict, float]]:
    out = []
    for r in results:
        err = as_number(r.get("max_abs_error"))
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
    early = [r for r in results if as_number(r.get("max_abs_error")) is None and outcome_of(r) in ("failed", "xpassed")]
    if not points and not early:
        return None
    columns = [b for b in backends if any(str(r.get("backend")) == b for r in [p for p, _ in points] + early)]
    atols = [a for r, _ in points if (a := as_number(r.get("atol"))) is not None]
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
            outcome = outcome_of(r)
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
        for atol in sorted({a for r, _ in group if (a := as_number(r.get("atol"))) is not None}):
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
            value = as_number((r.get("timings") or {}).get(stage))
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
        for box, color in ((eager, "#b0b0b0"), (mine, COLORS["passed"][1] if outcome_of(r) == "passed"
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
    nodes = _node_errors(result)
    errors = [as_number(n.get("max_abs_error")) for n in nodes]
    if not nodes or all(e is None for e in errors):
        return None
    atol = as_number(result.get("atol"))
    floor = _log_floor([e for e in errors if e is not None] + ([atol] if atol else []))
    ys = [floor if e is None or math.isnan(e) or e <= 0 else e for e in errors]
    labels = [str(n.get("module") or n.get("node") or i) for i, n in enumerate(nodes)]
    div = result.get("divergence") if isinstance(result.get("divergence"), dict) else {}
    first = next((i for i, n in enumerate(nodes) if div and n.get("node") == div.get("node")), None)
    if first is None and atol:
        first = next((i for i, e in enumerate(errors) if e is not None and e > atol), None)
    return _per_node_plot(result, ys, labels, line=(atol, f"atol {atol:g}" if atol else ""),
                          mark=(first, "first beyond atol"), log=True,
                          axes=("node, in execution order", "max abs error (log)", "per-node error"))


def _sqnr_rows(result: dict) -> list[dict]:
    rows = (result.get("details") or {}).get("int8_sqnr")
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def _plot_sqnr(result: dict) -> str | None:
    """A failing int8 check's SQNR per node of the quantized graph (float graph's output against the QDQ graph's),
    in graph order, against the gate's SQNR threshold; the first node where it collapses marked."""
    rows = _sqnr_rows(result)
    values = [as_number(r.get("sqnr_db")) for r in rows]
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None
    top = max(finite) + 5
    ys = [top if v is None or v == math.inf else max(v, min(finite) - 5) for v in values]
    labels = [f"{r.get('node')} ({r.get('op')})" for r in rows]
    first = (result.get("details") or {}).get("int8_sqnr_first") or {}
    threshold = as_number(first.get("threshold_db"))
    at = next((i for i, r in enumerate(rows) if first.get("node") and r.get("node") == first.get("node")), None)
    return _per_node_plot(result, ys, labels, line=(threshold, f"gate {threshold:g} dB" if threshold is not None else ""),
                          mark=(at, "collapses first"), log=False,
                          axes=("node of the quantized graph, in graph order", "SQNR against the float graph (dB)",
                                "per-node SQNR"))


def _per_node_plot(result: dict, ys: list[float], labels: list[str], *, line: tuple, mark: tuple, log: bool,
                   axes: tuple[str, str, str]) -> str:
    """One value per node in order (``ys``, named by ``labels``), a dashed ``line`` (value, label) to judge it by,
    the ``mark`` (index, words) node marked; ``axes`` = (x label, y label, title's first words)."""
    from matplotlib.figure import Figure

    (threshold, threshold_label), (at, words) = line, mark
    many = len(ys) > 40
    fig = Figure(figsize=(9.0, 4.0 if many else 4.8), dpi=100)
    ax = fig.add_subplot()
    ax.plot(range(len(ys)), ys, marker="." if many else "o", markersize=4 if many else 5, color="#3b6ea8",
            linewidth=1.2, zorder=3)
    if threshold:
        ax.axhline(threshold, color="#1d1d1f", linestyle="--", linewidth=1.2, label=threshold_label)
    if at is not None:
        ax.scatter([at], [ys[at]], s=90, marker="X", color=COLORS["failed"][1], edgecolors="black", zorder=4,
                   label=f"{words}: {labels[at]}")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(axes[0], fontsize=_FONT["label"])
    ax.set_ylabel(axes[1], fontsize=_FONT["label"])
    ax.tick_params(axis="y", labelsize=_FONT["tick"])
    if not many:
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=_FONT["note"])
    ax.grid(axis="y", color="#e0e0e0", zorder=0)
    ax.set_title(f"{axes[2]}: {result.get('test')} [{result.get('backend')}]", fontsize=_FONT["title"])
    if threshold or at is not None:
        ax.legend(loc="upper left" if log else "lower left", fontsize=_FONT["legend"], frameon=False)
    fig.tight_layout()
    return _figure_uri(fig)


def _figure(uri: str, caption: str, alt: str) -> str:
    return f'<figure><img src="{escape(uri)}" alt="{escape(alt)}"><figcaption>{escape(caption)}</figcaption></figure>'


def _failed_plot(what: str, exc: Exception) -> str:
    return f'<p class="note">The {escape(what)} plot could not be drawn: {escape(type(exc).__name__)}: {escape(exc)}</p>'


def plots_section(results: list[dict], backends: list[str]) -> tuple[str, list[str | None]]:
    """The plots section, and each check's node-error figure (None where it has none)."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends import backend_agg  # noqa: F401
    except ImportError:
        note = f'<p class="note plots-missing">{escape(_INSTALL_NOTE)}</p>'
        return note, [note if _node_errors(r) or _sqnr_rows(r) else None for r in results]
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
        if _sqnr_rows(r):  # a failing int8 check: where the quantized graph loses the signal
            kind, plot = "per-node SQNR", _plot_sqnr
            caption = ("SQNR of each node's output in the quantized graph against the float graph's, in graph order, "
                       "on the failing examples; the gate's SQNR threshold dashed.")
        elif _node_errors(r):
            kind, plot = "per-node error", _plot_nodes
            caption = "Max abs error of each node's output against eager PyTorch, in execution order."
        else:
            nodes.append(None)
            continue
        try:
            uri = plot(r)
        except Exception as exc:
            nodes.append(_failed_plot(kind, exc))
            continue
        nodes.append(_figure(uri, caption, f"{kind} of {r.get('test')} [{r.get('backend')}]") if uri else None)
    if not parts:
        parts.append('<p class="note">No check has errors or timings to plot.</p>')
    return f'<div class="plots">{"".join(parts)}</div>', nodes
