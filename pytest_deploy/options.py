"""Option names, help texts, parsing and precedence (marker > command line > ini).

Help texts are constants shared by the command-line option and its ini twin. Everything here
imports only the standard library, pytest and the package's leaf modules (errors, names).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkoptions import CheckOptions
from .errors import SpecError
from .names import known_names_text

HELP_BACKENDS = (f"comma-separated backend names or aliases to check, or 'all': {known_names_text().removesuffix(', all')} ('python -m "
                 "pytest_deploy backends' says which run here); narrows each model's declared backends")
HELP_EXAMPLES = "hypothesis examples per backend (a marker's examples= wins); default 20"
HELP_STRICT = "fail, instead of skip, when a backend cannot run here"
HELP_REPORT = "write the JSON report of every deployability check to this path"
HELP_SEED = "seed for the generated examples (an int, or 'random'); default 0, so runs repeat"
HELP_ONNX_EXPORTER = ("ONNX exporter: 'dynamo' (torch.export-based, the default) or 'torchscript' (the older "
                      "tracing exporter; its frozen branches are analysed as for trace)")
HELP_ONNX_OPSET = "ONNX opset version to export (default: the exporter's)"
HELP_CACHE_DIR = ("where built artifacts (compiled packages, libraries) are cached between runs; default "
                  "pytest's cache dir (.pytest_cache/d/pytest-deploy)")
HELP_CACHE_KEY_ENV = ("name of the environment variable holding the secret that signs cache entries (HMAC-SHA256); "
                      "an entry without a right signature is never used; default PYTEST_DEPLOY_CACHE_KEY (when set)")
HELP_CACHE_READONLY = ("read and verify the cache, never write to it (for untrusted jobs, such as a fork's pull "
                       "request): nothing is stored, uploaded or discarded")
HELP_NO_CACHE = "build every artifact afresh: neither read nor write the artifact cache"
HELP_RECHECK = ("run every check even when the same check (same model code, weights, inputs, options and library "
                "versions) passed before; artifacts still come from the cache")
HELP_ISOLATE = ("which checks run in a worker process, so a crash fails only that check: 'native' (the default: "
                "tvm, tensorrt, aoti, onnx), 'all', or 'none'")
HELP_TIMEOUT = "fail a check whose stage (export, compile, run, ...) runs longer than SECONDS; default: no limit"
HELP_LOCALIZE_BUDGET = ("seconds a failing check (outputs differ) may spend finding the first module whose output "
                        "diverges from eager PyTorch; 0 turns it off; default: 60")
HELP_KEEP = ("keep the artifacts of failing checks in DIR, with the failing inputs, eager outputs and a "
             "standalone repro.py")
HELP_KEEP_PASSING = ("keep the work directories of passing checks (their artifacts) in pytest's temp dir; by default a "
                     "check that passes removes its own (the cache keeps what is worth keeping)")
HELP_MARKDOWN = ("write the summary as Markdown to this path (the matrix, failures with their stage and cause, "
                 "the data-dependent decisions)")
HELP_NO_STEP_SUMMARY = "do not append the Markdown summary to $GITHUB_STEP_SUMMARY (appended by default when it is set)"
HELP_HTML = ("write one self-contained HTML report to this path (the matrix, every check's details, plots); plots "
             "need matplotlib")
HELP_LATENCY = ("after a backend passes, time its loaded artifact beside eager PyTorch (interleaved, same process, "
                "same threads) on the canonical example and the dims' upper corner: p50/p90/p99 and the speedup")
HELP_LATENCY_BUDGET = "seconds of timed runs per backend under --deploy-latency (split between the shapes); default 2"
HELP_LATENCY_BASELINE = ("fail a backend whose speedup over eager fell more than --deploy-latency-tolerance below this "
                         "baseline file's (written by --deploy-latency-save); turns --deploy-latency on")
HELP_LATENCY_SAVE = "write every check's latency figures (speedups over eager per shape) to this baseline file"
HELP_LATENCY_TOLERANCE = ("how far a speedup may fall below its baseline before the check fails: a fraction (0.1) or a "
                          "percentage (10%%); default 40%%, above the run-to-run spread measured on a shared 2-vCPU machine")
HELP_TVM_TARGET = "TVM target: a kind such as llvm (default) or cuda, or a JSON target dict"
HELP_TVM_TUNE = ("tune TVM kernels with MetaSchedule, TRIALS trials in all; the tuning database is kept in the "
                 "artifact cache and reused by the next run")
HELP_PRECISION = ("precision the onnx and tensorrt backends deploy at: fp32 (the default), fp16 or bf16; the float32 "
                  "graph is converted to that precision and default tolerances widen to it (a marker's precision= "
                  "wins); int8 (static QDQ quantization, calibrated) or int8-dynamic (MatMul/Gemm weights) for onnx, "
                  "judged by agreement= instead of tolerances; backends with no such route skip")
HELP_MODEL = ("check the model a factory returns, with no test written: MODULE:FACTORY (a dotted module importable "
              "from where pytest runs, and a callable in it returning a torch.nn.Module); inputs are inferred "
              "(docs/zero-code.md); repeatable; with no test path given, only these models are collected")
HELP_MODELS = "MODULE:FACTORY per line: models checked with inferred inputs, besides the collected tests"
HELP_INPUTS = ("declare the --deploy-model factories' inputs on one line instead of inferring them, e.g. "
               "'x: float32[batch, 3, 32, 32] in [-1, 1]; batch=1..8' (docs/zero-code.md)")
HELP_TRT_FP16 = "alias of --deploy-precision=fp16"
HELP_TRT_TF32 = ("let TensorRT use TF32 for float32 layers (off by default: TF32 rounds float32 matmuls and convolutions "
                 "to a 10-bit mantissa)")
HELP_TRT_BUILDER = ("how TensorRT engines are built: 'python' (the tensorrt module's Builder, the default) or "
                    "'trtexec' (the trtexec binary on PATH)")

#: Keyword arguments the ``deployable`` marker and decorator accept, with what each must be.
MARKER_KWARGS = {
    "backends": "list of backend names (default: every registered backend)",
    "inputs": "list of tensor(...) specs or example tensors, or one hypothesis strategy",
    "dims": "dict name -> (min, max) for the named dims in inputs",
    "examples": "hypothesis examples per backend",
    "atol": "absolute tolerance: a number, or {backend: number}",
    "rtol": "relative tolerance: a number, or {backend: number}",
    "tolerances": "{backend: (atol, rtol)}",
    "xfail": "{backend: reason}: strict expected failures",
    "train": "checkpoint recipe: {optimizer, scheduler, loss, steps, save}",
    "allow_nonfinite": "True when NaN/Inf eager outputs are intended (compared as equal where both sides agree)",
    "compare_masked": "True to compare every output position, also where a mask() input marks padding",
    "allow_vacuous": "True when eager outputs that are (near) zero on every example are intended",
    "precision": "fp32 (default), fp16 or bf16: the precision onnx and tensorrt deploy at; int8 or int8-dynamic "
                 "(onnx): quantized, judged by agreement=",
    "agreement": "at int8: the gate, 'top1', 'topk:5', 'cosine', 'sqnr' or {metric: threshold} (default by output "
                 "kind: cosine >= 0.99 and sqnr >= 20 dB, top1 >= 0.99 for [batch, classes])",
    "calibration": "at int8: the calibration inputs, an iterable or a zero-argument callable yielding tuples or "
                   "dicts as inputs= declares (default: generated examples)",
    "calibration_examples": "at int8: how many generated examples calibrate when calibration= is not given "
                            "(default 16)",
    "int8_exclude": "at int8: ONNX node names kept in float (quantize_static's nodes_to_exclude), as a failing "
                    "check's message suggests",
    "fp16_block_list": "at fp16: ONNX node names kept in float32 (onnxconverter-common's node_block_list), as a "
                       "failing check's message suggests",
    "latency": "True, False, or a dict (budget, min_runs, threads, min_speedup, max_p99_ms, ...): time the artifact "
               "beside eager after it passes",
}
#: The subset ``deploy(...)`` and ``verify(...)`` accept besides the model.
CALL_KWARGS = ("inputs", "dims", "examples", "atol", "rtol", "tolerances", "train", "allow_nonfinite",
               "compare_masked", "allow_vacuous", "precision", "latency", "agreement", "calibration",
               "calibration_examples", "int8_exclude", "fp16_block_list")

MARKER_DOC = (
    "deployable(backends=None, inputs=None, dims=None, examples=None, atol=None, rtol=None, tolerances=None, "
    "xfail=None, train=None, allow_nonfinite=False, compare_masked=False, allow_vacuous=False, precision=None, "
    "latency=None, agreement=None, calibration=None, calibration_examples=None, int8_exclude=None, fp16_block_list=None): check that the model survives each backend's export, save, load and run; one test "
    "item per backend (pytest-deploy)"
)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be more than 0 seconds")
    return value


def budget_seconds(text: str) -> float:
    """A time budget: a number of seconds, 0 (off) included."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 (off) or more seconds")
    return value


