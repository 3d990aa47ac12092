"""infer's query files: prepare's records and the PhysioNet annotation items (selected by data/physionet.py)."""

from __future__ import annotations

import json

import pytest

from llavarad_cli.errors import UserError


def test_physionet_records_filtered_and_reprompted_like_the_reference(tmp_path):
    from llavarad_cli.infer.queries import read_queries
    from llavarad_cli.prompts import FINDINGS_PROMPT

    def item(rid, image, method="rule-based", view="PA", reason="eval for edema\nplease", findings="Clear."):
        return {"id": rid, "image": image, "generate_method": method, "view": view, "reason": reason,
                "conversations": [{"from": "human", "value": "<image>\nDescribe the findings of the chest x-ray.\n"},
                                  {"from": "gpt", "value": findings}]}

    data = [item("1_5", "mimic/p1/s5/a.jpg"), item("1_5", "mimic/p1/s5/b.jpg", reason=None),
            item("2_6", "mimic/p2/s6/c.jpg", method="gpt4"), item("3_7", "x.jpg", view="LATERAL"),
            item("4_8", "y.jpg", findings=None), item("4_8", "y.jpg", findings="  "), "junk",
            item("9_9", "mimic/p9/s9/d.jpg"), item("9_9", "p9/s9/d.jpg")]
    path = tmp_path / "chat_test.json"
    path.write_text(json.dumps(data))
    qs = read_queries(path)
    assert qs.source_format == "physionet"
    # Ids are subject_study_dicom, as prepare's: unique per image without renaming, also for a one-image study.
    assert [q.id for q in qs.queries] == ["1_5_a", "1_5_b", "9_9_d"] and qs.renamed_duplicates == 0
    assert [q.image for q in qs.queries] == ["p1/s5/a.jpg", "p1/s5/b.jpg", "p9/s9/d.jpg"]
    assert qs.queries[0].query == ("<image>\nProvide a description of the findings in the radiology image given "
                                   "the following indication: eval for edema please")
    assert qs.queries[1].query == f"<image>\n{FINDINGS_PROMPT}"
    assert dict(qs.skipped) == {"not_rule_based": 1, "not_frontal": 1, "no_findings": 2, "bad_row": 1,
                                "duplicate": 1}


def test_physionet_reason_used_exactly_as_the_reference_loader_does(tmp_path):
    """`if reason is not None`: any string is used with only its newlines made spaces (even a blank one)."""
    from llavarad_cli.infer.queries import read_queries
    from llavarad_cli.prompts import FINDINGS_PROMPT_WITH_REASON

    def item(rid, reason):
        return {"id": rid, "image": f"{rid}.jpg", "generate_method": "rule-based", "view": "AP", "reason": reason,
                "conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "Clear."}]}

    path = tmp_path / "chat_test.json"
    path.write_text(json.dumps([item("a", "___ year old man  with\ndyspnea "), item("b", "")]))
    got = [q.query for q in read_queries(path).queries]
    assert got == ["<image>\n" + FINDINGS_PROMPT_WITH_REASON.format(reason="___ year old man  with dyspnea "),
                   "<image>\n" + FINDINGS_PROMPT_WITH_REASON.format(reason="")]


def test_prepare_records_are_not_mistaken_for_physionet(tmp_path):
    from llavarad_cli.infer.queries import read_queries
    from llavarad_cli.prompts import conversations

    record = {"id": "CXR7_IM-2263-1001", "image": "CXR7_IM-2263-1001.jpg", "view": "Frontal", "split": "test",
              "reason": "Preop lumbar surgery", "findings": "Clear.", "generate_method": "rule-based",
              "conversations": conversations("Preop lumbar surgery", "Clear.")}
    (tmp_path / "test.json").write_text(json.dumps([record]))
    qs = read_queries(tmp_path / "test.json")
    assert qs.source_format == "records" and not qs.skipped
    assert qs.queries[0].query == record["conversations"][0]["value"]
    assert qs.queries[0].reference == "Clear."


def test_query_file_errors_are_one_line(tmp_path):
    from llavarad_cli.infer.queries import read_queries

    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        read_queries(tmp_path / "bad.json")
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(UserError, match="no usable records"):
        read_queries(tmp_path / "empty.json")


def test_an_annotation_item_gets_the_same_id_from_prepare_and_from_infer(tmp_path):
    """One selection and id scheme: the record prepare writes and the query infer reads agree, so predictions
    made from either file line up with the other."""
    from typer.testing import CliRunner

    from llavarad_cli.cli import app
    from llavarad_cli.infer.queries import read_queries

    def item(image, findings="Clear.", view="AP"):
        return {"id": "10003502_50084553", "image": image, "generate_method": "rule-based", "view": view,
                "reason": "cough", "conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": findings}]}

    items = [item("mimic/p10/p10003502/s50084553/one.jpg"), item("mimic/p10/p10003502/s50084553/two.jpg"),
             item("mimic/p10/p10003502/s50084553/lat.jpg", view="LL"), item("mimic/p11/p11000001/s51/solo.jpg")]
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "chat_test_MIMIC_CXR_all_gpt4extract_rulebased_v1.json").write_text(json.dumps(items))
    result = CliRunner().invoke(app, ["prepare", "--annotations", str(ann), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    prepared = json.loads((tmp_path / "out" / "test.json").read_text())
    from_prepare = [(r["id"], r["image"], r["conversations"][0]["value"]) for r in prepared]
    from_infer = [(q.id, q.image, q.query) for q in read_queries(ann / "chat_test_MIMIC_CXR_all_gpt4extract_rulebased_v1.json").queries]
    assert from_prepare == from_infer
    assert [i for i, _, _ in from_infer] == ["10003502_50084553_one", "10003502_50084553_two", "11000001_51_solo"]
    # and prepare's own output, read back by infer, is the same query set again
    assert [(q.id, q.image, q.query) for q in read_queries(tmp_path / "out" / "test.json").queries] == from_infer


@pytest.mark.parametrize("envelope", ["records", "data"])
def test_a_records_file_may_wrap_its_list(tmp_path, envelope):
    from llavarad_cli.data.records import read_records
    from llavarad_cli.infer.queries import read_queries
    from llavarad_cli.prompts import conversations
    from llavarad_cli.train.dataset import load_records

    rows = [{"id": "a", "image": "a.png", "conversations": conversations(None, "Clear.")}]
    path = tmp_path / "r.json"
    path.write_text(json.dumps({envelope: rows}))
    assert read_records(path) == rows
    assert [q.id for q in read_queries(path).queries] == ["a"] and load_records(path)[0]["id"] == "a"
    path.write_text(json.dumps({"items": rows}))
    for reader in (read_queries, load_records):
        with pytest.raises(UserError, match="expected a JSON list of records"):
            reader(path)


def test_hostile_json_in_a_records_or_annotation_file_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from llavarad_cli.cli import app
    from llavarad_cli.infer.queries import read_queries
    from llavarad_cli.train.dataset import load_records

    deep = tmp_path / "chat_test_deep.json"
    deep.write_text("[" * 100000)
    huge = tmp_path / "huge.json"
    huge.write_text('[{"id": ' + "5" * 5000 + "}]")
    for reader in (read_queries, load_records):
        with pytest.raises(UserError, match="chat_test_deep.json: not usable JSON \\(nested too deeply"):
            reader(deep)
        with pytest.raises(UserError, match="huge.json: not usable JSON"):
            reader(huge)
    result = CliRunner().invoke(app, ["prepare", "--annotations", str(tmp_path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "nested too deeply" in result.output and "Traceback" not in result.output
