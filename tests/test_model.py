"""The model core: vision tower features, projector shapes/keys, the <image> splice, loss, batched generation."""

from __future__ import annotations

import pytest
import torch

from llavarad_cli.prompts import IGNORE_INDEX, IMAGE_TOKEN_INDEX, render_v1_inference, tokenizer_image_token, user_turn


@pytest.fixture(scope="module")
def tiny():
    from llavarad_cli.testing import tiny_llavarad_model

    return tiny_llavarad_model()


def _pixels(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 56, 56, generator=g)


def _prompt_ids(tok, reason):
    return tokenizer_image_token(render_v1_inference(user_turn(reason)), tok)


def _left_pad(rows, pad_id):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask


def test_vision_tower_is_penultimate_block_without_prefix_or_norm(tiny):
    model, _, _ = tiny
    tower = model.vision_tower
    t = tower.trunk
    px = _pixels(2)
    with torch.no_grad():
        x = t.norm_pre(t._pos_embed(t.patch_embed(px)))
        states = [x]
        for blk in t.blocks:
            x = blk(x)
            states.append(x)
    feats = tower(px)
    assert feats.shape == (2, tower.num_patches, tower.hidden_size) == (2, 16, 32)
    torch.testing.assert_close(feats, states[-2][:, t.num_prefix_tokens:])
    # Not the final block, and no final norm applied.
    assert not torch.allclose(feats, t.norm(states[-2])[:, 1:])


def test_vision_tower_stays_frozen_and_in_eval(tiny):
    model, _, _ = tiny
    model.train()
    try:
        assert model.vision_tower.training is False
        assert all(not p.requires_grad for p in model.vision_tower.parameters())
        assert model.projector.training is True
    finally:
        model.eval()


def test_projector_types_keys_and_released_size():
    from llavarad_cli.errors import UserError
    from llavarad_cli.model.projector import build_projector

    with torch.device("meta"):
        mlp = build_projector("mlp2x_gelu", 768, 4096)
        assert sorted(mlp.state_dict()) == ["0.bias", "0.weight", "2.bias", "2.weight"]
        assert sum(p.numel() for p in mlp.parameters()) == 19_931_136
        assert isinstance(mlp[1], torch.nn.GELU) and mlp[1].approximate == "none"
        assert len(build_projector("mlp3x_gelu", 8, 16)) == 5
        assert len(build_projector("linear", 8, 16)) == 1
    with pytest.raises(UserError):
        build_projector("mlp0x_gelu", 8, 16)


def test_splice_places_image_rows_and_ignores_their_labels(tiny):
    model, tok, _ = tiny
    ids = torch.tensor([[1, 5, IMAGE_TOKEN_INDEX, 7, 8]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 7, 8]])
    px = _pixels(1)
    out = model.prepare_multimodal(ids, torch.ones_like(ids), labels, px)
    p = model.num_image_tokens
    assert out["inputs_embeds"].shape == (1, 4 + p, 64)
    emb = model.lm.get_input_embeddings()
    torch.testing.assert_close(out["inputs_embeds"][0, :2], emb(torch.tensor([1, 5])))
    torch.testing.assert_close(out["inputs_embeds"][0, 2:2 + p], model.encode_images(px)[0])
    torch.testing.assert_close(out["inputs_embeds"][0, 2 + p:], emb(torch.tensor([7, 8])))
    assert out["labels"][0].tolist() == [IGNORE_INDEX] * (2 + p) + [7, 8]
    assert out["position_ids"][0].tolist() == list(range(4 + p))


def test_splice_repads_rows_on_either_side(tiny):
    model, tok, _ = tiny
    # Row 0 is right-padded on input, row 1 left-padded: the splice must strip both and re-pad as asked.
    ids = torch.tensor([[1, IMAGE_TOKEN_INDEX, 9, 0, 0], [0, 1, 4, IMAGE_TOKEN_INDEX, 9]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]])
    p = model.num_image_tokens
    for side in ("left", "right"):
        out = model.prepare_multimodal(ids, mask, None, _pixels(2), padding_side=side)
        m = out["attention_mask"]
        assert m.shape == (2, 3 + p)
        assert m[0].sum() == 2 + p and m[1].sum() == 3 + p
        if side == "left":
            assert m[0, 0] == 0 and m[0, -1] == 1
            assert out["position_ids"][0, 1:].tolist() == list(range(2 + p))
        else:
            assert m[0, -1] == 0 and m[0, 0] == 1
            assert out["position_ids"][0, : 2 + p].tolist() == list(range(2 + p))


def test_mismatched_images_and_placeholders_is_an_error(tiny):
    model, _, _ = tiny
    ids = torch.tensor([[1, IMAGE_TOKEN_INDEX, 9]])
    with pytest.raises(ValueError, match="placeholders"):
        model.prepare_multimodal(ids, None, None, _pixels(2))


