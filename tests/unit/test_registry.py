"""Unit tests for the backend registry: canonical names, aliases, parse_backends, register_backend."""

from __future__ import annotations

import pytest

import pytest_deploy
from pytest_deploy import backends as registry
from pytest_deploy.backends import (
    Backend,
    backend_names,
    canonical_name,
    get_backend,
    parse_backends,
    register_backend,
)
from pytest_deploy.backends.base import first_line
from pytest_deploy.errors import SpecError
from pytest_deploy.sources import short_path

BUILTINS = ["state_dict", "pickle", "checkpoint", "trace", "script", "export"]


@pytest.fixture
def clean_registry():
    """Registrations made by a test are removed afterwards, whatever happens."""
    from pytest_deploy import names

    tables = (registry._REGISTRY, registry._PENDING, names._NAMES, names._ALIASES)
    saved = [dict(t) for t in tables]
    yield
    for table, copy in zip(tables, saved):
        table.clear()
        table.update(copy)


class EchoBackend(Backend):
    name = "echo_backend"
    aliases = ("echo", "Echo-Test")
    description = "returns the model itself"

    def build(self, ctx):
        return lambda args: ctx.model(*args)


# ---------------------------------------------------------------------------- canonical_name


def test_builtins_are_registered_in_order():
    names = backend_names()
    assert names[: len(BUILTINS)] == BUILTINS


@pytest.mark.parametrize(
    "alias, name",
    [
        ("trace", "trace"),
        ("torchscript-trace", "trace"),
        ("TorchScript-Trace", "trace"),
        (" SCRIPT ", "script"),
        ("torchscript-script", "script"),
        ("torch.export", "export"),
        ("Torch.Export", "export"),
        ("State_Dict", "state_dict"),
    ],
)
def test_canonical_name_aliases_case_insensitive(alias, name):
    assert canonical_name(alias) == name


@pytest.mark.parametrize("name, alias", [(n, a) for n in backend_names() for a in get_backend(n).aliases])
def test_every_registered_alias_resolves(name, alias):
    assert canonical_name(alias) == name
    assert canonical_name(alias.upper()) == name
    assert get_backend(alias) is get_backend(name)


def test_unknown_name_lists_known_names():
    with pytest.raises(SpecError) as info:
        canonical_name("torchscript")
    msg = str(info.value)
    assert msg.startswith("unknown backend 'torchscript' (did you mean 'trace'?); known backends: ")
    for name in backend_names():
        assert name in msg
    assert "trace [torchscript-trace]" in msg
    assert msg.endswith(", all")


def test_non_string_name():
    with pytest.raises(SpecError, match="backend 3 must be a string; known backends: state_dict"):
        canonical_name(3)


# ---------------------------------------------------------------------------- parse_backends


def test_parse_backends_none_means_no_restriction():
    assert parse_backends(None, where="w") is None


def test_parse_backends_all():
    assert parse_backends("all", where="w") == backend_names()
    assert parse_backends(["ALL"], where="w") == backend_names()


def test_parse_backends_all_keeps_names_given_first():
    out = parse_backends("export, all", where="w")
    assert out[0] == "export"
    assert sorted(out) == sorted(backend_names())


def test_parse_backends_canonical_and_deduplicated_in_order():
    assert parse_backends("script,torchscript-trace, trace,TRACE,script", where="w") == ["script", "trace"]
    assert parse_backends(["torch.export", "export", "state_dict"], where="w") == ["export", "state_dict"]
    assert parse_backends("trace,", where="w") == ["trace"]  # a trailing comma is harmless


@pytest.mark.parametrize("empty", ["", " , ", [], [" ", ""]])
def test_parse_backends_empty_list(empty):
    with pytest.raises(SpecError) as info:
        parse_backends(empty, where="--deploy-backends")
    msg = str(info.value)
    assert msg.startswith("--deploy-backends: empty backend list; name at least one of: ")
    assert "trace" in msg


def test_parse_backends_unknown_names_the_source():
    with pytest.raises(SpecError) as info:
        parse_backends("trace,onnxx", where="--deploy-backends")
    assert str(info.value).startswith("--deploy-backends: unknown backend 'onnxx' (did you mean 'onnx'?); known backends: ")


def test_an_unknown_name_far_from_every_known_one_gets_no_guess():
    with pytest.raises(SpecError) as info:
        canonical_name("coreml")
    assert str(info.value).startswith("unknown backend 'coreml'; known backends: ")


