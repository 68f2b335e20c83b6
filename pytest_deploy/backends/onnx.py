"""ONNX: ``torch.onnx.export`` → ``onnx.checker`` → onnxsim → ONNX Runtime, raw and simplified graphs.

Users ship the simplified file, so a simplification that changes outputs is its own failure (stage
``simplify``). Named dims are exported dynamic, and a graph input that fixes a dim the spec says
varies fails at stage ``check`` naming the input and the dim.
"""

from __future__ import annotations

import os
import re
from typing import Any

from ..errors import StageError
from .base import Backend, first_line, quiet_torch_logs, short_path, user_frame
from .export import frame_from_stack, op_source

#: Above this many bytes of weights the graph is saved with its tensors in a separate ``.data`` file
#: (protobuf cannot hold a message over 2 GB). Overridable per check (``onnx_external_data_threshold``).
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3
_PROTO_LIMIT = 2 * 1024**3 - 64 * 1024**2

#: Path prefix of the simplified graph's outputs in comparisons.
SIMPLIFIED = "simplified "

EXPORTERS = ("dynamo", "torchscript")


class OnnxBackend(Backend):
    name = "onnx"
    native = True
    preload = ("torch.export", "torch.onnx")
    aliases = ("ort", "onnxruntime")
    requires = ("onnx", "onnxruntime", "onnxsim", "onnxscript", "numpy")
    extra = "onnx"
    description = "torch.onnx.export (dims dynamic) → onnx.checker → onnxsim → onnxruntime, raw and simplified"

    def uses_cuda(self, options=None) -> bool:
        return providers()[0] == "CUDAExecutionProvider"

    def verify(self, ctx) -> None:
        exporter = ctx.options.get("onnx_exporter") or "dynamo"
        if exporter not in EXPORTERS:
            raise StageError("export", f"unknown ONNX exporter {exporter!r}; use one of {', '.join(EXPORTERS)}")
        opset = ctx.options.get("onnx_opset")
        threshold = ctx.options.get("onnx_external_data_threshold")
        threshold = EXTERNAL_DATA_THRESHOLD if threshold is None else threshold
        raw_path = ctx.path("model.onnx")
        external = _weight_bytes(ctx.model) > threshold
        ctx.note("onnx_exporter", exporter)
        ctx.note("onnx_external_data", external)
        if exporter == "dynamo":
            _export_dynamo(ctx, raw_path, opset, external)
        else:
            _export_torchscript(ctx, raw_path, opset, external)
        _check(ctx, raw_path)
        simplified_path = _simplify(ctx, raw_path, external)
        raw = _session(ctx, raw_path)
        simplified = _session(ctx, simplified_path) if simplified_path else None
        ctx.note("onnxruntime_provider", raw.get_providers()[0])

        from ..compare import Leaves, flatten

        def reference(args):
            leaves = [(p, v) for p, v in flatten(ctx.recorded_eager(args)) if _is_tensor(v)]
            if simplified is None:
                return Leaves(leaves)
            return Leaves(leaves + [(SIMPLIFIED + p, v) for p, v in leaves])

        def run(args):
            out = [(f"output[{i}]", o) for i, o in enumerate(_run(ctx, raw, raw_path, args))]
            if simplified is not None:
                out += [(f"{SIMPLIFIED}output[{i}]", o) for i, o in enumerate(_run(ctx, simplified, simplified_path, args))]
            return Leaves(out)

        try:
            ctx.run_examples(run, reference=reference)
        except StageError as err:
            errors = err.comparison.errors if err.comparison is not None else []
            if err.stage == "compare" and errors and all(e.path.startswith(SIMPLIFIED) for e in errors):
                raise StageError(
                    "simplify",
                    "onnxsim changed the outputs: the raw ONNX graph matches eager PyTorch, the simplified one "
                    f"does not (users ship the simplified file)\n{err.message}\n  fix: simplify with fewer passes "
                    "(onnxsim's skip options) or ship the raw graph",
                    comparison=err.comparison,
                ) from None
            raise


# ----------------------------------------------------------------------------------------- export