def fraction(text: str) -> float:
    """A tolerance: ``0.1`` or ``10%``, from 0 up to (not including) 1."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction (0.1) or a percentage (10%)") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be from 0 up to (not including) 100%")
    return value


def seed_value(text: str) -> int:
    if str(text).strip().lower() == "random":
        import random

        return random.SystemRandom().randrange(2**31)
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer or 'random'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0")
    return value


def add_options(parser) -> None:
    group = parser.getgroup("deploy", "pytest-deploy: is this model deployable?")
    group.addoption("--deploy-backends", dest="deploy_backends", default=None, metavar="LIST", help=HELP_BACKENDS)
    group.addoption("--deploy-examples", dest="deploy_examples", type=positive_int, default=None, metavar="N",
                    help=HELP_EXAMPLES)
    group.addoption("--deploy-strict", dest="deploy_strict", action="store_true", default=None, help=HELP_STRICT)
    group.addoption("--deploy-report", dest="deploy_report", default=None, metavar="PATH", help=HELP_REPORT)
    group.addoption("--deploy-seed", dest="deploy_seed", type=seed_value, default=None, metavar="SEED", help=HELP_SEED)
    group.addoption("--deploy-onnx-exporter", dest="deploy_onnx_exporter", choices=("dynamo", "torchscript"),
                    default=None, help=HELP_ONNX_EXPORTER)
    group.addoption("--deploy-onnx-opset", dest="deploy_onnx_opset", type=positive_int, default=None, metavar="N",
                    help=HELP_ONNX_OPSET)
    group.addoption("--deploy-cache-dir", dest="deploy_cache_dir", default=None, metavar="DIR", help=HELP_CACHE_DIR)
    group.addoption("--deploy-cache-key-env", dest="deploy_cache_key_env", default=None, metavar="VAR",
                    help=HELP_CACHE_KEY_ENV)
    group.addoption("--deploy-cache-readonly", dest="deploy_cache_readonly", action="store_true", default=None,
                    help=HELP_CACHE_READONLY)
    group.addoption("--deploy-no-cache", dest="deploy_no_cache", action="store_true", default=False, help=HELP_NO_CACHE)
    group.addoption("--deploy-recheck", dest="deploy_recheck", action="store_true", default=False, help=HELP_RECHECK)
    group.addoption("--deploy-isolate", dest="deploy_isolate", choices=("none", "native", "all"), default=None,
                    help=HELP_ISOLATE)
    group.addoption("--deploy-timeout", dest="deploy_timeout", type=positive_seconds, default=None, metavar="SECONDS",
                    help=HELP_TIMEOUT)
    group.addoption("--deploy-localize-budget", dest="deploy_localize_budget", type=budget_seconds, default=None,
                    metavar="SECONDS", help=HELP_LOCALIZE_BUDGET)
    group.addoption("--deploy-keep-artifacts", dest="deploy_keep_artifacts", default=None, metavar="DIR",
                    help=HELP_KEEP)
    group.addoption("--deploy-keep-passing", dest="deploy_keep_passing", action="store_true", default=None,
                    help=HELP_KEEP_PASSING)
    group.addoption("--deploy-markdown", dest="deploy_markdown", default=None, metavar="PATH", help=HELP_MARKDOWN)
    group.addoption("--deploy-no-step-summary", dest="deploy_no_step_summary", action="store_true", default=False,
                    help=HELP_NO_STEP_SUMMARY)
    group.addoption("--deploy-html", dest="deploy_html", default=None, metavar="PATH", help=HELP_HTML)
    group.addoption("--deploy-latency", dest="deploy_latency", action="store_true", default=None, help=HELP_LATENCY)
    group.addoption("--deploy-latency-budget", dest="deploy_latency_budget", type=positive_seconds, default=None,
                    metavar="SECONDS", help=HELP_LATENCY_BUDGET)
    group.addoption("--deploy-latency-baseline", dest="deploy_latency_baseline", default=None, metavar="FILE",
                    help=HELP_LATENCY_BASELINE)
    group.addoption("--deploy-latency-save", dest="deploy_latency_save", default=None, metavar="FILE",
                    help=HELP_LATENCY_SAVE)
    group.addoption("--deploy-latency-tolerance", dest="deploy_latency_tolerance", type=fraction, default=None,
                    metavar="FRACTION", help=HELP_LATENCY_TOLERANCE)
    group.addoption("--deploy-tvm-target", dest="deploy_tvm_target", default=None, metavar="T", help=HELP_TVM_TARGET)
    group.addoption("--deploy-tvm-tune", dest="deploy_tvm_tune", type=positive_int, default=None, metavar="TRIALS",
                    help=HELP_TVM_TUNE)
    group.addoption("--deploy-precision", dest="deploy_precision", default=None, metavar="fp32|fp16|bf16|int8|int8-dynamic",
                    help=HELP_PRECISION)
    group.addoption("--deploy-model", dest="deploy_model", action="append", default=None,
                    metavar="MODULE:FACTORY", help=HELP_MODEL)
    group.addoption("--deploy-inputs", dest="deploy_inputs", default=None, metavar="LINE", help=HELP_INPUTS)
    group.addoption("--deploy-trt-fp16", dest="deploy_trt_fp16", action="store_true", default=None, help=HELP_TRT_FP16)
    group.addoption("--deploy-trt-tf32", dest="deploy_trt_tf32", action="store_true", default=None, help=HELP_TRT_TF32)
    group.addoption("--deploy-trt-builder", dest="deploy_trt_builder", choices=("python", "trtexec"), default=None,
                    help=HELP_TRT_BUILDER)
    parser.addini("deploy_backends", HELP_BACKENDS, default=None)
    parser.addini("deploy_examples", HELP_EXAMPLES, default=None)
    parser.addini("deploy_strict", HELP_STRICT, type="bool", default=False)
    parser.addini("deploy_report", HELP_REPORT, default=None)
    parser.addini("deploy_markdown", HELP_MARKDOWN, default=None)
    parser.addini("deploy_html", HELP_HTML, default=None)
    parser.addini("deploy_tvm_target", HELP_TVM_TARGET, default=None)
    parser.addini("deploy_cache_dir", HELP_CACHE_DIR, default=None)
    parser.addini("deploy_cache_key_env", HELP_CACHE_KEY_ENV, default=None)
    parser.addini("deploy_cache_readonly", HELP_CACHE_READONLY, type="bool", default=False)
    parser.addini("deploy_isolate", HELP_ISOLATE, default=None)
    parser.addini("deploy_timeout", HELP_TIMEOUT, default=None)
    parser.addini("deploy_localize_budget", HELP_LOCALIZE_BUDGET, default=None)
    parser.addini("deploy_precision", HELP_PRECISION, default=None)
    parser.addini("deploy_keep_passing", HELP_KEEP_PASSING, type="bool", default=False)
    parser.addini("deploy_latency", HELP_LATENCY, type="bool", default=False)
    parser.addini("deploy_latency_budget", HELP_LATENCY_BUDGET, default=None)
    parser.addini("deploy_latency_baseline", HELP_LATENCY_BASELINE, default=None)
    parser.addini("deploy_latency_tolerance", HELP_LATENCY_TOLERANCE.replace("%%", "%"), default=None)
    parser.addini("deploy_models", HELP_MODELS, type="linelist", default=[])


@dataclass(frozen=True)
class Settings:
    """Session-wide settings after precedence: command line over ini."""

    backends: tuple[str, ...] | None
    examples: int | None
    strict: bool
    report: str | None
    seed: int
    #: options handed to backends (``ctx.options``): onnx_exporter, onnx_opset, ...
    backend_options: dict = field(default_factory=dict)
    #: artifact cache directory (None: pytest's cache dir); no_cache disables the cache
    cache_dir: str | None = None
    no_cache: bool = False
    #: rerun checks that passed before with the same key
    recheck: bool = False
    #: none | native | all: which checks run in a worker process
    isolate: str = "native"
    #: seconds one stage may run, or None
    timeout: float | None = None
    #: where failing checks leave their artifacts, inputs and repro script
    keep_artifacts: str | None = None
    #: the Markdown summary's path; whether to append it to $GITHUB_STEP_SUMMARY; the HTML report's path
    markdown: str | None = None
    step_summary: bool = True
    html: str | None = None
    #: keep passing checks' work directories (by default a passing check removes its own)
    keep_passing: bool = False
    #: the environment variable holding the cache's signing secret (None: PYTEST_DEPLOY_CACHE_KEY); never write
    #: the cache
    cache_key_env: str | None = None
    cache_readonly: bool = False
    #: --deploy-latency's settings (pytest_deploy.latency.DEFAULTS with the budget and tolerance given), or None: off
    latency: dict | None = None
    #: the latency baseline (``test::backend`` -> {shape label: speedup}), and where to save this run's
    latency_baseline: dict | None = None
    latency_save: str | None = None
    #: --deploy-model / ini deploy_models factories (MODULE:FACTORY); which came from the command line
    models: tuple[str, ...] = ()
    models_from_command_line: bool = False
    #: --deploy-inputs: the one-line declaration of the factories' inputs (None: inferred)
    inputs_line: str | None = None


def read_settings(config) -> Settings:
    """Parse and validate; raises ``SpecError`` with the option's name in the message."""
    raw = config.getoption("deploy_backends") or config.getini("deploy_backends") or None
    where = "--deploy-backends" if config.getoption("deploy_backends") else "ini deploy_backends"
    backends = None
    if raw:
        from .names import parse_backends

        backends = parse_backends(raw, where=where)

    examples = config.getoption("deploy_examples")
    if examples is None:
        ini = config.getini("deploy_examples")
        if ini:
            try:
                examples = positive_int(str(ini).strip())
            except argparse.ArgumentTypeError as exc:
                raise SpecError(f"ini deploy_examples: {exc}") from None
    strict = config.getoption("deploy_strict")
    if strict is None:
        strict = bool(config.getini("deploy_strict"))
    report = report_path(config, "deploy_report")
    seed = config.getoption("deploy_seed")
    backend_options = {"onnx_exporter": config.getoption("deploy_onnx_exporter"),
                       "onnx_opset": config.getoption("deploy_onnx_opset"),
                       "tvm_target": config.getoption("deploy_tvm_target") or config.getini("deploy_tvm_target") or None,
                       "tvm_tune": config.getoption("deploy_tvm_tune"),
                       "precision": read_precision(config),
                       "trt_tf32": config.getoption("deploy_trt_tf32"),
                       "trt_builder": config.getoption("deploy_trt_builder"),
                       "localize_budget": read_localize_budget(config)}
    isolate = config.getoption("deploy_isolate") or (config.getini("deploy_isolate") or "").strip() or "native"
    if isolate not in ("none", "native", "all"):
        raise SpecError(f"ini deploy_isolate: {isolate!r} is not one of none, native, all")
    timeout = _seconds_setting(config, "deploy_timeout", positive_seconds)
    keep_passing = config.getoption("deploy_keep_passing")
    if keep_passing is None:
        keep_passing = bool(config.getini("deploy_keep_passing"))
    key_env = (config.getoption("deploy_cache_key_env") or config.getini("deploy_cache_key_env") or "").strip() or None
    if key_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key_env):
        where = "--deploy-cache-key-env" if config.getoption("deploy_cache_key_env") else "ini deploy_cache_key_env"
        raise SpecError(f"{where} is not the name of an environment variable (letters, digits, _): give the "
                        "variable's name, such as PYTEST_DEPLOY_CACHE_KEY, not the secret itself")  # not echoed
    readonly = config.getoption("deploy_cache_readonly")
    if readonly is None:
        readonly = bool(config.getini("deploy_cache_readonly"))
    latency, baseline, save = read_latency(config)
    return Settings(tuple(backends) if backends else None, examples, strict, report, 0 if seed is None else seed,
                    {k: v for k, v in backend_options.items() if v is not None},
                    config.getoption("deploy_cache_dir") or config.getini("deploy_cache_dir") or None,
                    bool(config.getoption("deploy_no_cache")), bool(config.getoption("deploy_recheck")),
                    isolate, timeout, config.getoption("deploy_keep_artifacts"),
                    report_path(config, "deploy_markdown"), not config.getoption("deploy_no_step_summary"),
                    report_path(config, "deploy_html"),
                    keep_passing=keep_passing, cache_key_env=key_env, cache_readonly=readonly,
                    latency=latency, latency_baseline=baseline, latency_save=save,
                    **read_models(config))


