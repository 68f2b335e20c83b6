"""Judging a quantized artifact by agreement with eager PyTorch, not element by element.

At ``precision="int8"`` (and ``"int8-dynamic"``) an int8 graph's outputs differ from float32 eager by far more than
any float tolerance: the element-wise comparison is recorded but does not fail the check. What does is the
agreement gate (``agreement=``), judged over all the examples once the loop ends:

- ``top1``: the share of rows (every position of an output but its last dim) whose argmax over the last dim is
  eager's; ``topk:K``: the share whose eager argmax is among the artifact's K largest;
- ``cosine``: the cosine similarity of the artifact's and eager's values, pooled over the examples;
- ``sqnr``: the signal-to-quantization-noise ratio in dB, ``10 log10(sum eager^2 / sum (artifact - eager)^2)``,
  pooled over the examples.

Whatever the gate, every float output gets ``top1`` (where its last dim holds more than one value), ``cosine`` and
``sqnr_db`` in ``details["agreement"]``. Unset, the gate is :func:`default_gate`'s: cosine and SQNR for every float
output, top-1 too for a 2-D ``[batch, classes]`` one. Imports torch only inside the functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .errors import SpecError, StageError

#: The precisions judged by agreement rather than by tolerance.
QUANTIZED = ("int8", "int8-dynamic")

#: A metric's threshold when the gate names it without one. SQNR 20 dB: the quantization noise carries 1% of the
#: output's power (cosine about 0.995); int8 with per-channel weights commonly gives 30-40 dB on a healthy model,
#: and below 20 dB accuracy losses are commonly visible.
DEFAULT_THRESHOLDS = {"top1": 0.99, "topk": 0.99, "cosine": 0.99, "sqnr": 20.0}

_UNITS = {"sqnr": " dB"}


def parse_agreement(value: Any, where: str = "agreement=") -> dict[str, float] | None:
    """``agreement=`` as ``{metric: threshold}`` (metric ``top1``, ``topK`` for ``topk:K``, ``cosine``, ``sqnr``):
    a name (``"cosine"``, ``"topk:5"``), names joined by commas, or a dict ``{name: threshold}``. None stays None
    (the default gate). Anything else raises :class:`SpecError` naming the valid forms."""
    if value is None:
        return None
    if isinstance(value, str):
        names: dict[str, Any] = {part.strip(): None for part in value.split(",") if part.strip()}
    elif isinstance(value, dict):
        names = dict(value)
    else:
        raise SpecError(f"{where} {value!r} must be a metric name ('top1', 'topk:5', 'cosine', 'sqnr'), names joined "
                        "by commas, or a dict {metric: threshold}")
    if not names:
        raise SpecError(f"{where} {value!r} names no metric; use 'top1', 'topk:5', 'cosine' or 'sqnr'")
    gate: dict[str, float] = {}
    for name, threshold in names.items():
        metric = _metric_key(name, where)
        base = "topk" if metric.startswith("top") and metric != "top1" else metric
        if threshold is None:
            threshold = DEFAULT_THRESHOLDS[base]
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise SpecError(f"{where} {name}'s threshold {threshold!r} must be a number")
        if base != "sqnr" and not 0 <= threshold <= 1:
            raise SpecError(f"{where} {name}'s threshold {threshold!r} must be within [0, 1] (sqnr's is in dB)")
        gate[metric] = float(threshold)
    return gate


def _metric_key(name: Any, where: str) -> str:
    text = str(name).strip().lower().replace(" ", "")
    if text in ("top1", "cosine", "sqnr"):
        return text
    if text.startswith("topk:") or (text.startswith("top") and text[3:].isdigit()):
        digits = text[5:] if text.startswith("topk:") else text[3:]
        if digits.isdigit() and int(digits) >= 1:
            return f"top{int(digits)}"
    raise SpecError(f"{where} unknown metric {name!r}; use 'top1', 'topk:K' (K a positive int), 'cosine' or 'sqnr'")


def default_gate(value: Any) -> dict[str, float]:
    """The gate of an output when ``agreement=`` is unset: cosine and SQNR at their defaults for every float
    output, and top-1 too for a 2-D float ``[batch, classes]`` one (more than one class)."""
    gate = {"cosine": DEFAULT_THRESHOLDS["cosine"], "sqnr": DEFAULT_THRESHOLDS["sqnr"]}
    if value.dim() == 2 and value.shape[-1] > 1:
        gate = {"top1": DEFAULT_THRESHOLDS["top1"], **gate}
    return gate


# ------------------------------------------------------------------------------------------- metrics


@dataclass
class _Sums:
    """One output's running sums over the examples, and its worst example per metric."""

    dot: float = 0.0
    eager_sq: float = 0.0
    got_sq: float = 0.0
    noise_sq: float = 0.0
    rows: int = 0
    hits: dict[int, int] = field(default_factory=dict)  # k -> rows whose eager argmax is in the artifact's top k
    worst: dict[str, tuple[float, Any]] = field(default_factory=dict)  # metric -> (value, example)
    gate: dict[str, float] | None = None

    def value(self, metric: str) -> float | None:
        if metric == "cosine":
            return _cosine(self.dot, self.eager_sq, self.got_sq)
        if metric == "sqnr":
            return sqnr_db(self.eager_sq, self.noise_sq)
        k = int(metric[3:])
        return self.hits[k] / self.rows if self.rows and k in self.hits else None


