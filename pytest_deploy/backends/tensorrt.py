"""TensorRT: ONNX (the onnx backend's export) → TensorRT engine → serialize → deserialize → run on CUDA.

The engine is built from the ONNX file either in-process (``trt.Builder``, ``trt.OnnxParser``, an
optimization profile per dynamic input from the spec's dims) or, with ``--deploy-trt-builder=trtexec``,
by the ``trtexec --onnx=... --saveEngine=...`` command with the same shapes and flags. Engines are kept in
the artifact cache, keyed by the ONNX file's content, the TensorRT version, the GPU and the build flags, so
an upgrade or another GPU never reuses a stale engine; TensorRT's timing cache is kept there too (per
TensorRT version and GPU) and shared by every build.

fp16 (``--deploy-trt-fp16``): every float output then carries fp16 rounding, so unless the user gave
tolerances, each float dtype gets at least the float16 default (atol = rtol = 1e-2 for float32 outputs).

Everything above the backend class is pure (no TensorRT, no torch) and unit-tested; the class needs
TensorRT and a CUDA device.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import StageError
from ..sources import first_line, short_path
from .base import Backend

INSTALL_HINT = "pip install tensorrt on a machine with an NVIDIA GPU and CUDA"
BUILDERS = ("python", "trtexec")
#: Builder workspace limit (``MemoryPoolType.WORKSPACE``) for the in-process builder.
WORKSPACE_BYTES = 1 << 30
ENGINE = "model.engine"
TIMING_CACHE = "timing.cache"

Shape = tuple[int, ...]


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


def dynamic_profiles(shapes: Mapping[str, tuple[Shape, Shape, Shape]]) -> dict[str, tuple[Shape, Shape, Shape]]:
    """The inputs whose shape varies (min != max): the ones an optimization profile must cover."""
    return {name: s for name, s in shapes.items() if s[0] != s[2]}


def _shape_arg(shapes: Mapping[str, tuple[Shape, Shape, Shape]], which: int) -> str:
    def tensor(name: str) -> str:
        return f"'{name}'" if ":" in name else name  # trtexec's quoting for names holding ':'

    return ",".join(f"{tensor(n)}:{'x'.join(str(d) for d in s[which])}" for n, s in shapes.items())


def trtexec_command(onnx_path: str, engine_path: str, shapes: Mapping[str, tuple[Shape, Shape, Shape]],
                    fp16: bool = False, timing_cache: str | None = None, trtexec: str = "trtexec") -> list[str]:
    """The ``trtexec`` command that builds the engine the in-process builder builds: shapes only for dynamic
    inputs (trtexec rejects shapes for a static model), ``--fp16`` and ``--timingCacheFile`` when asked, the
    same workspace limit (MiB); ``--skipInference`` builds only."""
    cmd = [trtexec, f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    dynamic = dynamic_profiles(shapes)
    if dynamic:
        cmd += [f"--minShapes={_shape_arg(dynamic, 0)}", f"--optShapes={_shape_arg(dynamic, 1)}",
                f"--maxShapes={_shape_arg(dynamic, 2)}"]
    if fp16:
        cmd.append("--fp16")
    if timing_cache:
        cmd.append(f"--timingCacheFile={timing_cache}")
    cmd += [f"--memPoolSize=workspace:{WORKSPACE_BYTES >> 20}", "--skipInference"]
    return cmd


def engine_cache_key(onnx_digest: str, trt_version: str | None, gpu_name: str | None, flags: Mapping[str, Any]) -> str:
    """Cache key of an engine: the ONNX content, the TensorRT version, the GPU and the build flags."""
    from ..cache import make_key

    return make_key("tensorrt-engine", onnx_digest, trt_version, gpu_name, dict(flags))


def timing_cache_key(trt_version: str | None, gpu_name: str | None) -> str:
    """Cache key of TensorRT's timing cache, shared by every model built with this TensorRT on this GPU."""
    from ..cache import make_key

    return make_key("tensorrt-timing-cache", trt_version, gpu_name)


def fp16_tolerance(tol, default) -> Any:
    """``tol`` widened for an fp16 engine, when it is the backend's ``default`` (the user gave no tolerance):
    every float dtype gets at least the float16 default. A user's tolerance is kept as given."""
    from ..compare import Tolerance

    if tol != default:
        return tol
    atol16, rtol16 = default.for_dtype("float16")
    return Tolerance({dtype: (max(a, atol16), max(r, rtol16)) for dtype, (a, r) in default.per_dtype.items()})


def describe_parser_errors(errors: Iterable[Any], where=lambda node: None) -> str:
    """TensorRT's ONNX parser errors, one per line with the node and its op; ``where(node name)`` gives the
    user's source line of a node, when the graph records it."""
    lines = []
    for err in errors:
        node = err.node_name() if hasattr(err, "node_name") else ""
        op = err.node_operator() if hasattr(err, "node_operator") else ""
        label = f"node '{node}'" if node else f"node #{err.node()}"
        lines.append(f"{label} (op {op or '?'}): {err.desc()}")
        src = where(node) if node else None
        if src:
            lines.append(f"  from {short_path(src[0])}:{src[1]}  `{src[2]}`")
    return "\n".join(lines)


