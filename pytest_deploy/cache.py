"""Content-addressed cache of built artifacts (compiled packages, shared libraries).

An entry is a directory named by the SHA-256 of everything that changes the artifact: the backend and
its options, the exported program (its graph code, weights and dim ranges), library versions and the
machine. Entries are written to a temporary directory and renamed into place, so a reader never sees
half an entry; every file's hash is kept in the entry's manifest and checked before the entry is used,
so a corrupt or truncated entry is rebuilt, never loaded. Writers of one key take a file lock, so two
xdist workers needing the same artifact build it once.

The cache may also live on object storage (any fsspec URL: ``s3://bucket/prefix``, ``gs://...``, ``az://...``),
shared by CI runners: :class:`RemoteStore`. Entries are then kept in a local directory too (a read-through
copy, so a hit costs one download), uploaded payload first and manifest last (a reader never sees half an
entry), and verified by hash when read, like local ones. When the store cannot be reached, the cache goes on
locally and says so once.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import json
import os
import platform
import re
import shutil
import stat
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

#: Bump when the layout of entries or what keys cover changes (3: manifests name their key and writer and may carry
#: a signature).
CACHE_VERSION = 3

#: The environment variable holding the secret that signs and verifies cache entries (--deploy-cache-key-env names
#: another).
KEY_ENV = "PYTEST_DEPLOY_CACHE_KEY"

#: A result-cache entry's one file.
RESULT_FILE = "result.json"


#: A manifest's file names: relative paths of plain components (letters, digits, ``.``, ``_``, ``-``) joined by ``/``.
_NAME_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
#: The longest name a manifest may give (a name is a file the cache writes).
MAX_NAME = 200
#: A writer's id (``uuid4().hex``) and a file's SHA-256, as manifests record them.
_WRITER = re.compile(r"[0-9a-f]{32}")
_DIGEST = re.compile(r"[0-9a-f]{64}")


class BadManifest(ValueError):
    """A manifest that cannot be trusted to name files: the entry is a cache miss."""


def check_name(name: object) -> str:
    """``name`` when it is a plain relative path (no absolute path, ``..``, ``.``, backslash, empty part, a name
    over :data:`MAX_NAME` characters, or the manifest's own name); else :class:`BadManifest`."""
    if not isinstance(name, str):
        raise BadManifest(f"file name {name!r} is not a string")
    if not name or len(name) > MAX_NAME:
        raise BadManifest(f"file name of {len(name)} characters (1 to {MAX_NAME} allowed)")
    if name == "manifest.json" or not all(_NAME_PART.fullmatch(part) for part in name.split("/")):
        raise BadManifest(f"file name {name[:80]!r} is not a plain relative path")
    return name


def inside(root: Path, name: str) -> Path:
    """``root / name``, refused (:class:`BadManifest`) when it resolves outside ``root`` (a symlink on the way)."""
    target = root / name
    real_root = os.path.realpath(root)
    if os.path.commonpath([real_root, os.path.realpath(target)]) != real_root:
        raise BadManifest(f"file name {name!r} leads outside the entry (a symlink)")
    return target


def check_manifest(manifest: object, *, writer: bool = True, key: str | None = None,
                   secret: bytes | None = None) -> dict[str, str]:
    """The ``{name: digest}`` of a manifest read from the cache, every name and digest checked, and the writer's id
    when ``writer``; with ``key``, the manifest must be that key's, and with ``secret`` its signature must be
    right; :class:`BadManifest` says what is wrong."""
    if not isinstance(manifest, dict):
        raise BadManifest("the manifest is not a JSON object")
    if manifest.get("version") != CACHE_VERSION:
        raise BadManifest(f"manifest version {str(manifest.get('version'))[:20]!r} is not {CACHE_VERSION}")
    if key is not None and manifest.get("key") != key:
        raise BadManifest("the manifest is another key's")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BadManifest("the manifest names no files")
    for name, digest in files.items():
        check_name(name)
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            raise BadManifest(f"the digest of {name!r} is not a SHA-256")
    if writer and not (isinstance(manifest.get("writer"), str) and _WRITER.fullmatch(manifest["writer"])):
        raise BadManifest(f"writer id {str(manifest.get('writer'))[:80]!r} is not one pytest-deploy writes")
    if secret is not None:
        given = manifest.get("signature")
        if not isinstance(given, str) or not given:
            raise Unsigned("it carries no signature, and a cache key is set")
        if not hmac.compare_digest(given, sign(secret, manifest)):
            raise Unsigned("its signature is wrong (written without this cache key, or edited)")
    return dict(files)


class Unsigned(BadManifest):
    """A manifest without a right signature while a cache key is set: its entry is never loaded."""


def sign(secret: bytes, manifest: dict) -> str:
    """HMAC-SHA256 of the manifest without its signature: its version, key, writer and every file's name and hash."""
    body = json.dumps({k: v for k, v in manifest.items() if k != "signature"}, sort_keys=True, separators=(",", ":"))
    return hmac.new(secret, body.encode(), hashlib.sha256).hexdigest()


def make_manifest(key: str, files: dict[str, str], secret: bytes | None, writer: str | None = None) -> dict:
    """A new entry's manifest (signed when there is a ``secret``)."""
    manifest: dict[str, Any] = {"version": CACHE_VERSION, "key": key, "writer": writer or uuid.uuid4().hex,
                                "files": files}
    if secret is not None:
        manifest["signature"] = sign(secret, manifest)
    return manifest


def secret_from_env(name: str | None = None) -> bytes | None:
    """The signing secret held by the environment variable ``name`` (default :data:`KEY_ENV`); None when unset."""
    value = os.environ.get(name or KEY_ENV, "")
    return value.encode() if value else None


def is_url(location: str | os.PathLike | None) -> bool:
    """An fsspec URL (``s3://...``) rather than a local path; ``file://`` URLs are local paths."""
    return isinstance(location, str) and "://" in location and not location.startswith("file://")


def local_path(location: str | os.PathLike) -> str:
    """``file:///shared/dir`` -> ``/shared/dir``; a path stays as it is."""
    text = os.fspath(location)
    return text[len("file://"):] if text.startswith("file://") else text


class RemoteStore:
    """Cache entries on an fsspec filesystem: ``<prefix>/<key[:2]>/<key>/manifest.json`` names the entry's files,
    which live under ``<key>/<writer>/``, one directory per writer: two runners storing one key at once each
    upload their own payload, and whichever manifest lands last is the entry, always whole."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self._fs, self.prefix = self._connect()
        self.prefix = self.prefix.rstrip("/")
        self._pid = os.getpid()

    def _connect(self):
        import fsspec

        # a new instance: fsspec's async filesystems (s3fs, gcsfs) refuse to be used in a process forked after
        # their creation ("This class is not fork-safe"), as pytest-deploy's check workers are
        return fsspec.core.url_to_fs(self.url, skip_instance_cache=True)

    @property
    def fs(self):
        """The filesystem, created again in a forked worker process."""
        if self._pid != os.getpid():
            self._fs, self._pid = self._connect()[0], os.getpid()
        return self._fs

    def _entry(self, key: str) -> str:
        return f"{self.prefix}/{key[:2]}/{key}"

    def probe(self) -> None:
        """Raise when the store cannot be used: no bucket, no credentials, no server."""
        bucket = self.prefix.split("/", 1)[0]  # "" for filesystems without buckets (their paths start with "/")
        if not bucket:
            return
        try:
            # listing raises what is wrong (credentials, connection); ``exists`` would turn every error into False.
            # The prefix, not the bucket's root: credentials scoped to the prefix (the usual IAM set-up) may not
            # list the root
            self.fs.ls(self.prefix, detail=False)
        except FileNotFoundError as exc:
            text = str(exc).lower()
            if "bucket" in text and ("not exist" in text or "nosuchbucket" in text):
                raise FileNotFoundError(f"bucket {bucket!r} does not exist") from None
            # an empty prefix: the first entry stored creates it

    def manifest(self, key: str) -> dict | None:
        """The entry's manifest as stored (to be checked by the caller), or None when there is none."""
        try:
            raw = self.fs.cat_file(f"{self._entry(key)}/manifest.json")
        except FileNotFoundError:
            return None
        try:
            manifest = json.loads(raw)
        except ValueError:
            raise BadManifest("the manifest is not JSON") from None
        return manifest

    def download(self, key: str, manifest: dict, into: Path) -> list[str]:
        """Download the files of a checked manifest (:func:`check_manifest`) into ``into``; the names of those whose
        bytes do not match their recorded hash. A payload that is not there raises ``FileNotFoundError``, a file that
        cannot be written here :class:`LocalFault`, anything else is the store's."""
        writer, files = manifest["writer"], manifest["files"]
        bad = []
        for name, digest in files.items():
            target = into / name
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise LocalFault(exc) from None
            inside(into, name)
            if self._copy(f"{self._entry(key)}/{writer}/{name}", target) != digest:
                bad.append(name)
        return bad

    def _copy(self, source: str, target: Path) -> str:
        """Stream ``source`` into ``target``; the SHA-256 of the bytes read. Errors writing here are a
        :class:`LocalFault` (a full disk), told apart from the store's own."""
        h = hashlib.sha256()
        with self.fs.open(source, "rb") as src:
            try:
                out = open(target, "wb")  # closed below: its errors are local ones
            except OSError as exc:
                raise LocalFault(exc) from None
            try:
                while True:
                    chunk = src.read(1 << 20)
                    if not chunk:
                        break
                    h.update(chunk)
                    try:
                        out.write(chunk)
                    except OSError as exc:
                        raise LocalFault(exc) from None
            finally:
                try:
                    out.close()
                except OSError as exc:
                    raise LocalFault(exc) from None  # a failing flush is the local fault
        return h.hexdigest()

    def put(self, key: str, entry: Path, manifest: dict) -> None:
        """Upload ``entry``'s files under the manifest's writer, then the manifest that makes them the entry."""
        for name in manifest["files"]:
            self.fs.put_file(str(entry / name), f"{self._entry(key)}/{manifest['writer']}/{name}")
        self.fs.pipe_file(f"{self._entry(key)}/manifest.json", json.dumps(manifest).encode())

    def discard(self, key: str, writer: str) -> None:
        """Remove the entry written by ``writer``, unless another writer's manifest has replaced it meanwhile."""
        try:
            current = self.manifest(key)
        except BadManifest:
            current = None
        if isinstance(current, dict) and current.get("writer") == writer:
            self.fs.rm_file(f"{self._entry(key)}/manifest.json")
            self.fs.rm(f"{self._entry(key)}/{writer}", recursive=True)


class LocalFault(Exception):
    """A downloaded file could not be written here (a full disk, a quota): a miss, the shared entry being fine."""


class UnsafeDirectory(Exception):
    """The per-user directory for the local copy of a shared store is not this user's own."""


def user_cache_dir() -> Path:
    """This user's cache directory for pytest-deploy: platformdirs' when installed, else ``$XDG_CACHE_HOME`` (default
    ``~/.cache``) ``/pytest-deploy``."""
    try:
        import platformdirs
    except ImportError:
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pytest-deploy"
    return Path(platformdirs.user_cache_dir("pytest-deploy"))


def private_copy_dir(url: str) -> Path:
    """The local copy of the shared store ``url`` outside pytest (``verify()``): ``<user cache dir>/shared/<hash of
    the URL>``, its directories created 0700 and each checked to be a directory (no symlink) owned by this user;
    :class:`UnsafeDirectory` says which is not."""
    base = user_cache_dir()
    base.parent.mkdir(parents=True, exist_ok=True)
    path = base / "shared" / hashlib.sha256(url.encode()).hexdigest()[:16]
    uid = os.getuid() if hasattr(os, "getuid") else None
    for directory in (base, base / "shared", path):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700)
        info = os.lstat(directory)
        if not stat.S_ISDIR(info.st_mode):
            raise UnsafeDirectory(f"the local copy's directory {directory} is not a directory (a symlink?); remove "
                                  "it, or set XDG_CACHE_HOME to a directory of your own")
        if uid is not None and info.st_uid != uid:
            raise UnsafeDirectory(f"the local copy's directory {directory} is owned by user id {info.st_uid}, not by "
                                  f"you ({uid}), who could fill it with entries; remove it, or set XDG_CACHE_HOME to "
                                  "a directory of your own")
        if info.st_mode & 0o077:  # our own, made by something else with a wider mode: others could write to it
            os.chmod(directory, 0o700)
    return path


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