def _cosine(dot: float, a: float, b: float) -> float:
    if a == 0.0 or b == 0.0:
        return 1.0 if a == b else 0.0
    return dot / math.sqrt(a * b)


def sqnr_db(signal: float, noise: float) -> float:
    """``10 log10(signal / noise)`` in dB: inf without noise, -inf without signal."""
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


class Agreement:
    """The agreement gate of one check: fed each example's outputs (:meth:`add`), judged at the end (:meth:`judge`).

    ``gate`` is ``agreement=`` parsed (:func:`parse_agreement`), or None for each output's :func:`default_gate`."""

    def __init__(self, gate: dict[str, float] | None, precision: str) -> None:
        self.gate = gate
        self.precision = precision
        self.outputs: dict[str, _Sums] = {}
        self.examples = 0
        #: each example and what judging another artifact on it again needs: ``(example, replay)``
        self.samples: list[tuple[Any, Any]] = []

    def add(self, example: Any, pairs: Any, replay: Any = None) -> None:
        """One example's outputs: ``[(path, eager's value, the artifact's)]`` (:func:`compare.paired`); ``replay``
        (eager's outputs and the padding masks) is kept with the example in :attr:`samples`."""
        self.examples += 1
        self.samples.append((example, replay))
        for path, want, have in pairs:
            if not (hasattr(want, "is_floating_point") and want.is_floating_point() and hasattr(have, "shape")):
                continue
            if tuple(want.shape) != tuple(have.shape):
                continue
            sums = self.outputs.get(path)
            if sums is None:
                sums = self.outputs[path] = _Sums(gate=self.gate if self.gate is not None else default_gate(want))
            e, g = want.detach().double().flatten(), have.detach().double().flatten()
            dot, ee, gg = float(e @ g), float(e @ e), float(g @ g)
            nn = float(((g - e) ** 2).sum())
            sums.dot, sums.eager_sq, sums.got_sq, sums.noise_sq = sums.dot + dot, sums.eager_sq + ee, \
                sums.got_sq + gg, sums.noise_sq + nn
            mine = {"cosine": _cosine(dot, ee, gg), "sqnr": sqnr_db(ee, nn)}
            ks = sorted({1, *(int(m[3:]) for m in sums.gate or {} if m.startswith("top"))})
            if want.dim() >= 1 and want.shape[-1] > 1 and want.numel():
                classes = want.shape[-1]
                w = want.detach().reshape(-1, classes).float()
                h = have.detach().reshape(-1, classes).float()
                best = w.argmax(-1, keepdim=True)
                sums.rows += w.shape[0]
                for k in ks:
                    top = h.topk(min(k, classes), dim=-1).indices
                    hit = int((top == best).any(-1).sum())
                    sums.hits[k] = sums.hits.get(k, 0) + hit
                    mine[f"top{k}"] = hit / w.shape[0]
            for metric, value in mine.items():
                if metric not in sums.worst or value < sums.worst[metric][0]:
                    sums.worst[metric] = (value, example)

    def figures(self) -> dict[str, dict[str, float | None]]:
        """``{output path: {"top1", "cosine", "sqnr_db"}}`` over all examples (and any other ``topK`` gated)."""
        out: dict[str, dict[str, float | None]] = {}
        for path, sums in self.outputs.items():
            row: dict[str, float | None] = {"top1": sums.value("top1"), "cosine": sums.value("cosine"),
                                            "sqnr_db": sums.value("sqnr")}
            for metric in sums.gate or {}:
                if metric.startswith("top") and metric != "top1":
                    row[metric] = sums.value(metric)
            out[path] = row
        return out

    def judge(self, ctx: Any) -> None:
        """Record the figures and the gate in ``details``; raise a :class:`StageError` at stage ``compare`` for the
        first metric below its threshold, with its value, the output, the worst example and the fix."""
        ctx.note("agreement", self.figures())
        ctx.note("agreement_gate", {p: dict(s.gate or {}) for p, s in self.outputs.items()})
        if self.gate is not None and self.outputs and not any(
                s.value(m) is not None for s in self.outputs.values() for m in self.gate):
            raise StageError("compare", f"agreement={self.gate} names metrics no output has (top-k needs a float "
                                        "output whose last dim holds classes)\n  fix: gate on 'cosine' or 'sqnr'")
        below = self.first_failure()
        if below is not None:
            path, metric, value, threshold = below
            worst_value, example = self.outputs[path].worst.get(metric, (value, None))
            if example is not None:
                ctx.failed_example = example
            raise StageError("compare", self._failure_text(ctx, path, metric, value, threshold, worst_value, example))

    def first_failure(self) -> tuple[str, str, float, float] | None:
        """The first ``(output path, metric, value, threshold)`` below its threshold, or None: the gate passes."""
        for path, sums in self.outputs.items():
            for metric, threshold in (sums.gate or {}).items():
                value = sums.value(metric)
                if value is not None and value < threshold:
                    return path, metric, value, threshold
        return None

    def sqnr_threshold(self) -> float:
        """The SQNR (dB) the gate asks of its outputs (the default's where no output's gate names one)."""
        found = [s.gate["sqnr"] for s in self.outputs.values() if s.gate and "sqnr" in s.gate]
        return max(found) if found else DEFAULT_THRESHOLDS["sqnr"]

    def _failure_text(self, ctx: Any, path: str, metric: str, value: float, threshold: float, worst: float,
                      example: Any) -> str:
        unit = _UNITS.get(metric, "")
        lines = [f"{self.precision} agreement below its gate: {path} {metric} {fmt(metric, value)}{unit} < "
                 f"{fmt(metric, threshold)}{unit} over {self.examples} example(s)"]
        lines.append("  every output: " + "; ".join(f"{p} {figures_text(f)}" for p, f in self.figures().items()))
        if example is not None:
            lines.append(f"  worst example ({metric} {fmt(metric, worst)}{unit}):")
            lines.extend("    " + ln for ln in example.describe(ctx.space.names).splitlines())
        lines.append("  fix: calibrate on representative inputs (calibration=), keep the layers with outlier "
                     "activations in float, or loosen the gate (agreement={" + f"'{_public(metric)}': ...}})")
        lines.append(f"  reproduce: {ctx.options.get('reproduce', f'seed={ctx.seed}')}")
        return "\n".join(lines)


