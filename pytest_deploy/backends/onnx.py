"""ONNX: ``torch.onnx.export`` → ``onnx.checker`` → onnxsim → ONNX Runtime, raw and simplified graphs.

Users ship the simplified file, so a simplification that changes outputs is its own failure (stage
``simplify``). Named dims are exported dynamic, and a graph input that fixes a dim the spec says
varies fails at stage ``check`` naming the input and the dim.

At ``precision="fp16"`` both graphs are converted to float16 (inputs and outputs kept float32:
:mod:`.precision`) and ONNX Runtime runs the converted graphs; on its CPU provider, which computes most
float16 nodes in float32 without rounding between them, through the emulation graph that rounds every
float16 value as float16 kernels do. An output that overflows to inf names the node and the module.

At ``precision="int8"`` (or ``"int8-dynamic"``) the graph users ship (the simplified one) is quantized by ONNX
Runtime (:mod:`.quantize`) and only the quantized graph runs; it is judged by agreement with eager PyTorch
(:mod:`pytest_deploy.agreement`), not element by element.
"""

from __future__ import annotations

import os
import re
from typing import Any

from ..errors import StageError
from ..sources import first_line, short_path
from ..tensors import clone_args, from_numpy, is_tensor, to_numpy
from .base import Backend, quiet_torch_logs, spawned_runtime
from .onnx_export import (
    EXPORTERS,
    export_dynamo,
    export_torchscript,
    external_data,
    input_names,
    node_source,
)
from .precision import PROTO_LIMIT as _PROTO_LIMIT

#: Path prefix of the simplified graph's outputs in comparisons.
SIMPLIFIED = "simplified "



