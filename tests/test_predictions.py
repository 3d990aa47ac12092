"""The one prediction line: parser and writer round-trip, and what each reader takes a line to mean."""

from __future__ import annotations

import json

import pytest

from llavarad_cli.predictions import BadLine, Prediction, format_line, parse_line


def test_round_trip_keeps_every_field_and_puts_the_id_first():
    line = json.dumps({"prediction": "p", "id": 7, "reference": None, "query": "q", "note": [1],
                       "dtype": "float16", "model": "m"})
    pred = parse_line(line)
    assert pred == Prediction(id="7", prediction="p", reference=None, query="q",
                              run={"model": "m", "dtype": "float16"}, extra={"note": [1]})
    out = format_line(pred)
    assert out.startswith('{"id": "7", ') and out.endswith("\n")
    assert parse_line(out) == pred


def test_a_null_prediction_is_an_empty_text():
    assert parse_line('{"id": "a", "prediction": null, "reference": "r"}').prediction == ""


def test_run_fields_are_not_part_of_the_content():
    a = parse_line('{"id": "a", "prediction": "p", "reference": "r", "dtype": "float16"}')
    b = parse_line('{"id": "a", "prediction": "p", "reference": "r", "dtype": "bfloat16"}')
    c = parse_line('{"id": "a", "prediction": "p", "reference": "other"}')
    assert a.content() == b.content() != c.content()


@pytest.mark.parametrize("line, why, is_json", [
    ('{"id": "a", "predic', "not valid JSON", False),
    ("[1]", "expected a JSON object", True),
    ('{"id": "a", "prediction": "p"}', "missing field(s) reference", True),
    ('{"id": true, "prediction": "p", "reference": "r"}', "field 'id' must be", True),
    ('{"id": "", "prediction": "p", "reference": "r"}', "field 'id' must be", True),
    ('{"id": "a", "prediction": 3, "reference": "r"}', "field 'prediction' must be a string", True),
    ('{"id": "a", "prediction": "p", "reference": "r", "dtype": 16}', "field 'dtype' must be a string", True),
    ("[" * 50000, "nested too deeply", False),
])
def test_bad_lines_say_why(line, why, is_json):
    with pytest.raises(BadLine, match=why.replace("(", r"\(").replace(")", r"\)")) as bad:
        parse_line(line)
    assert bad.value.is_json is is_json
