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
    plant_remote(memory_url, key, {"version": 2, "writer": WRITER, "files": {hostile: DIGEST}},
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
    manifest = {"version": 2, "files": {"model.so": DIGEST}}
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
    (entry / "manifest.json").write_text(json.dumps({"version": 2, "files": files}))
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
    (elsewhere / "manifest.json").write_text(json.dumps({"version": 2, "files": {"model.so": DIGEST}}))
    (cache.root / key[:2]).mkdir(parents=True)
    (cache.root / key[:2] / key).symlink_to(elsewhere)
    assert cache.lookup(key) is None
    assert (elsewhere / "model.so").read_bytes() == PAYLOAD  # not removed through the link
    assert len(shown(cache)) == 1


@pytest.mark.parametrize("name", ["../x.so", "/abs.so", "a\\b.so", "manifest.json"])
def test_storing_under_a_bad_name_is_refused(tmp_path, name):
    from pytest_deploy.cache import BadManifest

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
