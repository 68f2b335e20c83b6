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
Polygraphy and a CUDA device.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import StageError
from ..sources import first_line, short_path
from .base import Backend

INSTALL_HINT = 'pip install "pytest-deploy[tensorrt]" (tensorrt and polygraphy) on a machine with an NVIDIA GPU and CUDA'
BUILDERS = ("python", "trtexec")
#: Builder workspace limit (``MemoryPoolType.WORKSPACE``).
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


def polygraphy_profiles(shapes: Mapping[str, tuple[Shape, Shape, Shape]]) -> list:
    """One Polygraphy ``Profile`` covering every dynamic input (min, opt, max as :func:`profile_shapes` gives them);
    an empty list for a static graph (TensorRT then needs none)."""
    from polygraphy.backend.trt import Profile

    dynamic = dynamic_profiles(shapes)
    if not dynamic:
        return []
    profile = Profile()
    for name, (lo, opt, hi) in dynamic.items():
        profile.add(name, min=lo, opt=opt, max=hi)
    return [profile]


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


def _shape_arg(shapes: Mapping[str, tuple[Shape, Shape, Shape]], which: int) -> str:
    def tensor(name: str) -> str:
        return f"'{name}'" if ":" in name else name  # trtexec's quoting for names holding ':'

    return ",".join(f"{tensor(n)}:{'x'.join(str(d) for d in s[which])}" for n, s in shapes.items())


