"""Where TensorRT and CUDA live, for the ``tensorrt`` backend (:mod:`.tensorrt`): the engine build (Polygraphy's
loaders, or the ``trtexec`` binary), the merge of TensorRT's timing cache, and :class:`TrtRuntime`, which runs the
engine. Everything here takes and returns plain data, so the spawned worker process
(:class:`pytest_deploy.worker.Runtime`) can run it: the build functions through ``Runtime.call``, ``TrtRuntime``
through ``Runtime.open``; under ``--deploy-isolate=none`` they run in pytest's process.

The build's pure parts (profiles, the trtexec command line, parser messages) are here too, beside their one user;
:mod:`.tensorrt` re-exports them. They are unit-tested; the rest needs TensorRT and a CUDA device.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..errors import StageError
from ..sources import first_line, short_path

#: Builder workspace limit (``MemoryPoolType.WORKSPACE``).
WORKSPACE_BYTES = 1 << 30
#: ``prctl(PR_SET_PDEATHSIG, sig)``: Linux sends ``sig`` to the process when its parent dies.
PR_SET_PDEATHSIG = 1

Shape = tuple[int, ...]


# ------------------------------------------------------------------------------ pure helpers


def dynamic_profiles(shapes: Mapping[str, tuple[Shape, Shape, Shape]]) -> dict[str, tuple[Shape, Shape, Shape]]:
    """The inputs whose shape varies (min != max): the ones an optimization profile must cover."""
    return {name: s for name, s in shapes.items() if s[0] != s[2]}


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


def _polygraphy_errors(output: str) -> str:
    """The error lines Polygraphy's logger printed (TensorRT's errors reach it through its one trt.Logger)."""
    lines = [ln.strip() for ln in output.splitlines() if ln.lstrip().startswith(("[E]", "[!]"))]
    return "; ".join(lines[-4:]) or "no error was logged"


def _shapes(plain: Mapping[str, list]) -> dict[str, tuple[Shape, Shape, Shape]]:
    """:func:`profile_shapes`' value back from the lists it crosses the worker pipe as."""
    return {n: (tuple(lo), tuple(opt), tuple(hi)) for n, (lo, opt, hi) in plain.items()}


# ------------------------------------------------------------------------------ the build


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


def _dies_with_parent() -> Callable[[], None]:
    """What the trtexec child runs between fork and exec: a process group of its own, and on Linux a SIGKILL when
    its parent dies (``prctl(PR_SET_PDEATHSIG)``, kept across exec), so that a builder worker killed by
    ``--deploy-timeout`` takes trtexec with it. ``prctl`` is looked up here, before the fork: the child only calls."""
    parent = os.getpid()
    prctl: Any = None
    args: tuple = ()
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):  # no libc symbol: trtexec still gets its own group
            prctl = None
        args = (ctypes.c_int(PR_SET_PDEATHSIG), ctypes.c_ulong(signal.SIGKILL), ctypes.c_ulong(0),
                ctypes.c_ulong(0), ctypes.c_ulong(0))

    def setup() -> None:
        os.setpgid(0, 0)
        if prctl is not None:
            prctl(*args)
            if os.getppid() != parent:  # the parent died before the request took hold: follow it now
                os.kill(os.getpid(), signal.SIGKILL)

    return setup


def _build_trtexec(job: dict) -> None:
    """Run trtexec, killed (with its process group) after ``job["timeout"]`` seconds when given, and by the kernel
    when the process that started it dies."""
    import subprocess

    settings = job["settings"]
    shapes = _shapes(job["shapes"])
    cmd = trtexec_command(job["onnx"], job["engine"], shapes, settings["strongly_typed"], settings["tf32"],
                          job["timing_cache"], job["trtexec"])
    timeout = job.get("timeout")
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=_dies_with_parent())
    except OSError as exc:
        raise StageError("compile", f"cannot start trtexec ({cmd[0]}): {exc}; put TensorRT's bin/ directory on PATH, "
                                    "or use --deploy-trt-builder=python") from None
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except BaseException as exc:  # a timeout, or this process interrupted: trtexec does not outlive the build
        _kill_group(proc)
        proc.communicate()
        if isinstance(exc, subprocess.TimeoutExpired):
            raise StageError("compile", f"trtexec did not finish within {timeout:g} s (--deploy-timeout) and was "
                                        "killed; raise --deploy-timeout for this model") from None
        raise
    if proc.returncode != 0 or not os.path.exists(job["engine"]):
        output = (stdout + stderr).splitlines()
        errors = [ln for ln in output if "[E]" in ln] or output[-5:]
        raise StageError("compile", f"trtexec exits with status {proc.returncode}:\n  " + "\n  ".join(errors[-8:]))