def _public(metric: str) -> str:
    return metric if metric in ("top1", "cosine", "sqnr") else f"topk:{metric[3:]}"


def fmt(metric: str, value: float | None) -> str:
    """A metric's value as the messages and reports show it."""
    if value is None:
        return "-"
    if not math.isfinite(value):
        return "inf" if value > 0 else "-inf"
    if metric.startswith("sqnr"):
        return f"{value:.1f}"
    if metric == "cosine":
        return f"{value:.4f}"
    return f"{value:.1%}"


def figures_text(figures: dict[str, Any]) -> str:
    """``top1 100.0% cos 0.9991 sqnr 31.2 dB`` for one output's figures (missing ones left out)."""
    parts = []
    for key, label in (("top1", "top1"), ("cosine", "cos"), ("sqnr_db", "sqnr")):
        value = figures.get(key)
        if isinstance(value, str):  # a JSON report's "inf"
            value = float(value)
        if value is not None:
            parts.append(f"{label} {fmt(key, value)}" + (" dB" if key == "sqnr_db" else ""))
    return " ".join(parts)


def facts_text(details: dict[str, Any]) -> str:
    """A quantized check's figures for the HTML card: each output's (``output: top1 100.0% cos 0.9991 sqnr 31.2 dB``),
    and the model's size in float and int8; empty for other checks."""
    found = details.get("agreement")
    if not isinstance(found, dict) or not found:
        return ""
    parts = [f"{path}: {figures_text(figures)}" for path, figures in found.items() if isinstance(figures, dict)]
    size = details.get("model_size")
    if isinstance(size, dict) and size.get("float_bytes") and size.get("quantized_bytes"):
        parts.append(f"size {_bytes(size['float_bytes'])} float, {_bytes(size['quantized_bytes'])} int8")
    return "; ".join(parts)


