"""One pytest session's deployability checks: :class:`DeploySession` (its settings, cache, work directories and
every check's result) and the model-test ids the plugin's hooks share.

:mod:`pytest_deploy.plugin` holds pytest's hooks and fixtures; they call :meth:`DeploySession.run` for each item,
which resolves the item's :class:`~pytest_deploy.checkoptions.CheckOptions` and runs the check. Loading this module
imports only the standard library, pytest and pytest-deploy's light modules.
"""

from __future__ import annotations

import os
import re
import zlib
from typing import TYPE_CHECKING, Any

import pytest

from .errors import WARNING_SITE, BackendUnavailable, DeployFailure, SpecError
from .options import Settings, check_options, validate_kwargs
from .results import Result

if TYPE_CHECKING:  # imported where the cache is first used, not when the plugin loads
    from .cache import ArtifactCache
    from .modeltest import ModelTest

PARAM = "deploy_backend"
#: report attribute that carries a check's result from an xdist worker to the controller
RESULT_PROPERTY = "pytest_deploy_result"


class DeploySession:
    """State of one pytest session: settings, and the result of every deployability check."""

    def __init__(self, config, settings: Settings):
        self.config = config
        self.settings = settings
        self.results: dict[str, Result] = {}  # nodeid -> Result
        #: lines for the terminal after collection (an empty backend selection explained)
        self.notes: list[str] = []
        self._workroot: str | os.PathLike[str] | None = None
        self._cache: ArtifactCache | None = None
        #: model test id -> what its backends' items share (the model, eager references, the branch search);
        #: dropped after its last item
        self.model_tests: dict[str, ModelTest] = {}
        #: report label -> why it could not be written at the session's end (told in the summary)
        self.write_errors: dict[str, str] = {}

    def model_test(self, item) -> ModelTest:
        """The shared state of the model test ``item`` belongs to (one per model test, in this process)."""
        from .modeltest import ModelTest

        test = row_id(item)
        shared = self.model_tests.get(test)
        if shared is None:
            shared = self.model_tests[test] = ModelTest(test)
        return shared

    @property
    def cache(self):
        """The artifact cache: --deploy-cache-dir, else pytest's cache dir; disabled by --deploy-no-cache."""
        if self._cache is None:
            from .cache import ArtifactCache, is_url

            root, local = None, None
            pytest_cache = getattr(self.config, "cache", None)
            if not self.settings.no_cache:
                root = self.settings.cache_dir
                if (root is None or is_url(root)) and pytest_cache is not None:
                    # pytest's cache dir: the cache itself, or the local read-through copy of a shared one
                    local = str(pytest_cache.mkdir("pytest-deploy"))
                    root = root or local
            self._cache = ArtifactCache(root, local=local, key_env=self.settings.cache_key_env,
                                        readonly=self.settings.cache_readonly)
        return self._cache

    # -- running one check --------------------------------------------------------------------

    def workdir(self, item) -> str:
        if self._workroot is None:
            factory = getattr(self.config, "_tmp_path_factory", None)
            if factory is not None:
                self._workroot = factory.mktemp("deploy", numbered=True)
            else:  # pragma: no cover - tmpdir plugin disabled
                import tempfile

                self._workroot = tempfile.mkdtemp(prefix="pytest-deploy-")
        name = re.sub(r"[^\w.-]+", "_", item.nodeid)[-120:]
        return os.path.join(str(self._workroot), name)

    def seed_for(self, item) -> int:
        """Same examples for every backend of one model test; changes with --deploy-seed."""
        return zlib.crc32(f"{self.settings.seed}:{row_id(item)}".encode()) & 0x7FFFFFFF

    def run(self, item, model, *, factory=None, example_inputs=None, overrides: dict[str, Any] | None = None) -> Result:
        from .check import run_check
        from .zero import REPRODUCE_ATTR

        backend = item.callspec.params[PARAM]
        declared = {**validated_marker(item), **(overrides or {})}
        test = row_id(item)
        reproduce = getattr(getattr(item, "obj", None), REPRODUCE_ATTR, None)
        reproduce = (reproduce.format(backend=backend) if reproduce else f"pytest '{item.nodeid}'") \
            + f" --deploy-seed={self.settings.seed}"
        # pytest.skip/fail are called outside the except clauses, so the report does not show the caught
        # exception again ("During handling of the above exception, another exception occurred").
        path, line = item.reportinfo()[:2]
        site = WARNING_SITE.set((os.fspath(path), (line or 0) + 1))  # warnings point at the model test
        try:
            opts = check_options(self.settings, declared, backend=backend, test_id=test, seed=self.seed_for(item),
                                 where=f"deployable marker on {item.nodeid}", reproduce=reproduce,
                                 source_file=str(item.path), cache=self.cache)
            result = run_check(model, backend, opts, factory=factory, example_inputs=example_inputs,
                               workdir=self.workdir(item), shared=self.model_test(item))
        except DeployFailure as failure:
            self.results[item.nodeid] = failure.result
            raise
        except BackendUnavailable as exc:
            result = Result(test=test, backend=backend, outcome="skipped", message=str(exc))
        except SpecError as exc:
            result = Result(test=test, backend=backend, outcome="failed", message=str(exc))
        finally:
            WARNING_SITE.reset(site)
        self.results[item.nodeid] = result
        if result.outcome == "skipped":
            assert result.message is not None  # only BackendUnavailable skips, and its text is the reason
            if self.settings.strict:
                result.outcome = "failed"
                pytest.fail(f"{result.message} (failing because of --deploy-strict)", pytrace=False)
            pytest.skip(result.message)
        if result.outcome == "failed":
            pytest.fail(f"{backend}: {result.message}", pytrace=False)
        return result

    # -- outcomes ------------------------------------------------------------------------------

    def record_report(self, item, report) -> None:
        """Fold pytest's final outcome (xfail, skips, user assertions) into the item's result."""
        if report.when == "call" or (report.when == "setup" and not report.passed):
            result = self.results.get(item.nodeid)
            if result is None:
                result = Result(test=row_id(item), backend=item.callspec.params[PARAM])
                self.results[item.nodeid] = result
            wasxfail = getattr(report, "wasxfail", None)
            if wasxfail is not None:
                result.outcome = "xfailed" if report.skipped else "xpassed"
                result.details.setdefault("xfail_reason", wasxfail)
            elif report.skipped:
                result.outcome = "skipped"
                if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
                    result.message = result.message or str(report.longrepr[2]).removeprefix("Skipped: ")
            elif report.failed:
                result.outcome = "failed"
                if result.message is None:
                    from .sources import cap

                    text = report.longreprtext.strip()
                    result.message = cap(text.splitlines()[-1], 500) if text else None
            else:
                result.outcome = "passed"

    def merge(self, data: list[dict]) -> None:
        for entry in data:
            entry = dict(entry)
            nodeid = entry.pop("nodeid")
            self.results[nodeid] = Result(**entry)


