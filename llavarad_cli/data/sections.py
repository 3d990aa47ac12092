"""MIMIC-CXR report sectioning that behaves like MIT-LCP's official `txt/section_parser.py`.

The rules (those of the official parser): a header is an indented upper-case line ending in a colon; names are
normalised through a table of synonyms and misspellings, then substring rules, then a "looks like a study title"
pattern; empty findings/impression sections are dropped; with neither left, the last section is split at its
first blank line into a `last_paragraph`. `extract_sections` then picks what LLaVA-Rad needs from a report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A newline, one space, a run of capitals / spaces / ( ) / , -, then a colon and whitespace.
_HEADER = re.compile(r"\n ([A-Z ()/,-]+):\s", re.DOTALL)

_BLANK_LINE = "\n \n"

_NAME_TABLE = {
    "preamble": "preamble",
    "impression": "impression",
    "comparison": "comparison",
    "indication": "indication",
    "findings": "findings",
    "examination": "examination",
    "technique": "technique",
    "history": "history",
    "comparisons": "comparison",
    "clinical history": "history",
    "reason for examination": "indication",
    "notification": "notification",
    "reason for exam": "indication",
    "clinical information": "history",
    "exam": "examination",
    "clinical indication": "indication",
    "conclusion": "impression",
    "chest, two views": "findings",
    "recommendation(s)": "recommendations",
    "type of examination": "examination",
    "reference exam": "comparison",
    "patient history": "history",
    "addendum": "addendum",
    "comparison exam": "comparison",
    "date": "date",
    "comment": "comment",
    "findings and impression": "impression",
    "wet read": "wet read",
    "comparison film": "comparison",
    "recommendations": "recommendations",
    "findings/impression": "impression",
    "pfi": "history",
    "recommendation": "recommendations",
    "wetread": "wet read",
    # The official table maps this truncated "indication" to impression; kept for parity.
    "ndication": "impression",
    "impresson": "impression",
    "imprression": "impression",
    "imoression": "impression",
    "impressoin": "impression",
    "imprssion": "impression",
    "impresion": "impression",
    "imperssion": "impression",
    "mpression": "impression",
    "impession": "impression",
    "findings/ impression": "impression",
    "finding": "findings",
    "findins": "findings",
    "findindgs": "findings",
    "findgings": "findings",
    "findngs": "findings",
    "findnings": "findings",
    "finidngs": "findings",
    "idication": "indication",
    "reference findings": "findings",
    "comparision": "comparison",
    "comparsion": "comparison",
    "comparrison": "comparison",
    "comparisions": "comparison",
    # The official table sends these two to "conclusion" (one lookup, so they stay "conclusion").
    "concusion": "conclusion",
    "coinclusion": "conclusion",
}

# Checked in this order when a name is not in the table; the first one contained in the name wins.
_MAIN_SECTIONS = ("impression", "findings", "history", "comparison", "addendum")

# Headers that describe the whole study ("CHEST, PA AND LATERAL:") introduce the findings.
_STUDY_TITLE = re.compile(
    "(chest|portable|pa and lateral|lateral and pa|ap and lateral|lateral and ap|frontal and|two views|"
    "frontal view|pa view|ap view|one view|lateral view|bone window|frontal upright|frontal semi-upright|ribs|"
    "pa and lat)"
)


@dataclass(frozen=True)
class Section:
    name: str
    text: str
    start: int


def normalise_section_name(raw: str) -> str:
    name = raw.lower().strip()
    if name in _NAME_TABLE:
        return _NAME_TABLE[name]
    for main in _MAIN_SECTIONS:
        if main in name:
            return main
    if _STUDY_TITLE.search(name):
        return "findings"
    return name


def section_text(text: str) -> list[Section]:
    """Split a report into named sections exactly as the official parser does (same texts and offsets)."""
    sections: list[Section] = []
    match = _HEADER.search(text, 0)
    if match is None:
        sections.append(Section("full report", text, 0))
    else:
        sections.append(Section("preamble", text[: match.start(1)], 0))
        while match is not None:
            raw_name = match.group(1)
            start = match.end()
            # The next header is searched for only after the first newline following this one, so header-like
            # text on the header's own line is not taken for a new section.
            skip = text[start:].find("\n")
            match = _HEADER.search(text, start + max(skip, 0))
            end = len(text) if match is None else match.start()
            sections.append(Section(raw_name, text[start:end], start))

    sections = [Section(normalise_section_name(s.name), s.text, s.start) for s in sections]
    # Empty findings/impression are report titles or duplicate headers, not content.
    sections = [s for s in sections if not (s.name in ("impression", "findings") and s.text.strip() == "")]

    names = {s.name for s in sections}
    if "impression" not in names and "findings" not in names and sections:
        last = sections[-1]
        if _BLANK_LINE in last.text:
            first, *rest = last.text.split(_BLANK_LINE)
            sections[-1] = Section(last.name, first, last.start)
            sections.append(Section("last_paragraph", _BLANK_LINE.join(rest), last.start + len(first)))
    return sections


def collapse_whitespace(text: str) -> str:
    """Line wraps and runs of spaces become single spaces."""
    return " ".join(text.split())


@dataclass(frozen=True)
class ReportSections:
    findings: str | None
    reason: str | None
    impression: str | None


def _last(sections: list[Section], name: str) -> str | None:
    """Text of the last section with this name (as create_section_files.py picks), whitespace collapsed."""
    for section in reversed(sections):
        if section.name == name:
            text = collapse_whitespace(section.text)
            return text or None
    return None


def extract_sections(text: str) -> ReportSections:
    """Findings (the answer), reason for exam (indication, else history) and impression of one report."""
    sections = section_text(text)
    reason = _last(sections, "indication") or _last(sections, "history")
    return ReportSections(findings=_last(sections, "findings"), reason=reason, impression=_last(sections, "impression"))