def describe_remote_error(url: str, exc: BaseException) -> str:
    """Why a shared store cannot be used, and what to do, in one line."""
    from .sources import first_line

    text, name = str(exc), type(exc).__name__
    scheme = url.split("://", 1)[0]
    if isinstance(exc, ValueError) and "Protocol not known" in text:
        return f"unknown URL scheme {scheme!r} (fsspec knows s3://, gs://, az://, file://, ...)"
    if isinstance(exc, ImportError):
        extra = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}.get(scheme)
        hint = f"pip install 'pytest-deploy[{extra}]'" if extra else f"install the fsspec filesystem for {scheme}://"
        return f"the {scheme}:// filesystem is not installed ({first_line(exc)}); {hint}"
    if "credential" in text.lower() or name in ("NoCredentialsError", "PartialCredentialsError"):
        return f"no credentials for {scheme}:// ({first_line(exc)}); set them (for S3: AWS_ACCESS_KEY_ID and " \
               "AWS_SECRET_ACCESS_KEY, or a profile)"
    if isinstance(exc, PermissionError) or "AccessDenied" in text or "Forbidden" in text:
        return f"the store refuses access ({first_line(exc)}); check the credentials' permissions (read-only?)"
    if isinstance(exc, FileNotFoundError) or "NoSuchBucket" in text:
        return f"{first_line(exc)}; create it, or fix the URL"
    return f"{first_line(exc)} (is the store reachable from here?)"


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
