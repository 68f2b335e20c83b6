"""Zero code: ``pytest --deploy-model=MODULE:FACTORY`` (inferred or one-line inputs), ``pytest-deploy init`` and
``pytest-deploy check``; the factory errors end in a message naming the factory and the fix, never INTERNALERROR."""

from __future__ import annotations

import json
import textwrap

import pytest

pytest.importorskip("torch")

pytest_plugins = ["pytester"]

MODELS = textwrap.dedent('''
    import torch
    from torch import nn


    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.conv(x).mean((2, 3)))


    class Branchy(nn.Module):
        """Takes a data-dependent branch: trace freezes it."""

        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            h = self.lin(x)
            if h.sum() > 0:
                return h * 2
            return h - 1


    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x, y):
            return self.lin(x) + y


    def cnn():
        return CNN()


    def pair():
        return Pair()


    def branchy():
        torch.manual_seed(0)
        return Branchy()


    def number():
        return 3


    def broken():
        raise RuntimeError("weights file missing")
''')


@pytest.fixture
def models(pytester):
    pytester.makepyfile(zoo_models=MODELS)
    pytester.syspathinsert()
    return pytester


def _results(pytester, path="report.json"):
    data = json.loads((pytester.path / path).read_text())
    return {(r["test"], r["backend"]): r["outcome"] for r in data["results"]}


def test_deploy_model_collects_one_item_per_backend_with_inferred_inputs(models):
    result = models.runpytest("--deploy-model=zoo_models:cnn", "--deploy-backends=trace,export",
                              "--deploy-examples=2", "--deploy-report=report.json", "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*zoo_models:cnn::test_cnn?trace? PASSED*", "*zoo_models:cnn::test_cnn?export? PASSED*"])
    assert _results(models) == {("zoo_models:cnn::test_cnn", "trace"): "passed",
                                ("zoo_models:cnn::test_cnn", "export"): "passed"}
    assert "pytest-deploy summary" in result.stdout.str()


def test_with_no_test_path_only_the_models_are_collected_and_with_a_path_both(models):
    models.makepyfile(test_other="def test_other():\n    pass\n")
    only = models.runpytest("--deploy-model=zoo_models:cnn", "--deploy-backends=trace", "--deploy-examples=2")
    only.assert_outcomes(passed=1)
    both = models.runpytest("--deploy-model=zoo_models:cnn", "--deploy-backends=trace", "--deploy-examples=2",
                            "test_other.py")
    both.assert_outcomes(passed=2)


def test_ini_deploy_models_adds_the_models_to_the_collected_tests(models):
    models.makeini("[pytest]\ndeploy_models =\n    zoo_models:cnn\n")
    models.makepyfile(test_other="def test_other():\n    pass\n")
    result = models.runpytest("--deploy-backends=trace", "--deploy-examples=2")
    result.assert_outcomes(passed=2)