def check_options(settings: Settings, declared: Mapping[str, Any], *, backend: str, test_id: str, where: str, seed: int,
                  reproduce: str, source_file: str, cache: Any) -> CheckOptions:
    """What one check of the session is told: the marker's (or ``deploy()``'s) arguments ``declared`` over the
    command line and ini keys (``settings``). ``latency=`` merges over --deploy-latency's settings, with this
    check's speedups from --deploy-latency-baseline; ``where`` names the declaration in messages."""
    from .latency import merge_settings

    kw = {k: v for k, v in declared.items() if k in CALL_KWARGS}
    if kw.get("examples") is None:
        kw["examples"] = settings.examples
    latency = merge_settings(settings.latency, kw.pop("latency", None), where)
    if latency is not None and settings.latency_baseline is not None:
        entry = settings.latency_baseline.get(f"{test_id}::{backend}")
        if entry:
            latency["baseline"] = entry
    return CheckOptions(**kw, latency=latency, seed=seed, test_id=test_id, reproduce=reproduce,
                        isolate=settings.isolate, timeout=settings.timeout, cache=cache, recheck=settings.recheck,
                        keep_artifacts=settings.keep_artifacts, keep_passing=settings.keep_passing,
                        source_files=(source_file,), backend_options=settings.backend_options)


