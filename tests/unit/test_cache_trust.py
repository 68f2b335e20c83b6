"""A cache that cannot be turned against its users: hostile manifests (local and on a shared store, here fsspec's
``memory://``) never make the cache write outside its directory or load what they name."""

from __future__ import annotations

import hashlib
import json
import uuid
import warnings
from pathlib import Path

import pytest

from pytest_deploy.cache import ArtifactCache, make_key
from pytest_deploy.check import warn_cache
from pytest_deploy.errors import CacheWarning
from pytest_deploy.shared_cache import CACHE_VERSION

PAYLOAD = b"compiled bytes" * 10
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def memory_url():
    """A fresh prefix of fsspec's in-memory filesystem (one per test), removed afterwards."""
    import fsspec

    prefix = f"bucket-{uuid.uuid4().hex[:8]}/team"
    yield f"memory://{prefix}"
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{prefix}"):
        fs.rm(f"/{prefix}", recursive=True)


def _memory():
    import fsspec

    return fsspec.filesystem("memory")


def plant_remote(url: str, key: str, manifest: dict, payloads: dict[str, bytes]) -> None:
    """Write a manifest and payload objects into the shared store, as anyone with write access could."""
    fs = _memory()
    if isinstance(manifest, dict):
        manifest = {"version": CACHE_VERSION, "key": key, **manifest}
    base = f"/{url.removeprefix('memory://')}/{key[:2]}/{key}"
    for path, data in payloads.items():
        fs.pipe_file(f"{base}/{path}", data)
    fs.pipe_file(f"{base}/manifest.json", json.dumps(manifest).encode())


def shown(cache: ArtifactCache) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_cache(cache)
    return [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]


def files_under(path) -> set[str]:
    return {str(p) for p in path.rglob("*")}


WRITER = uuid.uuid4().hex

HOSTILE_NAMES = {
    "absolute": "{outside}/planted.so",
    "dotdot": "../../../outside/planted.so",
    "dotdot-inside": "sub/../../../../outside/planted.so",
    "backslash": "..\\..\\..\\outside\\planted.so",
    "oversized": "a" * 5000,
    "manifest": "manifest.json",
    "empty": "",
    "dot": "./model.so",
}


@pytest.mark.parametrize("name", list(HOSTILE_NAMES), ids=list(HOSTILE_NAMES))
def test_a_shared_manifest_naming_a_path_outside_the_entry_is_a_miss_and_writes_nothing(tmp_path, memory_url, name):
    outside = tmp_path / "outside"
    outside.mkdir()
    local = tmp_path / "local"
    key = make_key("hostile", name)
    hostile = HOSTILE_NAMES[name].format(outside=outside)
    plant_remote(memory_url, key, {"writer": WRITER, "files": {hostile: DIGEST}},
                 {f"{WRITER}/{hostile.lstrip('/')}": PAYLOAD} if hostile else {})
    cache = ArtifactCache(memory_url, local=local)
    before = files_under(tmp_path)
    assert cache.lookup(key) is None
    assert cache.remote is not None  # one bad entry does not turn the shared cache off
    assert not list(outside.iterdir())  # nothing written outside the cache
    new = files_under(tmp_path) - before
    assert all(Path(p).is_dir() and Path(p).is_relative_to(local) for p in new), new  # no file, only the cache's dirs
    messages = shown(cache)
    assert len(messages) == 1 and key in messages[0] and "never loaded" in messages[0], messages
    assert cache.lookup(key) is None and shown(cache) == []  # reported once


@pytest.mark.parametrize("writer", ["../../outside", "/abs", "", None, 7, "A" * 32])
def test_a_writer_id_not_in_its_own_format_is_a_miss(tmp_path, memory_url, writer):
    key = make_key("writer", str(writer))
    manifest: dict = {"files": {"model.so": DIGEST}}
    if writer is not None:
        manifest["writer"] = writer
    plant_remote(memory_url, key, manifest, {f"{writer}/model.so": PAYLOAD})
    cache = ArtifactCache(memory_url, local=tmp_path / "local")
    assert cache.lookup(key) is None
    assert len(shown(cache)) == 1
    assert not (tmp_path / "outside").exists()


