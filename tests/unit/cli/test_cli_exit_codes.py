"""One exit-code table: `jw --help` prints it and the README repeats it row for row."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

import jobworker.cli
from jobworker.cli import jw
from jobworker.cli._exit import EXIT_CODE_TABLE, ExitCode

README = Path(jobworker.cli.__file__).resolve().parents[2] / "README.md"


def test_the_table_has_every_exit_code() -> None:
    assert [code for code, _ in EXIT_CODE_TABLE] == list(ExitCode)


def test_help_shows_the_table() -> None:
    text = " ".join(CliRunner().invoke(jw, ["--help"]).output.split())
    for code, meaning in EXIT_CODE_TABLE:
        assert f"{int(code)} {meaning}" in text


def test_readme_table_matches() -> None:
    readme = README.read_text()
    section = readme[readme.index('<a id="exit-codes">') :]
    rows = re.findall(r"^\| (\d+) \| (.+) \|$", section.split("\n\n", 2)[1], re.MULTILINE)
    assert rows == [(str(int(code)), meaning) for code, meaning in EXIT_CODE_TABLE]


def test_health_help_agrees_with_the_table() -> None:
    text = " ".join(CliRunner().invoke(jw, ["health", "--help"]).output.split())
    assert "1 if it answers not serving, 3 if it cannot be reached" in text