class OnnxBackend(Backend):
    name = "onnx"
    native = True
    preload = ("torch.export", "torch.onnx")
    aliases = ("ort", "onnxruntime")
    requires = ("onnx", "onnxruntime", "onnxsim", "onnxscript", "numpy")
    extra = "onnx"
    precisions = ("fp32", "fp16", "bf16", "int8", "int8-dynamic")
    spawns_runtime = True
    description = "torch.onnx.export (dims dynamic) → onnx.checker → onnxsim → onnxruntime, raw and simplified"

    def uses_cuda(self, options=None) -> bool:
        return providers()[0] == "CUDAExecutionProvider"

    def unavailable_reason(self, options=None) -> str | None:
        from .precision import reduced_precision_reason

        return super().unavailable_reason(options) or reduced_precision_reason(
            self.name, (options or {}).get("precision") or "fp32")

    def verify(self, ctx) -> None:
        exporter = ctx.options.get("onnx_exporter") or "dynamo"
        if exporter not in EXPORTERS:
            raise StageError("export", f"unknown ONNX exporter {exporter!r}; use one of {', '.join(EXPORTERS)}")
        opset = ctx.options.get("onnx_opset")
        raw_path = ctx.path("model.onnx")
        external = external_data(ctx)
        ctx.note("onnx_exporter", exporter)
        ctx.note("onnx_external_data", external)
        if exporter == "dynamo":
            export_dynamo(ctx, raw_path, opset, external)
        else:
            export_torchscript(ctx, raw_path, opset, external)
        _check(ctx, raw_path)
        simplified_path = _simplify(ctx, raw_path, external)
        precision = ctx.options.get("precision") or "fp32"
        ctx.note("precision", precision)
        run_raw, run_simplified = raw_path, simplified_path  # the graphs ONNX Runtime runs for them
        shipped = simplified_path or raw_path  # the float graph users ship
        raw = simplified = None  # at fp16 on CUDA: the sessions _reduce opened on the graphs that run
        if precision == "fp16":
            raw_path, run_raw, raw = _reduce(ctx, raw_path, external)
            if simplified_path:
                simplified_path, run_simplified, simplified = _reduce(ctx, simplified_path, external)
        elif precision.startswith("int8"):  # the graph users ship, quantized: the one graph that runs
            from .quantize import graph_bytes, quantize

            float_path = simplified_path or raw_path
            raw_path = run_raw = quantize(ctx, float_path, precision)
            simplified_path = run_simplified = None
            ctx.note("model_size", {"float_bytes": graph_bytes(float_path), "quantized_bytes": graph_bytes(raw_path)})
        if raw is None:
            raw = _session(ctx, run_raw, optimize=run_raw == raw_path)
        if simplified is None and run_simplified:
            simplified = _session(ctx, run_simplified, optimize=run_simplified == simplified_path)
        ctx.note("onnxruntime_provider", raw.info["provider"])
        if raw.info["provider"] == "CUDAExecutionProvider":
            ctx.note("onnxruntime_tf32", False)  # session_providers: always off
        if ctx.options.get("latency_threads"):
            ctx.note("onnxruntime_threads", raw.info.get("intra_op_num_threads"))

        from ..compare import Leaves, flatten

        def reference(args):
            leaves = [(p, v) for p, v in flatten(ctx.recorded_eager(args)) if is_tensor(v)]
            if simplified is None:
                return Leaves(leaves)
            return Leaves(leaves + [(SIMPLIFIED + p, v) for p, v in leaves])

        def run(args):
            out = raw.run(args)
            if simplified is not None:
                out += [(SIMPLIFIED + p, o) for p, o in simplified.run(args)]
            return Leaves(out)

        # --deploy-latency times the graph users ship: the simplified one when there is one
        ctx.latency_runner = (simplified or raw).run
        if precision.startswith("int8") and ctx.options.get("latency_threads"):
            # the float graph it was quantized from, timed beside it: the int8 speedup over fp32 in the same run
            ctx.latency_variants["fp32"] = _session(ctx, shipped).run
        try:
            ctx.run_examples(run, reference=reference)
        except StageError as failure:
            err = failure
            # eager's outputs on the failing example, once for every fp16 explanation below
            failing = _failing_reference(ctx) if err.stage == "compare" and precision == "fp16" else None
            if err.stage == "compare" and precision == "fp16":
                why = _explain_reduced(ctx, raw, shipped, failing)
                if why:
                    err = StageError(err.stage, f"{err.message}\n{why}", comparison=err.comparison)
            elif err.stage == "compare" and precision == "int8":
                err = _explain_int8(ctx, err, shipped, run_raw)
            errors = err.comparison.errors if err.comparison is not None else []
            if (err.stage == "compare" and errors and all(e.path.startswith(SIMPLIFIED) for e in errors)
                    and (precision != "fp16" or _simplify_changed_float32(ctx, shipped, failing))):
                raise StageError(
                    "simplify",
                    "onnxsim changed the outputs: the raw ONNX graph matches eager PyTorch, the simplified one "
                    f"does not (users ship the simplified file)\n{err.message}\n  fix: simplify with fewer passes "
                    "(onnxsim's skip options) or ship the raw graph",
                    comparison=err.comparison,
                ) from None
            raise err from None

    def localize(self, ctx, args, deadline):
        """Graph localisation (:mod:`pytest_deploy.localize`): ONNX Runtime gives every intermediate value of the
        graph that failed, named after the exported program's nodes; the program run node by node gives eager's."""
        import torch

        from ..localize import LocalizationError, first_divergence, program_nodes, program_values, representatives
        from .export import export_program

        if (ctx.options.get("onnx_exporter") or "dynamo") != "dynamo":
            raise LocalizationError("onnx: localisation needs the dynamo exporter, whose graph names its values after "
                                    "the exported program's nodes (--deploy-onnx-exporter=torchscript does not)")
        if (ctx.options.get("precision") or "fp32") != "fp32":
            raise LocalizationError("onnx: localisation compares float32 graphs only; at reduced precision see "
                                    "details.precision_overflow")
        program = export_program(ctx)  # the common root; reused: exported earlier in this process
        canonical, canonical_kwargs = ctx.space.split(ctx.canonical.clone_args())
        with quiet_torch_logs():
            # the program torch.onnx converts (decomposed for ONNX): its node names are the graph's value names
            onnx_program = torch.onnx.export(program, canonical, kwargs=canonical_kwargs or None, dynamo=True,
                                             opset_version=ctx.options.get("onnx_opset"), verbose=False)
        assert onnx_program is not None  # dynamo=True always returns an ONNXProgram
        nodes = program_nodes(program)
        # which ONNX value carries each root node's output (decomposition may split one node into several)
        carriers = representatives(onnx_program.exported_program, {n.name for n in nodes})
        call_args, call_kwargs = ctx.space.split(clone_args(args))
        expected = program_values(program, call_args, call_kwargs)  # eager values, node by node
        finding = None
        graphs = [ctx.path("model.onnx")] + ([ctx.path("model.sim.onnx")] if os.path.exists(ctx.path("model.sim.onnx"))
                                             else [])
        for path in graphs:  # the simplified graph when the raw one does not diverge (a failure at simplify)
            values = _intermediates(ctx, path, set(carriers), args)
            actual = {carriers[name]: value for name, value in values.items() if name in carriers}
            finding = first_divergence(nodes, expected, actual, ctx.tol, deadline)
            if finding.culprit is not None or finding.budget_exhausted:
                if path != graphs[0]:
                    finding.error = "located in the simplified graph (onnxsim); the raw graph does not diverge"
                break
        assert finding is not None
        return finding


