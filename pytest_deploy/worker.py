"""A fresh Python process that loads an artifact and runs it on request.

Two users: the pickle backend (a pickled model must load in a process that never saw its classes) and
:class:`Runtime`, a backend's runtime started in a fresh interpreter (spawned, never forked). CUDA cannot
be initialised in a forked child once its parent has so much as counted devices, so a check that uses
CUDA (TensorRT, ONNX Runtime's CUDA provider, TVM on a GPU) builds and runs its engine here: a crash in the GPU stack
ends this process and fails that one check, while pytest's process, which never initialises CUDA for a
check, goes on.

The parent talks to it over two dedicated pipes (the worker's stdout and stderr stay free for user
prints and go to a log), framed by ``multiprocessing.connection``. Each message is a ``torch.save``
payload of plain data (tensors, numbers, strings, lists, dicts) and is read back with ``weights_only=True``.

If the worker dies (segfault, abort, out-of-memory kill), the parent sees the pipe close and
reports the signal instead of hanging or crashing.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import tempfile
import traceback
from multiprocessing.connection import Connection
from typing import Any

from .isolation import signal_name
from .sources import cap


def _send(channel: Connection, obj: Any) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    channel.send_bytes(buf.getvalue())


def _recv(channel: Connection) -> Any:
    import torch

    return torch.load(io.BytesIO(channel.recv_bytes()), weights_only=True)


class WorkerDied(RuntimeError):
    def __init__(self, description: str, log: str):
        super().__init__(description)
        self.description = description
        self.log = log


class WorkerError(RuntimeError):
    """The request raised inside the worker; ``reply`` holds its error text and user source line."""

    def __init__(self, reply: dict):
        super().__init__(reply.get("error", "worker error"))
        self.reply = reply


class Worker:
    """Parent side: start ``python -m pytest_deploy.worker`` with the test session's ``sys.path``."""

    def __init__(self) -> None:
        req_r, self._req_w = os.pipe()
        self._rep_r, rep_w = os.pipe()
        self._log = tempfile.TemporaryFile()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.exists(p))
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pytest_deploy.worker", str(req_r), str(rep_w)],
            pass_fds=(req_r, rep_w),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        os.close(req_r)
        os.close(rep_w)
        self._requests = Connection(self._req_w, readable=False)
        self._replies = Connection(self._rep_r, writable=False)

    def call(self, request: dict, timeout: float | None = None) -> dict:
        """Send one request and wait for its reply; ``timeout`` seconds at most (the worker is killed after)."""
        try:
            _send(self._requests, request)
            if timeout is not None and not self._replies.poll(timeout):
                self.proc.kill()
                self.proc.wait()
                raise WorkerDied(f"worker did not answer within {timeout:g} s (--deploy-timeout) and was killed",
                                 self.log_tail())
            reply = _recv(self._replies)
        except (EOFError, BrokenPipeError, OSError):
            raise WorkerDied(self._death(), self.log_tail()) from None
        if not reply.get("ok"):
            raise WorkerError(reply)
        return reply

    def _death(self) -> str:
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if code < 0:
            return f"worker died with {signal_name(-code)}"
        return f"worker exited with status {code}"

    def log_tail(self, limit: int = 2000) -> str:
        try:
            self._log.seek(0)
            text = self._log.read().decode(errors="replace")
        except (OSError, ValueError):
            return ""
        return text[-limit:]

    def close(self) -> None:
        for channel in (self._requests, self._replies):  # each Connection owns (and closes) its pipe end
            with contextlib.suppress(OSError):
                channel.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


class Runtime:
    """A backend's runtime in a fresh interpreter: ``factory`` (``"package.module:function"``, importable there) is
    called with ``config`` (plain data: paths, settings, names) and returns an object whose ``run(args)`` gives
    ``[(path, tensor), ...]`` on the CPU, and whose ``close()``, if it has one, the worker calls when :meth:`close`
    ends it. :meth:`call` runs a plain function there (an engine build).

    Every failure is a :class:`~pytest_deploy.errors.StageError` of the stage it happened in: an error raised
    there (a ``StageError`` keeps its own stage), a worker that died (the signal is named) or one that did not
    answer within ``timeout`` seconds.
    """

    def __init__(self, label: str, timeout: float | None = None) -> None:
        self.label = label
        self.timeout = timeout
        self.worker = Worker()
        self.info: dict = {}

    def call(self, function: str, config: dict, stage: str) -> Any:
        """``function(config)`` in the worker; its (plain) return value."""
        return self._request({"op": "call", "function": function, "config": config}, stage)["value"]

    def open(self, factory: str, config: dict, stage: str = "load") -> None:
        self.info = self._request({"op": "open", "factory": factory, "config": config}, stage).get("info") or {}

    def run(self, args: tuple | list) -> list[tuple[str, Any]]:
        return [(p, v) for p, v in self._request({"op": "run_runtime", "args": list(args)}, "run")["leaves"]]

    def invoke(self, method: str, args: list, stage: str) -> Any:
        """``runtime.method(*args)`` on the runtime :meth:`open` made there (plain data in, plain data back): work
        that must run where the runtime lives, on its device."""
        return self._request({"op": "invoke_runtime", "method": method, "args": list(args)}, stage)["value"]

    def close(self) -> None:
        self.worker.close()

    def _request(self, request: dict, stage: str) -> dict:
        from .errors import StageError

        try:
            return self.worker.call(request, self.timeout)
        except WorkerError as exc:
            reply = exc.reply
            where = f"\n  at {reply['where']}" if reply.get("where") else ""
            if reply.get("stage"):  # a StageError raised there: its message is already the user's
                raise StageError(reply["stage"], reply["error"]) from None
            raise StageError(stage, f"{self.label} fails in its worker process: {reply.get('error')}{where}") from None
        except WorkerDied as exc:
            log = exc.log.strip()
            tail = "\n  its output ended with:\n    " + "\n    ".join(log.splitlines()[-8:]) if log else ""
            raise StageError(stage, f"{self.label}'s worker process (a fresh interpreter, spawned for CUDA) "
                                    f"{exc.description.removeprefix('worker ')} during stage {stage}: this check "
                                    f"fails, the session goes on{tail}") from None


