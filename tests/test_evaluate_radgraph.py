"""F1-RadGraph reward arithmetic on the published RadGraph annotation; annotation sources; clean skips."""

import copy
import json
from pathlib import Path

import pytest

from llavarad_cli.evaluate import radgraph
from llavarad_cli.evaluate.assets import MetricSkipped
from llavarad_cli.evaluate.radgraph_reward import entity_set, reward

PUBLISHED = json.loads((Path(__file__).parent / "data/metric-vectors/published_vectors.json").read_text())
ANNOTATION = PUBLISHED["radgraph_annotation"]["expected"]["0"]
TEXT = PUBLISHED["radgraph_annotation"]["input"][0]


def test_partial_entity_set_flags_entities_with_relations():
    assert entity_set(ANNOTATION, "partial") == {
        ("acute", "OBS-DA"), ("cardiopulmonary", "ANAT-DP"), ("process", "OBS-DA", True),
        ("moderate", "OBS-DP"), ("hiatal", "ANAT-DP"), ("hernia", "OBS-DP")}
    assert ("process", "OBS-DA", "located_at", "cardiopulmonary") in entity_set(ANNOTATION, "complete")


def test_identical_annotation_scores_one_like_the_published_identical_pair():
    published = PUBLISHED["f1radgraph_reward_level_all"]
    assert published["hyps"][0] == published["refs"][0]
    for level, rewards in zip(("simple", "partial", "complete"), published["expected_reward_list_(simple[],partial[],complete[])"]):
        assert reward(ANNOTATION, ANNOTATION, level) == rewards[0] == 1.0


def test_losing_a_relation_costs_only_partial_and_complete():
    hyp = copy.deepcopy(ANNOTATION)
    hyp["entities"]["3"]["relations"] = []
    assert reward(hyp, ANNOTATION, "simple") == 1.0
    assert reward(hyp, ANNOTATION, "partial") == pytest.approx(5 / 6)
    assert reward(hyp, ANNOTATION, "complete") == pytest.approx(5 / 6)


def test_partial_is_case_sensitive_and_complete_is_not():
    hyp = copy.deepcopy(ANNOTATION)
    hyp["entities"]["1"]["tokens"] = "Acute"
    assert reward(hyp, ANNOTATION, "partial") == pytest.approx(5 / 6)
    assert reward(hyp, ANNOTATION, "complete") == 1.0


def test_extra_entity_lowers_precision_only():
    hyp = copy.deepcopy(ANNOTATION)
    hyp["entities"]["7"] = {"tokens": "effusion", "label": "OBS-DP", "start_ix": 9, "end_ix": 9, "relations": []}
    p, r = 6 / 7, 1.0
    assert reward(hyp, ANNOTATION, "partial") == pytest.approx(2 * p * r / (p + r))


def test_empty_or_entity_free_reports_score_zero():
    assert reward(None, ANNOTATION) == 0.0
    assert reward({"entities": {}}, ANNOTATION) == 0.0
    assert reward(ANNOTATION, {"entities": {}}) == 0.0


def test_rewards_from_annotation_file_skip_empty_reports(tmp_path):
    path = tmp_path / "ann.jsonl"
    path.write_text(json.dumps({"text": TEXT, "annotation": ANNOTATION}) + "\n")
    annotate = radgraph.file_annotator(radgraph.load_annotation_file(path))
    # the whitespace-only and empty reports are never sent to the annotator (it would raise: no annotation)
    rewards, hyp_ann, _ = radgraph.radgraph_rewards([TEXT, "   ", TEXT], [TEXT, TEXT, ""], annotate)
    assert rewards.tolist() == [1.0, 0.0, 0.0]
    assert hyp_ann[1] is None
    with pytest.raises(MetricSkipped, match="no annotation for 1 report"):
        radgraph.radgraph_rewards(["unseen text"], [TEXT], annotate)


def test_missing_radgraph_package_is_a_skip_that_names_the_way_out(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "radgraph", None)  # import fails, as when the package is absent
    with pytest.raises(MetricSkipped, match="--radgraph-annotations"):
        radgraph.require_package()