#: TensorRT ``DataType`` member names → torch dtype names.
TORCH_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "UINT8": "uint8",
                "INT32": "int32", "INT64": "int64", "BOOL": "bool"}


def _cuda_device() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return bool(torch.cuda.is_available())


def unavailable_reason(options: Mapping[str, Any] | None = None) -> str | None:
    """Why TensorRT cannot run here (no tensorrt module, no ONNX exporter, no CUDA device, no trtexec for that
    builder) and what to install; None when it can."""
    options = options or {}
    if importlib.util.find_spec("tensorrt") is None:
        return f"tensorrt: the tensorrt module is not installed; {INSTALL_HINT}"
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        return (f"tensorrt: builds from the ONNX export, which needs {', '.join(missing)}; "
                "pip install 'pytest-deploy[onnx]'")
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

    def uses_cuda(self, options=None) -> bool:
        return True
    aliases = ("trt",)
    requires = ("tensorrt",)
    description = ("ONNX export → TensorRT parser → engine (profiles from dims, fp16 when asked; cached) → "
                   "serialize → deserialize → execute on CUDA")

    def unavailable_reason(self, options=None) -> str | None:
        return unavailable_reason(options)

    def verify(self, ctx) -> None:
        from ..compare import Leaves, flatten, resolve_tolerance

        builder = ctx.options.get("trt_builder") or "python"
        if builder not in BUILDERS:
            raise StageError("compile", f"unknown TensorRT builder {builder!r}; use one of {', '.join(BUILDERS)}")
        fp16 = bool(ctx.options.get("trt_fp16"))
        if fp16:
            ctx.tol = fp16_tolerance(ctx.tol, resolve_tolerance(ctx.backend))
            ctx.result.atol, ctx.result.rtol = ctx.tol.float32
        ctx.note("trt_builder", builder)
        ctx.note("trt_fp16", fp16)
        onnx_path = _export(ctx)
        shapes = profile_shapes(ctx.space)
        engine_path = _engine(ctx, onnx_path, shapes, builder, fp16)
        run = _runner(ctx, engine_path, _graph_outputs(onnx_path))
        ctx.run_examples(run, reference=lambda args: Leaves(
            (p, v) for p, v in flatten(ctx.recorded_eager(args)) if hasattr(v, "dtype")))


def _export(ctx) -> str:
    """The model as ONNX, exported exactly as the onnx backend exports it."""
    from .onnx_export import EXTERNAL_DATA_THRESHOLD, export_dynamo, weight_bytes

    path = ctx.path("model.onnx")
    export_dynamo(ctx, path, ctx.options.get("onnx_opset"), weight_bytes(ctx.model) > EXTERNAL_DATA_THRESHOLD)
    return path


def _onnx_digest(path: str) -> str:
    from ..cache import file_digest

    parts = [file_digest(path)]
    if os.path.exists(path + ".data"):
        parts.append(file_digest(path + ".data"))
    return ":".join(parts)


def _graph_outputs(path: str) -> list[str]:
    import onnx

    return [o.name for o in onnx.load(path, load_external_data=False).graph.output]


def _engine(ctx, onnx_path: str, shapes, builder: str, fp16: bool) -> str:
    """The engine file: from the artifact cache, or built (and stored there)."""
    import tensorrt as trt
    import torch

    gpu = torch.cuda.get_device_name(0)
    flags = {"builder": builder, "fp16": fp16, "shapes": {n: list(s) for n, s in shapes.items()},
             "workspace": WORKSPACE_BYTES}
    key = engine_cache_key(_onnx_digest(onnx_path), trt.__version__, gpu, flags)
    ctx.note("cache_key", key[:16])
    ctx.note("trt_profiles", {n: [list(x) for x in s] for n, s in dynamic_profiles(shapes).items()})
    with ctx.cache.lock(key):
        entry = ctx.cache.lookup(key)
        if entry is not None:
            ctx.result.cached = True
            return str(entry / ENGINE)
        engine_path = ctx.path(ENGINE)
        timing = timing_cache_key(trt.__version__, gpu)
        with ctx.cache.lock(timing):
            cached_timing = ctx.cache.lookup(timing)
            timing_path = ctx.path(TIMING_CACHE)
            if cached_timing is not None:
                shutil.copyfile(cached_timing / TIMING_CACHE, timing_path)
            if builder == "trtexec":
                _build_trtexec(ctx, onnx_path, engine_path, shapes, fp16, timing_path)
            else:
                _build_python(ctx, onnx_path, engine_path, shapes, fp16, timing_path)
            if os.path.exists(timing_path):
                ctx.cache.store(timing, {TIMING_CACHE: timing_path})
        ctx.cache.store(key, {ENGINE: engine_path})
    if ctx.cache.events:
        ctx.note("cache_events", list(ctx.cache.events))
    return engine_path


