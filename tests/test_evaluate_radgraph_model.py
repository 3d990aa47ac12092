"""The RadGraph model path on a tiny random radgraph.tar.gz of the real layout, fully offline: the CLI runs the model
and its per-report rewards are our partial reward on the annotations that model produces; file resolution; skips."""

import json
import shutil

import pytest
from typer.testing import CliRunner

pytest.importorskip("radgraph.dygie.models.dygie", reason="needs the radgraph package (pip install radgraph==0.1.18)")

from llavarad_cli.cli import app  # noqa: E402
from llavarad_cli.evaluate import radgraph  # noqa: E402
from llavarad_cli.evaluate.assets import MetricSkipped, radgraph_archive  # noqa: E402
from radgraph_fixtures import PUBMEDBERT, tiny_radgraph  # noqa: E402
from llavarad_cli.evaluate.radgraph_model import RadGraphAnnotator, find_files, resolve_bert, unpack  # noqa: E402
from llavarad_cli.evaluate.radgraph_reward import reward  # noqa: E402

BERT_DIR = PUBMEDBERT.split("/")[-1]
REFS = ["No acute cardiopulmonary process. Moderate hiatal hernia.",
        "Mild pulmonary edema and cardiomegaly.",
        "Left pleural effusion with adjacent atelectasis, likely pneumonia.",
        "Heart size is normal. Lungs are clear.",
        "Right upper lobe opacity concerning for pneumonia."]
HYPS = [REFS[0],                                           # identical: 1.0
        "Mild pulmonary edema. Heart size is enlarged.",   # partial overlap
        "Small left pleural effusion with atelectasis.",   # partial overlap
        "",                                                # empty prediction: 0, never annotated
        "No focal consolidation. Right lung opacity."]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The tiny archive folder; unpacked copies go to a temporary XDG cache, not the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))
        yield tiny_radgraph(tmp_path_factory.mktemp("rg"), REFS + HYPS)


def _write_preds(path, hyps, refs):
    path.write_text("".join(json.dumps({"id": f"r{i}", "prediction": h, "reference": r}) + "\n"
                            for i, (h, r) in enumerate(zip(hyps, refs))))
    return path