def _weight_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _export_dynamo(ctx, path: str, opset: int | None, external: bool) -> None:
    import torch

    from .export import export_program

    program = export_program(ctx)
    args, kwargs = ctx.space.split(ctx.canonical.clone_args())
    with ctx.stage("export"), quiet_torch_logs():
        try:
            onnx_program = torch.onnx.export(program, args, kwargs=kwargs or None, dynamo=True, opset_version=opset,
                                             verbose=False)
        except Exception as exc:
            raise StageError("export", explain_conversion_error(exc, program), cause=exc) from None
        written = onnx_program.model.opset_imports.get("")
        if opset is not None and written != opset:
            # the exporter writes its own opset and converts to the requested one where it can, else keeps its own
            import onnx

            if opset < written:
                fix = f"ask for opset {written} or newer, or --deploy-onnx-exporter=torchscript (older opsets)"
            else:
                fix = f"ask for an opset onnx knows (at most {onnx.defs.onnx_opset_version()})"
            raise StageError("export", f"torch.onnx did not produce opset {opset}: the exported graph is opset "
                                       f"{written} (the version converter could not convert it)\n  fix: {fix}")
        _name_dynamic_axes(onnx_program, ctx.space)
    with ctx.stage("save"), quiet_torch_logs():
        onnx_program.save(path, external_data=external)


def _name_dynamic_axes(onnx_program, space) -> None:
    """Give the graph's dynamic dims the spec's names (``batch``, not torch.export's ``s77``), as the
    TorchScript exporter does."""
    if not hasattr(onnx_program, "rename_axes"):  # torch < 2.8
        return
    names = input_names(space, len(space.specs))
    mapping: dict[str, str] = {}
    for graph_input in onnx_program.model.graph.inputs:
        if graph_input.name not in names or graph_input.shape is None:
            continue
        spec = space.specs[names.index(graph_input.name)]
        for axis, d in enumerate(spec.shape):
            symbol = getattr(graph_input.shape[axis], "value", None) if axis < len(graph_input.shape) else None
            if isinstance(d, str) and isinstance(symbol, str):
                mapping.setdefault(symbol, d)
    if mapping:
        onnx_program.rename_axes(mapping)


def _export_torchscript(ctx, path: str, opset: int | None, external: bool) -> None:
    import torch

    names = input_names(ctx.space, len(ctx.space.specs) or len(ctx.canonical.args))
    args, kwargs = ctx.space.split(ctx.canonical.clone_args())
    axes = dynamic_axes(ctx.space, names)
    with ctx.stage("export"), quiet_torch_logs():
        try:
            torch.onnx.export(ctx.model, args, path, kwargs=kwargs or None, dynamo=False, input_names=names,
                              dynamic_axes=axes or None, opset_version=opset or 17)
        except Exception as exc:
            raise StageError("export", explain_conversion_error(exc, None, "torchscript"), cause=exc) from None
    # the TorchScript exporter traces: the decisions it froze are checked like the trace backend's
    ctx.traced_decisions()
    if external and not os.path.exists(path + ".data"):
        import onnx

        with ctx.stage("save"):
            onnx.save_model(onnx.load(path), path, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=os.path.basename(path) + ".data", size_threshold=1024)


def input_names(space, arity: int) -> list[str]:
    names = list(space.names[:arity]) if space.names and len(space.names) >= arity else []
    return names or [f"input_{i}" for i in range(arity)]


def dynamic_axes(space, names: list[str]) -> dict[str, dict[int, str]]:
    """``dynamic_axes`` for the TorchScript exporter: every named dim whose bounds vary."""
    out: dict[str, dict[int, str]] = {}
    for name, spec in zip(names, space.specs):
        axes = {axis: d for axis, d in enumerate(spec.shape) if isinstance(d, str) and space.dims[d][0] != space.dims[d][1]}
        if axes:
            out[name] = axes
    return out