def test_loss_is_token_mean_cross_entropy_over_supervised_tokens(tiny):
    model, tok, _ = tiny
    prompt = _prompt_ids(tok, None)
    answer = tok("The lungs are clear.", add_special_tokens=False).input_ids + [tok.eos_token_id]
    ids = torch.tensor([prompt + answer])
    labels = torch.tensor([[IGNORE_INDEX] * len(prompt) + answer])
    px = _pixels(1)
    out = model(ids, torch.ones_like(ids), labels=labels, pixel_values=px)
    logits = out.logits[0].float()
    n = len(answer)
    manual = torch.nn.functional.cross_entropy(logits[-n - 1:-1], torch.tensor(answer))
    torch.testing.assert_close(out.loss, manual)
    out.loss.backward()
    assert model.projector[0].weight.grad is not None
    assert all(p.grad is None for p in model.vision_tower.parameters())
    model.zero_grad(set_to_none=True)


def test_batched_right_padded_logits_equal_single_rows(tiny):
    model, tok, _ = tiny
    rows = [_prompt_ids(tok, None), _prompt_ids(tok, "shortness of breath and cough")]
    width = max(map(len, rows))
    ids = torch.zeros((2, width), dtype=torch.long)
    mask = torch.zeros((2, width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    px = _pixels(2)
    with torch.no_grad():
        batched = model(ids, mask, pixel_values=px).logits
        for i, r in enumerate(rows):
            single = model(torch.tensor([r]), None, pixel_values=px[i:i + 1]).logits[0]
            n = single.shape[0]
            torch.testing.assert_close(batched[i, :n], single, atol=1e-5, rtol=1e-4)


def test_batched_greedy_generation_equals_one_at_a_time(tiny):
    model, tok, _ = tiny
    reasons = [None, "fever", "Chest pain, cough, fever, dyspnea, evaluate for pneumonia.", "preop"]
    rows = [_prompt_ids(tok, r) for r in reasons]
    assert len(set(map(len, rows))) > 1  # the batch really needs padding
    px = _pixels(len(rows), seed=3)
    ids, mask = _left_pad(rows, pad_id=0)
    kwargs = dict(max_new_tokens=12, do_sample=False, eos_token_id=-1)  # never stop early: compare all 12
    batched = model.generate(ids, mask, px, **kwargs)
    assert batched.shape == (len(rows), 12)
    for i, r in enumerate(rows):
        single = model.generate(torch.tensor([r]), None, px[i:i + 1], **kwargs)
        assert single[0].tolist() == batched[i].tolist(), f"row {i} differs"


def test_build_vision_tower_from_open_clip_training_checkpoint(tiny, tmp_path):
    from llavarad_cli.model.vision import build_vision_tower
    from llavarad_cli.testing import write_tiny_vision_tower

    config, ckpt = write_tiny_vision_tower(tmp_path)  # {"state_dict": {"module.visual...", "module.text..."}}
    tower = build_vision_tower(config, ckpt)
    px = _pixels(2, seed=5)
    torch.testing.assert_close(tower(px), tiny[0].vision_tower(px))
    assert tower.image_size == 56 and tower.num_patches == 16
    assert not hasattr(tower, "text")


def test_vision_tower_checkpoint_of_another_shape_is_refused(tmp_path):
    from llavarad_cli.errors import UserError
    from llavarad_cli.model.vision import build_vision_tower
    from llavarad_cli.testing import write_tiny_vision_tower

    config, _ = write_tiny_vision_tower(tmp_path)
    torch.save({"state_dict": {"module.text.x": torch.zeros(1)}}, tmp_path / "bad.pt")
    with pytest.raises(UserError, match="no `visual"):
        build_vision_tower(config, tmp_path / "bad.pt")
    with pytest.raises(UserError, match="not found"):
        build_vision_tower(tmp_path / "missing.json")


class _Custom:
    def __init__(self):
        self.x = 1


def test_pickles_needing_code_are_refused_unless_trusted(tmp_path):
    from llavarad_cli.errors import UserError
    from llavarad_cli.model.weights import load_state_file

    path = tmp_path / "evil.bin"
    torch.save({"w": torch.ones(2), "obj": _Custom()}, path)
    with pytest.raises(UserError) as err:
        load_state_file(path)
    assert "refusing to unpickle" in err.value.one_line() and "--trust-pickle" in err.value.one_line()
    assert "_Custom" in err.value.one_line()
    assert load_state_file(path, trust_pickle=True)["obj"].x == 1
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.bin")
    assert load_state_file(tmp_path / "ok.bin")["w"].tolist() == [1.0, 1.0]
