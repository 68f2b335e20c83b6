"""Exceptions that carry a user-facing message.

Every message says what failed, where (backend, stage, source line) and what to do about it.
"""

from __future__ import annotations

import contextvars
import os
import sys
import types
import warnings

#: Stages of one check, in the order they run. Failures name one of them, or ``INTERNAL``.
STAGES = ("export", "check", "simplify", "compile", "save", "load", "run", "compare", "branches")
#: The stage of a failure inside pytest-deploy itself (:class:`InternalError`): a bug to report, not a verdict.
INTERNAL = "internal"


class SpecError(ValueError):
    """The model test declared something that cannot work: bad inputs, dims, tolerances, backends."""


class BackendUnavailable(Exception):
    """The backend cannot run on this machine; the message says why and how to fix it."""


class StageError(Exception):
    """A backend stage raised. Carries the stage and a message written for the user."""

    def __init__(self, stage: str, message: str, *, cause: BaseException | None = None, comparison=None):
        super().__init__(message)
        self.stage = stage
        self.message = message
        self.cause = cause
        #: for output mismatches: the failing example's :class:`~pytest_deploy.compare.Comparison`
        self.comparison = comparison

    def __reduce__(self):  # crosses the pipe from a worker process intact (the cause stays behind)
        return (_rebuild_stage_error, (type(self), self.stage, self.message, self.comparison))


class InternalError(Exception):
    """pytest-deploy's own code raised where it should not: a bug in pytest-deploy, never a verdict on the model or
    the backend. ``message`` says so, where and how to report it; ``traceback`` is the exception's full text."""

    def __init__(self, message: str, traceback: str):
        super().__init__(message, traceback)
        self.message = message
        self.traceback = traceback

    def __str__(self) -> str:
        return self.message


class DeployFailure(AssertionError):
    """A backend did not reproduce eager PyTorch. ``str(exc)`` is the message a failing test shows.

    ``result`` is the :class:`pytest_deploy.Result` with outcome ``"failed"``.
    """

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.message = message
        self.result = result

    def __str__(self) -> str:  # AssertionError would otherwise add nothing; keep it explicit
        return self.message

    def __reduce__(self):
        return (type(self), (self.message, self.result))


def _rebuild_stage_error(cls, stage, message, comparison):
    return cls(stage, message, comparison=comparison)


class UnsafeLoadWarning(UserWarning):
    """A saved model loads only with ``torch.load(weights_only=False)``, which can run code from the file."""


class CacheWarning(UserWarning):
    """The shared cache (``--deploy-cache-dir`` on object storage) cannot be used; checks go on with the local one."""


class InputWarning(UserWarning):
    """A declaration or an eager output that makes a check weaker than it looks (a 0/1 tensor where a padding
    mask belongs, outputs no input changes)."""


#: Where a check's warnings point: the model test's ``(file, line)``, set by the plugin around each check. Unset
#: (``verify()``), they point at the first caller outside pytest-deploy.
WARNING_SITE: contextvars.ContextVar[tuple[str, int] | None] = contextvars.ContextVar("deploy_warning_site",
                                                                                     default=None)
_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def warn(warning: Warning) -> None:
    """Issue ``warning`` at the user's code (the model test, or the call into pytest-deploy), never at a line of
    pytest-deploy's own, which a user cannot act on."""
    site = WARNING_SITE.get()
    if site is not None:
        warnings.warn_explicit(warning, type(warning), site[0], site[1])
        return
    level = 2  # the caller of this function
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE + os.sep):
        frame, level = frame.f_back, level + 1
    warnings.warn(warning, stacklevel=level)
