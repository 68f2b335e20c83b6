"""Zero code: a model test made from a factory (``MODULE:FACTORY``) and its inferred (or one-line) declaration.

``pytest --deploy-model=MODULE:FACTORY`` collects the model test :func:`model_test` makes; ``pytest-deploy init``
writes the same test as a file (:func:`render_test`); ``pytest-deploy check`` runs pytest with ``--deploy-model``.
Every error here is a :class:`SpecError` naming the factory and the fix.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .declaration import Declaration, parse_inputs
from .errors import SpecError
from .infer import infer_inputs
from .spec import MaskSpec, TensorSpec

#: attribute of a model test made from a factory: the command that reruns one of its checks ({backend} filled in)
REPRODUCE_ATTR = "__pytest_deploy_reproduce__"


@dataclass
class Target:
    """``MODULE:FACTORY``, split."""

    text: str
    module: str
    attr: str

    @property
    def name(self) -> str:
        """``SmallCNN`` -> ``smallcnn``: the model test is ``test_<name>``, the file ``test_deploy_<name>.py``."""
        return re.sub(r"\W+", "_", self.attr.rsplit(".", 1)[-1]).strip("_").lower() or "model"


def parse_target(text: str) -> Target:
    module, sep, attr = text.strip().partition(":")
    if not sep or not module or not attr:
        raise SpecError(f"{text!r} is not MODULE:FACTORY; write the dotted module, a colon and the factory, e.g. "
                        "examples.models:SmallCNN")
    return Target(text.strip(), module, attr)


def ensure_path(*dirs: str | os.PathLike[str]) -> None:
    """Put ``dirs`` on ``sys.path`` (last), as ``python -m`` puts the current directory: a factory's module is
    found from where pytest runs."""
    for d in dirs:
        d = os.fspath(d)
        if d and d not in sys.path:
            sys.path.append(d)


def module_file(target: Target) -> str | None:
    """The factory module's source file, without importing it (None when it cannot be found)."""
    try:
        spec = importlib.util.find_spec(target.module)
    except Exception:  # a parent package that fails to import: reported when the factory is loaded
        return None
    origin = getattr(spec, "origin", None)
    return origin if origin and os.path.exists(origin) else None


def load_factory(target: Target) -> Callable[..., Any]:
    """The callable ``MODULE:FACTORY`` names."""
    try:
        module = importlib.import_module(target.module)
    except Exception as exc:
        hint = ("make it importable from where pytest runs (run from the directory holding the package, set "
                "PYTHONPATH, or the ini option pythonpath)") if isinstance(exc, ModuleNotFoundError) else \
            "fix the error in the module"
        raise SpecError(f"--deploy-model={target.text}: cannot import {target.module}: {type(exc).__name__}: "
                        f"{_first_line(exc)}; {hint}") from None
    obj: Any = module
    for part in target.attr.split("."):
        if not hasattr(obj, part):
            names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                           and getattr(v, "__module__", None) == module.__name__)
            raise SpecError(f"--deploy-model={target.text}: {target.module} has no {target.attr!r}; name one of its "
                            f"callables: {', '.join(names[:12]) or 'none defined there'}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise SpecError(f"--deploy-model={target.text}: {target.attr} is a {type(obj).__name__}, not a callable; "
                        "name a function or class that returns the model when called with no argument")
    return obj


def call_factory(target: Target, factory: Callable[..., Any]) -> tuple[Any, Any]:
    """``factory()`` as ``(model, example_inputs or None)``, checked to be a ``torch.nn.Module``."""
    import torch

    from .context import seeded_call

    try:
        returned = seeded_call(factory, 0)
    except Exception as exc:
        raise SpecError(f"--deploy-model={target.text}: calling {target.attr}() raised {type(exc).__name__}: "
                        f"{_first_line(exc)}; the factory must build the model with no argument (wrap it in a "
                        "function that passes its arguments)") from None
    model, example = returned, None
    if isinstance(returned, tuple) and len(returned) == 2:
        model, example = returned
    if not isinstance(model, torch.nn.Module):
        raise SpecError(f"--deploy-model={target.text}: {target.attr}() returned {type(model).__name__}, not a "
                        "torch.nn.Module; the factory must return the model (or (model, example_inputs))")
    return model, example


def declaration_for(target: Target, model, example, inputs_line: str | None) -> Declaration | None:
    """The declaration of ``--deploy-inputs`` when given, else the inferred one; None when the factory returned
    example inputs (they declare the inputs)."""
    if inputs_line is not None:
        decl = parse_inputs(inputs_line, where="--deploy-inputs")
        decl.use_cache_off = "use_cache" in _forward_parameters(model)
        return decl
    if example is not None:
        return None
    try:
        return infer_inputs(model)
    except SpecError as exc:
        raise SpecError(f"--deploy-model={target.text}: {exc}") from None


def _forward_parameters(model) -> list[str]:
    import inspect

    try:
        return list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return []


