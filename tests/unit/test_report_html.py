"""The HTML report (pytest_deploy.report_html, .report_plots): structure, escaping, plots, self-containment, and a real browser.

No model runs here: the results are JSON report dicts written by hand.
"""

from __future__ import annotations

import base64
import html
import os
import shutil
import struct
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from pytest_deploy import report_html, report_plots
from pytest_deploy.report_html import render_html, write_html
from pytest_deploy.report_plots import COLORS

ENVIRONMENT = {"python": "3.11.7", "platform": "Linux-6.1-x86_64", "torch": "2.13.0", "onnxruntime": "1.32.0",
               "tvm": None, "tensorrt": None, "cuda": False, "hypothesis": "6.100.0"}

TRACE_MESSAGE = (
    "trace-lost branch at models.py:27  `if x.sum() > 0 and y < z:`\n"
    "  traced with outcome True; example 4 takes False; max abs error 1.96 > atol 1e-05\n"
    "  fix: torch.jit.script, or torch.cond for export & \"friends\" ('quoted')\n"
    "  failing input (shrunk by hypothesis):\n"
    "    x: float32[2, 3] in [-1, 1] <min -0.5 & max 0.25>\n"
    "  reproduce: seed=1234"
)
ONNX_MESSAGE = (
    "outputs differ from eager PyTorch\n"
    "  output[0] (float32[1, 4]): max abs error 0.31 > atol 1e-05 + rtol 0.001 * |expected|\n"
    "  diverges first at encoder.norm (LayerNorm) <models.py:42> & its \"inputs\" agree\n"
    "</pre><script>alert('x')</script>\n"
    "  failing input:\n"
    "    x: float32[1, 4] = [[0.5, -0.25, 1.0, 0.0]]\n"
    "  reproduce: seed=7"
)
SKIP_MESSAGE = "tvm is not installed here: pip install \"pytest-deploy[tvm]\" (needs apache-tvm>=0.27 & <llvm>)"
XFAIL_MESSAGE = "trace: data-dependent branch in forward <expected> & 'strict'"


def _result(test, backend, outcome="passed", **fields):
    base = {"test": test, "backend": backend, "outcome": outcome, "stage": None, "message": None, "examples": 20,
            "max_abs_error": None, "max_rel_error": None, "atol": 1e-5, "rtol": 1e-3,
            "timings": {"build": 0.5, "load": 0.02, "run": 0.3}, "cached": False, "seed": 1234, "artifact": None,
            "branches": [], "details": {}}
    base.update(fields)
    return base


BRANCHES = [
    {"file": "models.py", "line": 27, "source": "if x.sum() > 0 and y < z:", "kind": "bool",
     "outcomes": {"True": 12, "False": 8}, "traced": "True", "lost": True, "diverged": True, "uncovered": []},
    {"file": "models.py", "line": 31, "source": "n = int(x.shape[0] & 1)", "kind": "int",
     "outcomes": {"1": 20}, "traced": "1", "lost": False, "diverged": False, "uncovered": ["0"]},
]
NODE_ERRORS = [{"node": f"n{i}", "module": f"encoder.layers.{i}", "max_abs_error": e}
               for i, e in enumerate([0.0, 1e-8, 2e-8, 3e-7, 0.31, 0.5, 0.45])]


def sample_results():
    return [
        _result("tests/test_models.py::test_classifier", "state_dict", max_abs_error=0.0, max_rel_error=0.0),
        _result("tests/test_models.py::test_classifier", "trace", "failed", stage="branches", message=TRACE_MESSAGE,
                max_abs_error=1.96, max_rel_error=2.5, branches=BRANCHES,
                details={"branch_summary": {"sites": 2, "lost": 1}, "warnings": ["x" * 500]}),
        _result("tests/test_models.py::test_classifier", "onnx", max_abs_error=1.2e-7, max_rel_error="inf",
                timings={"build": 3.1, "load": 0.02, "run": 0.4}, cached=True,
                details={"simplified": True, "opset": 18}),
        _result("tests/test_models.py::test_classifier", "tvm", "skipped", message=SKIP_MESSAGE,
                timings={"build": 0.0, "load": 0.0, "run": 0.0}),
        _result("tests/test_models.py::test_gate[small]", "trace", "xfailed", stage="compare", message=XFAIL_MESSAGE,
                max_abs_error=0.7, details={"xfail_reason": "data-dependent branch in forward"}),
        _result("tests/test_models.py::test_gate[small]", "onnx", "failed", stage="compare", message=ONNX_MESSAGE,
                max_abs_error=0.5, max_rel_error=1.1, atol=1e-5,
                divergence={"module": "encoder.layers.4", "type": "LayerNorm", "file": "models.py", "line": 42,
                            "node": "n4", "max_abs_error": 0.31, "input_max_abs_error": 3e-7},
                details={"node_errors": NODE_ERRORS}),
        _result("tests/test_models.py::test_gate[small]", "export", "xpassed", max_abs_error=2e-7,
                details={"xfail_reason": "export used to fail"}),
    ]


