"""The tiny offline fixtures are deterministic and have the shapes the real parts have."""

from __future__ import annotations

import torch

from llavarad_cli import testing


def test_tokenizer_is_llama_shaped_and_deterministic(tiny_tokenizer):
    again = testing.tiny_tokenizer()
    text = "The heart is normal in size. No pleural effusion.</s>"
    ids = tiny_tokenizer(text).input_ids
    assert ids == again(text).input_ids
    assert ids[0] == tiny_tokenizer.bos_token_id == 1
    assert ids[-1] == tiny_tokenizer.eos_token_id == 2
    assert tiny_tokenizer.unk_token_id == 0
    assert tiny_tokenizer.convert_ids_to_tokens(ids[1]).startswith("▁")
    assert tiny_tokenizer.unk_token_id not in ids
    assert tiny_tokenizer.decode(ids, skip_special_tokens=True) == "The heart is normal in size. No pleural effusion."


def test_tiny_lm_is_seeded_llama():
    a, b = testing.tiny_lm(seed=5), testing.tiny_lm(seed=5)
    assert type(a).__name__ == "LlamaForCausalLM"
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name
    c = testing.tiny_lm(seed=6)
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    out = a(input_ids=torch.tensor([[1, 5, 6]]))
    assert out.logits.shape == (1, 3, testing.TINY_VOCAB_SIZE)


def test_tiny_vit_goes_through_open_clip_timm_trunk():
    model = testing.tiny_open_clip()
    trunk = model.visual.trunk
    assert type(model.visual).__name__ == "TimmModel"
    assert type(trunk).__name__ == "VisionTransformer"
    assert trunk.patch_embed.patch_size == (14, 14)
    assert trunk.num_prefix_tokens == 1 and trunk.embed_dim == testing.TINY_VIT_WIDTH
    tokens = trunk.forward_features(torch.zeros(1, 3, testing.TINY_IMAGE_SIZE, testing.TINY_IMAGE_SIZE))
    assert tokens.shape == (1, 1 + (testing.TINY_IMAGE_SIZE // 14) ** 2, testing.TINY_VIT_WIDTH)
    again = testing.tiny_open_clip()
    assert all(torch.equal(x, y) for x, y in zip(model.state_dict().values(), again.state_dict().values()))


def test_writers_produce_loadable_files(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm_dir = testing.write_tiny_lm(tmp_path / "lm")
    tok = AutoTokenizer.from_pretrained(lm_dir)
    assert tok("No effusion.").input_ids == testing.tiny_tokenizer()("No effusion.").input_ids
    lm = AutoModelForCausalLM.from_pretrained(lm_dir)
    assert torch.equal(lm.lm_head.weight, testing.tiny_lm().lm_head.weight)

    config, ckpt = testing.write_tiny_vision_tower(tmp_path / "tower")
    assert config.is_file() and ckpt.is_file()
    state = torch.load(ckpt, weights_only=True)
    assert any(k.startswith("module.visual.trunk.") for k in state["state_dict"])
