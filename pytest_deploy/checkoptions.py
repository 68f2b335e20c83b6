"""Everything one check is told, as one frozen object: :class:`CheckOptions`.

The plugin resolves its command-line options, ini keys and a marker's (or ``deploy()``'s) arguments into one
(:func:`pytest_deploy.options.check_options`); ``verify()`` builds one from its keywords; ``run_check`` and the
code below it read what they need from it. Adding a setting is one field here, one line in that resolver (or
``verify()``), and one row in docs/options.md.

Imports only the package's leaf modules: the plugin builds these before torch is imported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import SpecError

#: hypothesis examples per backend when neither the marker, the call nor --deploy-examples says
DEFAULT_EXAMPLES = 20
#: generated examples an int8 check calibrates on when calibration= gives none
DEFAULT_CALIBRATION_EXAMPLES = 16


@dataclass(frozen=True)
class CheckOptions:
    """What one check is told, after precedence (marker or call over command line over ini).

    Two groups: what the model test declares (a marker's, ``deploy()``'s or ``verify()``'s keywords), and how the
    session runs checks (command-line options and ini keys, or ``verify()``'s keywords)."""

    # -- the declaration ---------------------------------------------------------------------------------------
    #: tensor(...)/mask(...) specs, example tensors, a dict of them, or a hypothesis strategy (docs/inputs.md)
    inputs: Any = None
    #: name -> (min, max) for the named dims of ``inputs``
    dims: Any = None
    #: generated examples per backend
    examples: int = DEFAULT_EXAMPLES
    #: tolerances: a number or {backend: number}; {backend: (atol, rtol)}
    atol: Any = None
    rtol: Any = None
    tolerances: Any = None
    #: fp32, fp16, bf16, int8 or int8-dynamic (None: the command line's ``backend_options["precision"]``, else fp32)
    precision: str | None = None
    #: at int8: the agreement gate (pytest_deploy.agreement.parse_agreement's forms; None: by output kind)
    agreement: Any = None
    #: at int8: the calibration inputs (an iterable, or a zero-argument callable yielding them); None: generated
    calibration: Any = None
    #: at int8: how many generated examples calibrate when ``calibration`` is None
    calibration_examples: int = DEFAULT_CALIBRATION_EXAMPLES
    #: at int8: ONNX node names kept in float (quantize_static's ``nodes_to_exclude``); None: none
    int8_exclude: Any = None
    #: at fp16: ONNX node names kept in float32 (onnxconverter-common's ``node_block_list``); None: none
    fp16_block_list: Any = None
    #: the checkpoint backend's training recipe
    train: Any = None
    #: NaN/Inf in eager outputs are intended; compare padded positions too; (near-)zero outputs are intended
    allow_nonfinite: bool = False
    compare_masked: bool = False
    allow_vacuous: bool = False
    #: --deploy-latency's settings: None (off), True, or a dict (pytest_deploy.latency.DEFAULTS' keys)
    latency: Any = None

    # -- how it runs -------------------------------------------------------------------------------------------
    #: seed of the generated examples (the same for every backend of a model test)
    seed: int = 0
    #: the model test's id in reports (``verify`` outside pytest)
    test_id: str = "verify"
    #: how a failure message says to rerun it (default ``seed=N``)
    reproduce: str | None = None
    #: none | native | all: which checks run in a worker process
    isolate: str = "native"
    #: seconds one stage may take, or None
    timeout: float | None = None
    #: the artifact cache (a pytest_deploy.cache.ArtifactCache), or None: nothing cached
    cache: Any = None
    #: run the check even when the same check passed before (artifacts still come from the cache)
    recheck: bool = False
    #: where a failing check leaves its artifact, inputs and repro script
    keep_artifacts: str | os.PathLike[str] | None = None
    #: keep a passing check's work directory
    keep_passing: bool = True
    #: source files the model's construction depends on besides its classes' (the test file)
    source_files: tuple[str, ...] = ()
    #: what backends read as ``ctx.options``: onnx_exporter, onnx_opset, tvm_target, tvm_tune, trt_tf32,
    #: trt_builder, localize_budget, precision (the command line's) ...
    backend_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        examples = self.examples
        if examples is None:
            object.__setattr__(self, "examples", DEFAULT_EXAMPLES)
        elif isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
            raise SpecError(f"examples={examples!r} must be a positive int")
        count = self.calibration_examples
        if count is None:
            object.__setattr__(self, "calibration_examples", DEFAULT_CALIBRATION_EXAMPLES)
        elif isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise SpecError(f"calibration_examples={count!r} must be a positive int")
        timeout = self.timeout
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
            raise SpecError(f"timeout={timeout!r} must be a positive number of seconds")
        object.__setattr__(self, "source_files", tuple(self.source_files))
        object.__setattr__(self, "backend_options", dict(self.backend_options or {}))

    def replace(self, **changes: Any) -> CheckOptions:
        """A copy with ``changes`` (validated again)."""
        return replace(self, **changes)

    @property
    def declared(self) -> dict[str, Any]:
        """The declaration as the result cache's key sees it (pytest_deploy.fingerprint.check_key)."""
        return {"inputs": self.inputs, "dims": self.dims, "examples": self.examples, "seed": self.seed,
                "atol": self.atol, "rtol": self.rtol, "tolerances": self.tolerances,
                "allow_nonfinite": bool(self.allow_nonfinite), "compare_masked": bool(self.compare_masked),
                "allow_vacuous": bool(self.allow_vacuous)}

