"""The `mmgen` dispatcher, every command group's --help, and README/CI agreement."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mmgen.cli import GROUPS, main

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_group(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in GROUPS:
        assert re.search(rf"^\s+{name}\s", out, re.M), name


def test_unknown_command_is_a_usage_error(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_group_help_runs_in_a_fresh_interpreter(group):
    # A fresh process catches import-time errors a shared test session would hide.
    proc = subprocess.run(
        [sys.executable, "-m", "mmgen.cli", group, "--help"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage" in proc.stdout.lower()


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"TEST_COMMAND='([^']+)'", ci).group(1)
    readme = (ROOT / "README.md").read_text()
    assert command in readme
