"""Backend names: the canonical name of every registered backend, its aliases, and the parsing of the lists
users write (``--deploy-backends=trt,tvm``, ``backends=[...]``, ``xfail={...}``).

A leaf module (standard library only): options, comparison and reports read names here without loading any
backend. :mod:`pytest_deploy.backends` registers each backend's names here.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import overload

from .errors import SpecError

#: canonical name -> aliases, in registration order
_NAMES: dict[str, tuple[str, ...]] = {}
#: lower-cased name or alias -> canonical name
_ALIASES: dict[str, str] = {}


def register_names(name: str, aliases: Iterable[str] = (), *, replace: bool = False) -> None:
    """Record ``name`` and its ``aliases``; a name or alias already taken raises unless ``replace``."""
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"backend name {name!r} must be alphanumeric (underscores allowed)")
    names = [name, *aliases]
    if not replace:
        taken = [n for n in names if n.lower() in _ALIASES]
        if taken:
            raise ValueError(f"backend name(s) {taken} already registered; pass replace=True to override")
    _NAMES[name] = tuple(aliases)
    for n in names:
        _ALIASES[n.lower()] = name


def backend_names() -> list[str]:
    """Canonical names in registration order."""
    return list(_NAMES)


def known_names_text() -> str:
    parts = [f"{name} [{', '.join(aliases)}]" if aliases else name for name, aliases in _NAMES.items()]
    return ", ".join(parts) + ", all"


def canonical_name(name: str) -> str:
    """``"trt"`` → ``"tensorrt"``; an unknown name raises :class:`SpecError` listing the known ones."""
    if not isinstance(name, str):
        raise SpecError(f"backend {name!r} must be a string; known backends: {known_names_text()}")
    key = name.strip().lower()
    if key not in _ALIASES:
        close = difflib.get_close_matches(key, [*_ALIASES, "all"], n=1, cutoff=0.6)
        hint = f" (did you mean {_ALIASES.get(close[0], close[0])!r}?)" if close else ""
        raise SpecError(f"unknown backend {name!r}{hint}; known backends: {known_names_text()}")
    return _ALIASES[key]


@overload
def parse_backends(value: None, *, where: str) -> None: ...
@overload
def parse_backends(value: str | Iterable[str], *, where: str) -> list[str]: ...
def parse_backends(value: str | Iterable[str] | None, *, where: str) -> list[str] | None:
    """Canonical, de-duplicated names from a comma-separated string or a list; ``all`` expands.

    ``None`` stays ``None`` (no restriction). ``where`` names the source for error messages.
    """
    if value is None:
        return None
    items = list(value.split(",")) if isinstance(value, str) else list(value)
    if not items or all(isinstance(i, str) and not i.strip() for i in items):
        raise SpecError(f"{where}: empty backend list; name at least one of: {known_names_text()}")
    out: list[str] = []
    for item in items:
        if isinstance(item, str) and item.strip().lower() == "all":
            names = backend_names()
        elif isinstance(item, str) and not item.strip():
            continue
        else:
            try:
                names = [canonical_name(item)]
            except SpecError as exc:
                raise SpecError(f"{where}: {exc}") from None
        out.extend(n for n in names if n not in out)
    return out


#: The built-in backends, in registration order: (module under pytest_deploy.backends, class, name, aliases).
#: Their names are known without importing anything; :mod:`pytest_deploy.backends` loads a class when a check
#: first asks for it. A unit test checks that each row matches its class.
BUILTINS = (
    ("serialization", "StateDictBackend", "state_dict", ()),
    ("serialization", "PickleBackend", "pickle", ()),
    ("serialization", "CheckpointBackend", "checkpoint", ()),
    ("torchscript", "TraceBackend", "trace", ("torchscript-trace",)),
    ("torchscript", "ScriptBackend", "script", ("torchscript-script",)),
    ("export", "ExportBackend", "export", ("torch.export",)),
    ("aoti", "AotiBackend", "aoti", ("aotinductor",)),
    ("onnx", "OnnxBackend", "onnx", ("ort", "onnxruntime")),
    ("tvm", "TvmBackend", "tvm", ()),
    ("tensorrt", "TensorRTBackend", "tensorrt", ("trt",)),
)

for _row in BUILTINS:
    register_names(_row[2], _row[3])


# ---------------------------------------------------------------------------------- precisions

#: The precisions a check deploys at (``precision=``, ``--deploy-precision``), with the output dtype whose default
#: tolerance row a reduced precision widens the float tolerances to. The int8 precisions (ONNX Runtime's static
#: quantization, and its dynamic one of MatMul/Gemm weights) are judged by agreement, not tolerance
#: (pytest_deploy.agreement): their tolerances stay as given.
PRECISIONS: dict[str, str] = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "int8": "int8",
                              "int8-dynamic": "int8"}


def parse_precision(value: object, *, where: str) -> str:
    """``value`` as one of :data:`PRECISIONS`; anything else raises :class:`SpecError` naming the valid values."""
    text = value.strip().lower() if isinstance(value, str) else value
    if text not in PRECISIONS:
        raise SpecError(f"{where}: unknown precision {value!r}; use one of {', '.join(PRECISIONS)}")
    assert isinstance(text, str)
    return text