def _intermediates(ctx, path: str, names: set[str], args: tuple) -> dict:
    """Every value named in ``names`` that the ONNX graph at ``path`` computes on ``args``: each is made a graph
    output (as Polygraphy's ``ModifyOutputs`` marks all) and ONNX Runtime runs the graph once."""
    import onnx

    from ..localize import LocalizationError

    model = onnx.load(path)
    if model.ByteSize() > _PROTO_LIMIT:
        raise LocalizationError("onnx: the graph is over 2 GB; it cannot be rewritten in memory to expose its "
                                "intermediate values")
    outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name in names and name not in outputs:
                model.graph.output.append(onnx.ValueInfoProto(name=name))
                outputs.add(name)
    probe = ctx.path("localize.onnx")
    onnx.save_model(model, probe)
    # the same runtime as the check's (a spawned worker's for a CUDA check); outputs come in the graph's order
    values = _session(ctx, probe).run(args)
    return {o.name: v for o, (_, v) in zip(model.graph.output, values)}


# ------------------------------------------------------------------------------ reduced precision


def _reduce(ctx, path: str, external: bool) -> tuple[str, str, Any]:
    """The graph at ``path`` converted to float16 (checked, loaded by ONNX Runtime): ``(converted graph, the graph
    to run, the session on it or None)``. On CPU the graph to run is the float16 emulation (see :mod:`.precision`),
    and the session that loaded the converted graph is closed; otherwise that session is the one that runs (on
    CUDA, one worker process and one CUDA context per graph, not two)."""
    import onnx

    from .precision import conversion_failure, convert_fp16, emulate_fp16

    converted = path[: -len(".onnx")] + ".fp16.onnx"
    with ctx.stage("compile"):
        try:
            info = convert_fp16(path, converted, external, ctx.options.get("fp16_block_list") or ())
            onnx.checker.check_model(converted, full_check=True)
        except Exception as exc:
            raise StageError("compile", conversion_failure(exc)) from None
    for key, value in info.items():
        ctx.note(key, value)
    session = _session(ctx, converted)  # the converted graph itself loads, whatever runs the examples
    if session.info["provider"] != "CPUExecutionProvider":
        ctx.note("precision_emulation", None)
        return converted, converted, session
    emulated = emulate_fp16(onnx.load(converted))
    if emulated is None:
        ctx.note("precision_emulation", "none: the graph has subgraphs (If, Loop, Scan); ONNX Runtime's CPU provider "
                                        "computes most float16 nodes in float32, so overflow may go unseen")
        return converted, converted, session
    session.close()  # it showed that the converted graph loads; the emulation graph runs in its place
    run_path = converted[: -len(".onnx")] + ".emulated.onnx"
    onnx.save_model(emulated, run_path, save_as_external_data=external, all_tensors_to_one_file=True,
                    location=os.path.basename(run_path) + ".data")
    ctx.note("precision_emulation", "CPU: every float16 value rounded to float16 (Cast round trips), as float16 "
                                    "kernels round it")
    return converted, run_path, None