@pytest.mark.parametrize("manifest", [[], {"files": []}, {"files": {}}, {"files": {"model.so": "not-a-digest"}},
                                      {"files": {"model.so": 3}}], ids=["list", "files-list", "no-files", "digest",
                                                                        "digest-int"])
def test_a_malformed_shared_manifest_is_a_miss(tmp_path, memory_url, manifest):
    key = make_key("malformed", json.dumps(manifest))
    if isinstance(manifest, dict):
        manifest = {**manifest, "writer": WRITER}
    plant_remote(memory_url, key, manifest, {f"{WRITER}/model.so": PAYLOAD})
    cache = ArtifactCache(memory_url, local=tmp_path / "local")
    assert cache.lookup(key) is None
    assert len(shown(cache)) == 1 and cache.remote is not None


def _local_entry(cache: ArtifactCache, key: str, files: dict[str, str]):
    entry = cache.root / key[:2] / key
    entry.mkdir(parents=True)
    manifest = {"version": CACHE_VERSION, "key": key, "writer": WRITER, "files": files}
    (entry / "manifest.json").write_text(json.dumps(manifest))
    return entry


def test_a_local_entry_whose_file_is_a_symlink_out_of_it_is_never_used(tmp_path):
    secret = tmp_path / "elsewhere" / "model.so"
    secret.parent.mkdir()
    secret.write_bytes(PAYLOAD)
    cache = ArtifactCache(tmp_path / "c")
    key = make_key("symlink-file")
    entry = _local_entry(cache, key, {"model.so": DIGEST})
    (entry / "model.so").symlink_to(secret)
    assert cache.lookup(key) is None
    assert not entry.exists() and secret.read_bytes() == PAYLOAD  # the link is removed, not what it points to
    messages = shown(cache)
    assert len(messages) == 1 and key in messages[0]


def test_a_local_entry_reaching_out_through_a_symlinked_directory_is_never_used(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "model.so").write_bytes(PAYLOAD)
    cache = ArtifactCache(tmp_path / "c")
    key = make_key("symlink-dir")
    entry = _local_entry(cache, key, {"sub/model.so": DIGEST})
    (entry / "sub").symlink_to(elsewhere)
    assert cache.lookup(key) is None
    assert (elsewhere / "model.so").read_bytes() == PAYLOAD
    assert len(shown(cache)) == 1


def test_a_local_entry_directory_that_is_a_symlink_is_never_used(tmp_path):
    cache = ArtifactCache(tmp_path / "c")
    key = make_key("symlink-entry")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "model.so").write_bytes(PAYLOAD)
    (elsewhere / "manifest.json").write_text(json.dumps({"version": CACHE_VERSION, "key": key, "writer": WRITER,
                                                         "files": {"model.so": DIGEST}}))
    (cache.root / key[:2]).mkdir(parents=True)
    (cache.root / key[:2] / key).symlink_to(elsewhere)
    assert cache.lookup(key) is None
    assert (elsewhere / "model.so").read_bytes() == PAYLOAD  # not removed through the link
    assert len(shown(cache)) == 1


@pytest.mark.parametrize("name", ["../x.so", "/abs.so", "a\\b.so", "manifest.json"])
def test_storing_under_a_bad_name_is_refused(tmp_path, name):
    from pytest_deploy.shared_cache import BadManifest

    source = tmp_path / "src.so"
    source.write_bytes(PAYLOAD)
    with pytest.raises(BadManifest):
        ArtifactCache(tmp_path / "c").store(make_key("store", name), {name: source})


def test_a_good_shared_entry_is_still_used(tmp_path, memory_url):
    """The checks above refuse bad manifests only: what a writer stored is read back."""
    source = tmp_path / "src" / "model.so"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    key = make_key("good")
    ArtifactCache(memory_url, local=tmp_path / "writer").store(key, {"model.so": source, "sub/notes.json": source})
    reader = ArtifactCache(memory_url, local=tmp_path / "reader")
    entry = reader.lookup(key)
    assert entry is not None and (entry / "sub" / "notes.json").read_bytes() == PAYLOAD
    assert shown(reader) == []