def _logger():
    """A TensorRT logger that keeps errors for the failure message (and prints nothing)."""
    import tensorrt as trt

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(msg)

    return Logger()


def _build_python(ctx, onnx_path: str, engine_path: str, shapes, fp16: bool, timing_path: str) -> None:
    import tensorrt as trt

    from .onnx_export import node_source

    logger = _logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: every network is explicit-batch
    parser = trt.OnnxParser(network, logger)
    with ctx.stage("compile"):
        if not parser.parse_from_file(onnx_path):
            errors = [parser.get_error(i) for i in range(parser.num_errors)]
            raise StageError("compile", "TensorRT's ONNX parser rejects the exported graph:\n  "
                             + describe_parser_errors(errors, lambda node: node_source(onnx_path, node))
                             .replace("\n", "\n  "))
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        dynamic = False
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            if any(d < 0 for d in tensor.shape):
                if tensor.name not in shapes:
                    raise StageError("compile", f"the ONNX graph's input '{tensor.name}' has dynamic dims "
                                                f"{tuple(tensor.shape)} but no spec in inputs= names it")
                dynamic = True
                profile.set_shape(tensor.name, *shapes[tensor.name])
        if dynamic:
            config.add_optimization_profile(profile)
        blob = open(timing_path, "rb").read() if os.path.exists(timing_path) else b""
        config.set_timing_cache(config.create_timing_cache(blob), ignore_mismatch=False)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            why = "; ".join(logger.errors[-3:]) or "no error was logged"
            raise StageError("compile", f"TensorRT could not build an engine: {why}")
    with ctx.stage("save"):
        with open(engine_path, "wb") as fh:
            fh.write(serialized)
        with open(timing_path, "wb") as fh:
            fh.write(config.get_timing_cache().serialize())


def _build_trtexec(ctx, onnx_path: str, engine_path: str, shapes, fp16: bool, timing_path: str) -> None:
    import subprocess

    cmd = trtexec_command(onnx_path, engine_path, shapes, fp16, timing_path, shutil.which("trtexec") or "trtexec")
    ctx.note("trtexec_command", " ".join(cmd))
    with ctx.stage("compile"):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.exists(engine_path):
            output = (proc.stdout + proc.stderr).splitlines()
            errors = [ln for ln in output if "[E]" in ln] or output[-5:]
            raise StageError("compile", f"trtexec exits with status {proc.returncode}:\n  " + "\n  ".join(errors[-8:]))


def _runner(ctx, engine_path: str, graph_outputs: list[str]):
    import tensorrt as trt
    import torch

    from ..compare import Leaves
    from .onnx_export import input_names

    logger = _logger()
    with ctx.stage("load"):
        runtime = trt.Runtime(logger)  # kept by the closure below: it must outlive the engine
        with open(engine_path, "rb") as fh:
            engine = runtime.deserialize_cuda_engine(fh.read())
        if engine is None:
            raise StageError("load", "TensorRT cannot deserialize the engine: "
                             + ("; ".join(logger.errors[-3:]) or "no error was logged"))
        context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    outputs.sort(key=lambda n: graph_outputs.index(n) if n in graph_outputs else len(graph_outputs))
    dtypes = {n: getattr(torch, TORCH_DTYPES[engine.get_tensor_dtype(n).name]) for n in names}
    stream = torch.cuda.Stream()

    def run(args, _owners=(runtime, engine)):
        declared = input_names(ctx.space, len(args))
        keep = []  # device tensors must outlive the launch
        for pos, name in enumerate(inputs):
            arg = args[declared.index(name) if name in declared else pos]
            t = arg.detach().to("cuda", dtype=dtypes[name]).contiguous()
            if not context.set_input_shape(name, tuple(t.shape)):
                raise StageError("run", f"TensorRT rejects shape {tuple(t.shape)} for input '{name}' "
                                        f"(outside the engine's optimization profile)")
            context.set_tensor_address(name, t.data_ptr())
            keep.append(t)
        results = []
        for name in outputs:
            out = torch.empty(tuple(context.get_tensor_shape(name)), dtype=dtypes[name], device="cuda")
            context.set_tensor_address(name, out.data_ptr())
            results.append(out)
        stream.wait_stream(torch.cuda.current_stream())
        try:
            ok = context.execute_async_v3(stream.cuda_stream)
            stream.synchronize()
        except Exception as exc:
            raise StageError("run", f"TensorRT execution fails: {first_line(exc)}") from None
        if not ok:
            raise StageError("run", "TensorRT execution fails: " + ("; ".join(logger.errors[-3:]) or "execute_async_v3 "
                                                                                                   "returned False"))
        return Leaves((f"output[{i}]", o.cpu()) for i, o in enumerate(results))

    return run


__all__ = ["TensorRTBackend", "profile_shapes", "dynamic_profiles", "trtexec_command", "engine_cache_key",
           "timing_cache_key", "fp16_tolerance", "describe_parser_errors", "unavailable_reason"]
