"""A cache shared by CI runners on object storage: a real S3-protocol server (moto's standalone server, started
here on 127.0.0.1 and stopped by its PID), reached through s3fs, as a user's CI would reach S3.

Two "runners" are two copies of one project in different directories, each with its own pytest cache (the local
read-through copy); what the first stores, the second reuses, verified by hash.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("s3fs", reason="the shared-cache tests need s3fs: pip install 'pytest-deploy[s3]'")
pytest.importorskip("moto", reason="the shared-cache tests start moto's S3 server: pip install 'moto[server]'")

BUCKET = "deploy-cache"

PROJECT = '''
import torch
from pytest_deploy import deployable, tensor


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x).relu()


# tvm checks run in a forked worker process, which must reach the store on its own connection
@deployable(backends=["trace", "script", "export", "tvm"], inputs=[tensor("batch", 4)], dims={"batch": (1, 3)},
            examples=3)
def test_net():
    return Net().eval()
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.2)
    proc.kill()
    pytest.skip("moto's S3 server did not start on 127.0.0.1 within 30 s")


@pytest.fixture
def s3(monkeypatch):
    """A fresh S3 server with one bucket; the AWS variables point s3fs (and the pytest runs below) at it."""
    port = _free_port()
    proc = _start_server(port)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir(BUCKET)
    try:
        yield {"fs": fs, "proc": proc, "url": f"s3://{BUCKET}/team-a"}
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def runner(tmp_path, name: str):
    """One CI runner: its own checkout of the project, its own pytest cache."""
    root = tmp_path / name / "checkout"
    root.mkdir(parents=True)
    (root / "test_project.py").write_text(PROJECT)
    return root


def run(root, *args, env=None):
    cmd = [sys.executable, "-m", "pytest", "-q", "-W", "error::pytest_deploy.errors.CacheWarning", *args]
    return subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def results(root) -> dict[str, dict]:
    return {r["backend"]: r for r in json.loads((root / "report.json").read_text())["results"]}


def test_a_second_runner_in_another_directory_reuses_every_result(s3, tmp_path):
    first, second = runner(tmp_path, "runner-1"), runner(tmp_path, "runner-2")
    out = run(first, f"--deploy-cache-dir={s3['url']}", "--deploy-report=report.json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert not any(r["cached"] for r in results(first).values())
    assert s3["fs"].find(f"{BUCKET}/team-a"), "nothing was uploaded"
    out = run(second, f"--deploy-cache-dir={s3['url']}", "--deploy-report=report.json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert all(r["cached"] for r in results(second).values()), results(second)


def test_a_second_runner_rebuilding_gets_the_artifacts_from_the_shared_cache(s3, tmp_path):
    first, second = runner(tmp_path, "runner-1"), runner(tmp_path, "runner-2")
    assert run(first, f"--deploy-cache-dir={s3['url']}").returncode == 0
    out = run(second, f"--deploy-cache-dir={s3['url']}", "--deploy-recheck", "--deploy-report=report.json")
    assert out.returncode == 0, out.stdout + out.stderr
    for backend in ("script", "export", "tvm"):  # the backends whose artifacts are cached (tvm: in a worker process)
        entry = results(second)[backend]
        assert entry["cached"] is True  # the artifact, this time
        assert any("downloaded from the shared cache" in e for e in entry["details"]["cache_events"]), entry


def test_a_corrupted_or_truncated_remote_object_is_detected_and_rebuilt(s3, tmp_path):
    first, second = runner(tmp_path, "runner-1"), runner(tmp_path, "runner-2")
    assert run(first, f"--deploy-cache-dir={s3['url']}").returncode == 0
    fs = s3["fs"]
    payloads = [p for p in fs.find(f"{BUCKET}/team-a") if not p.endswith("manifest.json")]
    for i, path in enumerate(payloads):  # every second one truncated, the others with one byte changed
        data = fs.cat_file(path)
        fs.pipe_file(path, data[: len(data) // 2] if i % 2 else bytes([data[0] ^ 1]) + data[1:])
    out = run(second, f"--deploy-cache-dir={s3['url']}", "--deploy-report=report.json")
    assert out.returncode == 0, out.stdout + out.stderr
    entries = results(second)
    assert all(r["outcome"] == "passed" and not r["cached"] for r in entries.values()), entries
    assert any("shared cache entry" in e and "does not match its recorded hash" in e
               for r in entries.values() for e in r["details"].get("cache_events", []))
    # rebuilt and stored again: a third runner is answered from the shared cache
    third = runner(tmp_path, "runner-3")
    out = run(third, f"--deploy-cache-dir={s3['url']}", "--deploy-report=report.json")
    assert out.returncode == 0 and all(r["cached"] for r in results(third).values())


LIGHT = PROJECT.replace('"trace", "script", "export", "tvm"', '"trace", "script", "export"')


def test_a_lifecycle_expired_payload_is_a_miss_and_the_run_repairs_it_with_the_shared_cache_on(s3, tmp_path):
    """A bucket lifecycle rule expired every payload before its manifest: the next run goes on with the shared cache
    (no CacheWarning: -W error), rebuilds, stores again, and a third runner is answered from the shared cache."""
    first, second, third = (runner(tmp_path, f"runner-{i}") for i in (1, 2, 3))
    for root in (first, second, third):
        (root / "test_project.py").write_text(LIGHT)
    assert run(first, f"--deploy-cache-dir={s3['url']}").returncode == 0
    fs = s3["fs"]
    payloads = [p for p in fs.find(f"{BUCKET}/team-a") if not p.endswith("manifest.json")]
    assert payloads
    fs.rm(payloads)
    out = run(second, f"--deploy-cache-dir={s3['url']}", "--deploy-report=report.json")
    assert out.returncode == 0, out.stdout + out.stderr
    entries = results(second)
    assert all(r["outcome"] == "passed" and not r["cached"] for r in entries.values()), entries
    assert any("incomplete" in e for r in entries.values() for e in r["details"].get("cache_events", []))
    assert not any("shared_cache_error" in r["details"] for r in entries.values())  # the shared cache stayed on
    out = run(third, f"--deploy-cache-dir={s3['url']}", "--deploy-report=report.json")
    assert out.returncode == 0 and all(r["cached"] for r in results(third).values()), out.stdout


def test_hostile_and_unsigned_entries_on_s3_write_nothing_outside_and_are_never_used(s3, tmp_path, monkeypatch):
    """Against a real S3 protocol: manifests naming absolute paths, '..', an oversized name or a forged writer are
    misses that write nothing outside the cache; with a key, an unsigned entry and a re-hashed forged one too."""
    import hashlib
    import uuid
    import warnings

    from pytest_deploy.cache import ArtifactCache, make_key
    from pytest_deploy.check import warn_cache
    from pytest_deploy.errors import CacheWarning
    from pytest_deploy.shared_cache import CACHE_VERSION

    fs, prefix = s3["fs"], f"{BUCKET}/team-a"
    outside = tmp_path / "outside"
    outside.mkdir()
    payload = b"library bytes"
    digest = hashlib.sha256(payload).hexdigest()
    writer = uuid.uuid4().hex
    hostile = {"absolute": (str(outside / "planted.so"), writer), "dotdot": ("../../../outside/planted.so", writer),
               "oversized": ("a" * 4000, writer), "writer": ("model.so", "../../outside")}
    monkeypatch.delenv("PYTEST_DEPLOY_CACHE_KEY", raising=False)
    keys = {}
    for label, (name, who) in hostile.items():
        key = keys[label] = make_key("s3-hostile", label)
        base = f"{prefix}/{key[:2]}/{key}"
        fs.pipe_file(f"{base}/{who}/{name.lstrip('/')}"[:900], payload)
        fs.pipe_file(f"{base}/manifest.json", json.dumps({"version": CACHE_VERSION, "key": key, "writer": who,
                                                          "files": {name: digest}}).encode())
    cache = ArtifactCache(s3["url"], local=tmp_path / "local")
    for key in keys.values():
        assert cache.lookup(key) is None
    assert not list(outside.iterdir()) and cache.remote is not None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_cache(cache)
    texts = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
    assert len(texts) == len(keys) and all(any(k in t for t in texts) for k in keys.values()), texts

    # signed entries: one stored without the key, one signed and then edited by a writer without it
    source = tmp_path / "model.so"
    source.write_bytes(payload)
    unsigned, edited = make_key("s3-unsigned"), make_key("s3-edited")
    ArtifactCache(s3["url"], local=tmp_path / "w1").store(unsigned, {"model.so": source})
    monkeypatch.setenv("PYTEST_DEPLOY_CACHE_KEY", "s3cret")
    ArtifactCache(s3["url"], local=tmp_path / "w2").store(edited, {"model.so": source})
    manifest_path = f"{prefix}/{edited[:2]}/{edited}/manifest.json"
    manifest = json.loads(fs.cat_file(manifest_path))
    fs.pipe_file(f"{prefix}/{edited[:2]}/{edited}/{manifest['writer']}/model.so", b"evil")
    manifest["files"]["model.so"] = hashlib.sha256(b"evil").hexdigest()
    fs.pipe_file(manifest_path, json.dumps(manifest).encode())
    reader = ArtifactCache(s3["url"], local=tmp_path / "reader")
    assert reader.lookup(unsigned) is None and reader.lookup(edited) is None
    assert not list((tmp_path / "reader").rglob("model.so")) and reader.remote is not None


STOP_AFTER_FIRST = '''
import os, signal

def pytest_runtest_logfinish(nodeid, location):
    pid = int(os.environ["S3_SERVER_PID"])
    try:
        os.kill(pid, signal.SIGKILL)  # the store goes away after the first check
    except ProcessLookupError:
        pass
'''


def test_the_server_going_away_mid_run_degrades_to_local_caching_with_one_warning(s3, tmp_path):
    root = runner(tmp_path, "runner-1")
    (root / "conftest.py").write_text(STOP_AFTER_FIRST)
    cmd = [sys.executable, "-m", "pytest", "-q", f"--deploy-cache-dir={s3['url']}", "--deploy-report=report.json",
           "-W", "always::pytest_deploy.errors.CacheWarning"]
    env = {**os.environ, "S3_SERVER_PID": str(s3["proc"].pid), "AWS_MAX_ATTEMPTS": "1",
           "AWS_RETRY_MODE": "standard"}
    out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert all(r["outcome"] == "passed" for r in results(root).values())
    warnings = [line for line in out.stdout.splitlines() if "CacheWarning" in line]
    assert len(warnings) == 1, out.stdout
    assert f"shared cache {s3['url']} not used" in warnings[0] and "checks use the local cache" in warnings[0]
    assert (root / ".pytest_cache" / "d" / "pytest-deploy").is_dir()  # the local copy went on


@pytest.mark.parametrize("url, env, words", [
    ("foo://somewhere/prefix", {}, "unknown URL scheme 'foo'"),
    # the moto server of this test module starts empty: the bucket cannot exist (and the ID is the same on
    # every pytest-xdist worker, which collection requires)
    ("s3://no-such-bucket/prefix", {}, "does not exist; create it, or fix the URL"),
], ids=["unknown-scheme", "missing-bucket"])
def test_bad_stores_give_one_clear_warning_and_checks_still_run(s3, tmp_path, url, env, words):
    root = runner(tmp_path, "runner-1")
    out = run(root, f"--deploy-cache-dir={url}", "--deploy-report=report.json", env=env)
    assert out.returncode == 1, out.stdout + out.stderr  # -W error turns the one warning into this run's failure
    assert words in out.stdout, out.stdout
    # without -W error: the same warning, and every check passes with the local cache
    cmd = [sys.executable, "-m", "pytest", "-q", f"--deploy-cache-dir={url}", "--deploy-report=report.json"]
    out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert out.returncode == 0, out.stdout + out.stderr
    assert sum("CacheWarning" in line for line in out.stdout.splitlines()) == 1
    assert all(r["outcome"] == "passed" for r in results(root).values())


def test_missing_credentials_are_named(tmp_path, monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")  # nothing listens: no real S3 asked
    from pytest_deploy.cache import ArtifactCache

    cache = ArtifactCache("s3://some-bucket/prefix", local=tmp_path / "local")
    assert cache.remote is None and cache.remote_error is not None
    assert cache.remote_error.startswith("shared cache s3://some-bucket/prefix not used: ")
    assert "credentials" in cache.remote_error and "AWS_ACCESS_KEY_ID" in cache.remote_error
    assert cache.root == tmp_path / "local"  # checks go on with the local cache


def test_a_read_only_store_is_read_and_not_written(tmp_path):
    """A store that refuses writes (credentials without write permission): entries already there are used, the
    first refused upload gives the store up with the reason, and the local cache keeps the new entry."""
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    class ReadOnly(MemoryFileSystem):
        protocol = "readonlytest"

        @classmethod
        def _strip_protocol(cls, path):
            return "/" + str(path).removeprefix("readonlytest://").lstrip("/")

        def pipe_file(self, path, value, **kwargs):
            raise PermissionError(f"write refused: {path}")

        def put_file(self, lpath, rpath, **kwargs):
            raise PermissionError(f"write refused: {rpath}")

    fsspec.register_implementation("readonlytest", ReadOnly, clobber=True)
    from pytest_deploy.cache import ArtifactCache

    payload = tmp_path / "a.bin"
    payload.write_bytes(b"artifact")
    cache = ArtifactCache("readonlytest://bucket/prefix", local=tmp_path / "local")
    assert cache.remote is not None, cache.remote_error
    entry = cache.store("ab" * 32, {"a.bin": payload})
    assert entry is not None and (entry / "a.bin").read_bytes() == b"artifact"
    assert cache.remote is None and "refuses access" in (cache.remote_error or "")
    shutil.rmtree(tmp_path / "local")


def test_keys_do_not_depend_on_where_the_checkout_lives(tmp_path):
    """The same project in two directories gives the same result key (the key names source files relative to
    the sys.path entry or working directory holding them, not by absolute path)."""
    keys = []
    for name in ("here", "there"):
        root = runner(tmp_path, name)
        code = ("import sys, torch; sys.path.insert(0, '.'); import test_project as t; torch.manual_seed(0); "
                "from pytest_deploy.fingerprint import check_key; "
                "print(check_key(t.Net().eval(), 'trace', declared={}, options={}, files=['test_project.py']))")
        out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        keys.append(out.stdout.strip())
    assert keys[0] == keys[1]


# ------------------------------------------------------------------------------------------- shards

TWO_MODELS = PROJECT + '''

@deployable(backends=["trace", "script", "export"], inputs=[tensor("batch", 4)], dims={"batch": (1, 3)}, examples=3)
def test_other():
    return torch.nn.Sequential(torch.nn.Linear(4, 2)).eval()
'''

WORKER_LOG = '''
import os

def pytest_runtest_logstart(nodeid, location):
    if "PYTEST_XDIST_WORKER" in os.environ:  # in the workers, not the controller
        with open(os.environ["WORKER_LOG"], "a") as fh:
            fh.write(f"{os.environ['PYTEST_XDIST_WORKER']} {nodeid}\\n")
'''


def _outside_xdist() -> dict[str, str]:
    """This environment without the pytest-xdist worker variables it has when this suite runs under -n: the
    session started below has its own controller, which must not pass for one of its workers."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}


