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


def test_tiny_vit_is_the_dinov2_architecture_shrunk_by_its_json():
    tower = testing.tiny_vision_tower()
    trunk = tower.trunk
    assert type(trunk).__name__ == "VisionTransformer"
    assert trunk.patch_embed.patch_size == (14, 14)
    assert trunk.num_prefix_tokens == 1 and trunk.embed_dim == testing.TINY_VIT_WIDTH
    assert len(trunk.blocks) == testing.TINY_VIT_KWARGS["depth"]
    assert type(trunk.blocks[0].ls1).__name__ == "LayerScale"  # DINOv2's layer scale, as in the released tower
    tokens = trunk.forward_features(torch.zeros(1, 3, testing.TINY_IMAGE_SIZE, testing.TINY_IMAGE_SIZE))
    assert tokens.shape == (1, 1 + (testing.TINY_IMAGE_SIZE // 14) ** 2, testing.TINY_VIT_WIDTH)
    again = testing.tiny_vision_tower()
    assert all(torch.equal(x, y) for x, y in zip(tower.state_dict().values(), again.state_dict().values()))


def test_trunk_has_open_clips_weight_names_for_the_released_tower():
    """build_trunk replaces open_clip's private builder: for the released JSON it must build the very trunk
    open_clip's TimmModel builds (same weight names and shapes), or the released checkpoint would not load."""
    from open_clip.model import _build_vision_tower

    from llavarad_cli.model.shapes import RELEASED_VISION_CONFIG
    from llavarad_cli.model.vision import build_trunk

    vision_cfg = {**RELEASED_VISION_CONFIG["vision_cfg"], "embed_dim": RELEASED_VISION_CONFIG["embed_dim"]}
    with torch.device("meta"):
        ours = build_trunk(vision_cfg).state_dict()
        theirs = _build_vision_tower(RELEASED_VISION_CONFIG["embed_dim"],
                                     RELEASED_VISION_CONFIG["vision_cfg"]).trunk.state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    assert ours["pos_embed"].shape == (1, 1 + 37 * 37, 768)


def test_tiny_checkpoint_loads_in_a_fresh_process(tmp_path):
    """The README quick start: the tiny checkpoint is written by one process and loaded by another, which
    never imports llavarad_cli.testing (nothing has to be registered with timm)."""
    import subprocess
    import sys

    out = tmp_path / "tiny"
    subprocess.run([sys.executable, "-m", "llavarad_cli.testing", "tiny-checkpoint", str(out), "--layout",
                    "released"], check=True, capture_output=True)
    code = ("import sys; from llavarad_cli.model.loading import load_model; "
            f"m, _ = load_model({str(out)!r}, {str(out / 'base')!r}, device='cpu'); "
            "assert 'llavarad_cli.testing' not in sys.modules, 'the product imported the testing package'; "
            "print(m.vision_tower.num_patches)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["16"]


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
    assert any(k.startswith("module.text") or k.startswith("module.transformer.") for k in state["state_dict"])
