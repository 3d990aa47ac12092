"""The one vocabulary of skip reasons: every source and the training loop count under its names."""

import re

import pytest

from llavarad_cli import skips
from llavarad_cli.data import annotations, mimic, openi
from llavarad_cli.data.records import Skips
from llavarad_cli.skips import LABELS, TRAINING, Skip


def _names():
    return {value for key, value in vars(Skip).items() if key.isupper()}


def test_every_name_is_snake_case_has_a_label_and_is_spelt_once():
    names = _names()
    assert names == set(LABELS)
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", n) for n in names)
    assert len(set(LABELS.values())) == len(LABELS)  # two reasons never read the same in a summary


@pytest.mark.parametrize("reasons", [mimic.SKIP_REASONS, annotations.SKIP_REASONS, openi.SKIP_REASONS, TRAINING])
def test_sources_and_training_count_only_vocabulary_names(reasons):
    assert set(reasons) <= _names() and len(set(reasons)) == len(reasons)


def test_unknown_reason_is_a_bug():
    with pytest.raises(ValueError, match="unknown skip reason 'not-frontal'"):
        Skips().add("not-frontal", "x")
    with pytest.raises(ValueError):
        skips.label("malformed_record")


def test_summary_uses_the_vocabulary_label():
    tally = Skips()
    tally.add(Skip.NOT_FRONTAL, "a.jpg (LL)")
    out = tally.to_json((Skip.NOT_FRONTAL, Skip.NO_FINDINGS))
    assert out == {"not_frontal": {"label": "lateral or unknown view", "count": 1, "examples": ["a.jpg (LL)"]},
                   "no_findings": {"label": "no findings", "count": 0, "examples": []}}


def test_image_and_sample_problems_use_training_names(tmp_path):
    from llavarad_cli.data.images import ImageProblem, load_image, resolve_image_path
    from llavarad_cli.train.samples import build_sample

    with pytest.raises(ImageProblem) as missing:
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageProblem) as outside:
        resolve_image_path(tmp_path, "../x.png")
    bad = build_sample({"conversations": []}, "v1", tokenizer=None, max_text_tokens=10)
    assert {missing.value.kind, outside.value.kind, bad.reason} <= set(TRAINING)


def test_a_resumed_run_goes_on_counting_from_a_0_1_0_checkpoints_kebab_case_names():
    from llavarad_cli.train.worker import SkipTally

    saved = {"missing-image": 3, "mask-mismatch": 2, "truncated-away": 1, "truncated": 5}  # as 0.1.0 saved them
    tally = SkipTally(saved)
    counts = dict(zip(TRAINING, tally.counts.tolist()))
    assert counts[Skip.MISSING_IMAGE] == 3 and counts[Skip.MASK_MISMATCH] == 2 and counts[Skip.TRUNCATED_AWAY] == 1
    assert tally.truncated.tolist() == [5]
    assert SkipTally({Skip.NO_ANSWER: 4}).counts.tolist()[TRAINING.index(Skip.NO_ANSWER)] == 4  # today's names
