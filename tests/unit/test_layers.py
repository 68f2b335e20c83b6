"""The package's layers: every import inside ``pytest_deploy`` points down (docs/architecture.md).

Imports are read from the source (module level and inside functions alike, since a lazy import is still a
dependency), so a circle fails here even where Python would happen to resolve it at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pytest_deploy

PACKAGE = Path(pytest_deploy.__file__).parent

#: Each module's layer (docs/architecture.md): a module may import only from layers below its own, or from its
#: own layer where the pair is listed in SAME_LAYER.
LAYERS = {
    0: ["errors", "results"],
    1: ["names", "sources", "tensors"],
    2: ["checkoptions", "generate", "spec", "validate", "compare", "cache", "shared_cache", "isolation", "worker",
        "decisions", "branches", "fingerprint", "localize", "latency", "agreement"],
    3: ["backends.base", "internal"],
    4: ["backends.export", "backends.torchscript", "backends.serialization", "backends.onnx_export", "backends.precision",
        "backends.quantize", "backends.int8_debug", "backends.aoti", "backends.onnx", "backends.tvm_tuning",
        "backends.tvm", "backends.tensorrt", "backends.tensorrt_engine", "backends.fp16_search"],
    5: ["backends"],
    6: ["keep", "report", "report_html", "report_plots", "divergence", "modeltest", "declaration", "infer",
        "search", "examples"],
    7: ["context", "reference"],
    8: ["check"],
    9: ["options", "session", "plugin", "", "__main__", "zero"],
}
SAME_LAYER = {
    ("spec", "validate"), ("spec", "generate"), ("worker", "compare"), ("worker", "isolation"), ("fingerprint", "cache"),
    ("branches", "decisions"), ("cache", "shared_cache"), ("report_html", "report_plots"), ("infer", "declaration"),
    ("backends.aoti", "backends.export"), ("backends.onnx_export", "backends.export"), ("backends.onnx", "backends.export"),
    ("backends.onnx", "backends.onnx_export"), ("backends.onnx", "backends.precision"),
    ("backends.tensorrt", "backends.precision"), ("backends.tensorrt", "backends.quantize"), ("backends.tvm", "backends.export"),
    ("backends.onnx", "backends.quantize"), ("backends.precision", "backends.quantize"),
    ("backends.quantize", "backends.onnx_export"), ("backends.onnx", "backends.int8_debug"),
    ("backends.int8_debug", "backends.precision"), ("backends.int8_debug", "backends.quantize"),
    ("backends.int8_debug", "backends.onnx_export"), ("backends.onnx", "backends.fp16_search"),
    ("backends.tvm", "backends.onnx_export"), ("backends.tvm", "backends.tvm_tuning"),
    ("backends.tensorrt", "backends.onnx_export"), ("backends.tensorrt", "backends.tensorrt_engine"),
    ("backends.tensorrt_engine", "backends.onnx_export"), ("plugin", ""), ("plugin", "options"), ("", "options"),
    ("plugin", "zero"), ("zero", ""), ("plugin", "session"), ("session", "options"), ("session", "zero"),
    ("__main__", "zero"), ("__main__", "options"), ("search", "modeltest"), ("examples", "divergence"), ("reference", "context"),
}


def modules() -> dict[str, Path]:
    """``"backends.onnx"`` -> its file; ``""`` is the package itself."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if not (node.module or "").startswith("pytest_deploy"):
                    continue
                base = (node.module or "").removeprefix("pytest_deploy").lstrip(".")
            else:
                parts = package.split(".") if package else []
                parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join(parts + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}".lstrip(".") for a in node.names if f"{base}.{a.name}".lstrip(".") in known]
            found.update(targets or ([base] if base in known else []))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pytest_deploy"):
                    target = alias.name.removeprefix("pytest_deploy").lstrip(".")
                    if target in known:
                        found.add(target)
    found.discard(name)
    return found


def test_every_module_has_a_layer():
    layered = {m for names in LAYERS.values() for m in names}
    assert set(modules()) == layered, f"{set(modules()) ^ layered}: add new modules to LAYERS and docs/architecture.md"


@pytest.mark.parametrize("name", sorted(modules()))
def test_imports_point_down(name):
    known = modules()
    layer = {m: level for level, names in LAYERS.items() for m in names}
    wrong = sorted(t for t in imports(name, known[name], known)
                   if layer[t] > layer[name] or (layer[t] == layer[name] and (name, t) not in SAME_LAYER))
    assert not wrong, f"pytest_deploy.{name or '__init__'} (layer {layer[name]}) imports " + ", ".join(
        f"{t or '__init__'} (layer {layer[t]})" for t in wrong)


def test_no_import_circle():
    known = modules()
    graph = {m: imports(m, p, known) for m, p in known.items()}
    seen: set[str] = set()

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            pytest.fail("import circle: " + " -> ".join([*stack[stack.index(node):], node]))
        if node in seen:
            return
        seen.add(node)
        for target in sorted(graph[node]):
            visit(target, [*stack, node])

    for module in sorted(graph):
        visit(module, [])


#: the most parameters a function of the package takes (issue 23): settings travel as one CheckOptions
MAX_PARAMETERS = 12


def test_no_function_takes_more_than_twelve_parameters():
    """A new setting is a CheckOptions field, not one more keyword threaded through run_check and its callers."""
    too_many = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                names = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg) if p is not None]
                count = len(names) - (names[:1] in (["self"], ["cls"]))
                if count > MAX_PARAMETERS:
                    too_many.append(f"pytest_deploy.{name or '__init__'}.{node.name} (line {node.lineno}): {count}")
    assert not too_many, "; ".join(too_many)


#: the most lines a module of the package has, unless its docstring says why it stays whole (issue 23)
MAX_MODULE_LINES = 600


def test_every_module_is_one_a_reader_can_hold():
    """A module past MAX_MODULE_LINES is split where it has a seam, or its docstring says why it is one thing."""
    too_long = []
    for name, path in modules().items():
        text = path.read_text()
        lines = text.count("\n")
        if lines > MAX_MODULE_LINES and "stays whole" not in (ast.get_docstring(ast.parse(text)) or ""):
            too_long.append(f"pytest_deploy.{name or '__init__'}: {lines} lines")
    assert not too_long, "; ".join(too_long) + " (split it, or say in its docstring why it stays whole)"
