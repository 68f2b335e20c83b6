"""The artifact cache: keys, atomic entries, hash-checked lookups, the disabled cache."""

from __future__ import annotations

import json

import pytest

from pytest_deploy.cache import ArtifactCache, file_digest, make_key


@pytest.fixture
def artifact(tmp_path):
    path = tmp_path / "model.so"
    path.write_bytes(b"compiled bytes" * 100)
    return path


def test_make_key_changes_with_every_part_and_only_then():
    base = make_key("aoti", "fingerprint", {"torch": "2.13.0"}, {"cpu": "x"})
    assert base == make_key("aoti", "fingerprint", {"torch": "2.13.0"}, {"cpu": "x"})
    assert len({base, make_key("tvm", "fingerprint", {"torch": "2.13.0"}, {"cpu": "x"}),
                make_key("aoti", "other", {"torch": "2.13.0"}, {"cpu": "x"}),
                make_key("aoti", "fingerprint", {"torch": "2.14.0"}, {"cpu": "x"}),
                make_key("aoti", "fingerprint", {"torch": "2.13.0"}, {"cpu": "y"})}) == 5


def test_store_then_lookup_returns_the_same_bytes(tmp_path, artifact):
    cache = ArtifactCache(tmp_path / "c")
    key = make_key("x")
    assert cache.lookup(key) is None
    entry = cache.store(key, {"model.so": artifact})
    assert cache.lookup(key) == entry
    assert (entry / "model.so").read_bytes() == artifact.read_bytes()
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["files"] == {"model.so": file_digest(artifact)}
    assert not [p for p in entry.parent.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "manifest"])
def test_a_damaged_entry_is_discarded_and_reported(tmp_path, artifact, damage):
    cache = ArtifactCache(tmp_path / "c")
    key = make_key("y")
    entry = cache.store(key, {"model.so": artifact})
    target = entry / "model.so"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:10])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[5] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "delete":
        target.unlink()
    else:
        (entry / "manifest.json").write_text("{not json")
    assert cache.lookup(key) is None
    assert not entry.exists()
    assert cache.events and "rebuilt" in cache.events[0]


def test_the_disabled_cache_keeps_nothing(artifact):
    cache = ArtifactCache(None)
    assert not cache.enabled
    assert cache.store("k" * 64, {"model.so": artifact}) is None
    assert cache.lookup("k" * 64) is None
    with cache.lock("k" * 64):
        pass


def test_lock_is_a_real_file_lock(tmp_path):
    from filelock import FileLock, Timeout

    cache = ArtifactCache(tmp_path / "c")
    key = make_key("z")
    with cache.lock(key):
        lock_file = next((tmp_path / "c").rglob("*.lock"))
        with pytest.raises(Timeout):
            FileLock(str(lock_file)).acquire(timeout=0.1)
