"""Apache TVM (Relax): import → ``tvm.compile`` → ``export_library`` → load → Relax VM.

The model is imported from its ``torch.export`` program (named dims become symbolic shapes); when that
importer refuses it, or what it imported does not compile with a dynamic dim, the ONNX route is tried instead
(the graph's dims named from the spec, so a dim shared by several inputs is one symbol) and the verdict says so.
"""

from __future__ import annotations

import json
import os
import re

from ..errors import StageError
from ..sources import first_line, frame_from_stack, short_path
from ..tensors import clone_args, from_numpy, to_numpy
from .base import Backend, quiet_torch_logs, spawned_runtime
from .export import export_program, op_source

DEFAULT_TARGET = "llvm"
LIBRARY = "model.so"
#: how the library was imported (the ``tvm_importer*`` and ``tvm_fallback`` details), kept beside it in the cache
IMPORT_NOTES = "import.json"
#: --deploy-tvm-tune with --deploy-latency: the module compiled without the tuning database, timed beside the tuned one
UNTUNED = "model.untuned.so"
_IMPORT_KEYS = ("tvm_importer", "tvm_importer_refusal", "tvm_compile_failure", "tvm_fallback")


def parse_target(text: str):
    """``llvm``, ``cuda`` or a JSON target dict (TVM 0.27 no longer parses ``llvm -mcpu=...`` strings)."""
    import tvm

    text = (text or DEFAULT_TARGET).strip()
    try:
        return tvm.target.Target(json.loads(text) if text.startswith("{") else text)
    except Exception as exc:
        raise StageError("compile", f"TVM cannot parse target {text!r}: {first_line(exc)}\n  fix: pass a target kind "
                                    "such as llvm or cuda, or a JSON dict like '{\"kind\": \"llvm\", \"mcpu\": \"native\"}'"
                         ) from None


def device_for(target):
    """The device the target's code runs on (cpu for llvm and c, cuda:0 for cuda, rocm:0 for rocm, ...)."""
    import tvm

    if hasattr(target, "get_target_device_type"):
        return tvm.device(target.get_target_device_type(), 0)
    return tvm.cuda(0) if target.kind.name == "cuda" else tvm.cpu(0)


_HOST_KINDS = ("llvm", "c")


def _linker() -> str | None:
    """The compiler TVM's export_library would link with (its own search order), or None."""
    import shutil

    for env in ("CXX", "CC"):
        if os.environ.get(env) and shutil.which(os.environ[env].split()[0]):
            return os.environ[env]
    return next((cc for cc in ("g++", "gcc", "clang++", "clang", "c++", "cc") if shutil.which(cc)), None)


def _kind_of(text: str) -> str | None:
    """The target kind named by ``llvm`` or a JSON dict ``{"kind": ...}``; None when it does not parse."""
    text = (text or DEFAULT_TARGET).strip()
    if not text.startswith("{"):
        return text.split()[0] if text else None
    try:
        return str(json.loads(text).get("kind"))
    except (ValueError, AttributeError):
        return None


_DEVICE_LABELS = {"cuda": "CUDA", "rocm": "ROCm", "opencl": "OpenCL", "vulkan": "Vulkan", "metal": "Metal"}


def _missing_device(text: str) -> str | None:
    """Why the target's device is not usable here, or None when it is (or the target does not parse: the
    check then fails at stage compile with the parse error)."""
    if _kind_of(text) in _HOST_KINDS:  # code for this machine's CPU: nothing to look for (and no TVM import)
        return None
    import tvm

    try:
        target = parse_target(text)
    except StageError:
        return None
    device = device_for(target)
    if device.exist:
        return None
    kind = target.kind.name
    label = _DEVICE_LABELS.get(kind, kind)
    built = str(tvm.support.libinfo().get(f"USE_{kind.upper()}", "")).upper()
    if built in ("OFF", "0", "FALSE", "NOTFOUND"):
        why = f"this TVM is built without {label} (USE_{kind.upper()}={built}); install a TVM built with it"
    else:
        why = f"no {label} device is visible here ({device} does not exist); run on a machine with one"
    return f"tvm: target {text!r} needs a {label} device, but {why}, or choose a CPU target (--deploy-tvm-target=llvm)"


