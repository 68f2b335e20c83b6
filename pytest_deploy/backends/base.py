"""The backend interface. A backend turns a model into an artifact on disk and loads it back.

Heavy imports (torch, onnx, tvm, tensorrt) happen inside methods; availability is checked with
``importlib.util.find_spec``, never by importing.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import itertools
import linecache
import logging
import os
import sys
import sysconfig
import warnings
import traceback
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    from ..check import CheckContext

#: A loaded artifact: called with one example's positional args, returns outputs (nested, or Leaves).
Runner = Callable[[tuple], Any]


class Backend:
    """Subclass, set ``name`` (and ``aliases``, ``requires``, ``extra``), implement :meth:`build`."""

    name: str = ""
    aliases: tuple[str, ...] = ()
    #: importable module names the backend needs (checked with find_spec)
    requires: tuple[str, ...] = ()
    #: pip extra that installs ``requires``, for the install hint
    extra: str | None = None
    description: str = ""
    #: loads native code (a shared library, a runtime with its own threads): under the default
    #: ``--deploy-isolate=native`` the check runs in a worker process, so a crash fails only that check
    native: bool = False
    #: source of ``load(artifact: Path)`` returning ``run(args) -> outputs`` for the standalone repro script
    #: of ``--deploy-keep-artifacts`` (None: pytest_deploy.keep's loader for the backend, if any)
    repro_loader: str | None = None

    def unavailable_reason(self, options: dict | None = None) -> str | None:
        """None when the backend can run here; otherwise why not and what to install. ``options`` are the
        backend options of the check (a target, a precision), which can decide it."""
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            hint = f"pip install 'pytest-deploy[{self.extra}]'" if self.extra else f"pip install {' '.join(missing)}"
            return f"{self.name}: {', '.join(missing)} not installed; {hint}"
        return None

    #: modules imported by :meth:`prepare`: what the check imports anyway, loaded once in pytest's process so
    #: that each worker process inherits them instead of importing them again
    preload: tuple[str, ...] = ()

    def prepare(self) -> None:
        """Import what the backend needs, before a worker process is forked for a check (imports only: no
        native thread pool or device is started here, so the fork stays safe)."""
        for name in (*self.requires, *self.preload):
            if importlib.util.find_spec(name.split(".")[0]) is not None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    importlib.import_module(name)

    def uses_cuda(self, options: dict | None = None) -> bool:
        """True when the check runs on a GPU. CUDA does not survive fork (a forked child cannot initialise
        it once the parent has so much as counted devices), so such checks run in pytest's process."""
        return False

    def build(self, ctx: "CheckContext") -> Runner:
        """Export the model, write it under ``ctx.workdir``, load it back; return a runner.

        Wrap each step in ``with ctx.stage("export" | "save" | "load" | ...)`` so failures name it.
        """
        raise NotImplementedError

    def verify(self, ctx: "CheckContext") -> None:
        """The whole check. The default builds once and runs every generated example; backends whose
        check is not 'run the artifact on inputs' (checkpoint) override this."""
        runner = self.build(ctx)
        ctx.run_examples(runner)


# ------------------------------------------------------------------------ locating user code

_LIBRARY_PACKAGES = ("torch", "functorch", "pytest_deploy", "_pytest", "pytest", "pluggy", "hypothesis", "onnx",
                     "onnxscript", "onnxruntime", "onnxsim", "tvm", "tvm_ffi", "tensorrt", "numpy", "sympy")


@functools.lru_cache(maxsize=None)
def _library_dirs() -> tuple[str, ...]:
    dirs = []
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


def short_path(filename: str) -> str:
    """A path relative to the working directory when it lies below it."""
    try:
        rel = os.path.relpath(filename)
    except ValueError:
        return filename
    return filename if rel.startswith("..") else rel


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first meaningful line of an exception's message, capped at a sentence's end. A line ending in ':'
    announces its detail on the lines below (``Error(s) in loading state_dict for Net:``), so the rest of
    its paragraph is kept too."""
    text = str(exc).strip()
    lines = text.splitlines()
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


def cap(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters, never mid-sentence: at the last sentence end (or clause
    end, or word end) before the limit, saying how much was left out."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    for marks in ((". ", "! ", "? "), ("; ", ": ", ", ")):
        end = max(head.rfind(m) for m in marks)
        if end > limit // 3:
            head = head[: end + 1]
            break
    else:
        head = head[: head.rfind(" ")] if head.rfind(" ") > limit // 3 else head
    return f"{head.rstrip()} [cut: {len(text) - len(head.rstrip())} more characters]"


@contextlib.contextmanager
def quiet_torch_logs():
    """Silence exporters' chatter (graph dumps on stderr, symbolic-shape log records) while they run;
    failures reach the user through the stage's message instead."""
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict) if name.startswith("torch")]
    states = [(lg, lg.disabled) for lg in loggers]
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    for lg in loggers:
        lg.disabled = True
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, state in states:
            lg.disabled = state
        logging.disable(previous)


__all__ = ["Backend", "Runner", "user_frame", "short_path", "first_line", "cap", "is_user_file", "is_model_code",
           "quiet_torch_logs"]
