"""What a check's outcome depends on, hashed: the key of the result cache.

A check is a deterministic function of the model (its code, structure, parameters and buffers), the
input space, the example count and seed, the tolerances, the backend and its options, the libraries
and the machine. When all of these hash to a key that passed before, the check need not run again.

"The model's code" is every source file of the user's own that the model can reach: the files of its
module classes (and their base classes), the test file that builds it, and, transitively, every user
module those files refer to through their globals (helpers, constants, submodules). A change to any
of these files misses the cache; a change to an unrelated file does not. pytest-deploy's own source
is part of the key too, so upgrading the plugin reruns every check.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import re
import sys
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

#: Libraries whose version changes an outcome.
LIBRARIES = ("torch", "numpy", "hypothesis", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "onnxsim",
             "onnxconverter-common", "apache-tvm", "apache-tvm-ffi", "tensorrt", "polygraphy")

#: A reachable-files walk stops after this many files (a huge monorepo): the key then covers those found.
MAX_FILES = 400

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def model_digest(model) -> str:
    """Structure (module tree, training flags) and the bytes of every parameter and buffer."""
    import torch

    from .cache import _tensor_bytes

    h = hashlib.sha256()
    h.update(_ADDRESS.sub("", repr(model)).encode())
    h.update(bytes(m.training for m in model.modules()))
    for name, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}:{tensor.device.type}".encode())
        if tensor.device.type != "meta":
            h.update(_tensor_bytes(tensor) if isinstance(tensor, torch.Tensor) else repr(tensor).encode())
    return h.hexdigest()


def identity(model) -> list:
    """The model object and the state of its tensors, without hashing a byte: its id, structure, and each
    parameter's and buffer's storage address and version counter (which every in-place change bumps). Two
    equal identities within one process, while the model is alive, are the same model in the same state;
    a writer through ``.data`` (which has a version counter of its own) goes unseen."""
    tensors = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    return [id(model), _ADDRESS.sub("", repr(model)), [m.training for m in model.modules()],
            [(name, t.data_ptr() if t.device.type != "meta" else 0, t._version, str(t.dtype), list(t.shape))
             for name, t in tensors]]


def reachable_files(model, extra: Iterable[str | os.PathLike] = ()) -> list[str]:
    """The user's source files the model can reach (see the module docstring), sorted."""
    from .sources import is_user_file

    by_module = {}
    for name, mod in list(sys.modules.items()):
        path = getattr(mod, "__file__", None)
        if path:
            by_module[name] = path
    seen: set[str] = set()
    todo: list[str] = []

    def add(path: str | None) -> None:
        if path and path not in seen and len(seen) < MAX_FILES and is_user_file(path) and os.path.isfile(path):
            seen.add(path)
            todo.append(path)

    for m in model.modules():
        for cls in type(m).__mro__:
            add(by_module.get(cls.__module__))
    for path in extra:
        add(os.path.abspath(path))
    modules_by_file = {path: name for name, path in by_module.items()}
    while todo:
        module = sys.modules.get(modules_by_file.get(todo.pop(), ""))
        for value in list(vars(module).values()) if module is not None else ():
            if isinstance(value, types.ModuleType):
                add(getattr(value, "__file__", None))
            elif isinstance(value, (type, types.FunctionType)):
                add(by_module.get(getattr(value, "__module__", None) or ""))
    return sorted(seen)


def files_digest(paths: Iterable[str]) -> str:
    """Hash of the files' contents and their location-independent names (:func:`portable_name`): the same
    checkout in another directory, as on another CI runner, gives the same digest."""
    from .cache import file_digest

    h = hashlib.sha256()
    for name, path in sorted((portable_name(p), p) for p in paths):
        h.update(name.encode())
        h.update(file_digest(path).encode())
    return h.hexdigest()


def portable_name(path: str) -> str:
    """A source file's name without where the checkout or the environment lives: relative to the deepest
    ``sys.path`` entry or working directory holding it (``tests/test_models.py``, ``transformers/models/...``)."""
    path = os.path.abspath(path)
    roots = [os.path.abspath(p) for p in (*sys.path, os.getcwd()) if p]
    inside = [r for r in roots if path.startswith(os.path.join(r, ""))]
    if not inside:
        return os.path.basename(path)
    return os.path.relpath(path, max(inside, key=len)).replace(os.sep, "/")