def test_a_failing_check_has_the_same_verdict_and_a_command_that_reruns_it(models):
    result = models.runpytest("--deploy-model=zoo_models:branchy", "--deploy-backends=trace,script",
                              "--deploy-examples=3")
    result.assert_outcomes(passed=1, failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    assert "trace-lost branch" in out
    assert "reproduce: pytest --deploy-model=zoo_models:branchy --deploy-backends=trace --deploy-seed=0" in out


def test_deploy_inputs_overrides_inference(models):
    line = "x: float32[batch, 4] in [-1, 1]; y: float32[batch, 4]; batch=1..3"
    result = models.runpytest("--deploy-model=zoo_models:pair", f"--deploy-inputs={line}", "--deploy-backends=trace",
                              "--deploy-examples=2")
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize("target, says", [
    ("zoo_models:pair", ["*zoo_models:pair*cannot infer input 'y' of Pair.forward*--deploy-inputs='x: float32[[]batch, 4[]] "
                         "in [[]-1, 1[]]; y: DTYPE*"]),
    ("no_such_module:f", ["*--deploy-model=no_such_module:f: cannot import no_such_module: ModuleNotFoundError*"
                          "make it importable*"]),
    ("zoo_models:nothing", ["*zoo_models has no 'nothing'; name one of its callables: *broken, cnn*"]),
    ("zoo_models:number", ["*number() returned int, not a torch.nn.Module; the factory must return the model*"]),
    ("zoo_models:broken", ["*calling broken() raised RuntimeError: weights file missing*"]),
])
def test_a_bad_factory_is_a_collection_error_naming_it_and_the_fix(models, target, says):
    result = models.runpytest(f"--deploy-model={target}", "--deploy-backends=trace")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(says)
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    assert "Traceback" not in result.stdout.str()


def test_a_bad_factory_does_not_stop_the_others_with_continue_on_collection_errors(models):
    result = models.runpytest("--deploy-model=zoo_models:number", "--deploy-model=zoo_models:cnn",
                              "--deploy-backends=trace", "--deploy-examples=2", "--continue-on-collection-errors")
    result.assert_outcomes(passed=1, errors=1)


@pytest.mark.parametrize("args, says", [
    (["--deploy-model=zoo_models.cnn"], "--deploy-model=zoo_models.cnn: not MODULE:FACTORY"),
    (["--deploy-model=zoo_models:cnn", "--deploy-inputs=x: float32[batch]"], "--deploy-inputs: dim 'batch'"),
    (["--deploy-inputs=x: float32[2]"], "none is given; add --deploy-model"),
])
def test_bad_options_are_usage_errors(models, args, says):
    result = models.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert says in result.stderr.str()


# ------------------------------------------------------------------------------------ pytest-deploy init


def _verdicts(pytester, report):
    """(test name, backend) -> outcome, from a JSON report, whatever module the test was in."""
    data = json.loads((pytester.path / report).read_text())
    return {(r["test"].rsplit("::", 1)[-1], r["backend"]): r["outcome"] for r in data["results"]}


@pytest.mark.parametrize("target", ["zoo_models:branchy", "zoo_models:cnn"])
def test_init_writes_a_test_that_reproduces_the_items_and_verdicts(models, monkeypatch, target):
    from pytest_deploy.__main__ import main

    monkeypatch.chdir(models.path)
    assert main(["init", target, "--examples", "2"]) == 0
    name = target.split(":")[1]
    written = models.path / "tests" / f"test_deploy_{name}.py"
    source = written.read_text()
    assert f"def test_{name}():" in source and "@deployable(" in source
    assert "# x: read by " in source  # a comment on the guess
    # ruff-clean under the project's own rule selection (and formatted)
    ruff = pytest.importorskip("ruff", reason="ruff checks the written file")
    import subprocess
    import sys

    del ruff
    check = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--isolated", "--select",
                            "F,E,W,I,B,UP,SIM,C4", "--line-length", "120", str(written)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = subprocess.run([sys.executable, "-m", "ruff", "format", "--isolated", "--check", str(written)],
                         capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr

    backends = "--deploy-backends=trace,script"
    by_file = models.runpytest(str(written), backends, "--deploy-report=file.json")
    by_model = models.runpytest(f"--deploy-model={target}", backends, "--deploy-examples=2",
                                "--deploy-report=model.json")
    assert by_file.ret == by_model.ret
    assert _verdicts(models, "file.json") == _verdicts(models, "model.json")
    assert len(_verdicts(models, "file.json")) == 2
    if name == "branchy":
        assert _verdicts(models, "file.json")[("test_branchy", "trace")] == "failed"


def test_init_refuses_with_the_factory_and_the_fix(models, monkeypatch, capsys):
    from pytest_deploy.__main__ import main

    monkeypatch.chdir(models.path)
    assert main(["init", "zoo_models:pair"]) == 2
    err = capsys.readouterr().err
    assert "pytest-deploy init: --deploy-model=zoo_models:pair: cannot infer input 'y'" in err
    assert not (models.path / "tests").exists()
    # with the inputs on one line it writes the test, by keyword
    line = "x: float32[batch, 4]; y: float32[batch, 4]; batch=1..2"
    assert main(["init", "zoo_models:pair", "--inputs", line, "--out", "t.py"]) == 0
    assert "inputs={" in (models.path / "t.py").read_text()
    assert main(["init", "zoo_models:pair", "--inputs", line, "--out", "t.py"]) == 2
    assert "t.py exists; pass --force" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ pytest-deploy check


def test_check_runs_pytest_with_deploy_model_and_its_exit_code(models):
    import sys

    result = models.run(sys.executable, "-m", "pytest_deploy", "check", "zoo_models:branchy", "--backends",
                        "trace,script", "--examples", "2", "--report", "check.json", "--markdown", "check.md")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    assert "pytest-deploy summary" in out and "test_branchy" in out
    assert _verdicts(models, "check.json") == {("test_branchy", "trace"): "failed", ("test_branchy", "script"): "passed"}
    assert (models.path / "check.md").exists()
    bad = models.run(sys.executable, "-m", "pytest_deploy", "check", "zoo_models:number")
    assert bad.ret == pytest.ExitCode.INTERRUPTED
    assert "number() returned int, not a torch.nn.Module" in bad.stdout.str()
    assert "INTERNALERROR" not in bad.stdout.str() + bad.stderr.str()


def test_a_hugging_face_factory_by_keyword_with_the_cache_off(models):
    pytest.importorskip("transformers")
    models.makepyfile(hf_models='''
        import transformers


        def gpt2():
            config = transformers.GPT2Config(vocab_size=40, n_embd=16, n_layer=1, n_head=2, n_positions=12,
                                             use_cache=True)
            return transformers.GPT2LMHeadModel(config)
    ''')
    result = models.runpytest("--deploy-model=hf_models:gpt2", "--deploy-backends=trace", "--deploy-examples=2",
                              "--deploy-report=report.json")
    result.assert_outcomes(passed=1)
    data = json.loads((models.path / "report.json").read_text())
    (entry,) = data["results"]
    assert entry["outcome"] == "passed"