def read_latency(config) -> tuple[dict | None, dict | None, str | None]:
    """--deploy-latency and its options over their ini keys: (settings or None, the baseline read, the save path).
    A baseline turns latency on; a baseline file that cannot be read is a usage error naming it."""
    from .latency import DEFAULTS, read_baseline

    on = config.getoption("deploy_latency")
    if on is None:
        on = bool(config.getini("deploy_latency"))
    budget = _seconds_setting(config, "deploy_latency_budget", positive_seconds)
    tolerance = _seconds_setting(config, "deploy_latency_tolerance", fraction)
    baseline_path = config.getoption("deploy_latency_baseline") or config.getini("deploy_latency_baseline") or None
    save = config.getoption("deploy_latency_save") or None
    baseline = None
    if baseline_path:
        where = ("--deploy-latency-baseline" if config.getoption("deploy_latency_baseline")
                 else "ini deploy_latency_baseline")
        baseline = read_baseline(str(baseline_path), where)
    if not (on or baseline is not None):
        if save:
            raise SpecError(f"--deploy-latency-save={save}: nothing would be measured; add --deploy-latency")
        return None, None, None
    settings = dict(DEFAULTS)
    if budget is not None:
        settings["budget"] = budget
    if tolerance is not None:
        settings["tolerance"] = tolerance
    return settings, baseline, save


