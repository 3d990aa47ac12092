"""``merge-chunks``: join per-GPU prediction files in chunk order and say exactly what is wrong with them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from llavarad_cli.errors import UserError
from llavarad_cli.infer.chunks import natural_key
from llavarad_cli.io_utils import atomic_write_text, iter_jsonl
from llavarad_cli.predictions import BadLine, Prediction, format_line, parse_line


@dataclass
class MergeReport:
    files: list[Path]
    written: int = 0
    identical_duplicates: int = 0
    conflicts: list[str] = field(default_factory=list)      # ids whose lines differ in two places
    bad_lines: list[str] = field(default_factory=list)      # "file:line: why"
    missing: list[str] = field(default_factory=list)        # ids of the query file nobody predicted
    unexpected: list[str] = field(default_factory=list)     # ids not in the query file
    query_total: int | None = None

    @property
    def clean(self) -> bool:
        return not (self.conflicts or self.bad_lines or self.unexpected)

    def exit_code(self, allow_missing: bool = False) -> int:
        """0 only for a complete (or --allow-missing) and clean merge; 1 otherwise."""
        if not self.clean:
            return 1
        return 0 if allow_missing or not self.missing else 1


def merge_chunks(files: Sequence[Path], output: Path, query_ids: Sequence[str] | None = None) -> MergeReport:
    """Merge ``files`` (natural order: ``_10`` after ``_2``) into ``output``.

    Identical duplicates (a chunk rerun) are kept once; the same id with any other difference is a conflict
    and nothing is written. Bad lines are reported with file and line. The output is written atomically and
    only when there is no conflict.
    """
    paths = sorted({Path(f) for f in files}, key=natural_key)
    if not paths:
        raise UserError("no chunk files given")
    output = Path(output)
    if output.is_dir():
        raise UserError(f"--output {output} is a folder", hint="name the merged file, e.g. preds.jsonl")
    for path in paths:
        if not path.is_file():
            raise UserError(f"chunk file not found: {path}")
        if path.resolve() == output.resolve():
            raise UserError(f"{path} is both a chunk and the --output file",
                            hint="write the merged file under another name (the glob preds_*.jsonl matches it)")
    report = MergeReport(files=paths)
    rows: dict[str, Prediction] = {}
    origin: dict[str, str] = {}
    for path in paths:
        for number, line in iter_jsonl(path):
            where = f"{path}:{number}"
            try:
                row = parse_line(line)
            except BadLine as bad:
                report.bad_lines.append(f"{where}: {bad}")
                continue
            if row.id in rows:
                # The same prediction of the same query (a chunk rerun) is kept once; anything else differing
                # (prediction, query, reference, other fields) is a conflict. Run fields (model, dtype) are
                # how it was made, not what it is.
                if rows[row.id].content() == row.content():
                    report.identical_duplicates += 1
                else:
                    report.conflicts.append(f"{row.id} ({origin[row.id]} vs {where})")
                continue
            rows[row.id] = row
            origin[row.id] = where
    if query_ids is not None:
        expected = set(query_ids)
        report.query_total = len(expected)
        report.missing = [q for q in query_ids if q not in rows]
        report.unexpected = [k for k in rows if k not in expected]
    if not report.conflicts:
        # Atomic: a full disk leaves nothing under the output name; the OSError names it for the CLI's one line.
        atomic_write_text(output, "".join(format_line(r) for r in rows.values()))
        report.written = len(rows)
    return report
