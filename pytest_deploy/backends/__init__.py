"""Backend registry: canonical names, aliases, and ``register_backend`` for third-party backends.

Importing this module imports no backend library; each backend imports what it needs when it runs.
"""

from __future__ import annotations

from typing import Iterable

from ..errors import SpecError
from .base import Backend

_REGISTRY: dict[str, Backend] = {}
_ALIASES: dict[str, str] = {}


def register_backend(backend: Backend | type[Backend], *, replace: bool = False) -> Backend:
    """Add a backend (an instance or a class) under its ``name`` and ``aliases``."""
    if isinstance(backend, type):
        backend = backend()
    if not backend.name or not backend.name.replace("_", "").isalnum():
        raise ValueError(f"backend name {backend.name!r} must be alphanumeric (underscores allowed)")
    names = [backend.name, *backend.aliases]
    if not replace:
        taken = [n for n in names if n.lower() in _ALIASES]
        if taken:
            raise ValueError(f"backend name(s) {taken} already registered; pass replace=True to override")
    _REGISTRY[backend.name] = backend
    for n in names:
        _ALIASES[n.lower()] = backend.name
    return backend


def backend_names() -> list[str]:
    """Canonical names in registration order."""
    return list(_REGISTRY)


def known_names_text() -> str:
    parts = []
    for name, b in _REGISTRY.items():
        parts.append(f"{name} [{', '.join(b.aliases)}]" if b.aliases else name)
    return ", ".join(parts) + ", all"


def canonical_name(name: str) -> str:
    """``"trt"`` → ``"tensorrt"``; an unknown name raises :class:`SpecError` listing the known ones."""
    if not isinstance(name, str):
        raise SpecError(f"backend {name!r} must be a string; known backends: {known_names_text()}")
    key = name.strip().lower()
    if key not in _ALIASES:
        raise SpecError(f"unknown backend {name!r}; known backends: {known_names_text()}")
    return _ALIASES[key]


def parse_backends(value: str | Iterable[str] | None, *, where: str) -> list[str] | None:
    """Canonical, de-duplicated names from a comma-separated string or a list; ``all`` expands.

    ``None`` stays ``None`` (no restriction). ``where`` names the source for error messages.
    """
    if value is None:
        return None
    items = [v for v in value.split(",")] if isinstance(value, str) else list(value)
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


def get_backend(name: str) -> Backend:
    name = canonical_name(name)
    backend = _REGISTRY[name]
    if isinstance(backend, _Builtin):
        backend = _REGISTRY[name] = backend.load()
    return backend


#: The built-in backends, in registration order: (module, class, name, aliases). Their modules are imported
#: when a check first asks for the backend, not when pytest loads the plugin. A unit test checks that each
#: row matches its class.
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


class _Builtin:
    """A built-in backend not imported yet: its name and aliases, and where its class lives."""

    def __init__(self, module: str, cls: str, name: str, aliases: tuple[str, ...]):
        self.module, self.cls, self.name, self.aliases = module, cls, name, aliases

    def load(self) -> Backend:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{self.module}"), self.cls)()


for _row in BUILTINS:
    _REGISTRY[_row[2]] = _Builtin(*_row)  # type: ignore[assignment]
    for _alias in (_row[2], *_row[3]):
        _ALIASES[_alias.lower()] = _row[2]

__all__ = ["Backend", "register_backend", "backend_names", "canonical_name", "parse_backends", "get_backend"]