def _explain_int8(ctx, err: StageError, float_path: str, run_path: str) -> StageError:
    """An int8 agreement failure with where the QDQ graph diverges first and the nodes to keep in float
    (:mod:`.int8_debug`); other compare failures (a dtype or shape mismatch) unchanged."""
    from ..compare import Leaves, paired
    from .int8_debug import explain

    runner = getattr(ctx, "example_runner", None)
    agreement = getattr(runner, "agreement", None)
    if agreement is None or agreement.first_failure() is None:
        return err

    def replay(path: str):
        session = _session(ctx, path)
        again = type(agreement)(agreement.gate, agreement.precision)
        for example, (leaves, keep) in agreement.samples:
            again.add(example, paired(leaves, Leaves(session.run(example.args)), keep))
        return again

    why = explain(ctx, float_path, run_path, agreement, replay)
    return StageError(err.stage, f"{err.message}\n{why}", comparison=err.comparison)


def _failing_reference(ctx):
    """Eager PyTorch's tensor outputs on the example that failed (:class:`~pytest_deploy.compare.Leaves`); None when
    no example failed or eager cannot run it again (noted)."""
    from ..compare import Leaves, flatten

    example = ctx.failed_example
    if example is None:
        return None
    try:
        return Leaves([(p, v) for p, v in flatten(ctx.eager(example.args)) if is_tensor(v)])
    except Exception as exc:  # the explanations are extra: never hide the comparison's own failure
        ctx.note("precision_reference_error", first_line(exc))
        return None


def _explain_reduced(ctx, session, float_path: str, expected) -> str:
    """Why a float16 graph's outputs differ, where the graph says: an overflow to inf or NaN (the first node and its
    module), and the float32 block list that makes the failing example pass (:mod:`.fp16_search`, verified); the
    constants the converter clamped to 65504 or raised to 1e-7 only where that list keeps their readers float32 (an
    attention mask's fill value is clamped, and a random weight of 1e-8 raised, harmlessly; all are in the
    details). ``expected``: :func:`_failing_reference`. Empty when nothing is known."""
    from .fp16_search import block_list_text
    from .precision import clamped_text, raised_text

    raised = ctx.result.details.get("precision_raised") or []
    clamped = ctx.result.details.get("precision_clamped") or []
    if expected is None:
        return ""
    overflow = _explain_range(ctx, session, expected)
    lines = [overflow] if overflow else []
    block = _block_list(ctx, float_path, expected)
    if block is None:
        return "\n".join(lines)
    kept = set(block.nodes or ())
    clamped = [c for c in clamped if c.get("node") in kept]  # proven to matter: their readers must stay float32
    raised = [c for c in raised if c.get("node") in kept]
    if clamped and not overflow:
        lines.append(clamped_text(clamped))
    if raised:
        lines.append(raised_text(raised))
    text = block_list_text(block, "on the float16 emulation graph (ONNX Runtime, CPU)")
    lines.append(text if overflow else "float16 rounding: " + text.lstrip())
    return "\n".join(lines)


def _explain_range(ctx, session, expected) -> str:
    """The overflow part of :func:`_explain_reduced`: which outputs hold inf or NaN, and the first node whose output
    overflows; empty when none does."""
    from .precision import nonfinite_outputs, overflow_text

    clamped = ctx.result.details.get("precision_clamped") or []
    example = ctx.failed_example
    try:
        paths = nonfinite_outputs(expected, session.run(example.args))
        if not paths:
            return ""
        found = _locate_overflow(session, example.args)
    except Exception as exc:  # the explanation is extra: never hide the comparison's own failure
        ctx.note("precision_overflow_error", first_line(exc))
        return ""
    if found:
        ctx.note("precision_overflow", found)
    return overflow_text(paths, found, clamped)