#: what --deploy-model takes: a dotted module, a colon, a dotted attribute
MODEL_TARGET = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*")


def read_models(config) -> dict[str, Any]:
    """``--deploy-model`` (repeatable) and ini ``deploy_models``; ``--deploy-inputs``, checked at start-up."""
    given = list(config.getoption("deploy_model") or [])
    ini = [line.strip() for line in config.getini("deploy_models") or [] if line.strip()]
    for target, where in [*((t, "--deploy-model") for t in given), *((t, "ini deploy_models") for t in ini)]:
        if not MODEL_TARGET.fullmatch(target.strip()):
            raise SpecError(f"{where}={target}: not MODULE:FACTORY; write the dotted module, a colon and the factory, "
                            "e.g. --deploy-model=examples.models:SmallCNN")
    line = config.getoption("deploy_inputs")
    if line is not None:
        if not given and not ini:
            raise SpecError("--deploy-inputs declares the inputs of --deploy-model factories, and none is given; "
                            "add --deploy-model=MODULE:FACTORY")
        from .declaration import parse_inputs

        parse_inputs(line, where="--deploy-inputs")
    models = tuple(dict.fromkeys(t.strip() for t in [*given, *ini]))
    return {"models": models, "models_from_command_line": bool(given), "inputs_line": line}