def stable(obj: Any, files: set[str] | None = None) -> Any:
    """A JSON-able form of ``obj`` that is the same in every process: tensors by content, functions and
    classes by qualified name (their source files are added to ``files``), reprs without addresses."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, dict):
        return {str(k): stable(v, files) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [stable(v, files) for v in obj]
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        from .cache import _tensor_bytes

        return {"tensor": [str(obj.dtype), list(obj.shape), hashlib.sha256(_tensor_bytes(obj)).hexdigest()]}
    if isinstance(obj, (types.FunctionType, types.MethodType, type)) or inspect.isbuiltin(obj):
        if files is not None:
            with_file = getattr(sys.modules.get(getattr(obj, "__module__", "") or ""), "__file__", None)
            if with_file:
                files.add(with_file)
        return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
    return _ADDRESS.sub("", repr(obj))


@functools.lru_cache(maxsize=1)
def plugin_digest() -> str:
    """pytest-deploy's own source: a new version of the checks is a new key."""
    root = Path(__file__).parent
    return files_digest(str(p) for p in root.rglob("*.py"))


def gpu_environment() -> dict[str, str | None] | None:
    """The GPU a CUDA check runs on: ``{"gpu": name, "driver": version, "cuda": torch's CUDA version}``; None when
    torch is not imported or sees no CUDA device. The driver comes from NVML (pynvml) or ``nvidia-smi``, when
    either is there."""
    torch = sys.modules.get("torch")
    try:
        if torch is None or not torch.cuda.is_available():
            return None
        name = torch.cuda.get_device_name(0)
    except Exception:  # a broken CUDA install: no GPU to key by
        return None
    return {"gpu": name, "driver": _driver_version(), "cuda": getattr(torch.version, "cuda", None)}


@functools.lru_cache(maxsize=1)
def _driver_version() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:
        pass
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[0].strip() if out else None


@functools.lru_cache(maxsize=1)
def environment() -> dict[str, Any]:
    from .cache import library_versions, machine

    return {"libraries": library_versions(LIBRARIES), "machine": machine(), "gpu": gpu_environment(),
            "python": sys.version.split()[0]}


def content_key(model, space, canonical: Callable[[], tuple], files: Iterable[str] = (), shared: Any = None) -> str:
    """Hash of what an artifact built from a check is made of: the model's structure and weights, the user source
    files it reaches (and ``files``: the test file), the input space and the canonical example (``canonical()``
    gives its arguments). ``shared`` (the model test's ``modeltest.Work``, or None) computes it once for every
    backend: its ``content_key`` when set, else set here. Artifact and exported-program keys start from it."""
    from .cache import make_key

    if shared is not None and shared.content_key is not None:
        return shared.content_key
    extra: set[str] = set(files)
    inputs = stable(_space_parts(space, canonical()), extra)
    digest = shared.model_digest(model) if shared is not None else model_digest(model)
    key = make_key(digest, files_digest(reachable_files(model, extra)), inputs)
    if shared is not None:
        shared.content_key = key
    return key


def identity_key(model, space, canonical: tuple) -> str:
    """A key of the model object's current state and the input space that hashes no byte (:func:`identity`): for
    work shared within this process when there is no cache. ``canonical``: the canonical example's arguments."""
    from .cache import make_key

    return make_key("identity", identity(model), stable(_space_parts(space, canonical)))


def _space_parts(space, canonical: tuple) -> dict[str, Any]:
    """What of the input space (``spec.InputSpace``) an artifact depends on, with the canonical example's arguments."""
    return {"specs": space.specs, "dims": space.dims, "strategy": space.strategy_override, "canonical": list(canonical)}


#: Options that change only what a failing check reports, never whether it passes: not part of the key.
UNKEYED_OPTIONS = ("localize_budget",)


def check_key(model, backend: str, *, declared: dict[str, Any], options: dict[str, Any],
              files: Iterable[str | os.PathLike] = (), digest: str | None = None) -> str:
    """The result-cache key of one check. ``declared`` holds what the test declared (inputs, dims, examples,
    seed, tolerances, example inputs); ``options`` the backend options; ``files`` extra source files (the test's);
    ``digest`` the model's :func:`model_digest` when already known (the backends of a model test share it)."""
    from .cache import make_key

    extra = {str(f) for f in files}
    options = {k: v for k, v in options.items() if k not in UNKEYED_OPTIONS}
    parts = {"declared": stable(declared, extra), "options": stable(options, extra)}
    sources = reachable_files(model, extra)
    return make_key("result", backend, digest or model_digest(model), files_digest(sources), parts, plugin_digest(),
                    environment())