# ------------------------------------------------------------------------------------------------ a DOM from the parser

class Node:
    def __init__(self, tag, attrs, parent=None):
        self.tag, self.attrs, self.parent, self.children = tag, dict(attrs), parent, []

    @property
    def classes(self):
        return (self.attrs.get("class") or "").split()

    def text(self):
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self):
        for c in self.children:
            if isinstance(c, Node):
                yield c
                yield from c.iter()

    def find_all(self, tag=None, cls=None):
        return [n for n in self.iter() if (tag is None or n.tag == tag) and (cls is None or cls in n.classes)]

    def find(self, tag=None, cls=None):
        found = self.find_all(tag, cls)
        assert found, f"no <{tag} class={cls}>"
        return found[0]


class Collector(HTMLParser):
    """Builds a small tree (unescaping text and attributes as a browser does) and keeps every attribute."""

    VOID = {"meta", "img", "br", "hr", "input", "link", "source", "wbr", "col", "area", "base"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {})
        self.current = self.root
        self.attributes: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag, attrs):
        node = Node(tag, attrs, self.current)
        self.current.children.append(node)
        self.attributes.extend((tag, k, v or "") for k, v in attrs)
        if tag not in self.VOID:
            self.current = node

    def handle_startendtag(self, tag, attrs):
        self.current.children.append(Node(tag, attrs, self.current))
        self.attributes.extend((tag, k, v or "") for k, v in attrs)

    def handle_endtag(self, tag):
        node = self.current
        while node is not self.root and node.tag != tag:
            node = node.parent
        assert node is not self.root, f"</{tag}> closes nothing"
        assert self.current is node, f"</{tag}> closes <{self.current.tag}> too: the page is not well nested"
        self.current = node.parent

    def handle_data(self, data):
        self.current.children.append(data)


def parse(page: str) -> Collector:
    collector = Collector()
    collector.feed(page)
    collector.close()
    assert collector.current is collector.root, "unclosed elements"
    return collector


def ids(root: Node) -> set[str]:
    return {n.attrs["id"] for n in root.iter() if "id" in n.attrs}


def has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def page():
    return render_html(sample_results(), ENVIRONMENT)


@pytest.fixture(scope="module")
def dom(page):
    return parse(page)


# ------------------------------------------------------------------------------------------------ structure

def test_matrix_has_one_row_per_model_and_one_cell_per_backend(dom):
    matrix = dom.root.find("table", "matrix")
    header = [th.text() for th in matrix.find("thead").find_all("th")]
    assert header == ["model test", "state_dict", "trace", "export", "onnx", "tvm"]
    rows = matrix.find("tbody").find_all("tr")
    assert [r.find("th").text() for r in rows] == ["tests/test_models.py::test_classifier",
                                                   "tests/test_models.py::test_gate[small]"]
    expected = [
        ["outcome-passed", "outcome-failed", "missing", "outcome-passed", "outcome-skipped"],
        ["missing", "outcome-xfailed", "outcome-xpassed", "outcome-failed", "missing"],
    ]
    for row, want in zip(rows, expected):
        cells = row.find_all("td")
        assert [next(c for c in cell.classes if c.startswith("outcome-") or c == "missing") for cell in cells] == want
    texts = [[" ".join(s.text() for s in cell.find_all("span")) for cell in row.find_all("td")] for row in rows]
    assert texts[0][0] == "PASS max abs 0"
    assert texts[0][1] == "FAIL branches max abs 1.96"
    assert texts[0][3] == "PASS max abs 1.2e-07"
    assert texts[0][4] == "SKIP"
    assert texts[1][1] == "XFAIL compare max abs 0.7"
    assert texts[1][2] == "XPASS max abs 2e-07"
    assert texts[1][3] == "FAIL compare max abs 0.5"


