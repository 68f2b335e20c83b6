"""The shared cache store, and the manifests that make any cache entry trustworthy.

Every cache entry, local or shared, carries a manifest: its key, its writer's id, and each file's name and SHA-256,
signed (HMAC-SHA256) when a cache key is set. :func:`check_manifest` checks one before any of its names becomes a
path (:func:`check_name`, :func:`inside`), and :func:`make_manifest` writes one.

:class:`RemoteStore` keeps entries on object storage (any fsspec URL: ``s3://bucket/prefix``, ``gs://...``,
``az://...``), shared by CI runners: payload uploaded first and manifest last, so a reader never sees half an entry.
:func:`private_copy_dir` is the per-user directory of its local read-through copy outside pytest, and
:func:`describe_remote_error` says in one line why a store cannot be used.

How the cache uses all of this (the local store, the read-through copy, what a fault costs) is
:class:`pytest_deploy.cache.ArtifactCache`, with the cache keys, in :mod:`pytest_deploy.cache`.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import stat
import uuid
from pathlib import Path
from typing import Any

#: Bump when the layout of entries or what keys cover changes (3: manifests name their key and writer and may carry
#: a signature).
CACHE_VERSION = 3

#: The environment variable holding the secret that signs and verifies cache entries (--deploy-cache-key-env names
#: another).
KEY_ENV = "PYTEST_DEPLOY_CACHE_KEY"


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
