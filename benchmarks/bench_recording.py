"""Overhead of recording data-dependent decisions on eager runs: plain forward vs under ``Recorder``.

    python benchmarks/bench_recording.py [--threads N] [--seconds S]

For each model the median wall time of one forward under ``torch.no_grad()`` is measured three ways,
interleaved so that drift (turbo, thermal, other load) hits all of them alike:

* ``plain``: ``model(*inputs)``;
* ``recorded``: ``with Recorder(): model(*inputs)``, entered once per run as pytest-deploy does per
  example, so it includes installing and removing the conversion wrappers and the tracer;
* ``enter/exit``: ``with Recorder(): pass``, the fixed part of that cost.

The ratio is recorded / plain (medians); the target is under 1.3x for the CNN and the transformer
encoder. The third model has real data-dependent control flow (an ``if`` on a tensor value and a
``while`` loop bounded by one), so there the recorder has work to do on every run; it is reported for
information. Run by hand; nothing here is timed inside the test suite. Exits 1 when a held model
misses the target.
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch
from torch import nn

from examples.models import SmallCNN, TextEncoder
from pytest_deploy.decisions import Recorder, needs_line_tracing

TARGET = 1.3


class DataDependent(nn.Module):
    """A small model whose Python control flow depends on tensor values."""

    def __init__(self, features: int = 16):
        super().__init__()
        self.proj = nn.Linear(features, features)
        self.out = nn.Linear(features, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        if h.sum() > 0:
            h = torch.relu(h)
        else:
            h = torch.tanh(h)
        steps = 0
        while h.abs().max() > 0.05 and steps < 16:  # halve until small: the iteration count depends on the values
            h = h * 0.5
            steps += 1
        return self.out(h)


def models() -> list[tuple[str, nn.Module, tuple[torch.Tensor, ...], bool]]:
    """(name, model in eval mode, inputs, held to the target)."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    tokens = torch.randint(0, 100, (4, 32), generator=g)
    padding = torch.zeros(4, 32, dtype=torch.bool)
    padding[:, 24:] = True  # the last 8 positions are padding
    return [
        ("SmallCNN (8x3x32x32)", SmallCNN().eval(), (torch.randn(8, 3, 32, 32, generator=g),), True),
        ("TextEncoder (4x32 tokens, mask)", TextEncoder().eval(), (tokens, padding), True),
        ("DataDependent (if + while, 8x16)", DataDependent().eval(), (torch.randn(8, 16, generator=g) * 4,), False),
    ]


def machine() -> list[str]:
    from benchutil import cpu_summary

    return [
        f"CPU: {cpu_summary()}",
        f"torch {torch.__version__}; Python {platform.python_version()} ({platform.python_implementation()}); "
        f"{platform.system()} {platform.machine()}",
        f"torch.set_num_threads({torch.get_num_threads()}), interop threads {torch.get_num_interop_threads()}",
    ]


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def bench(model: nn.Module, inputs: tuple[torch.Tensor, ...], seconds: float, lines: bool) -> dict[str, list[float]]:
    perf = time.perf_counter

    def plain() -> float:
        t0 = perf()
        model(*inputs)
        return perf() - t0

    def recorded() -> float:
        t0 = perf()
        with Recorder(lines):
            model(*inputs)
        return perf() - t0

    def enter_exit() -> float:
        t0 = perf()
        with Recorder(lines):
            pass
        return perf() - t0

    with torch.no_grad():
        for _ in range(20):  # warm-up: allocator, oneDNN primitive caches, lru caches of the recorder
            plain(), recorded(), enter_exit()
        per_round = sum(plain() + recorded() for _ in range(5)) / 5
        rounds = max(200, min(5000, int(seconds / max(per_round, 1e-9))))
        times: dict[str, list[float]] = {"plain": [], "recorded": [], "enter/exit": []}
        gc.collect()
        gc.disable()
        try:
            for i in range(rounds):
                # alternate the order so that neither variant always runs first (cache, turbo effects)
                if i % 2:
                    times["plain"].append(plain())
                    times["recorded"].append(recorded())
                else:
                    times["recorded"].append(recorded())
                    times["plain"].append(plain())
                times["enter/exit"].append(enter_exit())
                if i % 256 == 255:  # collect outside the timed calls
                    gc.collect()
        finally:
            gc.enable()
    return times


def decisions_per_run(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    with torch.no_grad(), Recorder(needs_line_tracing(model)) as rec:
        model(*inputs)
    return len(rec.run.decisions())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1: least noise)")
    parser.add_argument("--seconds", type=float, default=12.0, help="timing budget per model (default 12)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print("## Recording overhead (eager, torch.no_grad())\n")
    for line in machine():
        print(f"- {line}")
    print()

    start = time.perf_counter()
    rows, extra, failed = [], [], False
    variants = []
    for name, model, inputs, held in models():
        lines = needs_line_tracing(model)  # what pytest-deploy does: the line tracer only for models with if/while
        variants.append((name + ("" if lines else " [conversions only]"), model, inputs, held, lines))
        if not lines:  # also show what the line tracer would cost this model
            variants.append((name + " [line tracer forced]", model, inputs, False, True))
    for name, model, inputs, held, lines in variants:
        times = bench(model, inputs, args.seconds, lines)
        (p1, p, p3), (r1, r, r3), (_, e, _) = (quartiles(times[k]) for k in ("plain", "recorded", "enter/exit"))
        ratio = r / p
        met = ("yes" if ratio < TARGET else "**no**") if held else "n/a (info)"
        failed |= held and ratio >= TARGET
        ms = 1e3
        rows.append(f"| {name} | {p * ms:.3f} (IQR {(p3 - p1) * ms:.3f}) | {r * ms:.3f} (IQR {(r3 - r1) * ms:.3f}) "
                    f"| {ratio:.2f}x | {met} |")
        extra.append(f"- {name}: {len(times['plain'])} interleaved runs each; enter/exit of the recorder alone "
                     f"{e * 1e6:.1f} µs; {decisions_per_run(model, inputs)} decisions recorded per run")

    print(f"| model | plain ms (median, IQR) | recorded ms (median, IQR) | ratio | target < {TARGET}x met |")
    print("| --- | ---: | ---: | ---: | --- |")
    print("\n".join(rows))
    print()
    print("\n".join(extra))
    print(f"\n(recorded = `with Recorder(lines): model(*inputs)` per run, enter/exit included, with the line tracer "
          "on exactly when pytest-deploy turns it on: the model's own code has if/while statements; "
          f"total {time.perf_counter() - start:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