def test_every_cell_and_in_page_link_points_at_an_existing_check(dom):
    anchors = ids(dom.root)
    links = [a.attrs["href"] for a in dom.root.find_all("a") if a.attrs.get("href", "").startswith("#")]
    assert links and all(link[1:] in anchors for link in links)
    matrix = dom.root.find("table", "matrix")
    cell_links = [a.attrs["href"][1:] for a in matrix.find_all("a")]
    assert len(cell_links) == len(sample_results()) == len(set(cell_links))
    sections = {s.attrs["id"]: s for s in dom.root.find_all("section", "check")}
    for td in matrix.find_all("td"):
        if "missing" in td.classes:
            continue
        section = sections[td.find("a").attrs["href"][1:]]
        outcome = next(c for c in td.classes if c.startswith("outcome-"))
        assert outcome in section.classes, "a cell links to its own check"
        assert td.attrs["data-backend"] in section.find("h3").text()


def test_outcome_colours(page):
    """Each outcome's class carries its colour: passed green, failed red, skipped grey, xfailed amber, xpassed purple."""
    def rgb(color):
        return tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))

    for outcome, (background, strong) in COLORS.items():
        assert f".outcome-{outcome} {{ background: {background}; border-color: {strong}; }}" in page
    r, g, b = rgb(COLORS["passed"][0])
    assert g > r + 20 and g > b + 20
    r, g, b = rgb(COLORS["failed"][0])
    assert r > g + 20 and r > b + 20
    r, g, b = rgb(COLORS["skipped"][0])
    assert max(r, g, b) - min(r, g, b) < 8
    r, g, b = rgb(COLORS["xfailed"][0])
    assert r > g > b + 40
    r, g, b = rgb(COLORS["xpassed"][0])
    assert r > g + 10 and b > g + 10


def test_header_shows_environment_and_counts(dom):
    env = {tr.find("th").text(): tr.find("td").text() for tr in dom.root.find("table", "env").find_all("tr")}
    assert env["python"] == "3.11.7" and env["torch"] == "2.13.0" and env["onnxruntime"] == "1.32.0"
    assert env["tvm"] == "not installed" and env["tensorrt"] == "not installed"
    assert env["cuda"] == "not available" and env["machine"] == "Linux-6.1-x86_64"
    assert env["hypothesis"] == "6.100.0"
    counts = {li.classes[0]: li.find("span").text() for li in dom.root.find("ul", "counts").find_all("li")}
    assert counts == {"outcome-passed": "2", "outcome-failed": "2", "outcome-skipped": "1", "outcome-xfailed": "1",
                      "outcome-xpassed": "1"}
    problems = [a.text() for a in dom.root.find("ul", "problems").find_all("a")]
    assert problems == ["tests/test_models.py::test_classifier [trace]", "tests/test_models.py::test_gate[small] [onnx]",
                        "tests/test_models.py::test_gate[small] [export]"]


def test_every_message_is_escaped_and_intact(page, dom):
    messages = [r["message"] for r in sample_results() if r["message"]]
    shown = [pre.text() for pre in dom.root.find_all("pre", "message")]
    assert shown == messages  # in matrix order: row by row, backends left to right
    for message in messages:
        assert html.escape(message.splitlines()[0]) in page
    assert "<script" not in page and "</pre><script>" not in page
    assert "&lt;/pre&gt;&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    failing = [span.text() for span in dom.root.find_all("span", "failing-input")]
    assert failing == [
        "  failing input (shrunk by hypothesis):\n    x: float32[2, 3] in [-1, 1] <min -0.5 & max 0.25>\n"
        "  reproduce: seed=1234",
        "  failing input:\n    x: float32[1, 4] = [[0.5, -0.25, 1.0, 0.0]]\n  reproduce: seed=7",
    ]
    assert all(span.parent.tag == "pre" for span in dom.root.find_all("span", "failing-input"))