def report_path(config, name: str) -> str | None:
    """A report's path (option over ini), refused at start-up when it cannot be written as a file: the checks
    would all run and the report be lost at the end."""
    path = config.getoption(name) or config.getini(name) or None
    if not path:
        return None
    where = f"--{name.replace('_', '-')}" if config.getoption(name) else f"ini {name}"
    example = {"deploy_report": "deploy-report.json", "deploy_markdown": "deploy-summary.md",
               "deploy_html": "deploy-report.html"}[name]
    target = Path(path)
    if target.is_dir() or str(path).endswith(("/", os.sep)):
        raise SpecError(f"{where}={path}: is a directory; the report is one file: give a file path, "
                        f"such as {target / example}")
    for parent in target.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise SpecError(f"{where}={path}: {parent} is a file, not a directory; give a path under a directory")
            if not os.access(parent, os.W_OK):
                raise SpecError(f"{where}={path}: {parent} is not writable; give a path under a writable directory")
            break
    return str(path)


def read_localize_budget(config) -> float | None:
    """``--deploy-localize-budget`` over ini ``deploy_localize_budget``; None when neither is set (the default)."""
    return _seconds_setting(config, "deploy_localize_budget", budget_seconds)


def _seconds_setting(config, name: str, parse) -> float | None:
    """The command-line option ``name`` over the ini key of that name (read with ``parse``, the option's own
    argparse type); None when neither is set."""
    value = config.getoption(name)
    if value is None and config.getini(name):
        try:
            value = parse(str(config.getini(name)).strip())
        except argparse.ArgumentTypeError as exc:
            raise SpecError(f"ini {name}: {exc}") from None
    return value