def trtexec_command(onnx_path: str, engine_path: str, shapes: Mapping[str, tuple[Shape, Shape, Shape]],
                    strongly_typed: bool = False, tf32: bool = False, timing_cache: str | None = None,
                    trtexec: str = "trtexec") -> list[str]:
    """The ``trtexec`` command that builds the engine the in-process builder builds: shapes only for dynamic
    inputs (trtexec rejects shapes for a static model), ``--stronglyTyped`` as :func:`build_settings` decides (never
    ``--fp16``: reduced precision comes from the converted graph, and TensorRT 11 has no such flag), ``--noTF32``
    unless TF32 is allowed, ``--timingCacheFile`` when asked, the same workspace limit (MiB); ``--skipInference``
    builds only."""
    cmd = [trtexec, f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    dynamic = dynamic_profiles(shapes)
    if dynamic:
        cmd += [f"--minShapes={_shape_arg(dynamic, 0)}", f"--optShapes={_shape_arg(dynamic, 1)}",
                f"--maxShapes={_shape_arg(dynamic, 2)}"]
    if strongly_typed:
        cmd.append("--stronglyTyped")
    if not tf32:
        cmd.append("--noTF32")
    if timing_cache:
        cmd.append(f"--timingCacheFile={timing_cache}")
    cmd += [f"--memPoolSize=workspace:{WORKSPACE_BYTES >> 20}", "--skipInference"]
    return cmd


def engine_cache_key(onnx_digest: str, trt_version: str | None, gpu: Any, flags: Mapping[str, Any]) -> str:
    """Cache key of an engine: the ONNX content, the TensorRT version that builds it (trtexec's own for that
    route), the GPU (name, driver, CUDA) and the build flags."""
    from ..cache import make_key

    return make_key("tensorrt-engine", onnx_digest, trt_version, gpu, dict(flags))


def timing_cache_key(trt_version: str | None, gpu: Any) -> str:
    """Cache key of TensorRT's timing cache, shared by every model built with this TensorRT on this GPU."""
    from ..cache import make_key

    return make_key("tensorrt-timing-cache", trt_version, gpu)


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
            from ..worker import Runtime
            from .base import spawned_runtime

            builder_process = Runtime("TensorRT", ctx.timeout)
            ctx.cleanup.callback(builder_process.close)
            build = lambda cfg: builder_process.call(f"{__name__}:build_engine", cfg, "compile")  # noqa: E731
            open_runtime = lambda cfg: spawned_runtime(ctx, "TensorRT", f"{__name__}:TrtRuntime", cfg)  # noqa: E731
        else:
            build, open_runtime = build_engine, TrtRuntime
        engine_path = _engine(ctx, config, builder, version, settings, build)
        with ctx.stage("load"):
            runtime = open_runtime({**config, "engine": engine_path})
        ctx.run_examples(lambda args: Leaves(runtime.run(args)), reference=lambda args: Leaves(
            (p, v) for p, v in flatten(ctx.recorded_eager(args)) if hasattr(v, "dtype")))


def _declared(ctx) -> list[str]:
    from .onnx_export import input_names

    return input_names(ctx.space, len(ctx.space.specs))


def _export(ctx, precision: str) -> str:
    """The model as ONNX, exported exactly as the onnx backend exports it (and converted as it converts it)."""
    from .onnx_export import EXTERNAL_DATA_THRESHOLD, export_dynamo, weight_bytes

    path = ctx.path("model.onnx")
    external = weight_bytes(ctx.model) > EXTERNAL_DATA_THRESHOLD
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
            info = convert_fp16(path, converted, external)
        except Exception as exc:
            raise StageError("compile", conversion_failure(exc)) from None
    for key, value in info.items():
        ctx.note(key, value)
    return converted


def _graph_outputs(path: str) -> list[str]:
    import onnx

    return [o.name for o in onnx.load(path, load_external_data=False).graph.output]


def _engine(ctx, config: dict, builder: str, version: str, settings: Mapping[str, bool], build) -> str:
    """The engine file: from the artifact cache, or built by ``build(config)`` (in the spawned worker) and stored."""
    from ..fingerprint import gpu_environment
    from .onnx_export import onnx_digest

    gpu = gpu_environment()
    flags = {"builder": builder, **settings, "shapes": config["shapes"], "shape_values": config["shape_values"],
             "workspace": WORKSPACE_BYTES}
    key = engine_cache_key(onnx_digest(config["onnx"]), version, gpu, flags)
    ctx.note("cache_key", key[:16])
    ctx.note("trt_profiles", {n: s for n, s in config["shapes"].items() if s[0] != s[2]})
    with ctx.cache.lock(key):
        entry = ctx.cache.lookup(key)
        if entry is not None:
            ctx.result.cached = True
            return str(entry / ENGINE)
        engine_path = ctx.path(ENGINE)
        timing = timing_cache_key(version, gpu)
        with ctx.cache.lock(timing):
            cached_timing = ctx.cache.lookup(timing)
            timing_path = ctx.path(TIMING_CACHE)
            if cached_timing is not None:
                shutil.copyfile(cached_timing / TIMING_CACHE, timing_path)
            trtexec = shutil.which("trtexec") or "trtexec"
            job = {**config, "engine": engine_path, "timing_cache": timing_path, "builder": builder, "trtexec": trtexec}
            if builder == "trtexec":
                shapes = _shapes(config["shapes"])
                ctx.note("trtexec_command", " ".join(trtexec_command(
                    config["onnx"], engine_path, shapes, settings["strongly_typed"], settings["tf32"], timing_path,
                    trtexec)))
            with ctx.stage("compile"):
                build(job)
            if os.path.exists(timing_path):
                ctx.cache.store(timing, {TIMING_CACHE: timing_path})
        ctx.cache.store(key, {ENGINE: engine_path})
    if ctx.cache.events:
        ctx.note("cache_events", list(ctx.cache.events))
    return engine_path


def _polygraphy_errors(output: str) -> str:
    """The error lines Polygraphy's logger printed (TensorRT's errors reach it through its one trt.Logger)."""
    lines = [ln.strip() for ln in output.splitlines() if ln.lstrip().startswith(("[E]", "[!]"))]
    return "; ".join(lines[-4:]) or "no error was logged"


# ------------------------------------------------------------------------------ where CUDA lives
# Everything below takes and returns plain data, so the spawned worker process (pytest_deploy.worker.Runtime) can
# run it: build_engine through Runtime.call, TrtRuntime through Runtime.open.


def _shapes(plain: Mapping[str, list]) -> dict[str, tuple[Shape, Shape, Shape]]:
    """:func:`profile_shapes`' value back from the lists it crosses the worker pipe as."""
    return {n: (tuple(lo), tuple(opt), tuple(hi)) for n, (lo, opt, hi) in plain.items()}


def build_engine(job: dict) -> None:
    """Build ``job["onnx"]`` into the engine file ``job["engine"]`` with Polygraphy (or trtexec)."""
    if job["builder"] == "trtexec":
        _build_trtexec(job)
    else:
        _build_python(job)


def _build_python(job: dict) -> None:
    import contextlib
    import io

    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, Profile, create_network, get_trt_logger
    from polygraphy.exception import PolygraphyException

    from .onnx_export import node_source

    onnx_path, timing_path, settings = job["onnx"], job["timing_cache"], job["settings"]
    shapes = _shapes(job["shapes"])
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        try:
            builder, network = create_network(strongly_typed=settings["strongly_typed"])
            parser = trt.OnnxParser(network, get_trt_logger())
            ok = parser.parse_from_file(onnx_path)  # from the file: external weights are found beside it
        except PolygraphyException as exc:
            raise StageError("compile", f"TensorRT cannot create the network: {first_line(exc)} "
                                        f"({_polygraphy_errors(log.getvalue())})") from None
        if not ok or parser.num_errors:
            errors = [parser.get_error(i) for i in range(parser.num_errors)]
            raise StageError("compile", "TensorRT's ONNX parser rejects the exported graph:\n  "
                             + (describe_parser_errors(errors, lambda node: node_source(onnx_path, node))
                                .replace("\n", "\n  ") or "no error was reported"))
        profile = next(iter(polygraphy_profiles(shapes)), None) or Profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            if getattr(tensor, "is_shape_tensor", False):  # its values are a shape: the profile bounds the values, not the shape
                if tensor.name not in job["shape_values"]:
                    raise StageError("compile", f"TensorRT marks input '{tensor.name}' as a shape tensor; declare it "
                                                "as a fixed 1-D integer tensor() whose low/high bound its values")
                lo, opt, hi = job["shape_values"][tensor.name]
                profile.add(tensor.name, min=lo, opt=opt, max=hi)
            elif any(d < 0 for d in tensor.shape) and tensor.name not in shapes:
                raise StageError("compile", f"the ONNX graph's input '{tensor.name}' has dynamic dims "
                                            f"{tuple(tensor.shape)} but no spec in inputs= names it")
        config = CreateConfig(profiles=[profile] if len(profile) else None, tf32=settings["tf32"],
                              memory_pool_limits={trt.MemoryPoolType.WORKSPACE: WORKSPACE_BYTES},
                              load_timing_cache=timing_path if os.path.exists(timing_path) else None)
        try:
            serialized = EngineBytesFromNetwork((builder, network, parser), config=config,
                                                save_timing_cache=timing_path)()
        except PolygraphyException as exc:
            raise StageError("compile", f"TensorRT could not build an engine: {first_line(exc)} "
                                        f"({_polygraphy_errors(log.getvalue())})") from None
    try:
        with open(job["engine"], "wb") as fh:
            fh.write(serialized)
    except OSError as exc:
        raise StageError("save", f"cannot write the engine: {exc}") from None


def _build_trtexec(job: dict) -> None:
    import subprocess

    settings = job["settings"]
    shapes = _shapes(job["shapes"])
    cmd = trtexec_command(job["onnx"], job["engine"], shapes, settings["strongly_typed"], settings["tf32"],
                          job["timing_cache"], job["trtexec"])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not os.path.exists(job["engine"]):
        output = (proc.stdout + proc.stderr).splitlines()
        errors = [ln for ln in output if "[E]" in ln] or output[-5:]
        raise StageError("compile", f"trtexec exits with status {proc.returncode}:\n  " + "\n  ".join(errors[-8:]))


class TrtRuntime:
    """Polygraphy's ``TrtRunner`` on the deserialized engine: it sets the input shapes (and shape-tensor values),
    and its output allocator sizes every output when TensorRT knows its shape (data-dependent shapes and empty
    outputs included). ``run(args)`` -> ``[("output[i]", CPU tensor)]`` in the graph's output order."""

    def __init__(self, config: dict) -> None:
        import contextlib
        import io

        from polygraphy.backend.trt import EngineFromBytes, TrtRunner
        from polygraphy.exception import PolygraphyException

        self.declared = list(config["declared"])
        self.outputs = list(config["outputs"])
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            try:
                with open(config["engine"], "rb") as fh:
                    engine = EngineFromBytes(fh.read())()
                self.runner = TrtRunner(engine)
                self.runner.activate()
            except PolygraphyException as exc:
                raise StageError("load", f"TensorRT cannot load the engine: {first_line(exc)} "
                                         f"({_polygraphy_errors(log.getvalue())})") from None
        self.inputs = list(self.runner.get_input_metadata().keys())
        self.info = {"inputs": self.inputs}

    def run(self, args) -> list:
        import contextlib
        import io
        from collections import OrderedDict

        import torch
        from polygraphy.exception import PolygraphyException

        feed = OrderedDict()
        for pos, name in enumerate(self.inputs):
            arg = args[self.declared.index(name) if name in self.declared else pos]
            feed[name] = arg.detach().to("cuda").contiguous() if isinstance(arg, torch.Tensor) else arg
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                results = self.runner.infer(feed, copy_outputs_to_host=True)
        except PolygraphyException as exc:
            raise StageError("run", f"TensorRT execution fails: {first_line(exc)} "
                                    f"({_polygraphy_errors(out.getvalue())})") from None
        order = self.outputs
        names = sorted(results, key=lambda n: order.index(n) if n in order else len(order))
        return [(f"output[{i}]", torch.as_tensor(results[n]).cpu()) for i, n in enumerate(names)]


__all__ = ["TensorRTBackend", "TrtRuntime", "build_engine", "profile_shapes", "dynamic_profiles",
           "polygraphy_profiles", "shape_tensor_values", "build_settings",
           "trt_major", "parse_trtexec_version", "trtexec_version", "trtexec_command", "engine_cache_key",
           "timing_cache_key", "describe_parser_errors", "unavailable_reason"]