def model_test(target: Target, inputs_line: str | None = None, *, reproduce: str | None = None) -> Callable[[], Any]:
    """The ``@deployable`` model test for ``target``: builds the model with the factory, with the declaration
    inferred (or from ``inputs_line``), every backend. Raises SpecError naming the factory and the fix."""
    from . import deployable

    factory = load_factory(target)
    model, example = call_factory(target, factory)
    decl = declaration_for(target, model, example, inputs_line)
    use_cache_off = decl.use_cache_off if decl is not None else False

    def build():
        built = factory()
        model, example = (built if isinstance(built, tuple) and len(built) == 2 else (built, None))
        if use_cache_off and getattr(model, "config", None) is not None:
            model.config.use_cache = False
        model = model.eval()
        return model if example is None else (model, example)

    build.__name__ = build.__qualname__ = f"test_{target.name}"
    build.__doc__ = f"{target.text} with {'inputs ' + decl.line() if decl else 'the example inputs it returns'}"
    build.place_as = factory  # type: ignore[attr-defined]  # pytest reports the test at the factory's source
    if reproduce is not None:
        setattr(build, REPRODUCE_ATTR, reproduce)
    return deployable(**(decl.kwargs() if decl is not None else {}))(build)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else "(no message)"


# ------------------------------------------------------------------------------------ the written test


def spec_source(spec: TensorSpec) -> str:
    """``tensor("batch", 3, 32, 32, low=-1.0, high=1.0)`` for a spec (``mask(...)`` for a mask)."""
    args = [repr(d) for d in spec.shape]
    dtype = str(spec.torch_dtype).replace("torch.", "")
    if isinstance(spec, MaskSpec):
        if dtype != "int64":
            args.append(f"dtype=torch.{dtype}")
        if spec.padding != "right":
            args.append(f"padding={spec.padding!r}")
        if spec.min_valid != 1:
            args.append(f"min_valid={spec.min_valid}")
        return f"mask({', '.join(args)})"
    if dtype != "float32":
        args.append(f"dtype=torch.{dtype}")
    for name in ("low", "high"):
        value = getattr(spec, name)
        if value is not None:
            args.append(f"{name}={float(value)!r}" if spec.torch_dtype.is_floating_point else f"{name}={value!r}")
    return f"tensor({', '.join(args)})"


def render_test(target: Target, decl: Declaration | None, *, backends: list[str] | None = None,
                examples: int | None = None) -> str:
    """The source of a test file with the ``@deployable`` test ``--deploy-model`` runs for ``target``: the
    declaration spelled out, a comment on each guess."""
    specs = decl.specs if decl is not None else []
    uses_torch = any(str(s.torch_dtype) != "torch.float32" and not (isinstance(s, MaskSpec)
                                                                     and str(s.torch_dtype) == "torch.int64")
                     for s in specs)
    helpers = sorted({"deployable", *("mask" if isinstance(s, MaskSpec) else "tensor" for s in specs)})
    top = target.attr.split(".", 1)[0]
    lines = [f'"""Deployability of {target.text}: written by `pytest-deploy init`, edit freely.',
             "",
             "The inputs were inferred from the model (docs/zero-code.md); each guess is commented.",
             f"`pytest --deploy-model={target.text}` runs the same checks without this file.",
             '"""', ""]
    # third-party imports, then the model's module (first-party in the project that owns it)
    if uses_torch:
        lines.append("import torch")
    lines += [f"from pytest_deploy import {', '.join(helpers)}", "", f"from {target.module} import {top}", "", ""]
    lines.append("@deployable(")
    if backends:
        lines.append(f"    backends={backends!r},")
    if decl is not None:
        open_, close = ("{", "}") if decl.keywords else ("[", "]")
        lines.append(f"    inputs={open_}")
        for name, spec in zip(decl.names, decl.specs):
            note = decl.notes.get(name)
            if note:
                lines += _comment(f"{name}: {note}", 8)
            key = f"{name!r}: " if decl.keywords else ""
            lines.append(f"        {key}{spec_source(spec)},")
        lines.append(f"    {close},")
        if decl.dims:
            lines.append("    dims={")
            for name, (lo, hi) in decl.dims.items():
                if decl.notes.get(name):
                    lines += _comment(decl.notes[name], 8)
                lines.append(f"        {name!r}: ({lo}, {hi}),")
            lines.append("    },")
    if examples is not None:
        lines.append(f"    examples={examples},")
    lines.append(")")
    lines.append(f"def test_{target.name}():")
    model_note = decl.notes.get("model") if decl is not None else None
    if model_note:
        lines += _comment(model_note, 4)
    lines.append(f"    model = {target.attr}()")
    if decl is None:
        lines += ["    model, example_inputs = model  # the factory returns (model, example_inputs): they declare the "
                  "inputs", "    return model.eval(), example_inputs", ""]
        return "\n".join(lines)
    if decl.use_cache_off:
        lines.append("    model.config.use_cache = False")
    lines += ["    return model.eval()", ""]
    return "\n".join(lines)


def _comment(text: str, indent: int, width: int = 88) -> list[str]:
    """``text`` as ``# ...`` lines of at most ``width`` characters."""
    import textwrap

    prefix = " " * indent + "# "
    return [prefix + line for line in textwrap.wrap(text, width - len(prefix), break_on_hyphens=False)] or [prefix]


def format_file(path: str) -> str | None:
    """Sort the imports and format ``path`` with ruff, under the project's own ruff configuration, when ruff is
    installed; what went wrong, or None."""
    import shutil
    import subprocess

    ruff = shutil.which("ruff")
    command = [ruff] if ruff else [sys.executable, "-m", "ruff"]
    try:
        for args in (["check", "--fix", "--select", "I", "--quiet", path], ["format", "--quiet", path]):
            done = subprocess.run([*command, *args], capture_output=True, text=True, timeout=60)
            if done.returncode != 0 and "No module named ruff" in done.stderr:
                return "ruff is not installed: the file is written unformatted"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"ruff could not run ({exc}): the file is written unformatted"
    return None
