"""Crash isolation and stage timeouts.

A check whose backend loads native code (TVM, TensorRT, AOTInductor, ONNX Runtime) runs in a forked
worker process: a segfault, abort or out-of-memory kill there ends the worker, and the parent turns
it into a failure of that one check naming the signal and the stage it happened in. The worker tells
the parent each stage it enters over a private pipe, which also gives the parent what it needs to
enforce ``--deploy-timeout`` per stage: a worker that stays too long in one stage is killed.

Without a worker (``--deploy-isolate=none``) a timeout is a SIGALRM raised in the main thread: it
interrupts Python code, but not a native call that never returns to the interpreter.

Why fork and not a fresh interpreter: the model, its factory (the decorated test with its fixture
values) and the hypothesis set-up are live objects that often cannot be pickled; a forked child has
them all. PyTorch's OpenMP thread pool does not survive fork (a parallel op in the child hangs), so
the worker runs PyTorch single-threaded; backends' own runtimes (TVM, ONNX Runtime) start their
thread pools fresh in the worker.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any, Literal

from .errors import StageError

MODES = ("none", "native", "all")
DEFAULT_MODE = "native"


#: In a worker: the pipe to the parent. None in the parent process.
_channel: Connection | None = None

#: What the stage names mean in a message about a worker that died or hung there.
_ACTIVITY = {"setup": "set-up (before any backend stage)", "reference": "the eager PyTorch reference run"}


def describe_stage(stage: str) -> str:
    return _ACTIVITY.get(stage, stage)


def reported_stage(stage: str) -> str:
    """The stage a failure is filed under: eager runs and set-up count as ``run``."""
    return "run" if stage in _ACTIVITY else stage


def isolated(mode: str, native: bool) -> bool:
    """Whether a check runs in a worker process under ``--deploy-isolate=mode``."""
    if mode not in MODES:
        from .errors import SpecError

        raise SpecError(f"isolate={mode!r} is not one of {', '.join(MODES)}")
    if not hasattr(os, "fork"):  # Windows: no fork, checks run in-process
        return False
    return mode == "all" or (mode == "native" and native)


class StageTimeout(BaseException):
    """Raised by the in-process alarm; a BaseException so the model's own ``except Exception`` cannot swallow it."""


def timeout_text(stage: str, seconds: float) -> str:
    return (f"timed out: {describe_stage(stage)} ran longer than {seconds:g} s (--deploy-timeout); "
            "fix: find what hangs there, or raise --deploy-timeout if the stage is just slow")


@contextlib.contextmanager
def guard(stage: str, timeout: float | None) -> Iterator[None]:
    """Around one stage: tell the parent (in a worker), or arm an in-process alarm (no worker) whose
    expiry becomes a :class:`StageError` naming the stage."""
    if _channel is not None:
        progress(stage)
        yield
        return
    if not timeout or threading.current_thread() is not threading.main_thread() \
            or signal.getitimer(signal.ITIMER_REAL)[0] > 0:
        yield  # no timeout, not the main thread, or an outer stage already owns the alarm
        return

    def expire(signum, frame):
        raise StageTimeout(stage)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        yield
    except StageTimeout:
        raise StageError(reported_stage(stage), timeout_text(stage, timeout)) from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def in_worker() -> bool:
    """Whether this process is a forked check worker."""
    return _channel is not None


def progress(stage: str) -> None:
    """In a worker: tell the parent which stage starts now (its timeout clock restarts)."""
    if _channel is not None:
        _channel.send(("stage", stage))


# ------------------------------------------------------------------------------------------ the worker


class WorkerCrash(StageError):
    """The worker died (signal or exit) or was killed for a timeout."""