class TvmBackend(Backend):
    name = "tvm"
    native = True
    preload = ("torch.export", "tvm.relax", "tvm.relax.frontend.torch")
    requires = ("tvm", "numpy")
    extra = "tvm"
    description = "Relax import (exported program; ONNX fallback) → tvm.compile → export_library → load → Relax VM"

    def unavailable_reason(self, options=None) -> str | None:
        reason = super().unavailable_reason(options)
        if reason:
            return reason
        if not _linker():
            return ("tvm: export_library links the compiled module into a shared library with a C/C++ compiler, and "
                    "none is on PATH (g++, gcc, clang++, clang, c++, cc; or $CXX/$CC); install one, e.g. apt-get "
                    "install g++")
        return _missing_device((options or {}).get("tvm_target") or DEFAULT_TARGET)

    spawns_runtime = True

    def uses_cuda(self, options=None) -> bool:
        return _kind_of((options or {}).get("tvm_target") or DEFAULT_TARGET) not in _HOST_KINDS

    def build(self, ctx):

        target = parse_target(ctx.options.get("tvm_target") or DEFAULT_TARGET)
        ctx.note("tvm_target", str(target.kind.name))
        if ctx.options.get("tvm_tune"):  # tuned builds are cached by their tuning database (tvm_tuning)
            self._compile(ctx, target)
            path = ctx.path(LIBRARY)
        else:
            built = ctx.cached_files("tvm", {"target": str(target)}, [LIBRARY, IMPORT_NOTES],
                                     lambda: self._compile(ctx, target))
            path = str(built / LIBRARY)
            _restore_import_notes(ctx, built / IMPORT_NOTES)
        config = {"path": path, "target": ctx.options.get("tvm_target") or DEFAULT_TARGET}
        if ctx.result.details.get("tvm_untuned") == UNTUNED:
            with ctx.stage("load"):
                untuned = TvmRuntime({**config, "path": ctx.path(UNTUNED)})
            ctx.latency_variants["untuned"] = untuned.run
        with ctx.stage("load"):
            if ctx.spawn_runtime:  # a GPU target: the device is opened in a spawned worker, never here
                runtime = spawned_runtime(ctx, "TVM", f"{__name__}:TvmRuntime", config)
            else:
                runtime = TvmRuntime(config)

        def run(args):
            from ..compare import Leaves

            return Leaves(runtime.run(args))

        return run

    def verify(self, ctx) -> None:
        from ..compare import Leaves, flatten

        try:
            runner = self.build(ctx)
            ctx.run_examples(runner, reference=lambda args: Leaves(
                (p, v) for p, v in flatten(ctx.recorded_eager(args)) if hasattr(v, "dtype")))
        except StageError as err:
            # a verdict on the ONNX route says so, right under its first line
            note = ctx.result.details.get("tvm_fallback")
            if note and note not in err.message:
                first, _, rest = err.message.partition("\n")
                err.message = f"{first}\n  {note}" + (f"\n{rest}" if rest else "")
            raise

    def localize(self, ctx, args, deadline):
        """Module level only: TVM's compiled module returns the graph's outputs and keeps none of the exported
        program's node names, so each submodule call is replayed instead (:func:`pytest_deploy.localize.replay`):
        exported alone on the inputs eager gave it, compiled by TVM for the check's target and run, outermost
        first, descending into the one that diverges. Each replay compiles, so the time budget bounds it."""
        import torch

        from ..localize import LocalizationError, replay

        if ctx.spawn_runtime:
            raise LocalizationError("tvm: not localised on a GPU target: each replay would open the device in pytest's "
                                    "process, which CUDA checks never do (their runtime lives in a spawned worker)")
        target = parse_target(ctx.options.get("tvm_target") or DEFAULT_TARGET)
        device = device_for(target)
        modules = dict(ctx.model.named_modules())

        def resolve(path: str):
            module = modules.get(path)
            return None if module is None else lambda *a, **k: _compile_and_run(module, a, k, target, device)

        with torch.no_grad():
            output = ctx.runner(clone_args(args))
        finding = replay(ctx.model, lambda: ctx.eager(args), output, resolve, ctx.tol, deadline)
        finer = ("tvm: located to a module, not finer: the compiled TVM module keeps none of the exported program's "
                 "node names and returns only the graph's outputs, so intermediate values inside a module cannot be "
                 "compared")
        finding.error = finer + (f"; {finding.error}" if finding.error else "")
        return finding

    def _compile(self, ctx, target) -> None:
        """Import, compile for ``target`` and write the library (and how it was imported) to the work directory.
        What the exported-program importer gave that does not compile with a dynamic dim is imported again
        through ONNX; when that fails too, the check fails with the first error and a line on the second."""
        program, module = self._import(ctx)
        try:
            executable = self._executable(ctx, module, target)
        except StageError as err:
            if program is None or err.stage != "compile" or err.message.startswith("timed out") \
                    or not _has_dynamic_dim(ctx.space):
                raise
            ctx.note("tvm_compile_failure", err.message)
            try:
                executable = self._executable(ctx, self._import_onnx(ctx, program), target)
            except StageError as fallback:
                raise StageError("compile", f"{err.message}\n  the ONNX fallback fails too: "
                                            f"{_compile_reason(fallback.message)}") from None
            self._fell_back(ctx, f"torch.export import does not compile: {_compile_reason(err.message)}")
        with ctx.stage("save"):
            # TVM's own temporary build directory would live in the system temp dir, where TVM's exit handler
            # of any process forked with it can remove it: build in the check's work directory instead
            workspace = ctx.path("tvm-build")
            os.makedirs(workspace, exist_ok=True)
            executable.export_library(ctx.path(LIBRARY), workspace_dir=workspace)
            details = ctx.result.details
            with open(ctx.path(IMPORT_NOTES), "w") as f:
                json.dump({k: details[k] for k in _IMPORT_KEYS if k in details}, f)

    def _executable(self, ctx, module, target):
        """``module`` compiled for ``target`` (with the tuning database under ``--deploy-tvm-tune``)."""
        import tvm

        executable = self._tuned(ctx, module, target) if ctx.options.get("tvm_tune") else None
        if executable is not None and ctx.options.get("latency_threads") and not ctx.spawn_runtime:
            self._untuned(ctx, module, target)  # --deploy-latency times the tuned module beside the untuned one
        with ctx.stage("compile"), quiet_torch_logs():
            try:
                return executable or tvm.compile(module, target=target)
            except Exception as exc:
                text = f"tvm.compile fails for target {target.kind.name}: {first_line(exc, 600)}"
                left, first = _unlowered_ops(module, ctx.space)
                if left:
                    text += "\n  Relax operators left unlowered (no TIR for these shapes): " + ", ".join(left)
                    if first:
                        text += f"\n  the first, whose output shape TVM could not infer: {first}"
                    if first and "T.min(" in first:
                        text += ("\n  a dim clamped by T.min(...) comes from a slice whose length depends on a dynamic "
                                 "dim (a fixed-size table cut to table[:seq], padding trimmed with x[..., :-n]): TVM "
                                 "cannot prove the result has that dim's size; where it is a table, gather the rows "
                                 "instead (table[torch.arange(seq)]), which keeps the shape seq")
                    split = _split_dims(module, ctx.space)
                    if split:
                        text += "\n  " + split
                    text += "\n  fix: try static dims (min == max) for this model, or another TVM version"
                raise StageError("compile", text) from None

    @staticmethod
    def _tuned(ctx, module, target):
        """The executable compiled with a MetaSchedule database (cached), or None when nothing is tunable."""
        import hashlib

        from ..cache import library_versions, machine, make_key
        from .tvm_tuning import search_settings, tuned_executable

        trials = int(ctx.options["tvm_tune"])
        program = hashlib.sha256(module.script().encode()).hexdigest()
        key = make_key("tvm-tune", program, str(target), trials, search_settings(),
                       library_versions(["apache-tvm", "xgboost"]), machine())
        return tuned_executable(ctx, module, target, trials, key)

    def _untuned(self, ctx, module, target) -> None:
        """The same module compiled without the tuning database, written beside the tuned library
        (``UNTUNED``): --deploy-latency times both in the same run, so tuning proves its worth."""
        import tvm

        with ctx.stage("compile"), quiet_torch_logs():
            try:
                executable = tvm.compile(module, target=target)
            except Exception as exc:  # the tuned module is what is checked; its untuned twin is extra
                ctx.note("tvm_untuned", f"not compiled: {first_line(exc)}")
                return
        workspace = ctx.path("tvm-build-untuned")
        os.makedirs(workspace, exist_ok=True)
        with ctx.stage("save"):
            executable.export_library(ctx.path(UNTUNED), workspace_dir=workspace)
        ctx.note("tvm_untuned", UNTUNED)

    # -- import --------------------------------------------------------------------------------

    def _import(self, ctx):
        """``(program, module)``: the Relax module from the exported program's importer (with ``program``, the
        torch.export program it came from), or from the ONNX route when that importer refuses (``program``
        None: there is no other route left to try)."""
        from tvm.relax.frontend.torch import from_exported_program

        program = export_program(ctx)
        with ctx.stage("export"), quiet_torch_logs():
            try:
                module = from_exported_program(program)
                ctx.note("tvm_importer", "exported_program")
                return program, module
            except Exception as exc:
                refusal = _explain_import_error(exc, program)
        ctx.note("tvm_importer_refusal", refusal)
        try:
            module = self._import_onnx(ctx, program)
        except StageError as fallback:
            raise StageError("export", f"{refusal}\n  the ONNX fallback fails too: {fallback.message}") from None
        self._fell_back(ctx, f"torch.export import failed: {refusal.splitlines()[0]}")
        return None, module

    @staticmethod
    def _fell_back(ctx, reason: str) -> None:
        ctx.note("tvm_importer", f"onnx (fallback: {reason})")
        ctx.note("tvm_fallback", f"tvm: imported through ONNX ({reason})")

    @staticmethod
    def _import_onnx(ctx, program):
        """``program`` converted by torch.onnx with the spec's dim names (as the onnx backend exports it) and
        imported by TVM's ONNX frontend; a StageError whose message is one line saying why not."""
        from .onnx_export import dynamo_program

        try:
            import onnx  # noqa: F401
            import onnxscript  # noqa: F401
            from tvm.relax.frontend.onnx import from_onnx
        except ImportError:
            raise StageError("export", "it needs onnx and onnxscript (pip install 'pytest-deploy[onnx]')") from None
        try:
            proto = dynamo_program(ctx, program).model_proto
        except StageError as err:
            # its first line names the op torch.onnx cannot convert; the user's line is in the message above
            raise StageError("export", err.message.splitlines()[0]) from None
        with ctx.stage("export"), quiet_torch_logs():
            try:
                return from_onnx(proto, keep_params_in_input=False)
            except Exception as exc:
                raise StageError("export", f"TVM's ONNX frontend: {first_line(exc)}") from None