def test_the_backends_option_help_lists_every_builtin_backend_and_alias():
    from pytest_deploy.names import BUILTINS
    from pytest_deploy.options import HELP_BACKENDS

    for _, _, name, aliases in BUILTINS:
        for word in (name, *aliases):
            assert word in HELP_BACKENDS


# -------------------------------------------------------------------------- register_backend


def test_register_backend_class(clean_registry):
    backend = register_backend(EchoBackend)
    assert isinstance(backend, EchoBackend)
    assert backend_names()[-1] == "echo_backend"
    assert get_backend("echo_backend") is backend
    assert canonical_name("ECHO") == "echo_backend"
    assert canonical_name("echo-test") == "echo_backend"
    assert "echo_backend [echo, Echo-Test]" in registry.known_names_text()
    assert parse_backends("all", where="w")[-1] == "echo_backend"


def test_register_backend_instance_via_public_api(clean_registry):
    instance = EchoBackend()
    assert pytest_deploy.register_backend(instance) is instance
    assert "echo_backend" in pytest_deploy.backend_names()


def test_registration_is_removed_by_the_fixture():
    assert "echo_backend" not in backend_names()
    with pytest.raises(SpecError):
        canonical_name("echo")


def test_register_duplicate_refused_without_replace(clean_registry):
    first = register_backend(EchoBackend)
    with pytest.raises(ValueError) as info:
        register_backend(EchoBackend)
    assert "already registered; pass replace=True to override" in str(info.value)
    assert "echo_backend" in str(info.value)
    assert get_backend("echo") is first
    second = register_backend(EchoBackend, replace=True)
    assert second is not first
    assert get_backend("echo") is second
    assert backend_names().count("echo_backend") == 1


def test_register_alias_clashing_with_builtin_refused(clean_registry):
    class Clash(Backend):
        name = "clash"
        aliases = ("TRT_CLASH", "Torchscript-Trace")

    with pytest.raises(ValueError, match=r"\['Torchscript-Trace'\] already registered"):
        register_backend(Clash)
    assert "clash" not in backend_names()
    assert canonical_name("torchscript-trace") == "trace"


@pytest.mark.parametrize("name", ["", "my-backend", "a b", "x.y"])
def test_register_bad_name(clean_registry, name):
    bad = type("Bad", (Backend,), {"name": name})
    with pytest.raises(ValueError, match="must be alphanumeric"):
        register_backend(bad)
    assert name not in backend_names()


def test_unavailable_reason_names_the_missing_module_and_the_fix():
    class NeedsExtra(Backend):
        name = "needs_extra"
        requires = ("json", "pytest_deploy_no_such_module")
        extra = "fancy"

    class NeedsModule(Backend):
        name = "needs_module"
        requires = ("pytest_deploy_no_such_module",)

    assert NeedsExtra().unavailable_reason() == (
        "needs_extra: pytest_deploy_no_such_module not installed; pip install 'pytest-deploy[fancy]'"
    )
    assert NeedsModule().unavailable_reason().endswith("; pip install pytest_deploy_no_such_module")
    assert EchoBackend().unavailable_reason() is None


def test_builtin_backends_run_here():
    for name in BUILTINS:
        assert get_backend(name).unavailable_reason() is None, name


def test_first_line_of_an_exception():
    assert first_line(ValueError("\n\n  bad thing  \nmore")) == "ValueError: bad thing"
    assert first_line(KeyError()) == "KeyError"
    assert first_line(RuntimeError("x" * 500), limit=20) == "RuntimeError: \u2026 (501 more characters)"  # no word cut


def test_long_messages_are_cut_at_a_sentence_end_and_say_so():
    text = ("CodeGenVM cannot emit this Relax operator directly. Run the appropriate lowering pass, or route the "
            "operator to an external codegen. However, the given input has a very long description " + "x" * 300)
    out = first_line(RuntimeError(text), limit=150)
    kept = ("RuntimeError: CodeGenVM cannot emit this Relax operator directly. Run the appropriate lowering pass, "
            "or route the operator to an external codegen.")
    assert out == f"{kept} \u2026 ({len('RuntimeError: ' + text) - len(kept)} more characters)"
    assert "However, the given in" not in out


