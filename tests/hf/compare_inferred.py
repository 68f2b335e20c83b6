"""Inferred inputs against the corpus's hand-written declarations, architecture by architecture.

    python tests/hf/compare_inferred.py                   # run both, print the table (make hf-inferred)
    python tests/hf/compare_inferred.py --reuse           # compare the two reports of an earlier run

Runs (a) the declared corpus, ``PYTEST_DEPLOY_HF=all pytest tests/hf/test_corpus.py`` (every architecture of
``tests/hf/zoo.py``, the backends and examples its ``@deployable`` markers declare), into
``hf-declared.json``, and (b) ``pytest --deploy-model=tests.hf.inferred:NAME`` for every factory of
``tests/hf/inferred.py``, with the same backends and ``--deploy-examples`` equal to the corpus's ``examples=``, into
``hf-inferred.json``. Then prints one row per (architecture, backend): the declared verdict (passed, xfailed at a
stage, failed at a stage) against the inferred one (passed, failed at a stage with the first line of its message,
refused with inference's message), with ``DIFF`` where they differ. A declared expected failure that fails at the
same stage under inference is the same verdict (an inferred test declares no expected failure).

Exit code 0 when no verdict differs, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests"))  # hf.zoo, hf.test_corpus's constants
sys.path.insert(0, ROOT)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

BACKENDS = ("trace", "script", "export", "onnx", "tvm")
DECLARED, INFERRED = "hf-declared.json", "hf-inferred.json"


def corpus_examples() -> int:
    """The ``examples=`` every marker of tests/hf/test_corpus.py passes (it wins over --deploy-examples)."""
    text = open(os.path.join(ROOT, "tests", "hf", "test_corpus.py")).read()
    return int(re.search(r"^EXAMPLES = (\d+)$", text, re.M).group(1))


def run(label: str, cmd: list[str], env: dict[str, str], log: str) -> float:
    print(f"[{label}] {' '.join(cmd)}  (log: {log})", flush=True)
    start = time.monotonic()
    with open(log, "w") as out:
        subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    took = time.monotonic() - start
    print(f"[{label}] {took:.0f}s", flush=True)
    return took


def results(path: str) -> dict[tuple[str, str], dict]:
    out = {}
    for r in json.load(open(path))["results"]:
        out[(r["test"].rsplit("::", 1)[-1].removeprefix("test_"), r["backend"])] = r
    return out


def _stage(r: dict) -> str:
    if r.get("stage"):
        return r["stage"]
    reason = ((r.get("details") or {}).get("xfail_reason") or "").removeprefix("reason: ")
    return reason.split(":", 1)[0] if ":" in reason else "?"


def _first_line(r: dict) -> str:
    message = (r.get("message") or "").strip()
    line = message.splitlines()[0] if message else ""
    return re.sub(r"^\w+: stage \w+: ", "", line)[:150]


def verdict(r: dict | None) -> tuple[str, str]:
    """(kind, stage) with kind passed | failed | xfailed | other outcome | missing."""
    if r is None:
        return "missing", ""
    return r["outcome"], "" if r["outcome"] == "passed" else _stage(r)


def declarations(names: list[str]) -> dict[str, tuple[str, str]]:
    """name -> ("inferred", line) or ("refused", message), as --deploy-model computes them (probing included)."""
    import hf.inferred as inferred
    from pytest_deploy.errors import SpecError
    from pytest_deploy.zero import declaration_for, parse_target

    out = {}
    for name in names:
        try:
            model = inferred.FACTORIES[name]()
            decl = declaration_for(parse_target(f"tests.hf.inferred:{name}"), model, None, None)
            out[name] = ("inferred", decl.line() if decl is not None else "(example inputs)")
        except SpecError as exc:
            out[name] = ("refused", str(exc))
    return out


def compare(declared: dict, inferred: dict, decls: dict[str, tuple[str, str]], names: list[str]) -> list[str]:
    lines = ["| architecture | backend | declared | inferred | |", "| --- | --- | --- | --- | --- |"]
    diffs = 0
    counts: dict[str, int] = {}
    for name in names:
        refused = decls.get(name, ("inferred", ""))[0] == "refused"
        for backend in BACKENDS:
            d_kind, d_stage = verdict(declared.get((name, backend)))
            i_result = inferred.get((name, backend))
            i_kind, i_stage = verdict(i_result)
            d_text = d_kind + (f" ({d_stage})" if d_stage else "")
            if refused and i_result is None:
                i_text, same = "refused", False
            else:
                i_text = i_kind + (f" ({i_stage}): {_first_line(i_result)}" if i_kind == "failed" else
                                   f" ({i_stage})" if i_stage else "")
                same = (d_kind == i_kind == "passed") or (
                    d_kind in ("xfailed", "failed") and i_kind == "failed" and d_stage == i_stage)
                if d_kind == i_kind and d_kind not in ("passed", "failed", "xfailed", "missing"):
                    same = True  # skipped on both sides
            key = f"{'same' if same else 'DIFF'} {d_kind}->{'refused' if refused and i_result is None else i_kind}"
            counts[key] = counts.get(key, 0) + 1
            diffs += not same
            lines.append(f"| {name} | {backend} | {d_text} | {i_text} | {'' if same else 'DIFF'} |")
    total = len(names) * len(BACKENDS)
    lines += ["", f"{total} (architecture, backend) pairs, {len(names)} factories: {total - diffs} same verdict, "
                  f"{diffs} different", *(f"  {k}: {v}" for k, v in sorted(counts.items()))]
    refusals = [f"- {n}: {msg}" for n, (kind, msg) in decls.items() if kind == "refused"]
    lines += ["", "Refused by inference:" if refusals else "Refused by inference: none", *refusals]
    lines += ["", "Inferred declarations:", *(f"- {n}: {line}" for n, (kind, line) in decls.items()
                                               if kind == "inferred")]
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reuse", action="store_true", help=f"compare {DECLARED} and {INFERRED} without running")
    parser.add_argument("-n", default="2", help="xdist workers for each run (default 2)")
    args = parser.parse_args(argv)

    import hf.inferred as inferred

    names = list(inferred.FACTORIES)
    examples = corpus_examples()
    env = dict(os.environ, PYTEST_DEPLOY_HF="all", PYTHONPATH=os.pathsep.join(
        p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    if not args.reuse:
        py = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", args.n, "--deploy-no-cache", "-q",
              "-rfE"]
        took_a = run("declared", [*py, "tests/hf/test_corpus.py", f"--deploy-report={DECLARED}"], env,
                     "hf-declared.log")
        took_b = run("inferred", [*py, *(f"--deploy-model=tests.hf.inferred:{n}" for n in names),
                                  f"--deploy-backends={','.join(BACKENDS)}", f"--deploy-examples={examples}",
                                  "--continue-on-collection-errors", f"--deploy-report={INFERRED}"], env,
                     "hf-inferred.log")
        print(f"declared corpus {took_a:.0f}s, inferred {took_b:.0f}s, {examples} examples, "
              f"{os.cpu_count()} CPUs, -n {args.n}")
    decls = declarations(names)
    lines = compare(results(os.path.join(ROOT, DECLARED)), results(os.path.join(ROOT, INFERRED)), decls, names)
    print("\n".join(lines))
    return 0 if not any(line.endswith("| DIFF |") for line in lines) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