def _kill_group(proc) -> None:
    """SIGKILL ``proc``'s process group (its own, from :func:`_dies_with_parent`); ``proc`` alone if that fails."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        proc.kill()


def merge_timing_cache(job: dict) -> None:
    """Merge the timing cache file ``job["from"]`` (another build's, stored while this one ran) into
    ``job["into"]`` (this build's), as Polygraphy's ``EngineBytesFromNetwork(save_timing_cache=)`` merges the cache
    it saves into the file already there: under Polygraphy's ``LockFile``, ``ITimingCache.combine`` with
    ``ignore_mismatch=True``. A cache this TensorRT cannot read (trtexec's, from another TensorRT) is not merged,
    as Polygraphy skips an unreadable previous cache: ``job["into"]`` then stays as it is."""
    import contextlib
    import io

    import tensorrt as trt
    from polygraphy import util
    from polygraphy.backend.trt import get_trt_logger

    with contextlib.redirect_stdout(io.StringIO()):
        builder = trt.Builder(get_trt_logger())
        config = builder.create_builder_config()

        def read(path: str):
            try:
                return config.create_timing_cache(util.load_file(path))
            except Exception:
                return None

        with util.LockFile(job["into"]):
            ours, theirs = read(job["into"]), read(job["from"])
            if not ours or theirs is None or not ours.combine(theirs, ignore_mismatch=True):
                return
            with ours.serialize() as buffer:
                util.save_file(buffer, job["into"], description="tactic timing cache")


class TrtRuntime:
    """Polygraphy's ``TrtRunner`` on the deserialized engine: it sets the input shapes (and shape-tensor values),
    and its output allocator sizes every output when TensorRT knows its shape (data-dependent shapes and empty
    outputs included). ``run(args)`` -> ``[("output[i]", CPU tensor)]`` in the graph's output order, each a copy
    (the runner reuses its host buffers on the next run); :meth:`close` deactivates the runner."""

    #: where inputs go: TensorRT's device (a shape tensor's values stay on the host, where TensorRT reads them)
    device = "cuda"

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

        engine = self.runner.engine
        feed = OrderedDict()
        for pos, name in enumerate(self.inputs):
            arg = args[self.declared.index(name) if name in self.declared else pos]
            if isinstance(arg, torch.Tensor):
                # TrtRunner takes a shape tensor (is_shape_inference_io) from host memory only
                where = "cpu" if engine.is_shape_inference_io(name) else self.device
                arg = arg.detach().to(where).contiguous()
            feed[name] = arg
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                results = self.runner.infer(feed, copy_outputs_to_host=True)
        except PolygraphyException as exc:
            raise StageError("run", f"TensorRT execution fails: {first_line(exc)} "
                                    f"({_polygraphy_errors(out.getvalue())})") from None
        order = self.outputs
        names = sorted(results, key=lambda n: order.index(n) if n in order else len(order))
        # copies: the results are views of the runner's host buffers, which its next infer overwrites
        return [(f"output[{i}]", torch.as_tensor(results[n]).to("cpu", copy=True)) for i, n in enumerate(names)]

    def close(self) -> None:
        """Deactivate the runner (frees its execution context, device buffers and stream); once is enough."""
        runner = getattr(self, "runner", None)
        if runner is not None and runner.is_active:
            runner.deactivate()


__all__ = ["TrtRuntime", "build_engine", "merge_timing_cache", "dynamic_profiles", "polygraphy_profiles",
           "trtexec_command", "describe_parser_errors", "WORKSPACE_BYTES"]
