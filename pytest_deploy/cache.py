"""Content-addressed cache of built artifacts (compiled packages, shared libraries) and of passing results.

An entry is a directory named by the SHA-256 of everything that changes the artifact: the backend and
its options, the exported program (its graph code, weights and dim ranges), library versions and the
machine. Entries are written to a temporary directory and renamed into place, so a reader never sees
half an entry; every file's hash is kept in the entry's manifest and checked before the entry is used,
so a corrupt or truncated entry is rebuilt, never loaded. Writers of one key take a file lock, so two
xdist workers needing the same artifact build it once.

The cache may also live on object storage (any fsspec URL: ``s3://bucket/prefix``, ``gs://...``, ``az://...``),
shared by CI runners. Entries are then kept in a local directory too (a read-through
copy, so a hit costs one download), uploaded payload first and manifest last (a reader never sees half an
entry), and verified by hash when read, like local ones. When the store cannot be reached, the cache goes on
locally and says so once.

This module holds :class:`ArtifactCache` (the local store, and the use it makes of a shared one) and the key
helpers (:func:`make_key`, :func:`program_fingerprint`, :func:`file_digest`). The shared store itself
(:class:`~pytest_deploy.shared_cache.RemoteStore`) and the manifests and their signatures are in
:mod:`pytest_deploy.shared_cache`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .shared_cache import (
    CACHE_VERSION,
    BadManifest,
    LocalFault,
    RemoteStore,
    UnsafeDirectory,
    Unsigned,
    check_manifest,
    check_name,
    describe_remote_error,
    inside,
    make_manifest,
    private_copy_dir,
    secret_from_env,
)

#: A result-cache entry's one file.
RESULT_FILE = "result.json"


def is_url(location: str | os.PathLike | None) -> bool:
    """An fsspec URL (``s3://...``) rather than a local path; ``file://`` URLs are local paths."""
    return isinstance(location, str) and "://" in location and not location.startswith("file://")


def local_path(location: str | os.PathLike) -> str:
    """``file:///shared/dir`` -> ``/shared/dir``; a path stays as it is."""
    text = os.fspath(location)
    return text[len("file://"):] if text.startswith("file://") else text


class ArtifactCache:
    """``ArtifactCache(None)`` is a disabled cache: lookups miss, stores keep nothing.

    ``root`` is a local directory, a ``file://`` URL, or an fsspec URL of a shared store; for the last, entries
    are also kept in ``local`` (default: a directory of this user's own, :func:`private_copy_dir`).

    ``key_env`` names the environment variable holding the secret (default ``PYTEST_DEPLOY_CACHE_KEY``): when it is
    set, every manifest written is signed with it (HMAC-SHA256) and an entry without a right signature is never
    used."""

    def __init__(self, root: str | os.PathLike | None, *, local: str | os.PathLike | None = None,
                 key_env: str | None = None, readonly: bool = False):
        #: the signing secret (None: entries are verified by hash only)
        self.secret = secret_from_env(key_env)
        #: read and verify, never write (no store, upload or discard); the local copy of a shared store, the
        #: runner's own, still takes what is downloaded
        self.readonly = readonly
        self._local_copy = is_url(root)
        self.remote: RemoteStore | None = None
        #: why the shared store was given up (the cache then goes on locally); None while it works
        self.remote_error: str | None = None
        #: the reason above was shown (once per session)
        self.remote_warned = False
        if is_url(root):
            url = str(root)
            try:
                if local is None:
                    local = private_copy_dir(url)
            except (UnsafeDirectory, OSError) as exc:  # a copy another user could fill is not used: no cache
                why = exc if isinstance(exc, UnsafeDirectory) else f"the local copy's directory cannot be made ({exc})"
                self.remote_error = f"shared cache {url} not used: {why}; checks run without a cache"
                root = local = None
            else:
                try:
                    self.remote = RemoteStore(url)
                    self.remote.probe()
                except Exception as exc:  # any way the URL fails, the local cache still works
                    self.give_up_remote(url, exc)
                root = local
        self.root = Path(local_path(root)) if root else None
        self.events: list[str] = []  # what happened, for the report ("corrupt entry ... rebuilt")
        #: warnings to show (one CacheWarning each, by :func:`pytest_deploy.check.warn_cache`), and every one ever
        #: queued, so that each is shown once per session
        self.pending_warnings: list[str] = []
        self._warned: set[str] = set()
        if key_env and self.secret is None and not readonly and self.root is not None:
            self.warn(f"the cache key's environment variable {key_env} (--deploy-cache-key-env) is not set: cache "
                      "entries are neither signed nor checked for a signature; set it, or run with "
                      "--deploy-cache-readonly")

    def warn(self, message: str) -> None:
        """Queue ``message`` for one ``CacheWarning`` (once per session)."""
        if message not in self._warned:
            self._warned.add(message)
            self.pending_warnings.append(message)

    def _bad_manifest(self, key: str, where: str, exc: BadManifest) -> None:
        hint = ("only a writer holding the cache key makes entries that are used; this run rebuilds it"
                if isinstance(exc, Unsigned) else "if this cache is shared, check who can write to it")
        self.warn(f"{where} cache entry {key} not used: {exc}; it is treated as a miss (never loaded); {hint}")

    def give_up_remote(self, url: str, exc: BaseException) -> None:
        """Go on with the local cache only, remembering why (shown once, as a warning, by the caller)."""
        self.remote = None
        if self.remote_error is None:
            self.remote_error = f"shared cache {url} not used: {describe_remote_error(url, exc)}; checks use the local cache"


    @property
    def enabled(self) -> bool:
        return self.root is not None

    def _dir(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / key

    def lookup(self, key: str) -> Path | None:
        """The entry's directory when it exists and every file matches its manifest; else None. A miss here is
        looked up in the shared store, whose entry (verified by hash) becomes the local one."""
        local = self._lookup_local(key)
        if local is not None or self.remote is None:
            return local
        return self._fetch(key)

    def _fetch(self, key: str) -> Path | None:
        """The shared entry, verified and made the local one; None on a miss. Every fault of one entry (a bad
        manifest, a missing or damaged payload, a download that cannot be written here) is a miss, the shared cache
        staying on; only an error of the store itself (gone, refusing) gives the store up."""
        assert self.root is not None and self.remote is not None
        remote = self.remote
        try:
            manifest = remote.manifest(key)
            if manifest is None:
                return None
            check_manifest(manifest, key=key, secret=self.secret)  # before any name becomes a path
        except BadManifest as exc:
            self.events.append(f"shared cache entry {key[:12]} not used ({exc}); rebuilt")
            self._bad_manifest(key, "shared", exc)
            return None
        except Exception as exc:  # the store went away: go on locally
            self.give_up_remote(remote.url, exc)
            return None
        entry = self._dir(key)
        bad: list[str] = []
        for attempt in (1, 2):
            tmp = entry.parent / f".tmp-{key[:16]}-{uuid.uuid4().hex}"
            try:
                try:
                    tmp.mkdir(parents=True)
                    bad = remote.download(key, manifest, tmp)
                    if not bad:
                        (tmp / "manifest.json").write_text(json.dumps(manifest))  # as signed
                        if entry.exists():
                            shutil.rmtree(entry, ignore_errors=True)
                        os.replace(tmp, entry)
                        self.events.append(f"cache entry {key[:12]} downloaded from the shared cache")
                        return entry
                except (LocalFault, OSError) as exc:
                    if not isinstance(exc, LocalFault) and not _local_error(exc, tmp):
                        raise
                    self.events.append(f"shared cache entry {key[:12]} not downloaded: it cannot be written here "
                                       f"({exc}); rebuilt, the shared entry kept")
                    return None
            except FileNotFoundError as exc:  # a payload expired or deleted before its manifest
                self.events.append(f"shared cache entry {key[:12]} incomplete ({_first(exc)}: a file is missing); "
                                   "rebuilt, and stored again")
                return None
            except Exception as exc:  # the store went away: go on locally
                self.give_up_remote(remote.url, exc)
                return None
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            if attempt == 1:
                self.events.append(f"shared cache entry {key[:12]}: {bad[0]} did not match its recorded hash; "
                                   "downloaded again")
        if self.readonly:
            self.events.append(f"shared cache entry {key[:12]} not used ({bad[0]} does not match its recorded hash, "
                               "twice); left in the store (read-only cache)")
            return None
        self.events.append(f"shared cache entry {key[:12]} discarded ({bad[0]} does not match its recorded hash, "
                           "twice); rebuilt")
        with contextlib.suppress(Exception):
            remote.discard(key, manifest["writer"])
        return None

    def _lookup_local(self, key: str) -> Path | None:
        if self.root is None:
            return None
        entry = self._dir(key)
        try:
            manifest = json.loads((entry / "manifest.json").read_text())
        except (OSError, ValueError):
            if entry.exists():
                self._discard(entry, "unreadable manifest")
            return None
        try:
            inside(self.root, f"{key[:2]}/{key}")  # the entry itself is no symlink out of the cache
            files = check_manifest(manifest, key=key, secret=self.secret)
            paths = {name: inside(entry, name) for name in files}
        except BadManifest as exc:
            self._bad_manifest(key, "local", exc)
            self._discard(entry, str(exc))
            return None
        for name, digest in files.items():
            path = paths[name]
            if not path.is_file() or file_digest(path) != digest:
                self._discard(entry, f"{name} does not match its recorded hash")
                return None
        return entry

    def store(self, key: str, files: dict[str, str | os.PathLike]) -> Path | None:
        """Copy ``files`` ({name in entry: source path}) into the entry for ``key``; return its directory (None when
        the cache is disabled or read-only)."""
        if self.root is None or self.readonly:
            return None
        for name in files:
            check_name(name)
        entry = self._dir(key)
        tmp = entry.parent / f".tmp-{key[:16]}-{uuid.uuid4().hex}"
        try:
            tmp.mkdir(parents=True)
            digests = {}
            for name, source in files.items():
                target = tmp / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                digests[name] = file_digest(target)
            manifest = make_manifest(key, digests, self.secret)
            (tmp / "manifest.json").write_text(json.dumps(manifest))
            if entry.exists():
                shutil.rmtree(entry, ignore_errors=True)
            os.replace(tmp, entry)
        except OSError as exc:
            if exc.errno not in _CANNOT_WRITE:
                raise
            # a full disk is no failed check; nothing half-written stays, and nothing is uploaded from here
            self.events.append(f"cache entry {key[:12]} not stored: it cannot be written here ({_first(exc)})")
            return None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if self.remote is not None:
            try:
                self.remote.put(key, entry, manifest)
            except Exception as exc:  # a store that refuses writes (read-only, gone) is given up
                self.give_up_remote(self.remote.url, exc)
        return entry

    def store_result(self, key: str, result) -> None:
        """Keep a passing check's result (its JSON), so the same check is not run again."""
        if self.root is None or self.readonly:
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
        """Serialise builders of one key across processes (pytest-xdist workers); a read-only cache directory gets no
        lock file (nothing is built into it)."""
        if self.root is None or (self.readonly and not self._local_copy):
            yield
            return
        from filelock import FileLock

        self._dir(key).parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self._dir(key)) + ".lock"):
            yield

    def _discard(self, entry: Path, why: str) -> None:
        if self.readonly and not self._local_copy:
            self.events.append(f"cache entry {entry.name[:12]} not used ({why}); left as it is (read-only cache)")
            return
        self.events.append(f"cache entry {entry.name[:12]} discarded ({why}); rebuilt")
        shutil.rmtree(entry, ignore_errors=True)


#: errors of a file system that cannot take a file (full, over quota, over the size limit, read-only)
_CANNOT_WRITE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM}


def _local_error(exc: OSError, tmp: Path) -> bool:
    """An error of this machine's file system (creating the download's directory), not the store's."""
    return exc.filename is not None and str(exc.filename).startswith(str(tmp.parent))


def _first(exc: BaseException) -> str:
    from .sources import first_line

    return first_line(exc)



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


def _tensor_bytes(t) -> bytes | memoryview:
    """The tensor's bytes for a hash: a view of its memory where numpy can give one (no copy of the weights)."""
    import io

    import torch

    t = t.detach().cpu().contiguous()
    try:
        return memoryview(t.view(-1).view(torch.uint8).numpy())
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