def run_in_worker(fn: Callable[[], Any], *, label: str, timeout: float | None = None) -> Any:
    """Call ``fn`` in a forked child and return what it returns (or raise what it raises).

    Raises :class:`WorkerCrash` naming the stage when the child dies or overstays ``timeout`` in one stage.
    """
    read_fd, write_fd = os.pipe()  # one way, child to parent: each end wrapped in a Connection (framed pickles)
    sys.stdout.flush()
    sys.stderr.flush()
    # Objects inherited from the parent must never be finalised by the child's garbage collector: some
    # (an ONNX Runtime session, a thread pool) wait in their destructor for threads the child does not
    # have. Frozen objects are invisible to the collector.
    gc.freeze()
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a multi-threaded process; the worker is built for that (see above)
        warnings.filterwarnings("ignore", message=".*use of fork\\(\\) may lead to deadlocks", category=DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; its coverage is not collected
        os.close(read_fd)
        _child(fn, Connection(write_fd, readable=False))
    gc.unfreeze()
    os.close(write_fd)
    channel = Connection(read_fd, writable=False)
    try:
        return _parent(pid, channel, label=label, timeout=timeout)
    finally:
        channel.close()


def _child(fn: Callable[[], Any], channel: Connection) -> None:  # pragma: no cover - runs in the child
    global _channel
    _channel = channel
    code = 0
    try:
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(1)  # the parent's OpenMP pool is gone: a parallel op would hang
        # ("return", value), or ("raise", exception, the traceback's text)
        message: tuple[Literal["return"], Any] | tuple[Literal["raise"], BaseException, str]
        try:
            message = ("return", fn())
        except BaseException as exc:
            message = ("raise", exc, "".join(traceback.format_exception(exc)))
        try:
            channel.send(message)
        except Exception:  # the value or the exception does not pickle: send its text
            text = message[2] if message[0] == "raise" else f"{label_of(message[1])} could not be sent back"
            channel.send(("raise", None, text))
    except BaseException:
        code = 70
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def label_of(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"


def _parent(pid: int, channel: Connection, *, label: str, timeout: float | None) -> Any:
    stage, since = "setup", time.monotonic()
    final = None
    try:
        while final is None:
            wait = None if not timeout else max(0.0, since + timeout - time.monotonic())
            if not channel.poll(wait):
                assert timeout is not None  # poll(None) waits for a message or EOF: only a timed poll comes back empty
                _kill(pid)
                raise WorkerCrash(reported_stage(stage), "worker killed: " + timeout_text(stage, timeout))
            try:
                # a pickle from the child this process forked, over a private pipe: not untrusted data
                message = channel.recv()
            except EOFError:  # the child is gone
                break
            if message[0] == "stage":
                stage, since = message[1], time.monotonic()
            else:
                final = message
    except BaseException:  # Ctrl-C in the parent, or the timeout above: never leave the child behind
        _kill(pid)
        raise
    status = _wait(pid)
    if final is None:
        raise WorkerCrash(reported_stage(stage), f"worker died with {describe_status(status)} during "
                                                 f"{describe_stage(stage)}")
    if final[0] == "return":
        return final[1]
    exc, text = final[1], final[2]
    if isinstance(exc, SystemExit):  # the model called sys.exit(): a failure of this check, not of pytest
        raise WorkerCrash(reported_stage(stage), f"sys.exit({exc.code!r}) was called during "
                                                 f"{describe_stage(stage)}")
    if exc is None or not isinstance(exc, BaseException):
        raise RuntimeError(f"{label}: the worker process raised:\n{text}")
    raise exc


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, ChildProcessError):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _wait(pid: int) -> int:
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return 0


def signal_name(sig: int) -> str:
    """``SIGSEGV`` for 11; ``signal 99`` for a number with no name."""
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal_name(sig)
        if sig == signal.SIGKILL:
            name += " (killed from outside: out of memory? the kernel's OOM killer sends SIGKILL)"
        return name
    if os.WIFEXITED(status):
        return f"exit code {os.WEXITSTATUS(status)} (the model or a library called exit)"
    return f"status {status}"
