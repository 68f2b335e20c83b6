"""Where things come from: which source files are the user's (and the model's), the frame of a traceback or a
formatted stack that a message should point at, and exception text fit for one line of a message.

A leaf module: standard library only (torch is imported inside the one function that needs it).
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import linecache
import os
import re
import sys
import sysconfig
import textwrap
import traceback

_LIBRARY_PACKAGES = ("torch", "functorch", "pytest_deploy", "_pytest", "pytest", "pluggy", "hypothesis", "onnx",
                     "onnxscript", "onnxruntime", "onnxsim", "tvm", "tvm_ffi", "tensorrt", "numpy", "sympy")


@functools.cache
def _library_dirs() -> tuple[str, ...]:
    dirs: list[str] = []
    for name in _LIBRARY_PACKAGES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is not None and spec.submodule_search_locations:
            dirs.extend(os.path.join(loc, "") for loc in spec.submodule_search_locations)
    return tuple(dirs)


#: Files that hold the model's own classes: user code even when installed under site-packages.
_MODEL_FILES: set[str] = set()
#: Directories of the installed packages that hold the model's classes (``site-packages/transformers/``): for
#: the source line a message points at, every file there is the model's code (masking helpers, attention
#: functions), though only the class files count as user code for branch recording.
_MODEL_PACKAGES: set[str] = set()


def add_model_files(model) -> None:
    """Count the source files of ``model``'s module classes as user code."""
    for module in model.modules():
        name = type(module).__module__
        filename = getattr(sys.modules.get(name), "__file__", None)
        if filename and not filename.startswith(_library_dirs()) and filename not in _MODEL_FILES:
            _MODEL_FILES.add(filename)
            is_user_file.cache_clear()
            top = getattr(sys.modules.get(name.split(".")[0]), "__file__", None)
            if top and os.path.basename(top) == "__init__.py" and _installed(top):
                _MODEL_PACKAGES.add(os.path.join(os.path.dirname(top), ""))


def _installed(filename: str) -> bool:
    return f"{os.sep}site-packages{os.sep}" in filename or f"{os.sep}dist-packages{os.sep}" in filename


def is_model_code(filename: str) -> bool:
    """Where a message may point: the user's files, and every file of an installed package that holds the
    model's classes (transformers' helpers count as the model's code)."""
    return is_user_file(filename) or bool(_MODEL_PACKAGES) and filename.startswith(tuple(_MODEL_PACKAGES))


@functools.lru_cache(maxsize=4096)
def is_user_file(filename: str) -> bool:
    """True for the user's own source files: not the stdlib, not an installed package (unless it holds
    the model's classes), not a library pytest-deploy knows."""
    if not filename or filename.startswith("<"):
        return False
    if filename in _MODEL_FILES:
        return True
    if filename.startswith(_library_dirs()):
        return False
    if _installed(filename):
        return False
    return not filename.startswith(os.path.join(sysconfig.get_paths()["stdlib"], ""))


def user_frame(tb) -> tuple[str, int, str] | None:
    """The innermost traceback frame in the model's code (:func:`is_model_code`): (file, line, source text)."""
    found = None
    for frame, lineno in traceback.walk_tb(tb):
        fname = frame.f_code.co_filename
        if is_model_code(fname):
            found = (fname, lineno, linecache.getline(fname, lineno).strip())
    return found


#: The pytest_deploy package's own directory: a frame there is pytest-deploy's code.
PACKAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "")


def _is_stdlib(filename: str) -> bool:
    return filename.startswith("<frozen ") or (
        filename.startswith(os.path.join(sysconfig.get_paths()["stdlib"], "")) and not _installed(filename))


def origin_frame(tb) -> tuple[str, int, str] | None:
    """The innermost traceback frame outside the standard library, where an exception was raised (a standard
    library function raises on behalf of its caller): (file, line, function)."""
    found = None
    for frame, lineno in traceback.walk_tb(tb):
        if not _is_stdlib(frame.f_code.co_filename):
            found = (frame.f_code.co_filename, lineno, frame.f_code.co_name)
    return found


