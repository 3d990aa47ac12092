"""The CheXbert labeler path with a tiny random model of the real architecture, built offline."""

import numpy as np
import pytest
import torch

import chexbert_fixtures as fixtures
from llavarad_cli.errors import UserError
from llavarad_cli.evaluate import chexbert

TEXTS = ["No pleural effusion. Normal heart size.", "Mild cardiomegaly with pulmonary edema.",
         "Left basal atelectasis and a small left pleural effusion.", "", "Endotracheal tube in place. " * 150,
         "No acute cardiopulmonary process.", "Stable cardiomegaly.", "Right lower lobe consolidation."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chexbert")
    tok = fixtures.wordpiece_tokenizer(TEXTS * 3, folder / "tokenizer", vocab_size=300)
    cfg = fixtures.tiny_bert_config(vocab_size=300)
    fixtures.random_chexbert(folder / "chexbert.pth", cfg, seed=0)
    model = chexbert.build_labeler(cfg)
    chexbert.load_state(model, folder / "chexbert.pth")
    return folder, tok, cfg, model


def test_checkpoint_layout_loads_strictly_and_matches(tiny):
    folder, _, cfg, model = tiny
    state = torch.load(folder / "chexbert.pth", weights_only=True)["model_state_dict"]
    assert all(k.startswith("module.") for k in state)
    assert {k[7:] for k in state} == set(model.state_dict())
    assert len(model.linear_heads) == 14 and model.linear_heads[13].out_features == 2
    assert all(h.out_features == 4 for h in model.linear_heads[:13])


def test_old_position_ids_buffer_is_tolerated_and_wrong_files_are_user_errors(tiny, tmp_path):
    folder, _, cfg, _ = tiny
    ckpt = torch.load(folder / "chexbert.pth", weights_only=True)
    ckpt["model_state_dict"]["module.bert.embeddings.position_ids"] = torch.arange(512)[None]
    torch.save(ckpt, tmp_path / "old.pth")
    chexbert.load_state(chexbert.build_labeler(cfg), tmp_path / "old.pth")
    del ckpt["model_state_dict"]["module.linear_heads.13.bias"]
    torch.save(ckpt, tmp_path / "broken.pth")
    with pytest.raises(UserError, match="does not match the CheXbert labeler"):
        chexbert.load_state(chexbert.build_labeler(cfg), tmp_path / "broken.pth")
    other_size = fixtures.tiny_bert_config(vocab_size=300)
    other_size.hidden_size, other_size.intermediate_size = 48, 96
    with pytest.raises(UserError, match="does not match the CheXbert labeler"):
        chexbert.load_state(chexbert.build_labeler(other_size), folder / "chexbert.pth")
    assert chexbert.labeler_config(folder / "chexbert.pth").hidden_size == cfg.hidden_size  # config.json beside it
    assert chexbert.labeler_config(tmp_path / "old.pth").hidden_size == 768  # none beside it: bert-base
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot be read"):
        chexbert.load_state(chexbert.build_labeler(cfg), tmp_path / "junk.pth")


def test_encoding_normalises_whitespace_and_truncates_like_the_original(tiny):
    _, tok, _, _ = tiny
    assert chexbert.encode(tok, "  No pleural\n\n effusion. ") == chexbert.encode(tok, "No pleural effusion.")
    assert chexbert.encode(tok, "") == [tok.cls_token_id, tok.sep_token_id]
    long = chexbert.encode(tok, TEXTS[4])
    assert len(long) == 512 and long[0] == tok.cls_token_id and long[-1] == tok.sep_token_id
    full = [tok.cls_token_id] + tok.convert_tokens_to_ids(tok.tokenize(TEXTS[4].strip()))
    assert long[:511] == full[:511]


def test_sorted_batches_give_the_same_labels_as_one_at_a_time(tiny):
    _, tok, _, model = tiny
    one = chexbert.label_texts(model, tok, TEXTS, batch_size=1, device="cpu")
    sorted_ = chexbert.label_texts(model, tok, TEXTS, batch_size=3, device="cpu")
    unsorted = chexbert.label_texts(model, tok, TEXTS, batch_size=3, device="cpu", sort_by_length=False)
    assert one.shape == (len(TEXTS), 14)
    assert (one == sorted_).all() and (one == unsorted).all()
    assert set(np.unique(one[:, :13])) <= {0, 1, 2, 3} and set(np.unique(one[:, 13])) <= {0, 1}
    assert len({tuple(r) for r in one}) > 1  # the labels depend on the text


def test_batches_hold_at_most_the_reports_and_padded_tokens_asked_for(tiny):
    lengths = [5, 5, 6, 30, 31, 200, 600]
    batches = chexbert._batches(range(len(lengths)), lengths, batch_size=2, padded_tokens=64)
    assert batches == [[0, 1], [2, 3], [4], [5], [6]]  # a report longer than the budget still gets a batch
    assert chexbert._batches(range(7), lengths, batch_size=128, padded_tokens=10**6) == [list(range(7))]
    assert chexbert.padded_tokens_per_batch("cpu") < chexbert.padded_tokens_per_batch("cuda:0")
    _, tok, _, model = tiny
    one = chexbert.label_texts(model, tok, TEXTS, batch_size=1, device="cpu")
    for budget in (1, 64, 10**6):  # one report a batch, a few, all in one
        assert (chexbert.label_texts(model, tok, TEXTS, device="cpu", padded_tokens=budget) == one).all()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_asking_for_a_missing_gpu_is_a_user_error(tiny):
    _, tok, _, model = tiny
    with pytest.raises(UserError, match="no CUDA GPU"):
        chexbert.label_texts(model, tok, ["x"], device="cuda")
