"""The repo stands on its own: no code comment or doc points at material a user's clone does not have."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Files of the development workplace's shared folder, which is not part of a clone.
OUTSIDE_NOTES = re.compile(r"(reference-behaviour|llava-rad-facts|cpu-dev-environment|ecosystem-survey)(\.md)?\b")


def _files():
    for folder in ("llavarad_cli", "benchmarks", "examples", "docs", "tests"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and path.suffix in {".py", ".md", ".yaml", ".sh"} and path != Path(__file__).resolve():
                yield path
    for name in ("README.md", "CHANGELOG.md"):
        yield ROOT / name


def test_no_file_cites_notes_outside_the_repo():
    offenders = []
    for path in _files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if OUTSIDE_NOTES.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:80]}")
    assert not offenders, "cite the repo's own docs or give the reason inline:\n" + "\n".join(offenders)
