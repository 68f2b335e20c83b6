"""The pytest plugin's hooks and fixtures: options, marker, one item per backend, the ``deploy`` fixture, reports.
The session's state, and running one item's check, are :mod:`pytest_deploy.session`'s.

Loading this module imports only the standard library, pytest and pytest-deploy's light modules;
torch and the backends are imported when a deployable test runs.
"""

from __future__ import annotations

import inspect
import json
import os
import shlex
from collections.abc import Callable

import pytest

from . import FACTORY_ATTR
from .errors import DeployFailure, SpecError
from .options import CALL_KWARGS, MARKER_DOC, add_options, read_settings, validate_kwargs
from .results import Result
from .session import (
    PARAM,
    RESULT_PROPERTY,
    SESSION_KEY,
    DeploySession,
    backend_from_nodeid,
    model_scope,
    row_id,
    validated_marker,
)

# ------------------------------------------------------------------------------------------ hooks


def pytest_addoption(parser) -> None:
    add_options(parser)


@pytest.hookimpl(trylast=True)
def pytest_configure(config) -> None:
    config.addinivalue_line("markers", MARKER_DOC)
    try:
        settings = read_settings(config)
    except SpecError as exc:
        raise pytest.UsageError(str(exc)) from None
    session = DeploySession(config, settings)
    config.stash[SESSION_KEY] = session
    if config.pluginmanager.hasplugin("xdist") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(_XdistController(session), "pytest-deploy-xdist")


def _dist_chosen(config) -> bool:
    """Whether the user chose pytest-xdist's distribution mode (``--dist``), rather than taking ``-n``'s default."""
    given = [*config.invocation_params.args, *os.environ.get("PYTEST_ADDOPTS", "").split(),
             *(config.getini("addopts") or [])]
    return any(str(arg) == "-d" or str(arg).startswith("--dist") for arg in given)


def pytest_report_header(config) -> str:
    s = config.stash[SESSION_KEY].settings
    backends = ",".join(s.backends) if s.backends else "as declared"
    precision = s.backend_options.get("precision")
    return (f"deploy: backends {backends}, examples {s.examples or 'per marker (default 20)'}, seed {s.seed}"
            + (f", precision {precision}" if precision and precision != "fp32" else ""))


@pytest.hookimpl(trylast=True)
def pytest_generate_tests(metafunc) -> None:
    if metafunc.definition.get_closest_marker("deployable") is None:
        return
    where = metafunc.definition.nodeid
    try:
        kw, error = validated_marker(metafunc.definition), None
    except SpecError as exc:
        kw, error = {}, str(exc)
    if error:  # failed outside the except clause: the message is shown once
        pytest.fail(error, pytrace=False)
    if PARAM not in metafunc.fixturenames:
        pytest.fail(
            f"{where} is marked deployable but neither returns its model through @deployable(...) nor uses the "
            "deploy fixture; decorate it with pytest_deploy.deployable or take `deploy` as an argument",
            pytrace=False,
        )
    from .names import backend_names

    backends = kw.get("backends") or backend_names()
    xfail = kw.get("xfail") or {}
    params = [
        pytest.param(b, id=b, marks=[pytest.mark.xfail(strict=True, reason=xfail[b], raises=DeployFailure)] if b in xfail else [])
        for b in backends
    ]
    metafunc.parametrize(PARAM, params)


def pytest_ignore_collect(collection_path, config) -> bool | None:
    """``--deploy-model`` with no test path on the command line: only the factories' model tests are collected."""
    session = config.stash.get(SESSION_KEY, None)
    if session is not None and session.settings.models_from_command_line and \
            config.args_source != pytest.Config.ArgsSource.ARGS:
        return True
    return None


