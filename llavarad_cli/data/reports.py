"""MIMIC-CXR free-text reports, from `mimic-cxr-reports.zip` or its unpacked `files/pXX/p<subject>/s<study>.txt` tree."""

from __future__ import annotations

import re
import stat
import zipfile
import zlib
from pathlib import Path

from llavarad_cli.errors import UserError

# Any prefix before the pXX/p<subject>/s<study>.txt tail is accepted: zips are sometimes re-packed with a top folder.
_MEMBER = re.compile(r"(?:^|/)p\d\d/p(\d+)/s(\d+)\.txt$")

#: The most bytes one report may have. MIMIC-CXR reports are a few KB; without a bound, one zip member that
#: inflates to gigabytes (a zip bomb: a few KB compressed) would be read into memory whole. A bigger report is
#: counted as unreadable, with this reason.
MAX_REPORT_BYTES = 1 << 20
TOO_BIG = f"larger than {MAX_REPORT_BYTES >> 20} MiB, not a report"


class UnreadableReport(Exception):
    """The report exists but its bytes cannot be read (damaged zip member, permissions, a folder)."""


class ReportStore:
    """Raw report bytes by (subject, study); decoding and sectioning are the caller's job."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._zip: zipfile.ZipFile | None = None
        self._members: dict[str, str] = {}
        if self.path.is_file():
            try:
                self._zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise UserError(f"{self.path}: not a readable zip file ({exc})",
                                hint="--reports takes mimic-cxr-reports.zip or the folder it unpacks to") from None
            for name in self._zip.namelist():
                match = _MEMBER.search(name)
                if match:
                    self._members[match.group(2)] = name
            if not self._members:
                raise UserError(f"{self.path}: no files/pXX/p<subject>/s<study>.txt reports inside this zip")
            self.root = None
        elif self.path.is_dir():
            # Accept the folder holding files/ as well as files/ itself.
            self.root = self.path / "files" if (self.path / "files").is_dir() else self.path
        else:
            raise UserError(f"{self.path}: reports not found",
                            hint="--reports takes mimic-cxr-reports.zip or the folder it unpacks to")

    def describe(self, subject_id: str, study_id: str) -> str:
        """Where the report of this study is (or would be), for the summary."""
        rel = f"p{subject_id[:2]}/p{subject_id}/s{study_id}.txt"
        return f"{self.path.name}:{rel}" if self._zip is not None else rel

    def read(self, subject_id: str, study_id: str) -> bytes | None:
        """The report's bytes, None when there is none; UnreadableReport when it is there but cannot be read."""
        if self._zip is not None:
            name = self._members.get(study_id)
            if name is None:
                return None
            # The size the zip declares is checked first (free), then the bytes really read are bounded too:
            # the declared size is only a claim of the file's.
            if self._zip.getinfo(name).file_size > MAX_REPORT_BYTES:
                raise UnreadableReport(TOO_BIG)
            try:
                with self._zip.open(name) as member:
                    return _read_bounded(member)
            # A damaged deflate stream raises zlib.error; an encrypted member RuntimeError; an unsupported
            # compression method (Deflate64 from some re-packers) NotImplementedError.
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error, RuntimeError, NotImplementedError) as exc:
                raise UnreadableReport(str(exc)) from None
        path = self.root / f"p{subject_id[:2]}" / f"p{subject_id}" / f"s{study_id}.txt"
        try:
            if not stat.S_ISREG(path.stat().st_mode):  # a folder, or a named pipe that open() would wait on forever
                raise UnreadableReport("not a regular file")
            with open(path, "rb") as fh:
                return _read_bounded(fh)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise UnreadableReport(exc.strerror or str(exc)) from None

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def _read_bounded(fh) -> bytes:
    data = fh.read(MAX_REPORT_BYTES + 1)
    if len(data) > MAX_REPORT_BYTES:
        raise UnreadableReport(TOO_BIG)
    return data


def default_reports(mimic_dir: Path) -> Path:
    """The zip inside --mimic-dir if it is there, else the tree (reports unpacked next to the study folders)."""
    zipped = mimic_dir / "mimic-cxr-reports.zip"
    return zipped if zipped.is_file() else mimic_dir