def test_check_sections_hold_facts_branches_and_details(dom):
    sections = {(s.find("code").text(), s.find("span", "backend").text()): s for s in dom.root.find_all("section", "check")}
    assert len(sections) == len(sample_results())
    trace = sections[("tests/test_models.py::test_classifier", "[trace]")]
    facts = {d.find("dt").text(): d.find("dd").text() for d in trace.find("dl", "facts").find_all("div")}
    assert facts["outcome"] == "failed" and facts["stage"] == "branches" and facts["examples"] == "20"
    assert facts["tolerance"] == "atol 1e-05, rtol 0.001"
    assert facts["timings"] == "build 0.50 s, load 0.02 s, run 0.30 s"
    assert facts["cached"] == "no" and facts["seed"] == "1234" and facts["max abs error"] == "1.96"
    rows = trace.find("table", "branches").find("tbody").find_all("tr")
    cells = [[td.text() for td in row.find_all("td")] for row in rows]
    assert cells[0] == ["models.py:27", "if x.sum() > 0 and y < z:", "bool", "True \u00d712, False \u00d78", "True",
                        "yes, outputs diverge", ""]
    assert cells[1] == ["models.py:31", "n = int(x.shape[0] & 1)", "int", "1 \u00d720", "1", "no", "0"]
    assert rows[0].classes == ["lost"] and rows[1].classes == ["uncovered"]
    details = trace.find("details", "kv-block")
    assert "open" in details.attrs
    kv = dict(zip([dt.text() for dt in details.find_all("dt")], [dd.text() for dd in details.find_all("dd")]))
    assert kv["branch_summary"] == '{"sites": 2, "lost": 1}'
    assert kv["warnings"].startswith('["xxxx') and kv["warnings"].endswith("\u2026 (204 more characters)")
    onnx = sections[("tests/test_models.py::test_classifier", "[onnx]")]
    facts = {d.find("dt").text(): d.find("dd").text() for d in onnx.find("dl", "facts").find_all("div")}
    assert facts["cached"] == "yes" and facts["max rel error"] == "inf"
    assert "open" not in onnx.find("details", "kv-block").attrs  # passed: details folded
    gate = sections[("tests/test_models.py::test_gate[small]", "[onnx]")]
    divergence = gate.find("p", "divergence").text()
    assert "diverges first at encoder.layers.4 (LayerNorm)" in divergence and "models.py:42" in divergence
    assert "max abs error 0.31 while its inputs differ by 3e-07" in divergence


def test_plots_are_inline_pngs(dom):
    pytest.importorskip("matplotlib")
    images = dom.root.find_all("img")
    # error vs tolerance, time per backend, and one per-node plot (the only check with node_errors)
    assert len(images) == 3
    for img in images:
        src = img.attrs["src"]
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
        assert img.attrs["alt"]
    gate = next(s for s in dom.root.find_all("section", "check") if "[onnx]" in s.text() and "test_gate" in s.text())
    assert len(gate.find_all("img")) == 1
    assert not dom.root.find_all("p", "plots-missing")


def test_without_matplotlib_the_report_says_how_to_get_plots(monkeypatch):
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # makes every matplotlib import fail
    dom = parse(render_html(sample_results(), ENVIRONMENT))
    assert not dom.root.find_all("img")
    notes = dom.root.find_all("p", "plots-missing")
    assert len(notes) == 2  # the plots section, and the check with node errors
    assert all("pip install matplotlib" in n.text() for n in notes)
    assert len(dom.root.find("table", "matrix").find_all("a")) == len(sample_results())


def test_the_page_is_self_contained(page, dom):
    for tag, name, value in dom.attributes:
        lowered = value.strip().lower()
        assert "http://" not in lowered and "https://" not in lowered, (tag, name, value)
        if name in ("src", "href"):
            assert not lowered.startswith("//"), (tag, name, value)
            assert lowered.startswith(("#", "data:")), (tag, name, value)
    assert not dom.root.find_all("script") and not dom.root.find_all("link") and not dom.root.find_all("iframe")
    style = "".join(s.text() for s in dom.root.find_all("style"))
    assert "url(" not in style and "@import" not in style
    assert "http://" not in page and "https://" not in page


