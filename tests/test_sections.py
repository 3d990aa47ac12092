"""MIMIC-CXR report sectioning: parity with the official MIT-LCP parser and the fields LLaVA-Rad needs."""

from __future__ import annotations

import json

import pytest

from llavarad_cli.data.sections import extract_sections, normalise_section_name, section_text


def _as_dicts(sections):
    return [{"name": s.name, "start_idx": s.start, "text": s.text} for s in sections]


def test_real_example_matches_official_parser_output(data_dir):
    text = (data_dir / "mimic-format" / "mimic_cxr_website_example_report.txt").read_text()
    expected = json.loads((data_dir / "mimic-format" / "section_parser_expected.json").read_text())
    assert _as_dicts(section_text(text)) == expected["sections"]


def test_real_example_fields(data_dir):
    text = (data_dir / "mimic-format" / "mimic_cxr_website_example_report.txt").read_text()
    expected = json.loads((data_dir / "mimic-format" / "section_parser_expected.json").read_text())
    row = expected["create_section_files_style_row"]
    got = extract_sections(text)
    # Same text as the official row, with line wraps and double spaces collapsed.
    assert got.findings == " ".join(row["findings"].split())
    assert got.findings.startswith("Cardiac size cannot be evaluated. Large left pleural effusion is new. Small right")
    assert got.impression == row["impression"] == "Large left pleural effusion"
    assert got.reason == "___ year old woman with ?pleural effusion // ?pleural effusion"


@pytest.mark.parametrize("raw, name", [
    ("FINDINGS", "findings"), ("Findngs", "findings"), ("finidngs", "findings"), ("reference findings", "findings"),
    ("chest, two views", "findings"), ("PA AND LATERAL VIEWS OF THE CHEST", "findings"), ("PORTABLE AP", "findings"),
    ("IMPRESSION", "impression"), ("impresion", "impression"), ("conclusion", "impression"),
    ("findings and impression", "impression"), ("FINDINGS/IMPRESSION", "impression"), ("ndication", "impression"),
    ("INDICATION", "indication"), ("reason for examination", "indication"), ("REASON FOR EXAM", "indication"),
    ("clinical indication", "indication"), ("idication", "indication"),
    ("CLINICAL HISTORY", "history"), ("pfi", "history"), ("clinical information", "history"),
    ("HISTORY OF PRESENT ILLNESS", "history"),
    ("comparisons", "comparison"), ("comparision", "comparison"), ("prior comparison studies", "comparison"),
    ("exam", "examination"), ("type of examination", "examination"), ("recommendation(s)", "recommendations"),
    ("wetread", "wet read"), ("ADDENDUM TO REPORT", "addendum"), ("concusion", "conclusion"),
    ("NOTIFICATION", "notification"), ("SOMETHING ELSE", "something else"),
])
def test_name_normalisation(raw, name):
    assert normalise_section_name(raw) == name


def test_substring_rules_are_tried_in_order():
    # "impression" is checked before "findings" and "history", whatever order the words appear in.
    assert normalise_section_name("history and findings impression") == "impression"
    assert normalise_section_name("findings history") == "findings"


REPORT = (
    "\n                                 FINAL REPORT\n"
    " REASON FOR EXAMINATION:  Evaluate for\n"
    " pneumonia.\n"
    " \n"
    " CLINICAL HISTORY:  Cough.\n"
    " \n"
    " FINDINGS: \n"
    " \n"
    " FINDNGS:  The lungs are clear.  No effusion\n"
    " or pneumothorax.\n"
    " \n"
    " IMPRESSION:  No acute process.\n"
)


def test_empty_findings_removed_and_indication_wins_over_history():
    sections = section_text(REPORT)
    names = [s.name for s in sections]
    assert names == ["preamble", "indication", "history", "findings", "impression"]
    got = extract_sections(REPORT)
    assert got.findings == "The lungs are clear. No effusion or pneumothorax."
    assert got.reason == "Evaluate for pneumonia."
    assert got.impression == "No acute process."


def test_history_is_the_reason_without_an_indication():
    text = "\n CLINICAL INFORMATION:  ___ with fever.\n \n FINDINGS:  Clear lungs.\n"
    assert extract_sections(text).reason == "___ with fever."


def test_header_text_on_the_header_line_is_not_a_new_section():
    # The next header is searched only after the first newline following the current one.
    text = "\n FINDINGS:  Tube tip\n XYZ: in place.\n IMPRESSION:  Ok.\n"
    sections = _as_dicts(section_text(text))
    assert [s["name"] for s in sections] == ["preamble", "findings", "xyz", "impression"]
    text2 = "\n FINDINGS: \n NOTE:  the tip is low.\n"
    # Empty findings: the blank remainder of the header line is dropped, NOTE is kept.
    assert [s.name for s in section_text(text2)] == ["preamble", "note"]


def test_last_paragraph_fallback_without_findings_or_impression():
    text = "\n INDICATION:  Chest pain.\n \n COMPARISON:  None.\n \n Heart size normal.\n \n Lungs clear.\n"
    sections = section_text(text)
    assert [s.name for s in sections] == ["preamble", "indication", "comparison", "last_paragraph"]
    comparison, last = sections[2], sections[3]
    assert comparison.text == " None."  # the header pattern consumes one whitespace character
    assert last.text == " Heart size normal.\n \n Lungs clear.\n"
    assert last.start == comparison.start + len(comparison.text)  # the official (pre-MIMIC-IV) offset
    assert extract_sections(text).findings is None


def test_report_without_headers_is_one_full_report_section():
    sections = section_text("Heart size normal. Lungs clear.")
    assert [(s.name, s.start) for s in sections] == [("full report", 0)]
    assert extract_sections("Heart size normal. Lungs clear.").findings is None


def test_last_findings_section_wins():
    text = "\n FINDINGS:  First read.\n \n FINDINGS:  Final read,\n wrapped.\n"
    assert extract_sections(text).findings == "Final read, wrapped."
