"""CheckOptions: what one check is told, and the one function that resolves the plugin's settings into it."""

from __future__ import annotations

import dataclasses

import pytest

from pytest_deploy.checkoptions import DEFAULT_EXAMPLES, CheckOptions
from pytest_deploy.errors import SpecError
from pytest_deploy.options import CALL_KWARGS, Settings, check_options


def settings(**changes) -> Settings:
    base = Settings(backends=None, examples=None, strict=False, report=None, seed=0)
    return dataclasses.replace(base, **changes)


def resolve(session: Settings, declared: dict, backend: str = "trace") -> CheckOptions:
    return check_options(session, declared, backend=backend, test_id="t.py::test_m", where="deployable marker on x",
                         seed=7, reproduce="pytest t.py", source_file="t.py", cache=None)


def test_every_keyword_a_marker_or_call_takes_is_a_field():
    names = {f.name for f in dataclasses.fields(CheckOptions)}
    assert set(CALL_KWARGS) <= names, set(CALL_KWARGS) - names


def test_it_is_frozen_and_replace_validates_again():
    opts = CheckOptions(examples=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.examples = 4  # type: ignore[misc]
    assert opts.replace(examples=5).examples == 5 and opts.examples == 3
    with pytest.raises(SpecError, match=r"examples=0 must be a positive int"):
        opts.replace(examples=0)


@pytest.mark.parametrize(("field", "value", "words"), [
    ("examples", True, "examples=True must be a positive int"),
    ("examples", -2, "examples=-2 must be a positive int"),
    ("timeout", 0, "timeout=0 must be a positive number of seconds"),
    ("timeout", "10", "timeout='10' must be a positive number of seconds"),
])
def test_a_bad_setting_is_refused_where_it_is_made(field, value, words):
    with pytest.raises(SpecError) as info:
        CheckOptions(**{field: value})
    assert words in str(info.value)


def test_the_marker_wins_over_the_command_line_which_wins_over_the_default():
    assert resolve(settings(), {}).examples == DEFAULT_EXAMPLES
    assert resolve(settings(examples=5), {}).examples == 5
    assert resolve(settings(examples=5), {"examples": 3}).examples == 3


def test_the_session_settings_and_the_item_reach_the_check():
    session = settings(isolate="all", timeout=30.0, recheck=True, keep_artifacts="kept", keep_passing=True,
                       backend_options={"onnx_opset": 17})
    opts = resolve(session, {"inputs": ["x"], "atol": 0.1, "train": {"steps": 2}, "xfail": {"trace": "why"},
                             "backends": ["trace"]})
    assert (opts.isolate, opts.timeout, opts.recheck, opts.keep_artifacts, opts.keep_passing) == (
        "all", 30.0, True, "kept", True)
    assert (opts.seed, opts.test_id, opts.reproduce, opts.source_files) == (7, "t.py::test_m", "pytest t.py", ("t.py",))
    assert (opts.inputs, opts.atol, opts.train, opts.backend_options) == (["x"], 0.1, {"steps": 2}, {"onnx_opset": 17})


def test_latency_merges_over_the_session_and_takes_this_checks_baseline():
    from pytest_deploy.latency import DEFAULTS

    session = settings(latency=dict(DEFAULTS), latency_baseline={"t.py::test_m::trace": {"canonical": 2.0}})
    merged = resolve(session, {"latency": {"budget": 0.5}}).latency
    assert merged["budget"] == 0.5 and merged["min_runs"] == DEFAULTS["min_runs"]
    assert resolve(session, {}).latency["baseline"] == {"canonical": 2.0}
    assert resolve(session, {}, backend="export").latency.get("baseline") is None
    assert resolve(session, {"latency": False}).latency is None
    assert resolve(settings(), {}).latency is None