def test_long_result_lists_and_odd_values_render():
    results = [_result(f"t.py::test_{i}", "onnx", max_abs_error=v, atol=None) for i, v in
               enumerate([0.0, "inf", "nan", None, 3e-3])]
    results.append(_result("t.py::test_0", "onnx", "failed", stage="run", message="the failing input takes False\nno failing input here"))
    dom = parse(render_html(results, {}))
    anchors = [a.attrs["href"] for a in dom.root.find("table", "matrix").find_all("a")]
    assert len(anchors) == 5 and len({s.attrs["id"] for s in dom.root.find_all("section", "check")}) == 6
    assert not dom.root.find_all("span", "failing-input")
    env = {tr.find("th").text(): tr.find("td").text() for tr in dom.root.find("table", "env").find_all("tr")}
    assert env["python"] == "unknown" and env["cuda"] == "unknown"


def test_no_results():
    dom = parse(render_html([], ENVIRONMENT, title="nothing <here>"))
    assert dom.root.find("title").text() == "nothing <here>"
    assert "No deployable checks ran." in dom.root.text()


def test_write_html_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "report.html"
    write_html(str(path), sample_results(), ENVIRONMENT)
    first = path.read_text(encoding="utf-8")
    assert first.startswith("<!DOCTYPE html>") and os.listdir(path.parent) == ["report.html"]

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(report_html.os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        write_html(str(path), sample_results()[:1], ENVIRONMENT)
    assert path.read_text(encoding="utf-8") == first, "a failed write leaves the old report whole"
    assert os.listdir(path.parent) == ["report.html"], "and no temporary file behind"


def test_import_needs_only_the_standard_library():
    code = ("import sys; import pytest_deploy.report_html; "
            "bad = sorted(m for m in ('matplotlib', 'torch', 'numpy') if m in sys.modules); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(report_html.__file__).parent.parent)


# ------------------------------------------------------------------------------------------------ a real browser

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--force-device-scale-factor=1"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("chromium not found on PATH (shutil.which('chromium') and 'chromium-browser'); "
                    "install it with: apt-get install chromium")
    return found


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR", "not a PNG"
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def test_report_renders_in_headless_chromium(tmp_path):
    browser = chromium()
    report = tmp_path / "report.html"
    results = sample_results()
    write_html(str(report), results, ENVIRONMENT)
    flags = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]

    started = time.monotonic()
    dumped = subprocess.run([*flags, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=60)
    dump_seconds = time.monotonic() - started
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = parse(dumped.stdout)
    cells = dom.root.find("table", "matrix").find_all("td")
    assert [c.attrs["class"] for c in cells if "missing" not in c.classes] == [
        "cell outcome-passed", "cell outcome-failed", "cell outcome-passed", "cell outcome-skipped",
        "cell outcome-xfailed", "cell outcome-xpassed", "cell outcome-failed"]
    headings = [s.find("h3").text() for s in dom.root.find_all("section", "check")]
    for r in results:
        assert any(r["test"] in h and f"[{r['backend']}]" in h for h in headings), (r["test"], r["backend"])
    assert [pre.text() for pre in dom.root.find_all("pre", "message")][0] == TRACE_MESSAGE

    shot = tmp_path / "shot.png"
    started = time.monotonic()
    taken = subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,2000", report.as_uri()],
                           capture_output=True, text=True, timeout=60)
    shot_seconds = time.monotonic() - started
    assert taken.returncode == 0 and shot.exists(), taken.stderr[-2000:]
    png = shot.read_bytes()
    assert len(png) > 10_000
    assert png_size(png) == (1280, 2000)
    print(f"chromium: --dump-dom {dump_seconds:.1f} s, --screenshot {shot_seconds:.1f} s")
    if os.environ.get("PYTEST_DEPLOY_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["PYTEST_DEPLOY_KEEP_SCREENSHOT"])

    try:
        from PIL import Image  # matplotlib's own dependency; the colour check needs a PNG decoder
    except ImportError:
        return
    with Image.open(shot) as image:
        colours = {c for _, c in image.convert("RGB").getcolors(maxcolors=1 << 20) or []}
    for outcome in ("passed", "failed", "skipped", "xfailed", "xpassed"):
        want = tuple(int(COLORS[outcome][0][i:i + 2], 16) for i in (1, 3, 5))
        assert want in colours, f"the {outcome} cells' colour {COLORS[outcome][0]} is not on screen"


# ------------------------------------------------------------------ what a newcomer found (issue 25, item 6)

def _figure_of(monkeypatch, draw, results):
    """The matplotlib figure a plot function draws, instead of its PNG."""
    monkeypatch.setattr(report_plots, "_figure_uri", lambda fig: fig)
    return draw(results, report_html._backend_order(results))


def test_a_divergence_at_the_root_module_is_the_model_itself():
    result = _result("t.py::test_reg", "trace", "failed", stage="compare", max_abs_error=0.2,
                     divergence={"module": "", "type": "AutoScaledRegressor", "file": "m.py", "line": 3,
                                 "max_abs_error": 0.2, "input_max_abs_error": 0.0})
    text = render_html([result], ENVIRONMENT)
    assert "diverges first at the model itself (AutoScaledRegressor)" in html.unescape(re_tags(text))
    assert "?" not in report_html._divergence(result)


def re_tags(text: str) -> str:
    import re

    return re.sub(r"<[^>]+>", "", text)


def test_failures_before_compare_are_on_the_error_plot_with_their_stage(monkeypatch):
    pytest.importorskip("matplotlib")
    results = [_result("t.py::test_a", "onnx", "failed", stage="export", message="onnx: stage export: ..."),
               _result("t.py::test_b", "onnx", "failed", stage="compile", message="onnx: stage compile: ..."),
               _result("t.py::test_a", "trace", max_abs_error=1e-7)]
    fig = _figure_of(monkeypatch, report_plots._plot_errors, results)
    ax = fig.axes[0]
    points = [tuple(off) for c in _scatters(ax) for off in c.get_offsets()]
    assert len(points) == 3  # every check has a marker, the two without an error included
    notes = {t.get_text() for t in ax.texts}
    assert {"export", "compile"} <= notes
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("failed before compare" in label for label in labels)


def test_legend_markers_are_the_plot_markers_and_text_is_readable(monkeypatch):
    pytest.importorskip("matplotlib")
    results = [_result("t.py::test_a", "onnx", "failed", stage="compare", max_abs_error=0.3),
               _result("t.py::test_a", "trace", max_abs_error=1e-7)]
    fig = _figure_of(monkeypatch, report_plots._plot_errors, results)
    ax = fig.axes[0]
    handles = {h.get_label(): h for h in ax.get_legend().legend_handles}
    for collection in _scatters(ax):
        face = tuple(collection.get_facecolor()[0])
        outcome = "failed" if face[:3] == pytest.approx(_rgb(COLORS["failed"][1])) else "passed"
        handle = handles[outcome]
        assert collection.get_sizes()[0] == pytest.approx(handle.get_markersize() ** 2)
        from matplotlib.colors import to_rgb

        assert to_rgb(handle.get_markerfacecolor()) == pytest.approx(face[:3])
    texts = [*ax.get_xticklabels(), *ax.get_yticklabels(), ax.yaxis.label, ax.title, *ax.get_legend().get_texts()]
    assert min(t.get_fontsize() for t in texts if t.get_text()) >= 10  # 10 pt at 100 dpi; shown at about 720 px


def _scatters(ax) -> list:
    from matplotlib.collections import PathCollection

    return [c for c in ax.collections if isinstance(c, PathCollection)]


def _rgb(hex_colour: str) -> tuple[float, ...]:
    return tuple(int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5))


def test_passing_cards_of_a_model_test_show_its_branch_sites_once():
    results = [_result("t.py::test_m", b, branches=BRANCHES) for b in ("trace", "export", "onnx")]
    results.append(_result("t.py::test_m", "tvm", "failed", stage="compare", max_abs_error=1.0, branches=BRANCHES))
    page = render_html(results, ENVIRONMENT)
    assert page.count('<table class="branches">') == 2  # the first passing card's, and the failing card's own
    assert page.count('class="same-sites"') == 2
    assert page.count(">[trace]</a>") == 2  # both later passing cards link to trace's table