def _locate_overflow(session, args: tuple) -> dict | None:
    """:meth:`OrtRuntime.locate_overflow` where ``session`` lives: in its spawned worker for a CUDA check, whose
    float16 kernels overflow (pytest's process has no CUDA; its CPU provider computes them in float32)."""
    from ..worker import Runtime

    if isinstance(session, Runtime):
        return session.invoke("locate_overflow", [list(args)], "compare")
    return session.locate_overflow(args)


def _block_list(ctx, float_path: str, expected):
    """The float32 block list that makes the failing example pass (:func:`.fp16_search.search_block_list`), each
    attempt the graph at ``float_path`` converted with it and run as a CPU check runs it (the emulation graph,
    ONNX Runtime's CPU provider, in this process), judged against ``expected`` (:func:`_failing_reference`);
    recorded in ``details.precision_block_list``. None when the search cannot run (a graph over 2 GB)."""
    import onnx

    from ..compare import Leaves, compare_outputs
    from .fp16_search import SUBGRAPH_OPS, search_block_list
    from .precision import convert_model, emulate_fp16

    example = ctx.failed_example
    try:
        model = onnx.load(float_path)
        if model.ByteSize() > _PROTO_LIMIT:
            ctx.note("precision_block_list", "not searched: the graph is over 2 GB")
            return None
        runner = getattr(ctx, "example_runner", None)
        keep = runner.masks_for(example, expected) if runner is not None else None
        names = [n.name for n in model.graph.node if n.op_type not in SUBGRAPH_OPS]
        declared = input_names(ctx.space, len(ctx.space.specs))

        def attempt(block: list[str]) -> bool:
            trial = onnx.ModelProto()
            trial.CopyFrom(model)
            converted = convert_model(trial, block)
            graph = emulate_fp16(converted) or converted
            got = Leaves(_cpu_run(graph, declared, example.args))
            return compare_outputs(expected, got, ctx.tol, keep=keep).ok

        found = search_block_list(names, attempt)
    except Exception as exc:  # the explanation is extra: never hide the comparison's own failure
        ctx.note("precision_block_list_error", first_line(exc))
        return None
    ctx.note("precision_block_list", found.nodes)
    ctx.note("precision_block_search", {"attempts": found.attempts, "seconds": round(found.seconds, 1),
                                        "graph": os.path.basename(float_path), "stopped": found.stopped,
                                        "failed_to_run": len(found.errors), "first_error": next(iter(found.errors), None)})
    return found


def _cpu_run(model, declared: list[str], args) -> list:
    """``model`` (in memory) run once on ONNX Runtime's CPU provider, unoptimised (the emulation's round trips
    stay): ``[("output[i]", tensor)]``."""
    from .precision import unoptimised_session

    session = unoptimised_session(model, ["CPUExecutionProvider"])
    feed = graph_feed([i.name for i in session.get_inputs()], declared, args)
    return [(f"output[{i}]", from_numpy(o)) for i, o in enumerate(session.run(None, feed))]


def _simplify_changed_float32(ctx, float_path: str, expected) -> bool:
    """At fp16, when only the simplified graph's outputs fail: whether onnxsim changed the float32 graph's numbers
    (the simplified float32 graph, run on the failing example, misses ``expected``, eager's outputs there
    (:func:`_failing_reference`), by more than the fp32 tolerance). When it does not, the raw and simplified float16
    graphs only round at different points, and onnxsim is not to blame. True (blame onnxsim, as at fp32) when it
    cannot be told."""
    import onnx

    from ..compare import Leaves, compare_outputs, resolve_tolerance

    example = ctx.failed_example
    if expected is None or not float_path.endswith(".sim.onnx"):
        return True
    try:
        got = Leaves(_cpu_run(onnx.load(float_path), input_names(ctx.space, len(ctx.space.specs)), example.args))
        changed = not compare_outputs(expected, got, resolve_tolerance("onnx")).ok
    except Exception as exc:
        ctx.note("precision_simplify_check_error", first_line(exc))
        return True
    ctx.note("precision_simplify_float32", "changed" if changed else "unchanged")
    return changed