def explain_conversion_error(exc: BaseException, program, exporter: str = "dynamo") -> str:
    """Name the op the exporter could not convert and, where the graph knows it, the user's line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    op = None
    for pattern in (r"OpOverload\(op='([\w.]+)'", r"target=torch\.ops\.([\w.]+)", r"operator '([\w:.]+)'",
                    r"(aten::\w+)", r"aten_(\w+)"):
        m = re.search(pattern, text)
        if m:
            op = m.group(1)
            break
    reason = ""
    summary = text.split("## Exception summary", 1)[-1]
    for line in summary.splitlines():
        m = re.match(r"\s*<class '[\w.]+'>: (.+)", line)
        if m:
            reason = m.group(1).strip()
            break
    reason = reason or first_line(exc)
    # torch's traceback of the node that failed, else the first node calling the op, else the Python traceback
    where = frame_from_stack(text) if "Original traceback:" in text else None
    where = where or (op_source(program, op) if program is not None and op else None)
    where = where or user_frame(exc.__traceback__) or _traced_node_source(exc)
    at = f"\n  at {short_path(where[0])}:{where[1]}  `{where[2]}`" if where else ""
    what = f"torch.onnx cannot convert {op.replace('::', '.') if op else 'the model'}"
    other = "torchscript" if exporter == "dynamo" else "dynamo"
    return (f"{what}: {reason}{at}\n  fix: rewrite that call with ops ONNX supports, register a translation "
            f"(torch.onnx.export(custom_translation_table=...)), or try --deploy-onnx-exporter={other}")


def _traced_node_source(exc: BaseException):
    """The user's line for the TorchScript node the TorchScript exporter failed on: its symbolic-function
    frames hold the node (``node``), whose source range is the stack it was traced at, innermost first."""
    import linecache
    import traceback

    from .base import is_user_file

    found = None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        node = frame.f_locals.get("node")
        source = getattr(node, "sourceRange", None)
        if not callable(source):
            continue
        for m in re.finditer(r"^(.+)\((\d+)\): \S+$", source(), re.M):
            if is_user_file(m.group(1)):
                found = (m.group(1), int(m.group(2)), linecache.getline(m.group(1), int(m.group(2))).strip())
                break
    return found


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
            simplified, ok = onnxsim.simplify(model)
        except Exception as exc:
            raise StageError("simplify", f"onnxsim fails on the exported graph: {first_line(exc)}\n"
                                         "  fix: ship the raw graph, or simplify with onnxsim's skip options") from None
        if not ok:
            raise StageError("simplify", "onnxsim could not verify its simplified graph against the original\n"
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


def _session(ctx, path: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # errors reach the user through the stage message, not stderr
    with ctx.stage("load"):
        try:
            return ort.InferenceSession(path, options, providers=providers())
        except Exception as exc:
            raise StageError("load", explain_runtime_error(exc, path)) from None


def _run(ctx, session, path: str, args: tuple) -> list:
    import torch

    names = [i.name for i in session.get_inputs()]
    declared = input_names(ctx.space, len(args))
    feed = {}
    for pos, name in enumerate(names):
        index = declared.index(name) if name in declared else pos
        feed[name] = args[index].detach().cpu().numpy()
    try:
        outputs = session.run(None, feed)
    except Exception as exc:
        raise StageError("run", explain_runtime_error(exc, path)) from None
    return [torch.from_numpy(o) if hasattr(o, "dtype") else torch.tensor(o) for o in outputs]


def explain_runtime_error(exc: BaseException, path: str) -> str:
    """onnxruntime's error with the failing node, its op type and the user's line it came from."""
    text = str(exc)
    m = (re.search(r"running (\w+) node\. Name:'([^']*)'", text)  # run
         or re.search(r"implementation for (\w+)\(\d+\) node with name '([^']*)'", text))  # load: no kernel
    status = text.split("Status Message:", 1)[-1].strip().splitlines()[0] if "Status Message:" in text else first_line(exc)
    if not m:
        return f"onnxruntime: {first_line(exc)}"
    op, node = m.group(1), m.group(2)
    where = _node_source(path, node)
    at = f"\n  from {short_path(where[0])}:{where[1]}  `{where[2]}`" if where else ""
    return f"onnxruntime fails at node '{node}' (op {op}): {status}{at}"


def _node_source(path: str, node_name: str):
    try:
        import onnx

        model = onnx.load(path, load_external_data=False)
    except Exception:
        return None
    for node in model.graph.node:
        if node.name == node_name:
            for prop in node.metadata_props:
                if prop.key == "pkg.torch.onnx.stack_trace":
                    return frame_from_stack(prop.value)
    return None


def _is_tensor(v: Any) -> bool:
    return hasattr(v, "dtype") and hasattr(v, "shape") and type(v).__module__.startswith("torch")