class TvmRuntime:
    """The compiled library loaded into a Relax VM on the target's device: ``run(args)`` -> ``[("output[i]",
    tensor)]``. Built from plain data (the library's path, the target string) so a spawned worker builds the same."""

    def __init__(self, config: dict) -> None:
        import tvm
        from tvm import relax

        target = parse_target(config["target"])
        self.device = device_for(target)
        self.vm = relax.VirtualMachine(tvm.runtime.load_module(config["path"]), self.device)
        self.make = getattr(tvm.runtime, "tensor", None) or tvm.nd.array
        self.info = {"device": str(self.device)}

    def run(self, args) -> list:
        inputs = [self.make(to_numpy(a), self.device) for a in args]
        try:
            out = self.vm["main"](*inputs)
        except Exception as exc:
            raise StageError("run", f"the TVM module fails: {first_line(exc, 600)}") from None
        return [(f"output[{i}]", from_numpy(t.numpy())) for i, t in enumerate(_leaves(out))]


def _explain_import_error(exc: BaseException, program) -> str:
    text = str(exc)
    m = re.search(r"Unsupported function types \[([^\]]*)\]", text)
    if not m:
        text = f"TVM's exported-program importer fails: {first_line(exc)}"
        node = _failing_node(exc)
        if node is not None:
            text += f"\n  while converting {node.target}"
            where = frame_from_stack(node.meta.get("stack_trace") or "")
            if where:
                text += f" at {short_path(where[0])}:{where[1]}  `{where[2]}`"
            text += ("\n  fix: rewrite that call with ops TVM converts, register a custom_convert_map for it, or "
                     "deploy with another backend")
        return text
    ops = [o.strip().strip("'\"") for o in m.group(1).split(",") if o.strip()]
    # the importer names ops of the program it decomposed first (linalg_eigvals → linalg_eig, view_as_real)
    try:
        with quiet_torch_logs():
            decomposed = program.run_decompositions()
    except Exception:
        decomposed = program
    # it lists them from a set: put them in program order
    order: dict[str, int] = {}
    for i, node in enumerate(decomposed.graph.nodes):
        order.setdefault(str(getattr(node, "target", "")), i)
    ops.sort(key=lambda o: (order.get("aten." + o, len(order)), o))
    lines = [f"TVM's exported-program importer has no conversion for {', '.join('aten.' + o for o in ops)}"]
    for op in ops:
        where = op_source(decomposed, "aten." + op) or op_source(program, "aten." + op)
        if where:
            lines.append(f"  aten.{op} at {short_path(where[0])}:{where[1]}  `{where[2]}`")
    lines.append("  fix: rewrite those calls with supported ops, or register a custom_convert_map for them")
    return "\n".join(lines)


