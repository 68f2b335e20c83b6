"""Backend registry: the backend object behind each name, and ``register_backend`` for third-party backends.

Names and aliases live in :mod:`pytest_deploy.names`. Importing this module imports no backend library; a
built-in backend's module is imported when a check first asks for it.
"""

from __future__ import annotations

import importlib

from ..names import BUILTINS, backend_names, canonical_name, known_names_text, parse_backends, register_names
from .base import Backend

_REGISTRY: dict[str, Backend] = {}
#: built-in backends not imported yet: name -> (module, class)
_PENDING: dict[str, tuple[str, str]] = {row[2]: (row[0], row[1]) for row in BUILTINS}


def register_backend(backend: Backend | type[Backend], *, replace: bool = False) -> Backend:
    """Add a backend (an instance or a class) under its ``name`` and ``aliases``."""
    if isinstance(backend, type):
        backend = backend()
    register_names(backend.name, backend.aliases, replace=replace)
    _REGISTRY[backend.name] = backend
    _PENDING.pop(backend.name, None)
    return backend


def get_backend(name: str) -> Backend:
    name = canonical_name(name)
    if name not in _REGISTRY:
        module, cls = _PENDING.pop(name)
        _REGISTRY[name] = getattr(importlib.import_module(f"{__name__}.{module}"), cls)()
    return _REGISTRY[name]


__all__ = ["Backend", "register_backend", "backend_names", "canonical_name", "known_names_text", "parse_backends",
           "get_backend"]
