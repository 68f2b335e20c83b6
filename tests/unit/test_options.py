"""Unit tests for pytest_deploy.options: option parsing, marker keyword validation, settings precedence."""

from __future__ import annotations

import argparse

import pytest

from pytest_deploy.errors import SpecError
from pytest_deploy.options import (
    CALL_KWARGS,
    MARKER_KWARGS,
    Settings,
    positive_int,
    read_settings,
    seed_value,
    validate_kwargs,
)

# ---------------------------------------------------------------------------- positive_int


@pytest.mark.parametrize("text, value", [("1", 1), ("20", 20), (" 7 ", 7)])
def test_positive_int_accepts(text, value):
    assert positive_int(text) == value


@pytest.mark.parametrize("text, words", [("0", "0 must be at least 1"), ("-3", "-3 must be at least 1"),
                                         ("x", "'x' is not an integer"), ("2.5", "'2.5' is not an integer")])
def test_positive_int_rejects(text, words):
    with pytest.raises(argparse.ArgumentTypeError, match=words):
        positive_int(text)


# ------------------------------------------------------------------------------ seed_value


@pytest.mark.parametrize("text, value", [("0", 0), ("42", 42), ("2147483648", 2**31)])
def test_seed_value_accepts_ints(text, value):
    assert seed_value(text) == value


@pytest.mark.parametrize("text", ["random", "RANDOM", " Random "])
def test_seed_value_random(text):
    seeds = {seed_value(text) for _ in range(5)}
    assert all(isinstance(s, int) and 0 <= s < 2**31 for s in seeds)
    assert len(seeds) > 1  # five equal draws out of 2**31 would be a broken generator


@pytest.mark.parametrize("text, words", [("-1", "-1 must be >= 0"), ("abc", "'abc' is not an integer or 'random'")])
def test_seed_value_rejects(text, words):
    with pytest.raises(argparse.ArgumentTypeError, match=words):
        seed_value(text)


# --------------------------------------------------------------------------- validate_kwargs


def test_validate_kwargs_unknown_names_them_and_lists_known():
    with pytest.raises(SpecError) as info:
        validate_kwargs({"example": 3, "backend": "trace", "dims": None}, where="@deployable")
    msg = str(info.value)
    assert msg.startswith("@deployable: unknown argument(s) backend, example; known: ")
    for name in MARKER_KWARGS:
        assert name in msg.split("known: ")[1]


def test_validate_kwargs_call_form_refuses_marker_only_arguments():
    with pytest.raises(SpecError, match=r"verify\(\): unknown argument\(s\) backends, xfail"):
        validate_kwargs({"backends": ["trace"], "xfail": {}}, where="verify()", allowed=CALL_KWARGS)
    assert validate_kwargs({"examples": 3}, where="verify()", allowed=CALL_KWARGS) == {"examples": 3}


def test_validate_kwargs_passes_everything_through_and_does_not_mutate():
    kwargs = {"backends": ["torchscript-trace", "Script", "trace"], "examples": 5, "atol": 1e-3,
              "dims": {"batch": (1, 4)}}
    out = validate_kwargs(kwargs, where="w")
    assert out == {"backends": ["trace", "script"], "examples": 5, "atol": 1e-3, "dims": {"batch": (1, 4)}}
    assert kwargs["backends"] == ["torchscript-trace", "Script", "trace"]


def test_validate_kwargs_backends_none_means_all():
    assert validate_kwargs({"backends": None}, where="w") == {"backends": None}


def test_validate_kwargs_backends_string():
    assert validate_kwargs({"backends": "trace, export"}, where="w")["backends"] == ["trace", "export"]


@pytest.mark.parametrize("empty", [[], ()])
def test_validate_kwargs_empty_backends(empty):
    with pytest.raises(SpecError, match=r"w: backends=\[\] names no backend; list at least one, or omit it"):
        validate_kwargs({"backends": empty}, where="w")


def test_validate_kwargs_empty_backends_string():
    with pytest.raises(SpecError, match="empty backend list"):
        validate_kwargs({"backends": " "}, where="w")


def test_validate_kwargs_unknown_backend():
    with pytest.raises(SpecError) as info:
        validate_kwargs({"backends": ["trace", "tracer"]}, where="@deployable")
    assert "@deployable backends=" in str(info.value)
    assert "unknown backend 'tracer'" in str(info.value)


def test_xfail_is_normalised_to_canonical_names():
    out = validate_kwargs(
        {"backends": ["trace", "export"], "xfail": {"TorchScript-Trace": "data-dependent branch", "torch.export": "x"}},
        where="w",
    )
    assert out["xfail"] == {"trace": "data-dependent branch", "export": "x"}


def test_xfail_without_backends_is_allowed():
    assert validate_kwargs({"xfail": {"script": "why"}}, where="w")["xfail"] == {"script": "why"}


def test_xfail_naming_a_backend_not_in_backends():
    with pytest.raises(SpecError, match=r"w: xfail names \['trace'\] which backends= does not list"):
        validate_kwargs({"backends": ["export"], "xfail": {"torchscript-trace": "reason"}}, where="w")