SESSION_KEY = pytest.StashKey[DeploySession]()


def row_id(item) -> str:
    """The model test's id without the backend: ``tests/test_m.py::test_cnn`` or ``...::test_cnn[small]``."""
    return _without_backend(item.nodeid, item.callspec.params.get(PARAM, ""))


def model_scope(nodeid: str) -> str:
    """The model test a node id belongs to (its id without the backend); other tests are their own scope."""
    backend = backend_from_nodeid(nodeid)
    return _without_backend(nodeid, backend) if backend else nodeid


def _without_backend(nodeid: str, backend: str) -> str:
    for pattern in (f"[{backend}]", f"-{backend}]", f"[{backend}-"):
        if pattern in nodeid:
            return nodeid.replace(pattern, "]" if pattern.startswith("-") else ("[" if pattern.endswith("-") else ""), 1)
    return nodeid


def validated_marker(item_or_definition) -> dict[str, Any]:
    marker = item_or_definition.get_closest_marker("deployable")
    if marker is None:
        return {}
    if marker.args:
        raise SpecError(f"deployable() takes keyword arguments only, got positional {marker.args!r}")
    return validate_kwargs(marker.kwargs, where=f"deployable marker on {item_or_definition.nodeid}")


def backend_from_nodeid(nodeid: str) -> str | None:
    from .names import backend_names

    params = nodeid.rsplit("[", 1)[-1].rstrip("]").split("-") if nodeid.endswith("]") else []
    return next((p for p in params if p in backend_names()), None)