# ------------------------------------------------------------------------------- check, simplify


def _check(ctx, path: str) -> None:
    import onnx

    with ctx.stage("check"):
        try:
            onnx.checker.check_model(path, full_check=True)
        except Exception as exc:
            raise StageError("check", f"onnx.checker rejects the exported graph: {first_line(exc)}\n"
                                      "  fix: try another --deploy-onnx-opset, or report it to the exporter") from None
        model = onnx.load(path, load_external_data=False)
    names = input_names(ctx.space, len(ctx.space.specs))
    ctx.note("onnx_inputs", [_shape_text(i) for i in model.graph.input])
    ctx.note("onnx_opset", next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None))
    for graph_input in model.graph.input:
        if graph_input.name not in names or not ctx.space.specs:
            continue
        spec = ctx.space.specs[names.index(graph_input.name)]
        dims = graph_input.type.tensor_type.shape.dim
        for axis, d in enumerate(spec.shape):
            if not isinstance(d, str) or axis >= len(dims):
                continue
            lo, hi = ctx.space.dims[d]
            if lo != hi and dims[axis].HasField("dim_value"):
                raise StageError(
                    "check",
                    f"the ONNX graph fixes input '{graph_input.name}' dim {axis} ('{d}') to {dims[axis].dim_value}, "
                    f"but dims= declares {d} in [{lo}, {hi}]: the exported model only accepts that one size\n"
                    "  fix: make forward work for every size (no shape-dependent Python), or narrow dims=",
                )


def _shape_text(value_info) -> str:
    dims = [d.dim_param or str(d.dim_value) for d in value_info.type.tensor_type.shape.dim]
    return f"{value_info.name}[{', '.join(dims)}]"


def _simplify(ctx, raw_path: str, external: bool) -> str | None:
    import onnx
    import onnxsim

    path = ctx.path("model.sim.onnx")
    with ctx.stage("simplify"):
        model = onnx.load(raw_path)
        if model.ByteSize() > _PROTO_LIMIT:
            ctx.note("onnx_simplified", "skipped: the graph is over 2 GB, which onnxsim cannot hold")
            return None
        try:
            simplified, ok = onnxsim.simplify(model, check_n=0)
        except Exception as exc:
            raise StageError("simplify", f"onnxsim fails on the exported graph: {first_line(exc)}\n"
                                         "  fix: ship the raw graph, or simplify with onnxsim's skip options") from None
        if not ok:  # check_n=0: no random-input comparison (the examples below do that); onnx.checker's verdict
            raise StageError("simplify", "onnxsim's simplified graph fails onnx.checker (onnxsim reports it invalid)\n"
                                         "  fix: ship the raw graph, or simplify with onnxsim's skip options")
        onnx.save_model(simplified, path, save_as_external_data=external, all_tensors_to_one_file=True,
                        location=os.path.basename(path) + ".data")
    ctx.note("onnx_nodes", {"raw": len(model.graph.node), "simplified": len(simplified.graph.node)})
    return path


# ------------------------------------------------------------------------------------ runtime


def providers() -> list[str]:
    """CUDA when onnxruntime-gpu and a CUDA device are both present, else CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        try:
            import torch

            if torch.cuda.is_available():
                return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        except ImportError:  # pragma: no cover
            pass
    return ["CPUExecutionProvider"]


def session_providers(names: list[str]) -> list:
    """``names`` (from :func:`providers`) as ONNX Runtime's ``providers=`` takes them, with their options: the CUDA
    provider with TF32 off (``use_tf32``, on by default in ONNX Runtime), since fp32 checks are judged with fp32
    tolerances and the TensorRT backend builds without TF32 too."""
    return [(name, {"use_tf32": "0"}) if name == "CUDAExecutionProvider" else name for name in names]


def _session(ctx, path: str, optimize: bool = True):
    """An ONNX Runtime session on ``path`` (an :class:`OrtRuntime`), in a spawned worker process when the check uses
    CUDA (:class:`~pytest_deploy.worker.Runtime`); ``optimize=False`` for the float16 emulation graph, whose Cast round
    trips ONNX Runtime's optimizers must not remove."""
    config = {"path": path, "optimize": optimize, "declared": input_names(ctx.space, len(ctx.space.specs)),
              "threads": ctx.options.get("latency_threads")}  # --deploy-latency pins ONNX Runtime's threads
    with ctx.stage("load"):
        if ctx.spawn_runtime:
            return spawned_runtime(ctx, "onnxruntime", "pytest_deploy.backends.onnx:OrtRuntime", config)
        return OrtRuntime(config)