# ------------------------------------------------------------------------------------------- signed entries

KEY_ENV = "PYTEST_DEPLOY_CACHE_KEY"


def _source(tmp_path):
    source = tmp_path / "src" / "model.so"
    source.parent.mkdir(exist_ok=True)
    source.write_bytes(PAYLOAD)
    return source


def test_with_a_key_every_manifest_is_signed_and_read_back(tmp_path, memory_url, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "s3cret")
    key = make_key("signed")
    writer = ArtifactCache(memory_url, local=tmp_path / "writer")
    entry = writer.store(key, {"model.so": _source(tmp_path)})
    manifest = json.loads((entry / "manifest.json").read_text())
    assert len(manifest["signature"]) == 64 and manifest["key"] == key
    assert writer.lookup(key) == entry  # the local copy verifies too
    reader = ArtifactCache(memory_url, local=tmp_path / "reader")
    assert reader.lookup(key) is not None and shown(reader) == []


@pytest.mark.parametrize("writer_key", [None, "another secret"], ids=["unsigned", "other-key"])
@pytest.mark.parametrize("where", ["shared", "local"])
def test_with_a_key_an_entry_without_a_right_signature_is_never_used(tmp_path, memory_url, monkeypatch, writer_key,
                                                                      where):
    if writer_key is None:
        monkeypatch.delenv(KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(KEY_ENV, writer_key)
    key = make_key("forged", where)
    root = memory_url if where == "shared" else tmp_path / "c"
    ArtifactCache(root, local=tmp_path / "writer").store(key, {"model.so": _source(tmp_path)})
    monkeypatch.setenv(KEY_ENV, "s3cret")
    reader = ArtifactCache(root, local=tmp_path / "reader")
    assert reader.lookup(key) is None and reader.lookup(key) is None
    messages = shown(reader)
    assert len(messages) == 1 and key in messages[0], messages  # reported once
    assert ("no signature" if writer_key is None else "signature is wrong") in messages[0]
    if where == "shared":
        assert reader.remote is not None  # the shared cache stays on


def test_a_signed_manifest_edited_by_a_writer_without_the_key_is_never_used(tmp_path, memory_url, monkeypatch):
    """A writer of the bucket swaps the payload and fixes its hash in the manifest: the signature no longer fits."""
    monkeypatch.setenv(KEY_ENV, "s3cret")
    key = make_key("edited")
    ArtifactCache(memory_url, local=tmp_path / "writer").store(key, {"model.so": _source(tmp_path)})
    fs = _memory()
    base = f"/{memory_url.removeprefix('memory://')}/{key[:2]}/{key}"
    manifest = json.loads(fs.cat_file(f"{base}/manifest.json"))
    evil = b"evil library"
    fs.pipe_file(f"{base}/{manifest['writer']}/model.so", evil)
    manifest["files"]["model.so"] = hashlib.sha256(evil).hexdigest()
    fs.pipe_file(f"{base}/manifest.json", json.dumps(manifest).encode())
    reader = ArtifactCache(memory_url, local=tmp_path / "reader")
    assert reader.lookup(key) is None
    assert not list((tmp_path / "reader").rglob("model.so"))  # not even downloaded
    assert "signature is wrong" in shown(reader)[0]


def test_a_forged_result_is_never_reused_when_a_key_is_set(tmp_path, monkeypatch):
    """A passing check's result, forged in the cache by someone without the key (its hash fixed in the manifest):
    with the key set, the check runs and its verdict is the one computed here."""
    import torch

    import pytest_deploy
    from pytest_deploy import tensor
    from pytest_deploy.cache import RESULT_FILE

    monkeypatch.delenv(KEY_ENV, raising=False)
    cache_dir = tmp_path / "c"

    def check():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
        return pytest_deploy.verify(model, "export", inputs=[tensor("batch", 4)], dims={"batch": (1, 3)}, examples=4,
                                    cache_dir=cache_dir)

    assert not check().cached
    forged = 0
    for manifest_path in cache_dir.rglob("manifest.json"):
        entry = manifest_path.parent
        if (entry / RESULT_FILE).exists():
            data = json.loads((entry / RESULT_FILE).read_text())
            data.update(message="FORGED", max_abs_error=123.0)
            (entry / RESULT_FILE).write_text(json.dumps(data))
            manifest = json.loads(manifest_path.read_text())
            manifest["files"][RESULT_FILE] = hashlib.sha256((entry / RESULT_FILE).read_bytes()).hexdigest()
            manifest_path.write_text(json.dumps(manifest))
            forged += 1
    assert forged == 1
    assert check().message == "FORGED"  # without a key, hashes alone cannot tell a forged entry
    monkeypatch.setenv(KEY_ENV, "s3cret")
    with pytest.warns(CacheWarning, match="no signature"):
        result = check()
    assert not result.cached and result.message != "FORGED" and result.max_abs_error != 123.0
    assert any("not used" in e or "discarded" in e for e in result.details.get("cache_events", [])), result.details
    again = check()  # rebuilt and signed: now reused
    assert again.cached and again.message != "FORGED"


# ------------------------------------------------------------------------------------------- read-only

def _tree(fs, url):
    base = f"/{url.removeprefix('memory://')}"
    return {path: fs.cat_file(path) for path in fs.find(base)}


def test_a_read_only_local_cache_reads_and_never_writes(tmp_path):
    source = _source(tmp_path)
    root = tmp_path / "c"
    key, other = make_key("ro"), make_key("ro-other")
    entry = ArtifactCache(root).store(key, {"model.so": source})
    broken = ArtifactCache(root).store(other, {"model.so": source})
    (broken / "model.so").write_bytes(b"truncated")
    before = {p: p.read_bytes() if p.is_file() else None for p in root.rglob("*")}
    cache = ArtifactCache(root, readonly=True)
    assert cache.lookup(key) == entry  # read and verified
    assert cache.lookup(other) is None  # verified: the damaged entry is not used ...
    with cache.lock(make_key("new")):
        assert cache.store(make_key("new"), {"model.so": source}) is None
    cache.store_result(make_key("result"), type("R", (), {"to_json": lambda self: {}})())
    after = {p: p.read_bytes() if p.is_file() else None for p in root.rglob("*")}
    assert after == before  # ... nor removed, and nothing new was written (no lock file either)


def test_a_read_only_shared_cache_reads_and_never_uploads_or_discards(tmp_path, memory_url):
    source = _source(tmp_path)
    key, corrupt = make_key("ro-shared"), make_key("ro-corrupt")
    writer = ArtifactCache(memory_url, local=tmp_path / "writer")
    writer.store(key, {"model.so": source})
    writer.store(corrupt, {"model.so": source})
    fs = _memory()
    payload = next(p for p in fs.find(f"/{memory_url.removeprefix('memory://')}/{corrupt[:2]}")
                   if p.endswith("model.so"))
    fs.pipe_file(payload, b"corrupted")
    before = _tree(fs, memory_url)
    cache = ArtifactCache(memory_url, local=tmp_path / "reader", readonly=True)
    entry = cache.lookup(key)
    assert entry is not None and (entry / "model.so").read_bytes() == PAYLOAD
    assert cache.lookup(corrupt) is None
    assert cache.store(make_key("ro-new"), {"model.so": source}) is None
    assert _tree(fs, memory_url) == before and cache.remote is not None


# ------------------------------------------------------------------------------------------- faults are misses

def _payload_path(fs, url, key):
    return next(p for p in fs.find(f"/{url.removeprefix('memory://')}/{key[:2]}/{key}") if p.endswith("model.so"))


def test_a_lifecycle_expired_payload_is_a_miss_the_next_writer_repairs(tmp_path, memory_url):
    source = _source(tmp_path)
    key = make_key("expired")
    ArtifactCache(memory_url, local=tmp_path / "writer").store(key, {"model.so": source})
    fs = _memory()
    fs.rm_file(_payload_path(fs, memory_url, key))  # expired before its manifest
    reader = ArtifactCache(memory_url, local=tmp_path / "reader")
    assert reader.lookup(key) is None
    assert reader.remote is not None and reader.remote_error is None  # the shared cache stays on
    assert any("incomplete" in e and "stored again" in e for e in reader.events), reader.events
    assert reader.store(key, {"model.so": source}) is not None  # the rebuild repairs the shared entry
    third = ArtifactCache(memory_url, local=tmp_path / "third")
    entry = third.lookup(key)
    assert entry is not None and (entry / "model.so").read_bytes() == PAYLOAD


def test_a_payload_damaged_in_the_store_is_downloaded_twice_then_discarded(tmp_path, memory_url):
    source = _source(tmp_path)
    key, other = make_key("truncated"), make_key("untouched")
    writer = ArtifactCache(memory_url, local=tmp_path / "writer")
    writer.store(key, {"model.so": source})
    writer.store(other, {"model.so": source})
    fs = _memory()
    fs.pipe_file(_payload_path(fs, memory_url, key), PAYLOAD[:7])  # truncated
    reader = ArtifactCache(memory_url, local=tmp_path / "reader")
    assert reader.lookup(key) is None
    assert any("downloaded again" in e for e in reader.events)
    assert any("discarded" in e and "twice" in e for e in reader.events), reader.events
    assert not fs.exists(f"/{memory_url.removeprefix('memory://')}/{key[:2]}/{key}/manifest.json")
    assert reader.remote is not None and reader.lookup(other) is not None  # the rest of the store is still used


def test_a_download_damaged_once_is_downloaded_again_and_the_shared_entry_kept(tmp_path, memory_url, monkeypatch):
    source = _source(tmp_path)
    key = make_key("transient")
    ArtifactCache(memory_url, local=tmp_path / "writer").store(key, {"model.so": source})
    reader = ArtifactCache(memory_url, local=tmp_path / "reader")
    remote = reader.remote
    original, calls = remote._copy, []

    def flaky(src, target):  # a connection that cut the first transfer short
        calls.append(src)
        if len(calls) == 1:
            target.write_bytes(PAYLOAD[:3])
            return hashlib.sha256(PAYLOAD[:3]).hexdigest()
        return original(src, target)

    monkeypatch.setattr(remote, "_copy", flaky)
    entry = reader.lookup(key)
    assert entry is not None and (entry / "model.so").read_bytes() == PAYLOAD and len(calls) == 2
    assert ArtifactCache(memory_url, local=tmp_path / "third").lookup(key) is not None  # not discarded


#: A store on this machine's disk that both processes see (fsspec's local filesystem making parent directories, as
#: object stores need none), under a URL scheme of its own so that pytest-deploy treats it as a shared store.
SHARED_FS = """
import fsspec
from fsspec.implementations.local import LocalFileSystem


class SharedTest(LocalFileSystem):
    protocol = "sharedtest"

    def __init__(self, **kwargs):
        super().__init__(auto_mkdir=True, **kwargs)

    @classmethod
    def _strip_protocol(cls, path):
        return "/" + str(path).removeprefix("sharedtest://").lstrip("/")


fsspec.register_implementation("sharedtest", SharedTest, clobber=True)
"""

FULL_DISK = SHARED_FS + r"""
import resource, signal, sys
from pathlib import Path
from pytest_deploy.cache import ArtifactCache

url, local, source, key = sys.argv[1:5]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
limit = 1000
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
cache = ArtifactCache(url, local=local)
assert cache.lookup(key) is None, "a download that cannot be written is a miss"
assert cache.store(key, {"model.so": source}) is None, "nothing stored from a full disk"
assert cache.remote is not None, cache.remote_error
print("\n".join(cache.events))
"""


def test_two_writers_of_one_key_one_with_a_full_disk_the_shared_entry_survives(tmp_path):
    """Two processes share a store (on this machine's disk, so both see it); the second one's disk takes no
    file over 1000 bytes. Its download and its own store fail here: a miss, and the first writer's entry stays."""
    import subprocess
    import sys

    exec(SHARED_FS, {})
    url = f"sharedtest://{tmp_path / 'store'}"
    big = tmp_path / "src" / "model.so"
    big.parent.mkdir()
    big.write_bytes(PAYLOAD * 100)  # over the second process's limit
    key = make_key("full-disk")
    ArtifactCache(url, local=tmp_path / "first").store(key, {"model.so": big})
    out = subprocess.run([sys.executable, "-c", FULL_DISK, url, str(tmp_path / "second"), str(big), key],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "cannot be written here" in out.stdout and "shared entry kept" in out.stdout, out.stdout
    entry = ArtifactCache(url, local=tmp_path / "third").lookup(key)
    assert entry is not None and (entry / "model.so").read_bytes() == big.read_bytes()


def test_outside_pytest_the_local_copy_is_a_private_directory_of_the_users_own(tmp_path, memory_url, monkeypatch):
    import stat

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setitem(__import__("sys").modules, "platformdirs", None)  # the XDG route, whatever is installed
    made_before = tmp_path / "xdg" / "pytest-deploy"
    made_before.mkdir(parents=True)
    made_before.chmod(0o777)  # the user's own, left writable for others by something else: tightened
    cache = ArtifactCache(memory_url)
    assert cache.remote is not None
    assert cache.root.is_relative_to(tmp_path / "xdg" / "pytest-deploy" / "shared")
    for directory in (cache.root, cache.root.parent, cache.root.parent.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory


def test_a_local_copy_directory_another_user_owns_is_refused(tmp_path, memory_url, monkeypatch):
    import os

    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("giving a directory to another user needs root")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setitem(__import__("sys").modules, "platformdirs", None)
    planted = tmp_path / "xdg" / "pytest-deploy"
    planted.mkdir(parents=True)
    os.chown(planted, 4242, 4242)  # pre-created by another local user
    cache = ArtifactCache(memory_url)
    assert cache.remote is None and not cache.enabled
    messages = shown(cache)
    assert len(messages) == 1 and "owned by user id 4242" in messages[0] and "XDG_CACHE_HOME" in messages[0]


def test_a_local_copy_directory_that_is_a_symlink_is_refused(tmp_path, memory_url, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setitem(__import__("sys").modules, "platformdirs", None)
    (tmp_path / "xdg").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "xdg" / "pytest-deploy").symlink_to(tmp_path / "elsewhere")
    cache = ArtifactCache(memory_url)
    assert not cache.enabled and "not a directory" in (cache.remote_error or "")


def test_the_probe_lists_the_prefix_it_uses_not_the_bucket_root(tmp_path):
    """Credentials scoped to a prefix may not list the bucket's root: the store is still used."""
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    class Scoped(MemoryFileSystem):
        protocol = "scopedtest"

        @classmethod
        def _strip_protocol(cls, path):
            return str(path).removeprefix("scopedtest://").strip("/")

        def ls(self, path, detail=False, **kwargs):
            if path.strip("/") == "bucket":
                raise PermissionError("AccessDenied: not allowed to list the bucket's root")
            raise FileNotFoundError(path)  # an empty prefix, before the first entry

    fsspec.register_implementation("scopedtest", Scoped, clobber=True)
    cache = ArtifactCache("scopedtest://bucket/team-a", local=tmp_path / "local")
    assert cache.remote is not None, cache.remote_error


def test_a_named_key_variable_that_is_not_set_is_one_warning_and_no_signing(tmp_path, monkeypatch):
    monkeypatch.delenv("CI_DEPLOY_KEY", raising=False)
    cache = ArtifactCache(tmp_path / "c", key_env="CI_DEPLOY_KEY")
    entry = cache.store(make_key("unset"), {"model.so": _source(tmp_path)})
    assert "signature" not in json.loads((entry / "manifest.json").read_text())
    messages = shown(cache)
    assert len(messages) == 1 and "CI_DEPLOY_KEY" in messages[0] and "not set" in messages[0]
    monkeypatch.setenv("CI_DEPLOY_KEY", "s3cret")
    signed = ArtifactCache(tmp_path / "d", key_env="CI_DEPLOY_KEY")
    entry = signed.store(make_key("set"), {"model.so": _source(tmp_path)})
    assert "signature" in json.loads((entry / "manifest.json").read_text()) and shown(signed) == []
    assert ArtifactCache(tmp_path / "e", key_env="CI_DEPLOY_KEY", readonly=True).pending_warnings == []
