"""Content-addressed cache of built artifacts (compiled packages, shared libraries).

An entry is a directory named by the SHA-256 of everything that changes the artifact: the backend and
its options, the exported program (its graph code, weights and dim ranges), library versions and the
machine. Entries are written to a temporary directory and renamed into place, so a reader never sees
half an entry; every file's hash is kept in the entry's manifest and checked before the entry is used,
so a corrupt or truncated entry is rebuilt, never loaded. Writers of one key take a file lock, so two
xdist workers needing the same artifact build it once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

#: Bump when the layout of entries or what keys cover changes.
CACHE_VERSION = 2

#: A result-cache entry's one file.
RESULT_FILE = "result.json"


class ArtifactCache:
    """``ArtifactCache(None)`` is a disabled cache: lookups miss, stores keep nothing."""

    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(root) if root else None
        self.events: list[str] = []  # what happened, for the report ("corrupt entry ... rebuilt")

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def _dir(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / key

    def lookup(self, key: str) -> Path | None:
        """The entry's directory when it exists and every file matches its manifest; else None."""
        if self.root is None:
            return None
        entry = self._dir(key)
        try:
            manifest = json.loads((entry / "manifest.json").read_text())
        except (OSError, ValueError):
            if entry.exists():
                self._discard(entry, "unreadable manifest")
            return None
        for name, digest in manifest.get("files", {}).items():
            path = entry / name
            if not path.is_file() or file_digest(path) != digest:
                self._discard(entry, f"{name} does not match its recorded hash")
                return None
        return entry

    def store(self, key: str, files: dict[str, str | os.PathLike]) -> Path | None:
        """Copy ``files`` ({name in entry: source path}) into the entry for ``key``; return its directory."""
        if self.root is None:
            return None
        entry = self._dir(key)
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.parent / f".tmp-{key[:16]}-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            digests = {}
            for name, source in files.items():
                target = tmp / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                digests[name] = file_digest(target)
            (tmp / "manifest.json").write_text(json.dumps({"version": CACHE_VERSION, "files": digests}))
            if entry.exists():
                shutil.rmtree(entry, ignore_errors=True)
            os.replace(tmp, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return entry

    def store_result(self, key: str, result) -> None:
        """Keep a passing check's result (its JSON), so the same check is not run again."""
        if self.root is None:
            return
        import tempfile

        with tempfile.TemporaryDirectory(prefix="pytest-deploy-result-") as tmp:
            path = os.path.join(tmp, RESULT_FILE)
            with open(path, "w") as fh:
                json.dump(result.to_json(), fh)
            self.store(key, {RESULT_FILE: path})

    def load_result(self, key: str):
        """The :class:`~pytest_deploy.Result` kept for ``key`` (hash-verified JSON, never a pickle), or None."""
        from .results import Result

        entry = self.lookup(key)
        if entry is None:
            return None
        try:
            data = json.loads((entry / RESULT_FILE).read_text())
            return Result(**data)
        except (OSError, ValueError, TypeError):
            self._discard(entry, "unreadable result")
            return None

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Serialise builders of one key across processes (pytest-xdist workers)."""
        if self.root is None:
            yield
            return
        from filelock import FileLock

        self._dir(key).parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self._dir(key)) + ".lock"):
            yield

    def _discard(self, entry: Path, why: str) -> None:
        self.events.append(f"cache entry {entry.name[:12]} discarded ({why}); rebuilt")
        shutil.rmtree(entry, ignore_errors=True)


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def make_key(*parts: Any) -> str:
    """SHA-256 over the parts' canonical JSON (sorted keys; anything else by repr)."""
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_VERSION, *parts], sort_keys=True, default=repr).encode())
    return h.hexdigest()


def program_fingerprint(program) -> str:
    """Hash of a ``torch.export`` program: graph code, input/output signature, dim ranges, weights."""
    import torch

    h = hashlib.sha256()
    h.update(program.graph_module.code.encode())
    h.update(str(program.graph_signature).encode())
    h.update(str(sorted((str(k), str(v)) for k, v in program.range_constraints.items())).encode())
    for name, value in sorted({**program.state_dict, **program.constants}.items()):
        h.update(name.encode())
        if isinstance(value, torch.Tensor):
            h.update(f"{value.dtype}{tuple(value.shape)}".encode())
            h.update(_tensor_bytes(value))
        else:
            h.update(repr(value).encode())
    return h.hexdigest()


def _tensor_bytes(t) -> bytes:
    import io

    import torch

    t = t.detach().cpu().contiguous()
    try:
        return t.view(-1).view(torch.uint8).numpy().tobytes()
    except (RuntimeError, TypeError):  # no numpy, or a dtype uint8 cannot view
        buf = io.BytesIO()
        torch.save(t.clone(), buf)
        return buf.getvalue()


def machine() -> dict[str, str]:
    """What a native artifact depends on besides its inputs: platform, architecture, CPU model."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"system": platform.system(), "machine": platform.machine(), "cpu": cpu}


def library_versions(names: Iterable[str]) -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