class FactoryModule(pytest.Module):
    """The model test of one ``--deploy-model`` factory: a module holding the ``@deployable`` test
    :func:`pytest_deploy.zero.model_test` makes. A factory that cannot be imported, called or inferred is a
    collection error naming it and the fix."""

    target: str = ""
    inputs_line: str | None = None

    def _getobj(self):
        import types

        from .zero import model_test, parse_target

        try:
            target = parse_target(self.target)
            reproduce = f"pytest --deploy-model={target.text}"
            if self.inputs_line is not None:
                reproduce += " --deploy-inputs=" + shlex.quote(self.inputs_line)
            test = model_test(target, self.inputs_line, reproduce=reproduce + " --deploy-backends={backend}")
        except SpecError as exc:
            error = str(exc)
        else:
            module = types.ModuleType(f"deploy_model_{target.name}")
            module.__file__ = str(self.path)
            setattr(module, test.__name__, test)
            return module
        raise self.CollectError(error)  # outside the except clause: the message is shown once

    def collect(self):
        self.session._fixturemanager.parsefactories(self)
        return [item for name, fn in vars(self.obj).items() if name.startswith("test_")
                for item in self._genfunctions(name, fn)]


def _collect_models(session, config) -> list:
    """The items of every ``--deploy-model`` / ``deploy_models`` factory (collection errors reported as pytest's)."""
    from pathlib import Path

    from .zero import ensure_path, module_file, parse_target

    settings = config.stash[SESSION_KEY].settings
    ensure_path(config.invocation_params.dir, config.rootpath)
    items: list = []
    for text in settings.models:
        target = parse_target(text)
        path = module_file(target) or str(Path(config.rootpath) / (target.module.replace(".", "/") + ".py"))
        node = FactoryModule.from_parent(session, path=Path(path), nodeid=target.text)
        node.target, node.inputs_line = target.text, settings.inputs_line
        items.extend(session.genitems(node))
    return items


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items) -> None:
    settings = config.stash[SESSION_KEY].settings
    if settings.models:
        items.extend(_collect_models(session, config))
    selected = settings.backends
    if not selected:
        return
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    declared: set[str] = set()
    for item in items:
        backend = getattr(item, "callspec", None) and item.callspec.params.get(PARAM)
        if backend:
            declared.add(backend)
        (drop if backend and backend not in selected else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    missing = [b for b in selected if b not in declared]
    if declared and missing:
        names = ", ".join(missing)
        config.stash[SESSION_KEY].notes.append(
            f"pytest-deploy: no collected test declares {names} (selected by --deploy-backends / deploy_backends); "
            f"the tests declare {', '.join(sorted(declared))}; add {names} to a test's backends=, or omit backends= "
            "to check every backend")


def pytest_report_collectionfinish(config, start_path, items) -> list[str]:
    session = config.stash.get(SESSION_KEY, None)
    return list(session.notes) if session is not None else []


@pytest.fixture
def deploy_backend(request) -> str:
    """The canonical name of the backend this item checks."""
    if not hasattr(request, "param"):
        pytest.fail("deploy_backend is set by the deployable marker; mark the test with @pytest.mark.deployable",
                    pytrace=False)
    return request.param


@pytest.fixture
def deploy(request, deploy_backend):
    """Form 2: ``deploy(model, inputs=..., dims=..., factory=...)`` checks ``model`` against this item's backend
    and returns the :class:`pytest_deploy.Result`; a mismatch fails the test with the check's message."""
    session = request.config.stash[SESSION_KEY]

    def check(model, *, factory=None, example_inputs=None, **kwargs):
        try:
            overrides, error = validate_kwargs(kwargs, where="deploy()", allowed=CALL_KWARGS, declaration=False), None
        except SpecError as exc:
            overrides, error = {}, str(exc)
        if error:  # failed outside the except clause: the message is shown once
            pytest.fail(error, pytrace=False)
        return session.run(request.node, model, factory=factory, example_inputs=example_inputs, overrides=overrides)

    return check


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Form 1: call the decorated test to get the model; it is called again whenever a fresh instance is needed."""
    fn = pyfuncitem.obj
    if not getattr(fn, FACTORY_ATTR, False):
        return None
    if inspect.iscoroutinefunction(fn):
        pytest.fail("@deployable tests must be plain functions returning the model, not coroutines", pytrace=False)
    argnames = getattr(getattr(pyfuncitem, "_fixtureinfo", None), "argnames", None)
    if argnames is None:
        argnames = list(inspect.signature(fn).parameters)
    funcargs = {name: pyfuncitem.funcargs[name] for name in argnames}
    session = pyfuncitem.config.stash[SESSION_KEY]
    seed = session.seed_for(pyfuncitem)

    def factory():
        return fn(**funcargs)

    # one model for every backend of the model test, built under the model test's seed: the same weights in every
    # run and for every backend, also for a model built without a seed. The factory makes fresh instances for the
    # backends that load into one (state_dict, checkpoint); CheckContext.fresh_model seeds those with another seed,
    # as a serving process builds its own
    shared = session.model_test(pyfuncitem)
    if shared.built is None:
        from .context import seeded_call

        returned = seeded_call(factory, seed)
    else:
        returned = shared.built
    model, example_inputs = returned, None
    if isinstance(returned, tuple):
        if len(returned) != 2:
            pytest.fail(
                f"{pyfuncitem.name} returned a tuple of {len(returned)} items; return the model, or (model, example_inputs)",
                pytrace=False,
            )
        model, example_inputs = returned
    if returned is None:
        pytest.fail(f"{pyfuncitem.name} returned None; a @deployable test must return the model "
                    "(or (model, example_inputs))", pytrace=False)
    shared.built = returned
    session.run(pyfuncitem, model, factory=factory, example_inputs=example_inputs)
    return True


def pytest_runtest_teardown(item, nextitem) -> None:
    """After the last item of a model test (the next one belongs to another, or there is none), let go of what its
    backends shared: the model, its eager outputs."""
    session = item.config.stash.get(SESSION_KEY, None)
    callspec = getattr(item, "callspec", None)
    if session is None or callspec is None or PARAM not in callspec.params:
        return
    test = row_id(item)
    following = getattr(nextitem, "callspec", None)
    if following is None or PARAM not in following.params or row_id(nextitem) != test:
        session.model_tests.pop(test, None)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    callspec = getattr(item, "callspec", None)
    if callspec is None or PARAM not in callspec.params:
        return report
    excinfo = call.excinfo
    if report.failed and excinfo is not None and isinstance(excinfo.value, DeployFailure):
        report.longrepr = excinfo.value.message
    if report.skipped and isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        # a skip raised by pytest-deploy (backend unavailable) is reported at the user's test, not in the plugin
        path, line = item.reportinfo()[:2]
        if line is not None and str(report.longrepr[0]).startswith(os.path.dirname(__file__)):
            report.longrepr = (os.fspath(path), line + 1, report.longrepr[2])
    session = item.config.stash[SESSION_KEY]
    bug = session.results.get(item.nodeid)
    if report.when == "call" and bug is not None and bug.stage == "internal" and hasattr(report, "wasxfail"):
        # a declared xfail is for the backend's verdict: a pytest-deploy bug fails the item all the same
        del report.wasxfail
        report.outcome = "failed"
        report.longrepr = f"{bug.message}\n  (the xfail declared for this test does not cover a bug in pytest-deploy)"
    session.record_report(item, report)
    result = session.results.get(item.nodeid)
    if result is not None and report.when in ("setup", "call"):
        _junit_properties(item, result)
    if result is not None and hasattr(item.config, "workerinput"):
        # xdist: the result travels with the report, so the controller has it even if this worker dies later
        # (pytest serialises a report's extra attributes for xdist and restores them on the controller)
        setattr(report, RESULT_PROPERTY, json.loads(json.dumps(result.to_json(), default=str)))
    return report


#: junit XML properties of every deployable item (pytest's junitxml writes an item's user_properties)
JUNIT_PROPERTIES = ("deploy_backend", "deploy_outcome", "deploy_stage", "deploy_max_abs_error", "deploy_atol",
                    "deploy_rtol")


def _junit_properties(item, result: Result) -> None:
    values = {"deploy_backend": result.backend, "deploy_outcome": result.outcome, "deploy_stage": result.stage or "",
              "deploy_max_abs_error": "" if result.max_abs_error is None else repr(result.max_abs_error),
              "deploy_atol": "" if result.atol is None else repr(result.atol),
              "deploy_rtol": "" if result.rtol is None else repr(result.rtol)}
    latency = result.latency or {}
    if latency.get("p50_ms") is not None:  # --deploy-latency: the canonical example's figures
        values["deploy_latency_p50_ms"] = repr(round(latency["p50_ms"], 6))
        values["deploy_speedup"] = "" if latency.get("speedup") is None else repr(round(latency["speedup"], 4))
    item.user_properties[:] = [p for p in item.user_properties if p[0] not in values] + list(values.items())


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is None or not session.results:
        return
    from .report import summary_lines

    terminalreporter.write_sep("=", "pytest-deploy summary")
    width = config.get_terminal_writer().fullwidth  # COLUMNS when set, else the terminal's width
    for line in summary_lines(list(session.results.values()), width=width):
        terminalreporter.write_line(line)
    for label, path in (("JSON report", session.settings.report), ("Markdown summary", session.settings.markdown),
                        ("HTML report", session.settings.html), ("latency baseline", session.settings.latency_save)):
        if path and label in session.write_errors:
            terminalreporter.write_line(f"pytest-deploy: {session.write_errors[label]}", red=True)
        elif path:
            terminalreporter.write_line(f"{label}: {path}")
    if "GitHub step summary" in session.write_errors:
        terminalreporter.write_line(f"pytest-deploy: {session.write_errors['GitHub step summary']}", red=True)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus) -> None:
    config = session.config
    deploy = config.stash.get(SESSION_KEY, None)
    if deploy is None:
        return
    if hasattr(config, "workerinput"):  # xdist worker: results went to the controller with each report
        return
    if not deploy.results:
        return
    from .report import report_dict, write_json, write_markdown

    results = list(deploy.results.values())
    settings = deploy.settings
    interrupted = exitstatus == 2

    def write(label: str, path: str, writer: Callable[[], None]) -> None:
        """A report that cannot be written is told in the summary and fails the run; the others are still written."""
        try:
            writer()
        except OSError as exc:
            deploy.write_errors[label] = f"could not write the {label} to {path}: {exc.strerror or exc}"
            if session.exitstatus == 0:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED

    if settings.report:
        write("JSON report", settings.report, lambda: write_json(settings.report, results, interrupted=interrupted))
    if settings.markdown:
        write("Markdown summary", settings.markdown, lambda: write_markdown(settings.markdown, results))
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary and settings.step_summary:
        write("GitHub step summary", step_summary, lambda: write_markdown(step_summary, results, append=True))
    if settings.latency_save:
        from .latency import write_baseline

        write("latency baseline", settings.latency_save, lambda: write_baseline(settings.latency_save, results))
    if settings.html:
        from .report_html import write_html

        def html() -> None:
            data = report_dict(results, interrupted=interrupted)
            write_html(settings.html, data["results"], data["environment"])

        write("HTML report", settings.html, html)


class _XdistController:
    """Registered on the xdist controller only: collect the results that workers attach to their reports,
    and record a check whose worker died as failed."""

    def __init__(self, session: DeploySession):
        self.session = session

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config, log):
        """``-n N`` alone sends items to workers one by one (``--dist load``); instead, every backend of one model
        test goes to the same worker, which builds the model and exports it once for all of them. (The scope of
        ``--dist loadscope``, one model test, rather than one module.) An explicit ``--dist`` is left alone."""
        if config.getvalue("dist") != "load" or _dist_chosen(config):
            return None
        from xdist.scheduler import LoadScopeScheduling

        class ModelScheduling(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                return model_scope(nodeid)

            def remove_node(self, node):
                """A crashed worker's unfinished model test goes to another worker, without the item that
                crashed (loadscope would run it again, and crash the next worker too)."""
                crashed = None
                for unit in self.assigned_work.get(node, {}).values():
                    crashed = next((nodeid for nodeid, done in unit.items() if not done), None)
                    if crashed is not None:
                        unit[crashed] = True
                        break
                super().remove_node(node)
                return crashed

        return ModelScheduling(config, log)

    def pytest_runtest_logreport(self, report) -> None:
        value = getattr(report, RESULT_PROPERTY, None)
        if value:
            self.session.merge([{"nodeid": report.nodeid, **value}])
        if report.failed and report.when == "???" and report.nodeid not in self.session.results:
            # xdist's report for the item a crashed worker was running ("worker 'gw0' crashed while running")
            backend = backend_from_nodeid(report.nodeid)
            if backend is not None:
                self.session.results[report.nodeid] = Result(
                    test=report.nodeid, backend=backend, outcome="failed", stage=None,
                    message=f"{backend}: the pytest-xdist worker running this check died "
                            "(run with --deploy-isolate=all to fail only the check that crashes)")
