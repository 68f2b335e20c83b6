"""Helpers shared by the whole-run benchmarks (bench_overhead, bench_plugin_load, bench_peer).

Everything here is standard library only: the benchmarks time subprocesses, and the timing process
itself never imports torch.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
WORKLOAD = BENCH / "workload"


@dataclass
class Run:
    label: str
    seconds: float
    returncode: int
    log: Path

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def timed(label: str, cmd: list[str], *, cwd: Path, logdir: Path, env: dict[str, str] | None = None,
          timeout: float | None = None) -> Run:
    """Run ``cmd`` in a fresh process; return its wall time (start to exit, interpreter start-up and every
    import included), with stdout and stderr going to a log file."""
    logdir.mkdir(parents=True, exist_ok=True)
    log = logdir / (label.replace(" ", "_").replace("/", "_") + f".{time.monotonic_ns()}.log")
    with open(log, "w") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = 124
        seconds = time.perf_counter() - start
    return Run(label, seconds, code, log)


def bench_env(**extra: str) -> dict[str, str]:
    """The environment for timed subprocesses: this one without PYTHONDONTWRITEBYTECODE, so that bytecode is
    cached as in an ordinary install (with it set, every run compiles pytest-deploy's modules and the test
    files from source again, tens of ms that users do not pay)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(extra)
    return env


def copy_workload(dest: Path, files: tuple[str, ...] = ("models.py", "test_workload.py")) -> Path:
    """Copy the workload into ``dest`` (a directory of its own, outside the repository: pytest's rootdir is
    then that directory, with no ini file or conftest of this repository in play, as in a user's project)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in files:
        shutil.copy2(WORKLOAD / name, dest / name)
    return dest


def fresh_dir(parent: Path, prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def git_state() -> str:
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "pytest_deploy"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" + uncommitted changes in pytest_deploy/" if dirty else "")


def cpu_summary() -> str:
    """``AMD EPYC ...; 2 logical cores (2 usable)``."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return f"{cpu}; {os.cpu_count()} logical cores ({usable} usable)"


def machine(extra: tuple[str, ...] = ()) -> list[str]:
    try:
        mem = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                   if ln.startswith("MemTotal")) / 1024**2
        memory = f"{mem:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        memory = "RAM unknown"
    try:
        load = "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        load = "load unknown"
    threads = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ}
    bytecode = ("PYTHONDONTWRITEBYTECODE is set here and removed for the timed runs (bytecode cached, as in an "
                "ordinary install)" if os.environ.get("PYTHONDONTWRITEBYTECODE") else "bytecode cached (as usual)")
    libs = ", ".join(f"{d} {version(d)}" for d in ("torch", "pytest", "hypothesis", *extra))
    return [
        f"CPU: {cpu_summary()}; {memory}; {load} at start",
        f"Python {platform.python_version()} ({sys.executable}); {platform.system()} {platform.machine()}",
        libs,
        f"pytest-deploy {version('pytest-deploy')} at commit {git_state()}",
        "threads: " + (", ".join(f"{k}={v}" for k, v in threads.items()) or "torch's default (all cores)"),
        bytecode,
    ]


def warm_up(python: str, modules: tuple[str, ...]) -> None:
    """Import the heavy libraries once, so that the first timed run does not also pay for reading them
    from disk into the page cache (the later runs would not)."""
    subprocess.run([python, "-c", "import " + ", ".join(modules)], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False, env=bench_env())


def stats(xs: list[float]) -> tuple[float, float, float]:
    return statistics.median(xs), min(xs), max(xs)


def fmt_seconds(xs: list[float]) -> str:
    if not xs:
        return "-"
    med, lo, hi = stats(xs)
    return f"{med:.1f}" if len(xs) == 1 else f"{med:.1f} ({lo:.1f}-{hi:.1f})"
