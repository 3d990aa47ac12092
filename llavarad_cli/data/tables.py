"""Reading the CSV tables the datasets ship (plain or gzipped), with one-line errors for the wrong file."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path
from typing import Iterator

from llavarad_cli.data.records import Skips
from llavarad_cli.errors import UserError
from llavarad_cli.skips import Skip


def find_table(folder: Path, stem: str, required: bool = True) -> Path | None:
    """`stem.csv.gz` or `stem.csv` inside folder (the gzipped form is what PhysioNet ships)."""
    for name in (f"{stem}.csv.gz", f"{stem}.csv"):
        path = folder / name
        if path.is_file():
            return path
    if required:
        raise UserError(f"{folder}: neither {stem}.csv.gz nor {stem}.csv found",
                        hint="--mimic-dir must be the MIMIC-CXR-JPG 2.0.0 root (the folder holding files/ and the CSVs)")
    return None


def read_rows(path: Path, required_columns: tuple[str, ...], skips: Skips) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, row) for each data row; a missing column or a broken file is a UserError.

    A row the csv module cannot parse (a field over its 128 KiB limit, a NUL byte) is counted in `skips` as a
    malformed row with its line number, and reading goes on: one bad row of 377,110 must not stop a run. The
    limit itself stays: no field of these tables is near it, so such a field is damage (an unclosed quote
    swallowing the lines after it), not data.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")
            reader = csv.DictReader(text)
            header = reader.fieldnames or []
            missing = [c for c in required_columns if c not in header]
            if missing:
                raise UserError(f"{path}: missing column(s) {', '.join(missing)}",
                                hint=f"found columns: {', '.join(header) or 'none'}")
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:  # the parser starts afresh on the next line
                    # DictReader's own line_num is only updated after a good row: the parser's is current.
                    skips.add(Skip.BAD_ROW, f"{path.name} line {reader.reader.line_num} ({exc})")
                    continue
                yield reader.line_num, {k: (v or "") for k, v in row.items() if k is not None}
    except (OSError, EOFError, csv.Error) as exc:
        raise UserError(f"{path}: cannot read this CSV ({exc})") from None