def cell_text(details: dict[str, Any]) -> str:
    """The summary table's compact figure of a quantized check: its worst output's cosine and SQNR (and top-1
    where there is one), ``cos 0.9991 31.2dB top1 100%``; empty for other checks."""
    found = details.get("agreement")
    if not found:
        return ""

    def lowest(key: str) -> float | None:
        values = [v for v in (_num(f.get(key)) for f in found.values()) if v is not None]
        return min(values) if values else None

    parts = []
    cos, sqnr, top1 = lowest("cosine"), lowest("sqnr_db"), lowest("top1")
    if cos is not None:
        parts.append(f"cos {fmt('cosine', cos)}")
    if sqnr is not None:
        parts.append(f"{fmt('sqnr', sqnr)}dB")
    if top1 is not None:
        parts.append(f"top1 {top1:.0%}")
    return " ".join(parts)


def markdown_lines(results: Any, names: Any, md: Any) -> list[str]:
    """The Markdown summary's agreement table: one row per quantized check and output (empty without any)."""
    found = [(r, path, f) for r in results for path, f in (r.details.get("agreement") or {}).items()]
    if not found:
        return []
    out = ["", "### Agreement (quantized checks)", "",
           "| model test | backend | precision | output | top1 | cosine | SQNR dB | size float → quantized |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r, path, f in found:
        size = r.details.get("model_size") or {}
        sizes = (f"{_bytes(size.get('float_bytes'))} → {_bytes(size.get('quantized_bytes'))}"
                 if size.get("quantized_bytes") else "-")
        out.append(f"| `{md(names.get(r.test, r.test))}` | {r.backend} | {r.details.get('precision', '-')} | "
                   f"{md(path)} | {fmt('top1', _num(f.get('top1')))} | {fmt('cosine', _num(f.get('cosine')))} | "
                   f"{fmt('sqnr', _num(f.get('sqnr_db')))} | {sizes} |")
    return out


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float, str)) else None


def _bytes(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