# ------------------------------------------------------------------------------ worker side


def _error_reply(exc: BaseException) -> dict:
    from .errors import StageError
    from .sources import first_line, short_path, user_frame

    if isinstance(exc, StageError):  # raised by a backend's runtime code on purpose: its message is complete
        return {"ok": False, "error": exc.message, "stage": exc.stage, "type": "StageError"}
    where = user_frame(exc.__traceback__)
    return {
        "ok": False,
        "error": first_line(exc, 600),
        "type": type(exc).__name__,
        "where": f"{short_path(where[0])}:{where[1]}  `{where[2]}`" if where else "",
        "traceback": "".join(traceback.format_exception(exc))[-4000:],
    }


def _weights_only_reason(exc: BaseException) -> str:
    """The line of torch's refusal that names the global it will not load."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in str(exc).splitlines()]
    lines = [ln for ln in lines if ln]
    for ln in lines:
        if "Unsupported global" in ln or "not an allowed global" in ln:
            return cap(ln, 400)
    return cap(lines[0] if lines else type(exc).__name__, 400)


def _serve(req_fd: int, rep_fd: int) -> None:
    import torch

    from .compare import flatten

    requests, replies = Connection(req_fd, writable=False), Connection(rep_fd, readable=False)
    model = None
    runtime = None
    while True:
        try:
            request = _recv(requests)
        except EOFError:  # the parent closed the runtime
            _close(runtime)
            return
        try:
            op = request["op"]
            if op == "load_pickle":
                path = request["path"]
                reply = {"ok": True, "weights_only": True, "weights_only_error": ""}
                try:
                    torch.load(path, weights_only=True)
                except Exception as exc:  # the expected outcome for a whole pickled module
                    reply["weights_only"] = False
                    reply["weights_only_error"] = _weights_only_reason(exc)
                # Our own file, written moments ago by the parent: the unpickling is deliberate.
                model = torch.load(path, weights_only=False)
                reply["type"] = f"{type(model).__module__}.{type(model).__qualname__}"
            elif op == "run":
                if model is None:
                    raise RuntimeError("no model loaded")
                with torch.no_grad():
                    keywords = request.get("keywords")
                    out = (model(**dict(zip(keywords, request["args"]))) if keywords
                           else model(*request["args"]))
                reply = {"ok": True, "leaves": [[p, v] for p, v in flatten(out)]}
            elif op in ("call", "open"):
                target = _import(request["function" if op == "call" else "factory"])
                value = target(request["config"])
                if op == "call":
                    reply = {"ok": True, "value": value}
                else:
                    _close(runtime)
                    runtime = value
                    reply = {"ok": True, "info": dict(getattr(runtime, "info", None) or {})}
            elif op == "run_runtime":
                if runtime is None:
                    raise RuntimeError("no runtime opened")
                reply = {"ok": True, "leaves": [[p, v] for p, v in runtime.run(request["args"])]}
            elif op == "invoke_runtime":
                if runtime is None:
                    raise RuntimeError("no runtime opened")
                reply = {"ok": True, "value": getattr(runtime, request["method"])(*request["args"])}
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as exc:
            reply = _error_reply(exc)
        _send(replies, reply)


def _close(runtime: Any) -> None:
    """Call the runtime's ``close()``, when it has one (it frees device memory, a runner's context); a failure there
    goes to the worker's log, the check's outcome is already known."""
    close = getattr(runtime, "close", None)
    if close is None:
        return
    try:
        close()
    except Exception:
        traceback.print_exc()


def _import(target: str) -> Any:
    """``"package.module:function"`` -> the function."""
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]))