def _failing_node(exc: BaseException):
    """The exported program's node TVM's importer was converting when it raised: the innermost traceback
    frame holding a ``torch.fx.Node`` named ``node``."""
    import traceback

    import torch

    found = None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        node = frame.f_locals.get("node")
        if isinstance(node, torch.fx.Node) and node.op == "call_function":
            found = node
    return found


_LOWERED = ("relax.call_tir", "relax.builtin", "relax.vm", "relax.memory", "relax.call_packed", "relax.call_dps_packed",
            "relax.null_value", "relax.shape_of", "relax.call_pure_packed", "relax.tensor_to_shape", "prim.")


def _unlowered_ops(module, space=None) -> tuple[list[str], str | None]:
    """Relax operators that ``LegalizeOps`` leaves in place (what the VM codegen cannot emit), in program
    order, and the first of them with its operands' types: the one whose shapes broke inference (those after
    it only inherit its unknown shape). Symbolic dims of the inputs are given the spec's names."""
    try:
        import tvm
        from tvm import relax

        legal = relax.transform.LegalizeOps()(module)
        calls: list = []

        def visit(expr):
            if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and not expr.op.name.startswith(_LOWERED):
                calls.append(expr)

        for func in legal.functions.values():
            if isinstance(func, relax.Function):
                relax.analysis.post_order_visit(func.body, visit)
        if not calls:
            return [], None
        names = _dim_names(legal, space)

        def typed(arg) -> str:
            text = str(getattr(arg, "ty", None) or getattr(arg, "struct_info", ""))
            return re.sub(r"\b\w+\b", lambda m: names.get(m.group(0), m.group(0)), text)

        first = calls[0]
        return (list(dict.fromkeys(c.op.name for c in calls)),
                f"{first.op.name}({', '.join(typed(a) for a in first.args)})")
    except Exception:  # diagnosis only: never mask the compile error
        return [], None


