"""The terminal summary table and the JSON report."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import sys
from importlib import metadata

from .agreement import cell_text as agreement_cell
from .agreement import markdown_lines as agreement_markdown
from .compare import format_number
from .fingerprint import gpu_environment
from .latency import cell_text as latency_cell
from .latency import markdown_lines as latency_markdown
from .results import Result

_STATUS = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP", "xfailed": "XFAIL", "xpassed": "XPASS"}


#: The status of a check that failed inside pytest-deploy itself (stage ``internal``): a bug, not a verdict.
BUG = "BUG"


def is_bug(result: Result) -> bool:
    return result.outcome == "failed" and result.stage == "internal"


def cell(result: Result) -> str:
    status = _STATUS.get(result.outcome, result.outcome.upper())
    if is_bug(result):
        status = BUG
    elif result.outcome == "failed" and result.stage:
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
    figure = latency_cell(result.latency)  # --deploy-latency: p50 and speedup over eager, "1.8 ms ×2.4"
    if figure:
        parts.append(figure)
    agreement = agreement_cell(result.details)  # int8: the worst output's cosine, SQNR and top-1, "cos 0.9991 31.2dB"
    if agreement:
        parts.append(agreement)
    return " ".join(parts)


def summary_lines(results: list[Result], width: int | None = None) -> list[str]:
    """Rows = model tests, columns = backends; each cell status, max abs error and build time.

    With ``width`` (the terminal's), no line is wider: when the full table does not fit, a compact one
    (short status codes with a legend, the numbers on lines below it, backends in blocks if need be), and
    the lines under it wrapped."""
    rows, backends = _matrix(results)
    branch_rows = {test: _branch_source(by_backend) for test, by_backend in rows.items()}
    with_branches = any(r is not None for r in branch_rows.values())
    full = _full_table(rows, backends, branch_rows if with_branches else None)
    compact = width is not None and max(len(line) for line in full) > width
    lines = _compact_table(rows, backends, branch_rows if with_branches else None, width or 80) if compact else full
    counts: dict[str, int] = {}
    for r in results:
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
    total_build = sum(r.timings.get("build", 0.0) for r in results)
    tally = ", ".join(f"{n} {outcome}" for outcome, n in counts.items())
    cells = ("cells: status, max abs error, build time" if not compact
             else "cells: status codes above, numbers per check below")
    if any(r.latency and r.latency.get("p50_ms") is not None for r in results):
        cells += ", latency p50 and ×speedup over eager (--deploy-latency)"
    if any(r.details.get("agreement") for r in results):
        cells += ", int8: the worst output's cosine, SQNR and top-1 agreement"
    closing = [f"{plural(len(results), 'check')}: {tally}; build time {total_build:.1f}s ({cells}; cached: the "
               "result, or the artifact, came from the cache)"]
    bugs = [r for r in results if is_bug(r)]
    if bugs:
        closing.append(f"BUG: pytest-deploy failed inside itself on {plural(len(bugs), 'check')} (stage internal): a "
                       "bug in pytest-deploy, not a verdict on the model or the backend; please report it with the "
                       "message and the JSON report's details.internal_traceback")
    if compact:
        closing += _numbers_lines(rows, backends)
    closing += _branch_lines(branch_rows)
    return lines + (_wrap(closing, width) if width else closing)


def plural(n: int, word: str) -> str:
    """``1 check``, ``2 checks``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _matrix(results: list[Result]) -> tuple[dict[str, dict[str, Result]], list[str]]:
    from .names import backend_names

    order = {name: i for i, name in enumerate(backend_names())}
    backends: list[str] = []
    rows: dict[str, dict[str, Result]] = {}
    for r in results:
        if r.backend not in backends:
            backends.append(r.backend)
        rows.setdefault(r.test, {})[r.backend] = r
    backends.sort(key=lambda b: order.get(b, len(order)))
    return rows, backends


def _columns(table: list[list[str]], gap: int = 2) -> list[str]:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [(" " * gap).join(val.ljust(w) for val, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, (" " * gap).join("-" * w for w in widths))
    return lines


def _full_table(rows, backends, branch_rows) -> list[str]:
    header = ["model test", *backends] + (["branches"] if branch_rows else [])
    table = [header]
    for test, by_backend in rows.items():
        row = [test, *(cell(by_backend[b]) if b in by_backend else "-" for b in backends)]
        if branch_rows:
            row.append(_branch_cell(branch_rows[test]))
        table.append(row)
    return _columns(table)


#: Short status codes of the compact table.
_CODES = {"passed": "ok", "skipped": "skip", "xfailed": "xfail", "xpassed": "XPASS"}
_STAGE_CODES = {"export": "exp", "check": "chk", "simplify": "simp", "compile": "comp", "save": "save",
                "load": "load", "run": "run", "compare": "cmp", "branches": "brch", "reference": "ref",
                "latency": "lat"}
_BACKEND_CODES = {"state_dict": "sd", "pickle": "pkl", "checkpoint": "ckpt", "script": "scrpt",
                  "export": "expt", "tensorrt": "trt"}


def short_cell(result: Result | None) -> str:
    if result is None:
        return "-"
    if is_bug(result):
        return BUG
    if result.outcome == "failed":
        return "F:" + _STAGE_CODES.get(result.stage or "", result.stage or "?")
    return _CODES.get(result.outcome, result.outcome) + ("*" if result.cached and result.outcome == "passed" else "")


def _compact_table(rows, backends, branch_rows, width: int) -> list[str]:
    names = _short_tests(list(rows))
    headers = {b: b if len(b) <= 5 else _BACKEND_CODES.get(b, b[:5]) for b in backends}
    cells = {b: max(len(headers[b]), *(len(short_cell(rows[t].get(b))) for t in rows)) + 1 for b in backends}
    first = max(len("model"), *(len(n) for n in names.values()))
    room = width - sum(cells.values())  # beside every backend column on one line, if they all fit
    first = min(first, room if room >= 12 else max(12, width // 3))
    lines: list[str] = []
    # backends in blocks that fit beside the model column: 1 space between columns
    blocks: list[list[str]] = []
    used = first
    for b in backends:
        w = cells[b]
        if not blocks or used + w > width:
            blocks.append([])
            used = first
        blocks[-1].append(b)
        used += w
    for block in blocks:
        table = [["model", *(headers[b] for b in block)]]
        for test in rows:
            table.append([_fit(names[test], first), *(short_cell(rows[test].get(b)) for b in block)])
        lines += _columns(table, gap=1)
    legend = ("legend: ok passed (* from the cache), F:stage failed (exp export, chk check, simp simplify, comp "
              "compile, save, load, run, cmp compare, brch branches, ref reference, lat latency), BUG a pytest-deploy bug "
              "(stage internal), skip, xfail, - not declared")
    abbreviated = [f"{code} {b}" for b, code in headers.items() if code != b]
    if abbreviated:
        legend += "; " + ", ".join(abbreviated)
    if any(names[t] != t for t in rows):
        legend += "; rows are the test names, in " + ", ".join(sorted({t.split("::")[0] for t in rows}))
    if branch_rows:
        legend += "; branch sites below"
    return lines + _wrap([legend], width)


def _short_tests(tests: list[str]) -> dict[str, str]:
    """``tests/test_m.py::test_cnn`` -> ``test_cnn`` where that stays unique."""
    short = {t: t.split("::", 1)[-1] for t in tests}
    return short if len(set(short.values())) == len(short) else {t: t for t in tests}


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]


def _numbers_lines(rows, backends) -> list[str]:
    """Per model test: each backend's status, max abs error and build time, as the full table's cells say it."""
    names = _short_tests(list(rows))
    out = []
    for test, by_backend in rows.items():
        cells = [f"{b} {cell(by_backend[b])}" for b in backends if b in by_backend]
        out.append(f"{names[test]}: " + "; ".join(cells))
    return out


def _wrap(lines: list[str], width: int | None) -> list[str]:
    """Each line wrapped to ``width``; continuation lines indented under the first."""
    import textwrap

    if not width:
        return lines
    out = []
    for line in lines:
        if len(line) <= width:
            out.append(line)
            continue
        indent = " " * min(len(line) - len(line.lstrip()) + 4, width // 4)
        out += textwrap.wrap(line, width=width, subsequent_indent=indent, break_long_words=True,
                             break_on_hyphens=False, drop_whitespace=True)
    return out


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


def _library_file(path: str) -> str | None:
    """The path of an installed package's file below ``site-packages`` (``einops/einops.py``); None for the user's."""
    m = re.search(r"[/\\](?:site|dist)-packages[/\\](.+)$", path)
    return m.group(1).replace("\\", "/") if m else None


def split_library_sites(sites: list[dict]) -> tuple[list[dict], dict[str, list[dict]]]:
    """The decision sites a summary lists one by one (the user's files, and any site whose lost branch changed the
    outputs), and the rest by installed library file: sites inside a package (einops, transformers) whose lost or
    unreached branch left the outputs alone, which a summary counts instead of listing (the JSON and HTML
    reports list them all)."""
    listed: list[dict] = []
    grouped: dict[str, list[dict]] = {}
    for b in sites:
        lib = None if b.get("diverged") else _library_file(str(b.get("file", "")))
        if lib is None:
            listed.append(b)
        else:
            grouped.setdefault(lib, []).append(b)
    return listed, grouped


def library_count_text(lib: str, sites: list[dict]) -> str:
    """``12 sites in einops/einops.py, outputs unaffected (lost 10, never reached 2)``."""
    lost = sum(bool(b.get("lost")) for b in sites)
    unreached = sum(bool(b.get("uncovered")) and not b.get("lost") for b in sites)
    parts = [f"lost {lost}"] if lost else []
    parts += [f"never reached {unreached}"] if unreached else []
    return f"{plural(len(sites), 'site')} in {lib}, outputs unaffected ({', '.join(parts)})"


def _branch_lines(branch_rows: dict[str, Result | None]) -> list[str]:
    """Every lost or uncovered decision, with its site: what a user has to look at. Sites inside installed
    libraries that left the outputs alone are counted per file (:func:`split_library_sites`)."""
    out = []
    counted = False
    for test, result in branch_rows.items():
        if result is None:
            continue
        notable = [b for b in result.branches if b.get("lost") or b.get("uncovered")]
        if not notable:
            continue
        out.append(f"{test} ({result.backend}):")
        listed, grouped = split_library_sites(notable)
        for b in listed:
            outcomes = ", ".join(f"{k} x{v}" for k, v in b["outcomes"].items())
            status = []
            if b.get("lost"):
                status.append("LOST, outputs diverge" if b.get("diverged") else "lost, outputs unaffected")
            if b.get("uncovered"):
                status.append("never reached: " + "/".join(b["uncovered"]))
            traced = f"; traced {b['traced']}" if b.get("traced") is not None else ""
            out.append(f"  {b['file']}:{b['line']}  `{b['source']}`  seen {outcomes}{traced}; {'; '.join(status)}")
        for lib, sites in grouped.items():
            out.append(f"  {library_count_text(lib, sites)}")
            counted = True
    if out:
        out.insert(0, "data-dependent decisions (lost: the traced artifact took another path; never reached: no input found it):")
    if counted:
        out.append("(sites inside installed libraries whose outputs were unaffected are counted per file; the JSON and "
                   "HTML reports list each)")
    return out


def markdown(results: list[Result]) -> str:
    """The summary as Markdown (a CI page, GitHub's step summary): the matrix, every failure with its stage and
    the first line of its cause, the data-dependent decisions that were lost or never reached."""
    rows, backends = _matrix(results)
    names = _short_tests(list(rows))
    counts: dict[str, int] = {}
    for r in results:
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
    out = ["## pytest-deploy", "",
           f"{plural(len(results), 'check')}: " + ", ".join(f"{n} {o}" for o, n in counts.items()), "",
           "| model test | " + " | ".join(backends) + " |", "| --- | " + " | ".join("---" for _ in backends) + " |"]
    for test, by_backend in rows.items():
        out.append(f"| `{_md(names[test])}` | " + " | ".join(_md_cell(by_backend.get(b)) for b in backends) + " |")
    failures = [r for r in results if r.outcome in ("failed", "xpassed")]
    if failures:
        out += ["", "### Failures", ""]
        for r in failures:
            cause = _first_cause(r.message)
            stage = (" at stage `internal` (a bug in pytest-deploy, not a verdict)" if is_bug(r)
                     else f" at stage `{r.stage}`" if r.stage else "")
            out.append(f"- `{_md(names.get(r.test, r.test))}` on **{r.backend}**{stage}: {_md(cause)}")
    sites = []
    counted = []
    for test, by_backend in rows.items():
        source = _branch_source(by_backend)
        if source is None:
            continue
        listed, grouped = split_library_sites([b for b in source.branches if b.get("lost") or b.get("uncovered")])
        sites += [(test, b) for b in listed]
        counted += [(test, lib, group) for lib, group in grouped.items()]
    if sites or counted:
        out += ["", "### Data-dependent decisions", "", "| model test | site | source | seen | traced | verdict |",
                "| --- | --- | --- | --- | --- | --- |"]
        for test, b in sites:
            seen = ", ".join(f"{k} x{v}" for k, v in b["outcomes"].items())
            verdict = ("lost, outputs diverge" if b.get("diverged") else "lost, outputs unaffected") if b.get("lost") \
                else "never reached: " + "/".join(b["uncovered"])
            out.append(f"| `{_md(names[test])}` | `{_md(b['file'])}:{b['line']}` | `{_md(b['source'])}` | {seen} | "
                       f"{b.get('traced')} | {verdict} |")
        if counted:
            out += ["", "Inside installed libraries, counted per file (the JSON and HTML reports list each site):", ""]
            out += [f"- `{_md(names[test])}`: {_md(library_count_text(lib, group))}" for test, lib, group in counted]
    out += agreement_markdown(results, names, _md)
    out += latency_markdown(results, names, _md)
    return "\n".join(out) + "\n"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_cell(result: Result | None) -> str:
    if result is None:
        return "-"
    text = cell(result)
    return f"**{text}**" if result.outcome in ("failed", "xpassed") else text


def _first_cause(message: str | None) -> str:
    """The first line of a failure message, without the ``backend: stage X:`` prefix the table already says."""
    import re

    line = (message or "").strip().splitlines()[0] if message and message.strip() else "(no message)"
    return re.sub(r"^[\w.-]+: stage \w+: ", "", line)


def write_markdown(path: str, results: list[Result], *, append: bool = False) -> None:
    """Write (or, for GitHub's step summary, append) the Markdown summary."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "a" if append else "w", encoding="utf-8") as fh:
        fh.write(markdown(results))


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
        "onnxruntime": _onnxruntime_version(),
        "onnxconverter_common": _version("onnxconverter-common"),
        "tvm": _version("apache-tvm"),
        "tensorrt": _version("tensorrt"),
        "polygraphy": _version("polygraphy"),
        "cuda": cuda,
        "gpu": gpu_environment() if cuda else None,
        "pytest_deploy": _version("pytest-deploy"),
    }


_environment = environment  # report_dict's parameter of that name shadows it


def _onnxruntime_version() -> str | None:
    """onnxruntime's version; ``"<version> (onnxruntime-gpu)"`` when the GPU build is what is installed."""
    cpu = _version("onnxruntime")
    gpu = _version("onnxruntime-gpu")
    return f"{gpu} (onnxruntime-gpu)" if gpu else cpu


def report_dict(results: list[Result], *, interrupted: bool = False, environment: dict | None = None,
                extra: dict | None = None) -> dict:
    """The JSON report; ``environment`` is this machine's unless given (``merge`` gives the runs'), ``extra`` adds
    top-level fields (``merge``'s ``environments``)."""
    return {
        "version": 1,
        "interrupted": interrupted,
        "environment": environment if environment is not None else _environment(),
        **(extra or {}),
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


def write_json(path: str, results: list[Result], *, interrupted: bool = False, environment: dict | None = None,
               extra: dict | None = None) -> None:
    """Write atomically: a reader never sees half a report."""
    data = report_dict(results, interrupted=interrupted, environment=environment, extra=extra)
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