@pytest.mark.parametrize(
    "xfail, words",
    [
        (["trace"], "must be a dict {backend: reason}"),
        ({"trace": ""}, "xfail['trace'] must be a non-empty reason string"),
        ({"trace": None}, "must be a non-empty reason string"),
        ({"nope": "reason"}, "unknown backend 'nope'"),
        ({"all": "reason"}, "must name one backend"),
    ],
)
def test_bad_xfail(xfail, words):
    with pytest.raises(SpecError) as info:
        validate_kwargs({"xfail": xfail}, where="w")
    assert words in str(info.value)


@pytest.mark.parametrize("examples", [0, -1, True, 2.5, "3"])
def test_bad_examples(examples):
    with pytest.raises(SpecError, match=rf"w: examples={examples!r} must be a positive int"):
        validate_kwargs({"examples": examples}, where="w")


def test_dims_are_validated():
    with pytest.raises(SpecError, match="min > max"):
        validate_kwargs({"dims": {"batch": (4, 1)}}, where="w")


# ----------------------------------------------------------------------------- read_settings


class FakeConfig:
    def __init__(self, options=None, ini=None):
        self.options = {"deploy_backends": None, "deploy_examples": None, "deploy_strict": None,
                        "deploy_report": None, "deploy_seed": None, **(options or {})}
        self.ini = {"deploy_backends": None, "deploy_examples": None, "deploy_strict": False,
                    "deploy_report": None, **(ini or {})}

    def getoption(self, name):
        return self.options.get(name)  # options not given default to None, as in pytest

    def getini(self, name):
        return self.ini.get(name)  # ini keys not set default to None


def test_read_settings_defaults():
    assert read_settings(FakeConfig()) == Settings(backends=None, examples=None, strict=False, report=None, seed=0)


def test_read_settings_command_line_wins_over_ini():
    config = FakeConfig(
        options={"deploy_backends": "torchscript-trace", "deploy_examples": 3, "deploy_report": "a.json",
                 "deploy_seed": 9},
        ini={"deploy_backends": "export", "deploy_examples": "7", "deploy_strict": True, "deploy_report": "b.json"},
    )
    assert read_settings(config) == Settings(backends=("trace",), examples=3, strict=True, report="a.json", seed=9)


def test_read_settings_collects_backend_options():
    settings = read_settings(FakeConfig(options={"deploy_onnx_exporter": "torchscript", "deploy_onnx_opset": 18}))
    assert settings.backend_options == {"onnx_exporter": "torchscript", "onnx_opset": 18}
    assert read_settings(FakeConfig()).backend_options == {}


def test_read_settings_from_ini():
    config = FakeConfig(ini={"deploy_backends": "all", "deploy_examples": " 7 ", "deploy_report": "b.json"})
    settings = read_settings(config)
    assert settings.examples == 7 and settings.report == "b.json"
    assert "trace" in settings.backends and "state_dict" in settings.backends


def test_read_settings_bad_ini_examples_names_the_ini_key():
    with pytest.raises(SpecError, match="ini deploy_examples: 'zero' is not an integer"):
        read_settings(FakeConfig(ini={"deploy_examples": "zero"}))


def test_read_settings_unknown_backend_names_the_source():
    with pytest.raises(SpecError, match="--deploy-backends: unknown backend 'bogus'"):
        read_settings(FakeConfig(options={"deploy_backends": "trace,bogus"}))
    with pytest.raises(SpecError, match="ini deploy_backends: unknown backend 'bogus'"):
        read_settings(FakeConfig(ini={"deploy_backends": "bogus"}))


def test_read_settings_cache_key_env_and_readonly_command_line_over_ini():
    settings = read_settings(FakeConfig(ini={"deploy_cache_key_env": "CI_CACHE_KEY", "deploy_cache_readonly": True}))
    assert settings.cache_key_env == "CI_CACHE_KEY" and settings.cache_readonly is True
    settings = read_settings(FakeConfig(options={"deploy_cache_key_env": "OTHER", "deploy_cache_readonly": True},
                                        ini={"deploy_cache_key_env": "CI_CACHE_KEY"}))
    assert settings.cache_key_env == "OTHER" and settings.cache_readonly is True
    settings = read_settings(FakeConfig())
    assert settings.cache_key_env is None and settings.cache_readonly is False


@pytest.mark.parametrize("where", ["option", "ini"])
def test_a_cache_key_env_that_is_not_a_variable_name_is_refused_without_echoing_it(where):
    config = FakeConfig(options={"deploy_cache_key_env": "s3cret value"} if where == "option" else {},
                        ini={"deploy_cache_key_env": "s3cret value"} if where == "ini" else {})
    name = "--deploy-cache-key-env" if where == "option" else "ini deploy_cache_key_env"
    with pytest.raises(SpecError, match=f"{name} is not the name of an environment variable") as info:
        read_settings(config)
    assert "s3cret" not in str(info.value)