def _dim_names(module, space, all_symbols: bool = False) -> dict[str, str]:
    """TVM's symbolic dims (``s77``) → the spec's dim names (``batch``), read off ``main``'s inputs. A name
    that several symbols stand for is given to the first only, unless ``all_symbols``."""
    if space is None or "main" not in [g.name_hint for g in module.functions]:
        return {}
    names: dict[str, str] = {}
    for param, spec in zip(module["main"].params, space.specs):
        info = getattr(param, "ty", None) or getattr(param, "struct_info", None)
        shape = getattr(getattr(info, "shape", None), "values", None) or ()
        for value, dim in zip(shape, spec.shape):
            symbolic = isinstance(dim, str) and not isinstance(value, int) and not hasattr(value, "value")
            if symbolic and (all_symbols or dim not in names.values()):
                names.setdefault(str(value), dim)
    return names


def _has_dynamic_dim(space) -> bool:
    return any(lo != hi for lo, hi in space.dims.values())


def _compile_reason(message: str) -> str:
    """A compile failure in one line: the first operator left unlowered (and the dims split into several
    symbols) when known, else the message's first line."""
    op = re.search(r"^  the first, whose output shape TVM could not infer: ([\w.]+)\(", message, re.M)
    if not op:
        return message.splitlines()[0]
    split = re.search(r"^  (\w+ is \d+ symbols \(.*?\)(?:; \w+ is \d+ symbols \(.*?\))*) that ", message, re.M)
    return f"{op.group(1)} left unlowered" + (f": {split.group(1)} that TVM cannot prove equal" if split else "")