def test_cli_runs_the_model_and_scores_its_own_annotations(weights, tmp_path):
    preds = _write_preds(tmp_path / "preds.jsonl", HYPS, REFS)
    res = CliRunner().invoke(app, ["evaluate", str(preds), "--metrics", "radgraph", "--radgraph-weights", str(weights),
                                   "--device", "cpu", "--bootstrap", "20", "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    assert "skipped" not in res.output
    per = [json.loads(line)["F1-RadGraph"] for line in (tmp_path / "ev/per_report.jsonl").read_text().splitlines()]

    # the same model, built again, annotates each text; our reward on those annotations is what the CLI wrote
    annotate = radgraph.package_annotator(weights / "radgraph.tar.gz", device="cpu")
    anns = {t: a for t in set(HYPS + REFS) if t for a in annotate([t])}
    expected = [reward(anns[h], anns[r], "partial") if h else 0.0 for h, r in zip(HYPS, REFS)]
    assert per == expected, (per, expected)
    assert per[0] == 1.0 and per[3] == 0.0 and any(0.0 < v < 1.0 for v in per)
    m = json.loads((tmp_path / "ev/metrics.json").read_text())
    assert m["metrics"]["F1-RadGraph"]["value"] == pytest.approx(sum(per) / len(per))
    # the random model does find entities and relations, so the partial reward's relation flag is exercised
    entities = [e for a in anns.values() for e in a["entities"].values()]
    assert entities and any(e["relations"] for e in entities)
    assert {e["label"] for e in entities} <= {"ANAT-DP", "OBS-DP", "OBS-U", "OBS-DA"}


def test_annotations_follow_radgraph_tokenisation_and_do_not_depend_on_batching(weights):
    annotate = radgraph.package_annotator(weights, device="cpu")  # the folder holding radgraph.tar.gz
    text = "Left pleural effusion/atelectasis (small), likely pneumonia."
    one = annotate([text])[0]
    assert one["text"] == "Left pleural effusion / atelectasis ( small ) , likely pneumonia ."
    assert annotate([REFS[1], text, REFS[2]])[1] == one
    for ent in one["entities"].values():
        assert ent["tokens"] == " ".join(one["text"].split()[ent["start_ix"]:ent["end_ix"] + 1])


def test_unpacked_folder_and_bert_inside_it_work_read_only(weights, tmp_path):
    """An unpacked archive with the BERT folder inside it, not writable (no lock files, nothing written there)."""
    folder = tmp_path / "radgraph"
    shutil.copytree(unpack(weights / "radgraph.tar.gz"), folder)
    shutil.copytree(weights / BERT_DIR, folder / BERT_DIR)
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        files = find_files(radgraph_archive(folder))
        assert files.model_dir == folder and files.bert_dir == folder / BERT_DIR
        ann = RadGraphAnnotator(files, "cpu")([REFS[0]])[0]
        assert ann == radgraph.package_annotator(weights, device="cpu")([REFS[0]])[0]
        assert not [p for p in folder.rglob("*") if p.name == ".lock"]  # allennlp's loader would leave one
    finally:
        for path in [folder, *folder.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)


def test_missing_bert_files_offline_is_a_skip_with_the_download_command(weights, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lone = tmp_path / "only-archive"
    lone.mkdir()
    shutil.copy(weights / "radgraph.tar.gz", lone)
    with pytest.raises(MetricSkipped) as err:
        find_files(radgraph_archive(lone))
    msg = str(err.value)
    assert f"hf download {PUBMEDBERT} config.json vocab.txt tokenizer_config.json --local-dir {lone}/{BERT_DIR}" in msg
    assert f"--radgraph-weights {lone}" in msg
    with pytest.raises(MetricSkipped, match="hf download"):
        resolve_bert(PUBMEDBERT, [tmp_path])


def test_no_weights_offline_skips_radgraph_with_both_files_and_other_metrics_run(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    preds = _write_preds(tmp_path / "preds.jsonl", HYPS, REFS)
    res = CliRunner().invoke(app, ["evaluate", str(preds), "--metrics", "bleu,radgraph", "--bootstrap", "0",
                                   "--out", str(tmp_path / "ev")])
    assert res.exit_code == 1, res.output  # radgraph was asked for by name: not scoring it is a failure
    m = json.loads((tmp_path / "ev/metrics.json").read_text())
    assert "BLEU-4" in m["metrics"] and "F1-RadGraph" not in m["metrics"]
    reason = m["skipped"]["F1-RadGraph"]
    assert "radgraph.tar.gz" in reason and "--revision d97745aa" in reason
    assert f"hf download {PUBMEDBERT} config.json vocab.txt tokenizer_config.json" in reason
    assert "--radgraph-weights radgraph" in reason


def test_wrong_weights_path_and_broken_archive_are_skips(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with pytest.raises(MetricSkipped, match="no radgraph.tar.gz"):
        radgraph_archive(tmp_path / "nowhere")
    bad = tmp_path / "radgraph.tar.gz"
    bad.write_bytes(b"not a tarball")
    with pytest.raises(MetricSkipped, match="cannot unpack"):
        unpack(bad)


def test_hub_cache_path_offline(weights, tmp_path, monkeypatch):
    """No --radgraph-weights: the archive (at the pinned revision) and the BERT files come from the hub cache,
    laid out as `hf download` leaves them, with HF_HUB_OFFLINE=1."""
    from huggingface_hub import constants

    from llavarad_cli.evaluate.assets import RADGRAPH_REVISION, SCORERS_REPO

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    for repo, revision, files in ((SCORERS_REPO, RADGRAPH_REVISION, [weights / "radgraph.tar.gz"]),
                                  (PUBMEDBERT, "0" * 40, sorted((weights / BERT_DIR).iterdir()))):
        root = cache / f"models--{repo.replace('/', '--')}"
        (root / "refs").mkdir(parents=True)
        (root / "refs/main").write_text(revision)
        (root / "snapshots" / revision).mkdir(parents=True)
        for f in files:
            shutil.copy(f, root / "snapshots" / revision / f.name)
    archive = radgraph_archive(None)
    assert archive.parent.name == RADGRAPH_REVISION
    files = find_files(archive)
    assert files.bert_dir.parent.parent.name == f"models--{PUBMEDBERT.replace('/', '--')}"
    text = REFS[2]
    assert RadGraphAnnotator(files, "cpu")([text]) == radgraph.package_annotator(weights, device="cpu")([text])
    # the archive in the hub cache but not the BERT: the skip says how to build a local folder, not the cache's
    shutil.rmtree(cache / f"models--{PUBMEDBERT.replace('/', '--')}")
    with pytest.raises(MetricSkipped, match="--local-dir radgraph/BiomedNLP") as err:
        find_files(archive)
    assert str(cache) not in str(err.value)
