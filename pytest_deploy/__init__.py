"""pytest-deploy: turn "is this model deployable?" into ordinary tests.

Public API: :func:`deployable`, :func:`tensor`, :func:`mask`, :func:`verify`, :class:`DeployFailure`, :class:`Result`,
:class:`BackendUnavailable`, :func:`register_backend`, :class:`Backend`, :func:`infer_inputs`. Importing this package does
not import torch or any backend library.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import BackendUnavailable, DeployFailure, SpecError
from .results import Result

#: Public names whose modules load on first use, so that pytest loading the plugin stays cheap.
_LAZY = {"Backend": "backends.base", "backend_names": "backends", "register_backend": "backends",
         "TensorSpec": "spec", "tensor": "spec", "mask": "spec", "MaskSpec": "spec", "InputWarning": "errors",
         "infer_inputs": "infer"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__version__ = "0.1.0"

#: attribute set on a test function decorated with @deployable: it is the model's factory
FACTORY_ATTR = "__pytest_deploy_factory__"


def deployable(backends=None, **kwargs: Any) -> Callable:
    """Decorate a test that returns the model (or ``(model, example_inputs)``).

    One test item is made per backend; each builds the backend's artifact, writes it to disk, loads
    it back, runs it on hypothesis-generated inputs and compares with eager PyTorch. Arguments are
    validated here, so a typo fails at import with the reason.
    """
    import pytest

    from .options import validate_kwargs

    if callable(backends) and not kwargs and not isinstance(backends, (str, list, tuple)):
        raise SpecError("use @deployable(...) with parentheses, e.g. @deployable(backends=['trace'], inputs=[...])")
    kw = validate_kwargs({"backends": backends, **kwargs}, where="@deployable")

    def decorate(fn):
        setattr(fn, FACTORY_ATTR, True)
        fn = pytest.mark.usefixtures("deploy_backend")(fn)
        return pytest.mark.deployable(**kw)(fn)

    return decorate


def verify(model, backend: str = "trace", *, factory=None, seed: int = 0, workdir=None,
           backend_options: dict[str, Any] | None = None, cache_dir=None, isolate: str = "native",
           timeout: float | None = None, keep_artifacts=None, recheck: bool = False, **kwargs: Any) -> Result:
    """Check ``model`` against one backend outside pytest.

    Returns the :class:`Result`; raises :class:`DeployFailure` (with the message a failing test
    shows) when the backend does not reproduce eager PyTorch, and :class:`BackendUnavailable`
    when it cannot run here. Takes the marker's ``inputs``, ``dims``, ``examples``, ``atol``,
    ``rtol``, ``tolerances``, ``train``, ``precision`` (and at int8 ``agreement``, ``calibration``,
    ``calibration_examples``); ``factory`` (a zero-argument callable returning a fresh
    model) is needed by ``state_dict`` and ``checkpoint``. ``cache_dir`` keeps artifacts and passing
    results (a check that passed with the same key is not rerun unless ``recheck``); ``isolate``,
    ``timeout`` and ``keep_artifacts`` are the ``--deploy-isolate``, ``--deploy-timeout`` and
    ``--deploy-keep-artifacts`` options.
    """
    from .cache import ArtifactCache
    from .check import run_check
    from .checkoptions import CheckOptions
    from .options import CALL_KWARGS, validate_kwargs

    kw = validate_kwargs(kwargs, where="verify()", allowed=CALL_KWARGS, declaration=False)
    opts = CheckOptions(**kw, seed=seed, test_id="verify", reproduce=f"verify(..., seed={seed})",
                        backend_options=backend_options or {}, cache=ArtifactCache(cache_dir), isolate=isolate,
                        timeout=timeout, keep_artifacts=keep_artifacts, recheck=recheck)
    return run_check(model, backend, opts, factory=factory, workdir=workdir)


__all__ = [
    "Backend",
    "BackendUnavailable",
    "DeployFailure",
    "InputWarning",
    "MaskSpec",
    "Result",
    "SpecError",
    "TensorSpec",
    "backend_names",
    "deployable",
    "infer_inputs",
    "mask",
    "register_backend",
    "tensor",
    "verify",
]
