"""The ``pytest-deploy`` command outside a pytest session: its help and ``backends``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pytest_deploy.__main__ import main
from pytest_deploy.names import backend_names


def test_help_names_every_command_and_where_the_checks_run():
    out = subprocess.run([sys.executable, "-m", "pytest_deploy", "--help"], capture_output=True, text=True,
                         check=True, env={"COLUMNS": "100", "PATH": ""}).stdout
    assert "usage: pytest-deploy" in out
    for command in ("backends", "merge"):
        assert command in out
    assert "pytest --help" in out
    assert "``" not in out  # no raw reST
    assert out.rstrip().endswith("repository.")  # the epilog is whole, not cut mid-sentence


def test_backends_lists_every_backend_with_whether_it_runs_here(capsys):
    assert main(["backends"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["backend", "aliases", "here"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert list(rows) == backend_names()
    assert "torchscript-trace" in rows["trace"]
    assert rows["state_dict"].endswith("runs here")  # needs only torch
    from pytest_deploy.backends import get_backend

    reason = get_backend("tensorrt").unavailable_reason()
    assert rows["tensorrt"].endswith(reason or "runs here")


def test_an_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["mrege"])
    assert info.value.code == 2
    assert "invalid choice: 'mrege'" in capsys.readouterr().err
