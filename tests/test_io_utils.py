from __future__ import annotations

import os
import re
import stat

import pytest

from llavarad_cli import io_utils
from llavarad_cli.errors import UserError


def test_atomic_write_leaves_no_temp_and_follows_umask(tmp_path):
    old = os.umask(0o022)
    try:
        target = tmp_path / "sub" / "out.json"
        io_utils.atomic_write_json(target, {"a": 1})
    finally:
        os.umask(old)
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "out.txt"
    target.write_text("old")

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        io_utils.atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_read_json_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": ')
    with pytest.raises(UserError, match=r"bad.json: not valid JSON \(line 1"):
        io_utils.read_json(bad)
    with pytest.raises(UserError, match="file not found"):
        io_utils.read_json(tmp_path / "missing.json")


def test_non_durable_write_skips_fsync_but_stays_atomic(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd))
    io_utils.atomic_write_bytes(tmp_path / "a.jpg", b"x", durable=False)
    assert calls == []
    io_utils.atomic_write_bytes(tmp_path / "b.json", b"y")
    assert len(calls) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "b.json"]


@pytest.mark.parametrize("text, why", [
    ("[" * 100000 + "]" * 100000, "nested too deeply"),
    ('{"n": ' + "7" * 5000 + "}", "an integer with more digits"),
])
def test_deep_or_huge_json_is_one_line_naming_the_file(tmp_path, text, why):
    path = tmp_path / "hostile.json"
    path.write_text(text)
    with pytest.raises(UserError, match=f"hostile.json: not usable JSON \\({why}"):
        io_utils.read_json(path)
    with pytest.raises(io_utils.JSONProblem, match=why):
        io_utils.loads(text)


@pytest.mark.parametrize("data, why", [
    (b'{"a": ', "the thing is not valid JSON (line 1"),
    (b"[" * 100000, "the thing is not usable JSON (nested too deeply"),
    (b"[1]", "the thing must be a JSON object, not list"),
    (b'{"a": "\xff"}', "the thing is not UTF-8 text"),
])
def test_read_json_object_is_one_line_naming_what_the_file_is(tmp_path, data, why):
    path = tmp_path / "thing.json"
    path.write_bytes(data)
    with pytest.raises(UserError, match="thing.json: " + re.escape(why)):
        io_utils.read_json_object(path, "thing")
    path.write_text('{"a": 1}')
    assert io_utils.read_json_object(path, "thing") == {"a": 1}
