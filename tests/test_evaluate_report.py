"""The per-observation plot's labels."""

from __future__ import annotations

from llavarad_cli.evaluate.report import observation_labels


def _report(supports):
    return {c: {"f1-score": 0.5, "precision": 0.5, "recall": 0.5, "support": n} for c, n in supports.items()}


def test_each_mapping_shows_its_own_support():
    both = {"n": _report({"Edema": 12, "Atelectasis": 3}), "p": _report({"Edema": 15, "Atelectasis": 7})}
    assert observation_labels(both, ["Edema", "Atelectasis"]) == ["Edema (n=12 / 15)", "Atelectasis (n=3 / 7)"]
    assert observation_labels({"n": both["n"]}, ["Edema"]) == ["Edema (n=12)"]
