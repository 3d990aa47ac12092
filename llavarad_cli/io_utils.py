"""Small file helpers every stage uses: atomic writes and JSON/JSONL reading with clear errors."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

from llavarad_cli.errors import UserError


def _umask_mode() -> int:
    """The mode a plain ``open()`` would give a new file (mkstemp's 0600 is too private for shared runs)."""
    mask = os.umask(0)
    os.umask(mask)
    return (stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IWGRP | stat.S_IROTH | stat.S_IWOTH) & ~mask


def atomic_write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers never see half a file.

    ``durable=False`` skips the fsync, for many small derived files (resized image copies) that a rerun checks
    and rewrites anyway; a kill still never leaves half a file under the final name.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise naming(exc, path) from None
    try:
        os.fchmod(fd, _umask_mode())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise naming(exc, path) from None
        raise


def naming(exc: OSError, path: Path) -> OSError:
    """The same error, naming the file the caller asked for: a write on a full disk reports no file name at
    all, and a failed temp file names a hidden `.x.abc.tmp` the user never asked for."""
    if exc.errno is None:
        return exc
    return type(exc)(exc.errno, exc.strerror, str(path))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


class JSONProblem(ValueError):
    """Text that is not usable JSON; the message says why in a few words (the caller adds file and line)."""


def loads(text: str | bytes, line: bool = True) -> Any:
    """``json.loads`` whose every failure is a ``JSONProblem``. ``line=False`` for one JSONL line, whose
    position in the file the caller names (only the column is told then).

    Besides syntax errors, Python's parser raises RecursionError for deeply nested arrays (``[[[[…``) and
    ValueError for an integer of more than 4300 digits; read from a file, both are bad input, not a bug.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}" if line else f"column {exc.colno}"
        raise JSONProblem(f"not valid JSON ({where}: {exc.msg})") from None
    except RecursionError:
        raise JSONProblem("not usable JSON (nested too deeply)") from None
    except UnicodeDecodeError:
        raise JSONProblem("not UTF-8 text") from None
    except ValueError:  # int()'s limit on digits is the only other ValueError the parser raises
        raise JSONProblem("not usable JSON (an integer with more digits than Python reads)") from None


def read_json(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None
    try:
        return loads(text)
    except JSONProblem as problem:
        raise UserError(f"{path}: {problem}") from None


def read_json_object(path: Path | str, what: str) -> dict[str, Any]:
    """A JSON file (a config, a state file) that must hold an object: bytes that are not UTF-8, JSON that is
    bad, nested too deeply or holds a huge integer, or another type, are each one line naming ``what``."""
    path = Path(path)
    try:
        value = loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: the {what} is not UTF-8 text") from None
    except JSONProblem as problem:
        raise UserError(f"{path}: the {what} is {problem}") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: the {what} must be a JSON object, not {type(value).__name__}")
    return value


def iter_jsonl(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (line number, raw line) for non-blank lines; decoding is the caller's job (it knows the schema)."""
    with open(path, "r", encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            if line.strip():
                yield number, line