class OrtRuntime:
    """One ONNX Runtime session and how a check's example feeds it: ``run(args)`` -> ``[("output[i]", tensor)]``.

    Built from plain data (``config``: the graph's path, whether ONNX Runtime may optimise it, the input names the
    export gave the spec's inputs), so a spawned worker process builds the same thing pytest's process would."""

    def __init__(self, config: dict) -> None:
        import onnxruntime as ort

        self.path = config["path"]
        self.declared = list(config["declared"])
        options = ort.SessionOptions()
        options.log_severity_level = 4  # errors reach the user through the stage message, not stderr
        if not config.get("optimize", True):
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if config.get("threads"):  # --deploy-latency: as many threads as eager PyTorch gets
            options.intra_op_num_threads = int(config["threads"])
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(self.path, options, providers=session_providers(providers()))
        except Exception as exc:
            raise StageError("load", explain_runtime_error(exc, self.path)) from None
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.info = {"provider": self.session.get_providers()[0], "providers": self.session.get_providers(),
                     "intra_op_num_threads": options.intra_op_num_threads}

    def feed(self, args) -> dict:
        """One example's inputs by the graph's input names, as numpy arrays."""
        return graph_feed(self.inputs, self.declared, args)

    def run(self, args) -> list:
        feed = self.feed(args)
        try:
            outputs = self.session.run(None, feed)
        except Exception as exc:
            raise StageError("run", explain_runtime_error(exc, self.path)) from None
        return [(f"output[{i}]", from_numpy(o)) for i, o in enumerate(outputs)]

    def locate_overflow(self, args) -> dict | None:
        """The first node of this session's graph whose output overflows on ``args``
        (:func:`.precision.locate_overflow`), run in this process on this session's providers: for a CUDA check in
        the spawned worker the session lives in, on its float16 kernels; on CPU on the emulation graph it runs."""
        import onnx

        from .precision import locate_overflow

        return locate_overflow(onnx.load(self.path), self.feed(args), session_providers(self.session.get_providers()))

    def close(self) -> None:
        """Drop the session and what it holds (on CUDA, its device memory)."""
        self.session = None


def graph_feed(inputs: list[str], declared: list[str], args) -> dict:
    """An example's ``args`` (in the spec's order, named ``declared``) by the graph's input names (``inputs``), as
    numpy arrays: by name where the export kept the spec's names, else by position."""
    return {name: to_numpy(args[declared.index(name) if name in declared else pos]) for pos, name in enumerate(inputs)}


def explain_runtime_error(exc: BaseException, path: str) -> str:
    """onnxruntime's error with the failing node, its op type and the user's line it came from."""
    text = str(exc)
    m = (re.search(r"running (\w+) node\. Name:'([^']*)'", text)  # run
         or re.search(r"implementation for (\w+)\(\d+\) node with name '([^']*)'", text))  # load: no kernel
    status = text.split("Status Message:", 1)[-1].strip().splitlines()[0] if "Status Message:" in text else first_line(exc)
    if not m:
        return f"onnxruntime: {first_line(exc)}"
    op, node = m.group(1), m.group(2)
    where = node_source(path, node)
    at = f"\n  from {short_path(where[0])}:{where[1]}  `{where[2]}`" if where else ""
    return f"onnxruntime fails at node '{node}' (op {op}): {status}{at}"