def _split_dims(module, space) -> str | None:
    """A line naming the spec's dims that the imported module holds as several unrelated symbols, or None."""
    symbols: dict[str, list[str]] = {}
    for symbol, name in _dim_names(module, space, all_symbols=True).items():
        symbols.setdefault(name, []).append(symbol)
    split = {name: found for name, found in symbols.items() if len(found) > 1}
    if not split:
        return None
    what = "; ".join(f"{name} is {len(found)} symbols ({', '.join(found)})" for name, found in split.items())
    return (f"{what} that TVM cannot prove equal: torch.export gave a dim shared by several inputs a symbol per "
            "input")


def _restore_import_notes(ctx, path) -> None:
    """A library from the cache: the details of how it was imported, as when it was built."""
    try:
        with open(path) as f:
            notes = json.load(f)
    except (OSError, ValueError):  # an entry made before the notes were kept
        return
    for key, value in notes.items():
        if key in _IMPORT_KEYS:
            ctx.result.details.setdefault(key, value)


def _compile_and_run(module, args: tuple, kwargs: dict, target, device) -> list:
    """``module`` exported alone (static shapes: these inputs), compiled by TVM for ``target`` and run on them."""
    import torch
    import torch.utils._pytree as pytree
    import tvm
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    with quiet_torch_logs():
        program = torch.export.export(module, args, kwargs or None)
        executable = tvm.compile(from_exported_program(program), target=target)
    vm = relax.VirtualMachine(executable, device)
    make = getattr(tvm.runtime, "tensor", None) or tvm.nd.array
    inputs = [make(to_numpy(a), device) for a in pytree.tree_leaves((args, kwargs)) if hasattr(a, "dtype")]
    return [from_numpy(t.numpy()) for t in _leaves(vm["main"](*inputs))]


def _leaves(out) -> list:
    """The VM returns a tensor or (nested) arrays of tensors: flatten to tensors in order."""
    if hasattr(out, "numpy"):
        return [out]
    items = []
    for item in out:
        items.extend(_leaves(item))
    return items