def read_precision(config) -> str | None:
    """``--deploy-precision`` (or its alias ``--deploy-trt-fp16``) over ini ``deploy_precision``; None when neither
    is set (fp32). An unknown value, or the alias contradicting ``--deploy-precision``, raises ``SpecError``."""
    from .names import parse_precision

    given = config.getoption("deploy_precision")
    if given is not None:
        precision = parse_precision(given, where="--deploy-precision")
        if config.getoption("deploy_trt_fp16") and precision != "fp16":
            raise SpecError(f"--deploy-trt-fp16 is an alias of --deploy-precision=fp16, but --deploy-precision="
                            f"{precision} is given too; pass one of them")
        return precision
    if config.getoption("deploy_trt_fp16"):
        return "fp16"
    ini = (config.getini("deploy_precision") or "").strip()
    return parse_precision(ini, where="ini deploy_precision") if ini else None


def validate_kwargs(kwargs: Mapping[str, Any], *, where: str, allowed=tuple(MARKER_KWARGS),
                    declaration: bool = True) -> dict[str, Any]:
    """Check a marker's or a call's keyword arguments; normalise backends and xfail to canonical names.

    ``declaration``: also resolve ``inputs``/``dims`` on their own (a marker, at collection, before any model
    exists); a call that has the model resolves them against its forward instead."""
    from .names import parse_backends

    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        known = ", ".join(allowed)
        raise SpecError(f"{where}: unknown argument(s) {', '.join(unknown)}; known: {known}")
    out = dict(kwargs)
    if "backends" in out and out["backends"] is not None:
        value = out["backends"]
        if isinstance(value, (list, tuple)) and not value:
            raise SpecError(f"{where}: backends=[] names no backend; list at least one, or omit it for all")
        out["backends"] = parse_backends(value, where=f"{where} backends=")
    if out.get("xfail") is not None:
        xfail = out["xfail"]
        if not isinstance(xfail, Mapping):
            raise SpecError(f"{where}: xfail={xfail!r} must be a dict {{backend: reason}}")
        norm = {}
        for key, reason in xfail.items():
            names = parse_backends([key], where=f"{where} xfail=")
            if len(names) != 1:
                raise SpecError(f"{where}: xfail={{{key!r}: ...}} must name one backend; list each one that fails")
            (name,) = names
            if not isinstance(reason, str) or not reason.strip():
                raise SpecError(f"{where}: xfail[{key!r}] must be a non-empty reason string")
            norm[name] = reason
        if out.get("backends"):
            extra = sorted(set(norm) - set(out["backends"]))
            if extra:
                raise SpecError(f"{where}: xfail names {extra} which backends= does not list")
        out["xfail"] = norm
    examples = out.get("examples")
    if examples is not None and (isinstance(examples, bool) or not isinstance(examples, int) or examples < 1):
        raise SpecError(f"{where}: examples={examples!r} must be a positive int")
    for flag in ("allow_nonfinite", "compare_masked", "allow_vacuous"):
        if flag in out and not isinstance(out[flag], bool):
            raise SpecError(f"{where}: {flag}={out[flag]!r} must be True or False")
    if out.get("latency") is not None:
        from .latency import parse_settings

        parse_settings(out["latency"], where)  # refused here, with where it came from
    if out.get("precision") is not None:
        from .names import parse_precision

        out["precision"] = parse_precision(out["precision"], where=f"{where} precision=")
    if out.get("agreement") is not None:
        from .agreement import parse_agreement

        parse_agreement(out["agreement"], f"{where} agreement=")  # refused here, with where it came from
    count = out.get("calibration_examples")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise SpecError(f"{where}: calibration_examples={count!r} must be a positive int")
    for key in ("int8_exclude", "fp16_block_list"):
        nodes = out.get(key)
        if nodes is not None and (isinstance(nodes, (str, bytes)) or not isinstance(nodes, (list, tuple))
                                  or not all(isinstance(n, str) and n for n in nodes)):
            raise SpecError(f"{where}: {key}={nodes!r} must be a list of ONNX node names (strings)")
    if out.get("calibration") is not None and isinstance(out["calibration"], (str, bytes)):
        raise SpecError(f"{where}: calibration= must be an iterable or a zero-argument callable yielding inputs "
                        "(tuples or dicts as inputs= declares), not a string")
    if out.get("dims") is not None:
        from .spec import normalize_dims

        normalize_dims(out["dims"])
    if declaration and out.get("inputs") is not None:
        # the declaration alone (no model yet): unbound dims, bad masks, bounds naming no dim fail here, once
        from .spec import validate_declaration

        try:
            validate_declaration(out["inputs"], out.get("dims"))
        except SpecError as exc:
            raise SpecError(f"{where}: {exc}") from None
    return out