def test_a_cut_never_ends_mid_sentence():
    """A first sentence longer than the limit is kept whole (not cut at a comma, as a TorchScript load failure
    was); a very long one is cut at a word and marked; every cut says how much was left out (issue 22 item 5)."""
    from pytest_deploy.sources import cap

    sentence = ("Unknown type name 'einops.Rearrange' in the archive, which names a class the loading process has "
                "not imported, so the module cannot be rebuilt from code/__torch__/model.py, line 12, column 4, "
                "while resolving the attribute 'rearrange' of the submodule 'blocks.0.attn', found in the archive "
                "model.pt, saved by torch 2.13.")
    text = sentence + " Import the module that defines it before loading. " + "More detail follows here. " * 20
    out = cap(text, 300)
    assert len(sentence) > 300 and out.startswith(sentence) and not out.startswith(sentence + " Import")
    assert out.endswith(f"\u2026 ({len(text) - len(sentence)} more characters)")
    # sentence ends before the limit: cut after the last one
    short = "First sentence is here. " * 5 + "A last one that runs past the limit, " * 10
    out = cap(short, 200)
    assert out.split(" \u2026 (")[0] == ("First sentence is here. " * 5).strip()
    # a line end is a sentence end
    assert cap("line one without a stop\n" + "y " * 200, 100).startswith("line one without a stop \u2026 (")
    # one very long sentence: cut at a word end, marked
    words = "word " * 200
    out = cap(words.strip(), 100)
    assert out.split(" \u2026 (")[0].endswith("word") and "more characters)" in out
    assert cap("short enough.", 100) == "short enough."


def test_a_torchscript_interpreter_error_is_named_by_its_cause_and_the_models_line():
    from pytest_deploy.sources import describe_exception, torchscript_error

    here = __file__
    text = ("The following operation failed in the TorchScript interpreter.\n"
            "Traceback of TorchScript, original code (most recent call last):\n"
            f"{here}(3): forward\n/usr/lib/python3/site-packages/torch/nn/modules/module.py(1768): _slow_forward\n"
            "RuntimeError: shape '[2, 3, 1]' is invalid for input of size 3\n")
    exc = RuntimeError(text)
    assert first_line(exc) == "RuntimeError: shape '[2, 3, 1]' is invalid for input of size 3 (in the TorchScript interpreter)"
    assert describe_exception(exc).splitlines()[1].startswith(f"  at {short_path(here)}:3  ")
    assert torchscript_error(exc) == text.strip()
    assert torchscript_error(ValueError("The shape is wrong")) is None
    # a scripted module's traceback: innermost frame last; the serialized code is no file of the user's
    scripted = ("The following operation failed in the TorchScript interpreter.\n"
                'Traceback of TorchScript, serialized code (most recent call last):\n  File "code/__torch__.py", line 8\n'
                f'Traceback of TorchScript, original code:\n  File "{here}", line 2, in forward\n    def forward(x):\n'
                f'  File "{here}", line 5, in inner\n    return x.view(2)\n'
                "RuntimeError: shape '[2]' is invalid for input of size 3\n")
    assert describe_exception(RuntimeError(scripted)).splitlines()[1].startswith(f"  at {short_path(here)}:5  ")


def test_the_builtin_table_matches_each_backend_class():
    import importlib

    for module, cls, name, aliases in registry.BUILTINS:
        backend = getattr(importlib.import_module(f"pytest_deploy.backends.{module}"), cls)
        assert (backend.name, tuple(backend.aliases)) == (name, aliases)
    assert registry.backend_names()[: len(registry.BUILTINS)] == [row[2] for row in registry.BUILTINS]


def test_frame_from_stack_reads_the_failing_nodes_own_traceback():
    """torch.onnx's decomposition errors carry the failing node's traceback after ``Original traceback:``; other
    tracebacks printed further down (the exporter's own) must not win."""
    from pytest_deploy.sources import frame_from_stack

    here = __file__
    text = (f"<class 'ValueError'>: Cannot view a tensor\n\nWhile executing %view_4 : [num_users=1]\n"
            f"Original traceback:\nFile \"{here}\", line 10, in forward\n    encoder_outputs = self.encoder(\n"
            f"  File \"{here}\", line 20, in forward\n    attn_output = attn_output.reshape(-1)\n"
            f"Use tlparse to see full graph.\n\nFile \"{here}\", line 30, in forward\n    other = 1\n")
    file, line, _ = frame_from_stack(text)
    assert (file, line) == (here, 20)
    assert frame_from_stack(f"File \"{here}\", line 3, in f\n    a\n  File \"{here}\", line 4, in g\n    b\n")[1] == 4