def package_frame(tb) -> tuple[str, int, str] | None:
    """The innermost traceback frame in pytest-deploy's own code: (file, line, function)."""
    found = None
    for frame, lineno in traceback.walk_tb(tb):
        if frame.f_code.co_filename.startswith(PACKAGE_DIR):
            found = (frame.f_code.co_filename, lineno, frame.f_code.co_name)
    return found


def package_path(filename: str) -> str:
    """``pytest_deploy/compare.py`` for a file of the package, wherever it is installed."""
    return "pytest_deploy/" + os.path.relpath(filename, PACKAGE_DIR).replace(os.sep, "/")


def short_path(filename: str) -> str:
    """A path relative to the working directory when it lies below it."""
    try:
        rel = os.path.relpath(filename)
    except ValueError:
        return filename
    return filename if rel.startswith("..") else rel


#: the first line of every error raised while the TorchScript interpreter runs a module: the cause is on the last
_TORCHSCRIPT_RUN = "The following operation failed in the TorchScript interpreter."
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt): ")


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first meaningful line of an exception's message, capped at a sentence's end. A line ending in ':'
    announces its detail on the lines below (``Error(s) in loading state_dict for Net:``), so the rest of
    its paragraph is kept too. An error of the TorchScript interpreter says only that an operation failed on
    its first line; its cause, the inner error, is its last line (``RuntimeError: shape '[2, 3, 1]' is
    invalid for input of size 3``), which is taken instead."""
    text = str(exc).strip()
    lines = text.splitlines()
    if lines and lines[0].strip() == _TORCHSCRIPT_RUN and len(lines) > 1:
        cause = lines[-1].strip()
        if not _EXCEPTION_LINE.match(cause):
            cause = f"{type(exc).__name__}: {cause}"
        return cap(f"{cause} (in the TorchScript interpreter)", limit)
    for i, line in enumerate(lines):
        line = line.strip()
        if line:
            text = line
            if line.endswith(":"):
                detail = [d.strip() for d in itertools.takewhile(str.strip, lines[i + 1:])]
                text = " ".join([line, *detail])
            break
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return cap(text, limit)


_SENTENCE_END = re.compile(r"[.!?](?=\s)|\n|[.!?]$")


def cap(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters, never mid-sentence, and marked where it was cut (``… (N more
    characters)``). It ends at the last sentence or line end before the limit; when the first sentence alone is
    longer, the whole of it is kept if that stays within twice the limit. Only a first sentence longer than that
    is cut within (at a word end)."""
    if len(text) <= limit:
        return text
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    before = [e for e in ends if limit // 4 < e <= limit]
    after = [e for e in ends if limit < e <= 2 * limit]
    short = [e for e in ends if e <= limit // 4]
    if before:
        head = text[: before[-1]]
    elif after:  # a long sentence, kept whole
        head = text[: after[0]]
    elif short:  # the short sentences before a very long one
        head = text[: short[-1]]
    else:  # one very long sentence: cut at a word end
        space = text.rfind(" ", 0, limit)
        head = text[:space] if space > limit // 3 else text[:limit]
    head = head.rstrip()
    if len(head) >= len(text.rstrip()):
        return text
    return f"{head} \u2026 ({len(text) - len(head)} more characters)"


def frame_from_stack(stack: str):
    """The innermost frame of the model's code (:func:`is_model_code`) in a formatted stack trace
    (``File "x.py", line 3, in f`` + code). An error text that carries torch's traceback of the node it
    failed on (``Original traceback:``) is read there."""
    node = re.search(r"Original traceback:\n(.*?)(?:\n\s*\n|Use tlparse|\Z)", stack, re.S)
    if node:
        stack = node.group(1)
    found = None
    for m in re.finditer(r'File "([^"]+)", line (\d+), in [^\n]+\n\s*([^\n]*)', stack):
        fname, line = m.group(1), int(m.group(2))
        if is_model_code(fname):
            found = (fname, line, m.group(3).strip() or linecache.getline(fname, line).strip())
    return found


def torchscript_error(exc: BaseException) -> str | None:
    """The whole text of an error the TorchScript interpreter raised (its traceback, then the cause), else None:
    :func:`first_line` keeps only the cause, so a report keeps this too."""
    text = str(exc).strip()
    return text if text.startswith(_TORCHSCRIPT_RUN) else None


def frame_from_torchscript(text: str):
    """The innermost frame of the model's code in the traceback a TorchScript interpreter error carries. A traced
    module's lists the Python frames of the traced call, innermost first (``/path/model.py(5): forward``); a
    scripted module's, innermost last (``File "/path/model.py", line 5, in forward`` and the function's code)."""
    if not text.lstrip().startswith(_TORCHSCRIPT_RUN):
        return None
    traced = [(m.group(1).strip(), int(m.group(2))) for m in re.finditer(r"^(.+?)\((\d+)\): [\w<>]+$", text, re.M)]
    scripted = [(m.group(1), int(m.group(2))) for m in re.finditer(r'File "([^"]+)", line (\d+), in ', text)]
    for fname, line in [*traced, *reversed(scripted)]:
        if os.path.isfile(fname) and is_model_code(fname):  # not the serialized code (``code/__torch__.py``)
            return fname, line, linecache.getline(fname, line).strip()
    return None


def describe_exception(exc: BaseException, hint: str | None = None) -> str:
    """``ValueError: bad thing`` + the user's source line, if any + the hint."""
    text = first_line(exc)
    where = frame_from_torchscript(str(exc)) or user_frame(exc.__traceback__)
    if where:
        text += f"\n  at {short_path(where[0])}:{where[1]}  `{where[2]}`"
    if hint:
        text += f"\n  fix: {hint}"
    return text



def _own_forwards(model):
    """``(filename, first line, source lines, function)`` of each of the model's classes' ``forward`` in the user's
    files, once per class."""
    import inspect
    import types

    seen: set[type] = set()
    for module in model.modules():
        cls = type(module)
        forward = getattr(cls, "forward", None)
        if cls in seen or not isinstance(forward, types.FunctionType):
            continue
        seen.add(cls)
        try:
            filename = inspect.getsourcefile(forward) or ""
            if not is_user_file(filename):
                continue
            lines, start = inspect.getsourcelines(forward)
        except (OSError, TypeError):
            continue
        yield filename, start, lines, forward


def numpy_sites(model, limit: int = 3) -> list[str]:
    """Lines of the model's own ``forward`` methods that call numpy (``np.abs(...)``, ``t.numpy()``), as
    ``file:line  `source```: where TorchScript stops, though its error names no line. Never raises."""
    import ast
    import types

    found: list[str] = []
    for filename, start, lines, forward in _own_forwards(model):
        try:
            tree = ast.parse(textwrap.dedent("".join(lines)))
        except (SyntaxError, ValueError):
            continue
        numpy_names = {name for name, value in forward.__globals__.items()
                       if isinstance(value, types.ModuleType) and value.__name__.split(".")[0] == "numpy"}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            root: ast.expr = node
            while isinstance(root, ast.Attribute):
                root = root.value
            if (isinstance(root, ast.Name) and root.id in numpy_names) or node.attr == "numpy":
                where = f"{short_path(filename)}:{start + node.lineno - 1}  `{lines[node.lineno - 1].strip()}`"
                if where not in found:
                    found.append(where)
    return sorted(found, key=lambda w: int(w.split(":")[1].split()[0]))[:limit]


#: draws from an RNG in a line of source: Python's random module, numpy's, torch's
RNG_CALL = re.compile(r"\b(?:random\.\w+|(?:np|numpy)\.random\.\w+|torch\.(?:rand|randn|randint|randperm|rand_like|"
                       r"randn_like|randint_like|bernoulli|multinomial|normal)|\w+\.(?:bernoulli_|normal_|uniform_|random_))\(")


def rng_sites(model, limit: int = 3) -> list[str]:
    """Lines of the model's own ``forward`` methods that draw random numbers (``random.random()``,
    ``np.random.rand()``, ``torch.rand()``), as ``file:line  `source```. Never raises."""
    found: list[str] = []
    for filename, start, lines, _ in _own_forwards(model):
        for i, line in enumerate(lines):
            code = line.split("#", 1)[0]
            if RNG_CALL.search(code):
                found.append(f"{short_path(filename)}:{start + i}  `{line.strip()}`")
    return found[:limit]
