"""TensorRT 10 and 11 through NVIDIA's Polygraphy: ONNX (the onnx backend's export) → TensorRT engine → serialize →
deserialize → run on CUDA.

The engine is built from the ONNX file either in-process, with Polygraphy's loaders (``CreateNetwork`` and
TensorRT's ONNX parser, ``CreateConfig`` with one optimization profile from the spec's dims,
``EngineBytesFromNetwork``; loaded with ``EngineFromBytes`` and run by ``TrtRunner``, which allocates outputs of
data-dependent shape), or, with ``--deploy-trt-builder=trtexec``, by the ``trtexec`` binary with the same shapes
and flags. Every TensorRT object logs to Polygraphy's one global ``trt.Logger`` (TensorRT keeps the first logger
it is given). Engines are kept in the artifact cache, keyed by the ONNX file's content, the TensorRT version (for
trtexec, trtexec's own), the GPU and the build flags; TensorRT's timing cache is kept there too.

Precision: TensorRT 11 builds strongly typed networks only (no ``BuilderFlag.FP16``): reduced precision lives in
the graph. At ``precision="fp16"`` the float32 export is converted to float16 (:mod:`.precision`, the graph the
onnx backend verifies through ONNX Runtime) and built strongly typed, on TensorRT 10 and 11 alike; fp32 builds
the float32 graph, with TF32 off unless ``--deploy-trt-tf32``.

Everything above the backend class is pure (no TensorRT, no torch) and unit-tested; the class needs TensorRT,
Polygraphy and a CUDA device. What runs where CUDA lives (the build, the runtime) is in :mod:`.tensorrt_engine`.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import StageError
from .base import Backend
from .tensorrt_engine import (
    WORKSPACE_BYTES,
    Shape,
    TrtRuntime,
    _shapes,
    build_engine,
    describe_parser_errors,
    dynamic_profiles,
    polygraphy_profiles,
    trtexec_command,
)

INSTALL_HINT = 'pip install "pytest-deploy[tensorrt]" (tensorrt and polygraphy) on a machine with an NVIDIA GPU and CUDA'
BUILDERS = ("python", "trtexec")
ENGINE = "model.engine"
TIMING_CACHE = "timing.cache"


# ------------------------------------------------------------------------------ pure helpers


def profile_shapes(space) -> dict[str, tuple[Shape, Shape, Shape]]:
    """``{input name: (min, opt, max)}`` for every input of the spec, named as the ONNX export names them.

    A named dim spans its ``dims`` bounds, with opt the spec's representative size (``opt_dims``) clamped into
    them; a dim whose bounds are one value, and every int dim, gives min = opt = max.
    """
    from .onnx_export import input_names

    names = input_names(space, len(space.specs))
    opt = space.opt_dims()
    out: dict[str, tuple[Shape, Shape, Shape]] = {}
    for name, spec in zip(names, space.specs):
        lows, opts, highs = [], [], []
        for d in spec.shape:
            if isinstance(d, str):
                lo, hi = space.dims[d]
                lows.append(lo)
                opts.append(min(max(opt.get(d, lo), lo), hi))
                highs.append(hi)
            else:
                lows.append(d)
                opts.append(d)
                highs.append(d)
        out[name] = (tuple(lows), tuple(opts), tuple(highs))
    return out



def trt_major(version: str | None) -> int | None:
    """The major version of a TensorRT version string (``"11.4.0.13"`` -> 11); None when unreadable."""
    m = re.match(r"\s*(\d+)", version or "")
    return int(m.group(1)) if m else None


def build_settings(trt_version: str | None, precision: str = "fp32", tf32: bool = False) -> dict[str, bool]:
    """How the network is built: ``strongly_typed`` on TensorRT 11 (which has no other kind) and for a reduced-precision
    graph on 10 (the converted graph's types decide each layer's precision; no ``BuilderFlag.FP16``), and ``tf32``
    (off unless asked: TF32 rounds float32 matmuls and convolutions to a 10-bit mantissa)."""
    major = trt_major(trt_version) or 10
    return {"strongly_typed": major >= 11 or precision != "fp32", "tf32": bool(tf32)}



def shape_tensor_values(space, name: str) -> tuple[list[int], list[int], list[int]]:
    """(min, opt, max) values for ``name``, an input TensorRT marks as a shape tensor (a 1-D integer input whose
    values are a shape, such as a ``reshape`` target): from the spec's integer range ``[low, high)``, each bound that
    names a dim spanning that dim's bounds. A shape tensor's own length must be fixed."""
    from ..errors import StageError
    from .onnx_export import input_names

    names = input_names(space, len(space.specs))
    if name not in names:
        raise StageError("compile", f"TensorRT marks input '{name}' as a shape tensor, but no spec in inputs= names it")
    spec = space.specs[names.index(name)]
    if len(spec.shape) != 1 or not isinstance(spec.shape[0], int):
        raise StageError("compile", f"TensorRT marks input '{name}' as a shape tensor (its values are a shape), which "
                                    f"needs a fixed 1-D spec; inputs= declares shape {tuple(spec.shape)}")

    def span(bound, default: int, side: int) -> int:
        if bound is None:
            return default
        if isinstance(bound, str):
            return int(space.dims[bound][side])
        return int(bound)

    low = span(spec.low, 0, 0)
    high = span(spec.high, 10, 1) - 1  # integer values lie in [low, high)
    opt = min(max((low + high + 1) // 2, low), high)
    width = spec.shape[0]
    return [low] * width, [opt] * width, [high] * width


def parse_trtexec_version(text: str) -> str | None:
    """TensorRT's version from ``trtexec --version`` output: its banner ``[TensorRT v100300]`` (major*10000 +
    minor*100 + patch, as TensorRT encodes it) or a plain ``TensorRT version: 10.3.0``; None when absent."""
    m = re.search(r"TensorRT\s+v(\d{5,})", text)
    if m:
        code = int(m.group(1))
        return f"{code // 10000}.{code // 100 % 100}.{code % 100}"
    m = re.search(r"TensorRT(?:\s+version)?[:\s]+v?(\d+\.\d+(?:\.\d+)*)", text, re.I)
    return m.group(1) if m else None


def trtexec_version(trtexec: str = "trtexec") -> str | None:
    """The TensorRT version of the ``trtexec`` binary itself (not the Python module's): ``trtexec --version``."""
    import subprocess

    try:
        proc = subprocess.run([trtexec, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_trtexec_version(proc.stdout + proc.stderr)



def engine_cache_key(onnx_digest: str, trt_version: str | None, gpu: Any, flags: Mapping[str, Any]) -> str:
    """Cache key of an engine: the ONNX content, the TensorRT version that builds it (trtexec's own for that
    route), the GPU (name, driver, CUDA) and the build flags."""
    from ..cache import make_key

    return make_key("tensorrt-engine", onnx_digest, trt_version, gpu, dict(flags))


def timing_cache_key(trt_version: str | None, gpu: Any) -> str:
    """Cache key of TensorRT's timing cache, shared by every model built with this TensorRT on this GPU."""
    from ..cache import make_key

    return make_key("tensorrt-timing-cache", trt_version, gpu)



def _cuda_device() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return bool(torch.cuda.is_available())


def unavailable_reason(options: Mapping[str, Any] | None = None) -> str | None:
    """Why TensorRT cannot run here (no tensorrt or polygraphy module, no ONNX exporter, a precision with no route,
    no CUDA device, no trtexec for that builder) and what to install; None when it can."""
    options = options or {}
    missing = [m for m in ("tensorrt", "polygraphy") if importlib.util.find_spec(m) is None]
    if missing:
        return f"tensorrt: {' and '.join(missing)} not installed; {INSTALL_HINT}"
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        return (f"tensorrt: builds from the ONNX export, which needs {', '.join(missing)}; "
                "pip install 'pytest-deploy[onnx]'")
    from .precision import reduced_precision_reason

    reason = reduced_precision_reason("tensorrt", options.get("precision") or "fp32")
    if reason:
        return reason
    if not _cuda_device():
        return ("tensorrt: no CUDA device is visible (torch.cuda.is_available() is False); TensorRT runs on NVIDIA "
                f"GPUs only: run on a machine with one and a CUDA build of torch ({INSTALL_HINT})")
    if (options.get("trt_builder") or "python") == "trtexec" and shutil.which("trtexec") is None:
        return ("tensorrt: --deploy-trt-builder=trtexec needs the trtexec binary on PATH (it ships in the bin/ "
                "directory of TensorRT's tar or deb packages); add it to PATH, or use --deploy-trt-builder=python")
    return None


# ---------------------------------------------------------------------------------- backend


class TensorRTBackend(Backend):
    name = "tensorrt"
    native = True
    aliases = ("trt",)
    requires = ("tensorrt", "polygraphy")
    extra = "tensorrt"
    precisions = ("fp32", "fp16", "bf16")
    description = ("ONNX export (converted to fp16, or quantized to an int8 QDQ graph, when asked) → Polygraphy: "
                   "TensorRT parser → engine (profiles from dims, strongly typed on TensorRT 11 and for reduced "
                   "precisions; cached) → serialize → deserialize → TrtRunner on CUDA")

    spawns_runtime = True

    def uses_cuda(self, options=None) -> bool:
        return True

    def precision_reason(self, precision: str) -> str | None:
        if precision.startswith("int8"):  # said before anything looks for TensorRT itself
            from .quantize import quantization_reason

            return quantization_reason(self.name, precision)
        return super().precision_reason(precision)

    def unavailable_reason(self, options=None) -> str | None:
        return unavailable_reason(options)

    def verify(self, ctx) -> None:
        """Export (and convert) in this process; build, load and run the engine where CUDA lives: a spawned worker
        process (``ctx.spawn_runtime``, the default), or this process under ``--deploy-isolate=none``."""
        import tensorrt as trt

        from ..compare import Leaves, flatten

        builder = ctx.options.get("trt_builder") or "python"
        if builder not in BUILDERS:
            raise StageError("compile", f"unknown TensorRT builder {builder!r}; use one of {', '.join(BUILDERS)}")
        precision = ctx.options.get("precision") or "fp32"
        version = trt.__version__
        if builder == "trtexec":
            version = trtexec_version(shutil.which("trtexec") or "trtexec") or version
        settings = build_settings(version, precision, bool(ctx.options.get("trt_tf32")))
        ctx.note("trt_builder", builder)
        ctx.note("trt_version", version)
        ctx.note("precision", precision)
        ctx.note("trt_strongly_typed", settings["strongly_typed"])
        ctx.note("trt_tf32", settings["tf32"])
        onnx_path = _export(ctx, precision)
        shapes = profile_shapes(ctx.space)
        declared = _declared(ctx)
        shape_values = {}
        for spec, name in zip(ctx.space.specs, declared):
            if len(spec.shape) == 1 and isinstance(spec.shape[0], int) and not spec.torch_dtype.is_floating_point:
                shape_values[name] = shape_tensor_values(ctx.space, name)  # used only for inputs TensorRT marks so
        config = {"onnx": onnx_path, "shapes": {n: [list(x) for x in s] for n, s in shapes.items()},
                  "shape_values": shape_values, "settings": dict(settings), "declared": declared,
                  "outputs": _graph_outputs(onnx_path)}
        if ctx.spawn_runtime:
            from .base import spawned_runtime

            open_runtime = lambda cfg: spawned_runtime(ctx, "TensorRT", f"{TrtRuntime.__module__}:TrtRuntime", cfg)  # noqa: E731
        else:
            open_runtime = _in_process(ctx)
        engine_path = _engine(ctx, config, builder, version, settings, _builder(ctx))
        with ctx.stage("load"):
            runtime = open_runtime({**config, "engine": engine_path})
        ctx.run_examples(lambda args: Leaves(runtime.run(args)), reference=lambda args: Leaves(
            (p, v) for p, v in flatten(ctx.recorded_eager(args)) if hasattr(v, "dtype")))


def _builder(ctx) -> Callable[[str, dict], Any]:
    """``call(function, job)``: one of :mod:`.tensorrt_engine`'s build functions, run where CUDA lives: in the
    builder's worker process, spawned at the first call (an engine from the artifact cache starts none), or in this
    process without ``ctx.spawn_runtime``."""
    from . import tensorrt_engine

    if not ctx.spawn_runtime:
        return lambda function, job: getattr(tensorrt_engine, function)(job)
    process = None

    def call(function: str, job: dict) -> Any:
        nonlocal process
        if process is None:
            from ..worker import Runtime

            process = Runtime("TensorRT", ctx.timeout)
            ctx.cleanup.callback(process.close)
        return process.call(f"{tensorrt_engine.__name__}:{function}", job, "compile")

    return call


def _in_process(ctx):
    """Opens :class:`TrtRuntime` in this process (``--deploy-isolate=none``), deactivated when the check ends."""

    def open_runtime(config: dict) -> TrtRuntime:
        runtime = TrtRuntime(config)
        ctx.cleanup.callback(runtime.close)
        return runtime

    return open_runtime


def _declared(ctx) -> list[str]:
    from .onnx_export import input_names

    return input_names(ctx.space, len(ctx.space.specs))


def _export(ctx, precision: str) -> str:
    """The model as ONNX, exported exactly as the onnx backend exports it (and converted as it converts it)."""
    from .onnx_export import export_dynamo, external_data

    path = ctx.path("model.onnx")
    external = external_data(ctx)  # the onnx backend's rule, its onnx_external_data_threshold option included
    ctx.note("onnx_external_data", external)
    export_dynamo(ctx, path, ctx.options.get("onnx_opset"), external)
    if precision == "fp32":
        return path
    if precision == "int8":  # the calibrated QDQ graph, activations symmetric: TensorRT's explicit quantization
        from .quantize import quantize

        return quantize(ctx, path, precision, target="tensorrt")
    from .precision import conversion_failure, convert_fp16

    converted = ctx.path("model.fp16.onnx")
    with ctx.stage("compile"):
        try:
            info = convert_fp16(path, converted, external, ctx.options.get("fp16_block_list") or ())
        except Exception as exc:
            raise StageError("compile", conversion_failure(exc)) from None
    for key, value in info.items():
        ctx.note(key, value)
    return converted


def _graph_outputs(path: str) -> list[str]:
    import onnx

    return [o.name for o in onnx.load(path, load_external_data=False).graph.output]


def _engine(ctx, config: dict, builder: str, version: str, settings: Mapping[str, bool],
            call: Callable[[str, dict], Any]) -> str:
    """The engine file: from the artifact cache, or built by ``call("build_engine", job)`` (:func:`_builder`) and
    stored. TensorRT's timing cache, shared by every build with this TensorRT on this GPU, is copied in before the
    build and stored back after it (:func:`_timing_cache_in`, :func:`_timing_cache_out`); its lock is never held
    across a build."""
    from ..fingerprint import gpu_environment
    from .onnx_export import onnx_digest

    gpu = gpu_environment()
    flags = {"builder": builder, **settings, "shapes": config["shapes"], "shape_values": config["shape_values"],
             "workspace": WORKSPACE_BYTES}
    key = engine_cache_key(onnx_digest(config["onnx"]), version, gpu, flags)
    ctx.note("cache_key", key[:16])
    ctx.note("trt_profiles", {n: s for n, s in config["shapes"].items() if s[0] != s[2]})
    with ctx.cache.lock(key):  # one build per engine: another check needing it waits, then finds it cached
        entry = ctx.cache.lookup(key)
        if entry is not None:
            ctx.result.cached = True
            return str(entry / ENGINE)
        engine_path = ctx.path(ENGINE)
        timing = timing_cache_key(version, gpu)
        timing_path = ctx.path(TIMING_CACHE)
        copied = _timing_cache_in(ctx, timing, timing_path)
        trtexec = shutil.which("trtexec") or "trtexec"
        job = {**config, "engine": engine_path, "timing_cache": timing_path, "builder": builder, "trtexec": trtexec,
               "timeout": ctx.timeout}
        if builder == "trtexec":
            shapes = _shapes(config["shapes"])
            ctx.note("trtexec_command", " ".join(trtexec_command(
                config["onnx"], engine_path, shapes, settings["strongly_typed"], settings["tf32"], timing_path,
                trtexec)))
        with ctx.stage("compile"):
            call("build_engine", job)
        if os.path.exists(timing_path):
            _timing_cache_out(ctx, timing, timing_path, copied, call)
        ctx.cache.store(key, {ENGINE: engine_path})
    if ctx.cache.events:
        ctx.note("cache_events", list(ctx.cache.events))
    return engine_path


def _timing_cache_in(ctx, timing: str, path: str) -> str | None:
    """Copy the stored timing cache to ``path``, under its lock; the digest of what was copied (None: none was)."""
    from ..cache import file_digest

    with ctx.cache.lock(timing):
        stored = ctx.cache.lookup(timing)
        if stored is None:
            return None
        shutil.copyfile(stored / TIMING_CACHE, path)
    return file_digest(path)


def _timing_cache_out(ctx, timing: str, path: str, copied: str | None, call: Callable[[str, dict], Any]) -> None:
    """Store this build's timing cache (``path``), under its lock. When another build stored one since this one
    copied it in, that one is merged into ours first (:func:`.tensorrt_engine.merge_timing_cache`, Polygraphy's
    ``save_timing_cache`` merge), so two concurrent builds each add their timings instead of the last one's
    replacing the other's."""
    from ..cache import file_digest

    with ctx.cache.lock(timing):
        stored = ctx.cache.lookup(timing)
        if stored is not None and file_digest(stored / TIMING_CACHE) != copied:
            with ctx.stage("compile"):
                call("merge_timing_cache", {"into": path, "from": str(stored / TIMING_CACHE)})
        ctx.cache.store(timing, {TIMING_CACHE: path})


__all__ = ["TensorRTBackend", "TrtRuntime", "build_engine", "profile_shapes", "dynamic_profiles",
           "polygraphy_profiles", "shape_tensor_values", "build_settings",
           "trt_major", "parse_trtexec_version", "trtexec_version", "trtexec_command", "engine_cache_key",
           "timing_cache_key", "describe_parser_errors", "unavailable_reason"]
