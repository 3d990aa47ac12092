"""Text from input files never reaches the terminal as control sequences."""

from __future__ import annotations

from typer.testing import CliRunner

from llavarad_cli.cli import app
from llavarad_cli.console import safe, visible
from llavarad_cli.errors import UserError

CLEAR = "\x1b[2J"


def test_visible_escapes_controls_but_keeps_text_tabs_and_newlines():
    assert visible(f"a{CLEAR}b\rc\x07d\x9be\u202ef") == "a\\x1b[2Jb\\rc\\x07d\\x9be\\u202ef"
    assert visible("tab\there\nnext line, ünïcödé") == "tab\there\nnext line, ünïcödé"
    assert visible(3) == "3"


def test_safe_also_escapes_rich_markup():
    assert safe(f"[red]{CLEAR}") == "\\[red]\\x1b[2J"


def test_user_error_line_shows_escapes():
    err = UserError(f"report.csv: no column {CLEAR}findings", hint=f"columns: id,{CLEAR}x")
    line = err.one_line()
    assert "\x1b" not in line
    assert "no column \\x1b[2Jfindings" in line and "columns: id,\\x1b[2Jx" in line
    # str.split() treats \x1c-\x1f as whitespace: they must be shown, not silently turned into spaces
    assert UserError("a\x1fb").one_line() == "a\\x1fb"


def test_file_name_with_escape_in_an_error_line(tmp_path):
    bad = tmp_path / f"x{CLEAR}.jsonl"
    result = CliRunner().invoke(app, ["merge-chunks", str(bad), "--output", str(tmp_path / "out.jsonl")])
    assert result.exit_code != 0
    assert "\x1b" not in result.output
    assert "x\\x1b[2J.jsonl" in result.output