def test_under_xdist_each_models_backends_run_on_one_worker(tmp_path):
    root = runner(tmp_path, "runner-1")
    (root / "test_project.py").write_text(TWO_MODELS)
    (root / "conftest.py").write_text(WORKER_LOG)
    log = tmp_path / "workers.log"
    out = subprocess.run([sys.executable, "-m", "pytest", "-v", "-n", "2", "-p", "no:cacheprovider",
                          "--deploy-report=report.json"], cwd=root, capture_output=True, text=True, timeout=300,
                         env={**_outside_xdist(), "WORKER_LOG": str(log)})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "scheduling tests via ModelScheduling" in out.stdout
    workers: dict[str, set[str]] = {}
    for line in log.read_text().splitlines():
        worker, nodeid = line.split(" ", 1)
        workers.setdefault(nodeid.split("[")[0], set()).add(worker)
    assert set(workers) == {"test_project.py::test_net", "test_project.py::test_other"}
    assert all(len(w) == 1 for w in workers.values()), workers  # every backend of a model on one worker
    report = json.loads((root / "report.json").read_text())["results"]
    assert {r["test"] for r in report} == {"test_project.py::test_net", "test_project.py::test_other"}


def test_an_explicit_dist_is_left_alone(tmp_path):
    root = runner(tmp_path, "runner-1")
    out = subprocess.run([sys.executable, "-m", "pytest", "-v", "-n", "2", "--dist", "load", "-p", "no:cacheprovider"],
                         cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "scheduling tests via LoadScheduling" in out.stdout


def test_shard_reports_merge_into_one_report_table_markdown_and_html(tmp_path):
    """Two shards of one suite (each checked some backends) merge into the report a single run would write."""
    root = runner(tmp_path, "runner-1")
    (root / "test_project.py").write_text(TWO_MODELS)
    for shard, backends in (("a", "trace,script"), ("b", "export")):
        out = run(root, f"--deploy-backends={backends}", f"--deploy-report=shard-{shard}.json", "-p", "no:cacheprovider")
        assert out.returncode == 0, out.stdout + out.stderr
    merged = subprocess.run([sys.executable, "-m", "pytest_deploy", "merge", "shard-a.json", "shard-b.json",
                             "-o", "merged.json", "--markdown", "merged.md", "--html", "merged.html"],
                            cwd=root, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "100"})
    assert merged.returncode == 0, merged.stdout + merged.stderr
    assert "6 checks: 6 passed" in merged.stdout
    assert max(len(line) for line in merged.stdout.splitlines()) <= 100
    data = json.loads((root / "merged.json").read_text())
    assert sorted((r["test"].split("::")[1], r["backend"]) for r in data["results"]) == [
        ("test_net", "export"), ("test_net", "script"), ("test_net", "trace"),
        ("test_other", "export"), ("test_other", "script"), ("test_other", "trace")]
    assert "| model test | trace | script | export |" in (root / "merged.md").read_text()
    assert "test_other" in (root / "merged.html").read_text()


def test_merge_refuses_what_is_not_a_report(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"something": 1}')
    out = subprocess.run([sys.executable, "-m", "pytest_deploy", "merge", str(bad)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0 and "is not a pytest-deploy JSON report" in out.stderr
