"""Telling pytest-deploy's own bugs from verdicts: an exception raised in the package's code is reported at stage
``internal`` as a bug to report, never as a verdict on the model or the backend (:func:`internal_error`).

The check and its example loop both ask it, so it sits below them.
"""

from __future__ import annotations

from .compare import UnsupportedOutput
from .errors import BackendUnavailable, DeployFailure, InternalError, SpecError, StageError
from .localize import LocalizationError
from .sources import PACKAGE_DIR, first_line, is_model_code, origin_frame, package_frame, package_path

#: Exceptions pytest-deploy raises on purpose: verdicts, bad declarations, an unavailable backend. Never a bug.
_DELIBERATE = (StageError, DeployFailure, BackendUnavailable, SpecError, InternalError, Warning)
#: Exceptions a stage meets through no fault of pytest-deploy's code, even raised in a frame of it: errors from the
#: compiled functions of torch and the runtimes it calls (RuntimeError, TVM's and torch's), the machine's (OSError,
#: MemoryError), and its own explanations that a stage turns into the verdict's message.
_NOT_A_BUG_IN_A_STAGE = (RuntimeError, OSError, MemoryError, UnsupportedOutput, LocalizationError)


def internal_error(exc: BaseException, *, staged: bool) -> InternalError | None:
    """``exc`` as a pytest-deploy bug, or None when it is not one.

    Inside a stage (``staged``), it is one when pytest-deploy's own code raised it (the innermost frame outside
    the standard library is in the package; ``_NOT_A_BUG_IN_A_STAGE`` excepted); raised in torch, a backend's
    library or the model, it is the backend's verdict. An exception that escaped every stage and handler of the
    check is one unless the model's code raised it. What pytest-deploy raises on purpose never is."""
    if not isinstance(exc, Exception) or isinstance(exc, _DELIBERATE):
        return None
    origin = origin_frame(exc.__traceback__)
    if staged and (origin is None or not origin[0].startswith(PACKAGE_DIR) or isinstance(exc, _NOT_A_BUG_IN_A_STAGE)):
        return None
    if not staged and origin is not None and is_model_code(origin[0]):
        return None
    import traceback

    where = package_frame(exc.__traceback__)
    text = "pytest-deploy failed inside itself: " + first_line(exc)
    if where is not None:
        text += f"\n  at {package_path(where[0])}:{where[1]} in {where[2]}"
    text += ("\n  this is a bug in pytest-deploy, not a verdict on the model or the backend; please report it: open "
             "an issue with this message and the JSON report's details.internal_traceback (--deploy-report=PATH)")
    return InternalError(text, "".join(traceback.format_exception(exc)))
