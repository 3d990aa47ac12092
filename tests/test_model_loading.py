"""Both checkpoint layouts load and reproduce the in-memory model; missing files and bad pickles are clear."""

from __future__ import annotations

import shutil

import pytest
import torch

from llavarad_cli.errors import UserError
from llavarad_cli.prompts import render_v1_inference, tokenizer_image_token, user_turn


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    from llavarad_cli.testing import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("ckpt")
    models = {layout: write_tiny_checkpoint(root / layout, layout) for layout in ("released", "native")}
    return root, models


def _inputs(tok):
    ids = torch.tensor([tokenizer_image_token(render_v1_inference(user_turn("cough")), tok)])
    px = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(7))
    return ids, px


@pytest.mark.parametrize("layout", ["released", "native"])
def test_loaded_checkpoint_logits_equal_in_memory_model(written, layout):
    from llavarad_cli.model.loading import load_model

    root, models = written
    base = str(root / layout / "base") if layout == "released" else None
    loaded, tok = load_model(str(root / layout), base, device="cpu")
    assert loaded.dtype == torch.float32
    assert loaded.config.extra["layout"] == layout
    assert not hasattr(loaded.lm, "peft_config")  # LoRA merged into the base weights
    reference = models[layout]
    ids, px = _inputs(tok)
    with torch.no_grad():
        want = reference(ids, None, pixel_values=px).logits
        got = loaded(ids, None, pixel_values=px).logits
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    with reference.lm.disable_adapter(), torch.no_grad():
        without_lora = reference(ids, None, pixel_values=px).logits
    assert not torch.allclose(got, without_lora, atol=1e-3)  # the merge really mattered


def test_native_round_trip_of_a_saved_model(written, tmp_path):
    from llavarad_cli.model.loading import load_model
    from llavarad_cli.model.native import save_native_checkpoint

    root, models = written
    loaded, tok = load_model(str(root / "native"), device="cpu")
    out = save_native_checkpoint(tmp_path / "full", loaded, tokenizer=tok)  # plain LM -> lm/ full weights
    again, tok2 = load_model(str(out), device="cpu")
    ids, px = _inputs(tok2)
    with torch.no_grad():
        torch.testing.assert_close(again(ids, None, pixel_values=px).logits, loaded(ids, None, pixel_values=px).logits)
    assert (out / "lm" / "config.json").is_file() and (out / "tokenizer.json").is_file()


def test_missing_file_names_the_file_and_the_folder(written, tmp_path):
    from llavarad_cli.model.loading import load_model

    root, _ = written
    copy = tmp_path / "released"
    shutil.copytree(root / "released", copy)
    (copy / "non_lora_trainables.bin").unlink()
    with pytest.raises(UserError) as err:
        load_model(str(copy), str(copy / "base"), device="cpu")
    line = err.value.one_line()
    assert "non_lora_trainables.bin" in line and str(copy) in line

    with pytest.raises(UserError, match="neither llavarad.json nor config.json"):
        load_model(str(tmp_path), device="cpu")


def test_hub_id_offline_and_not_cached_is_one_clear_message(monkeypatch, tmp_path):
    from llavarad_cli.model.loading import load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError) as err:
        load_model("someone/not-cached-model", device="cpu")
    assert "offline" in err.value.one_line() and "someone/not-cached-model" in err.value.one_line()


def test_released_pickles_go_through_weights_only(written, tmp_path):
    from llavarad_cli.model.loading import load_model

    root, _ = written
    copy = tmp_path / "released"
    shutil.copytree(root / "released", copy)
    state = torch.load(copy / "non_lora_trainables.bin", weights_only=True)
    state["note"] = _Note()
    torch.save(state, copy / "non_lora_trainables.bin")
    with pytest.raises(UserError, match="refusing to unpickle"):
        load_model(str(copy), str(copy / "base"), device="cpu")
    model, _ = load_model(str(copy), str(copy / "base"), device="cpu", trust_pickle=True)
    assert model.projector[0].weight.shape == (64, 32)


class _Note:
    pass


def _offline_cache(monkeypatch, cache):
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)


def _hub_cache_copy(cache, repo, folder, leave_out=()):
    """``folder``'s files laid out as the hub cache holds a downloaded snapshot of ``repo``."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("0" * 40)
    for path in folder.iterdir():
        if path.is_file() and path.name not in leave_out:
            shutil.copy(path, snap / path.name)


def test_partly_cached_hub_model_offline_names_the_missing_file_and_the_cache(written, monkeypatch, tmp_path):
    from llavarad_cli.model.loading import load_model

    root, _ = written
    _hub_cache_copy(tmp_path / "cache", "microsoft/llava-rad", root / "released", leave_out={"non_lora_trainables.bin"})
    _offline_cache(monkeypatch, tmp_path / "cache")
    with pytest.raises(UserError) as err:
        load_model("microsoft/llava-rad", str(root / "released" / "base"), device="cpu")
    line = err.value.one_line()
    # Not "the hub repo has no such file": it is only missing from the cache.
    assert "non_lora_trainables.bin" in line and "offline" in line and str(tmp_path / "cache") in line
    assert "has no such file" not in line


def test_fully_cached_hub_model_loads_offline(written, monkeypatch, tmp_path):
    from llavarad_cli.model.loading import load_model

    root, models = written
    _hub_cache_copy(tmp_path / "cache", "microsoft/llava-rad", root / "released")
    _offline_cache(monkeypatch, tmp_path / "cache")
    loaded, tok = load_model("microsoft/llava-rad", str(root / "released" / "base"), device="cpu")
    ids, px = _inputs(tok)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, None, pixel_values=px).logits,
                                   models["released"](ids, None, pixel_values=px).logits, atol=2e-5, rtol=1e-4)


def test_lora_merge_is_w_plus_alpha_over_r_b_a_with_a_peft_0_4_adapter_config(written, tmp_path):
    """Checked by hand, not against PEFT: W' = W + (lora_alpha / r) * B @ A, from the released file shapes."""
    import json

    from transformers import AutoModelForCausalLM

    from llavarad_cli.model.loading import load_model

    root, _ = written
    copy = tmp_path / "released"
    shutil.copytree(root / "released", copy)
    # adapter_config.json as PEFT 0.4 wrote it for microsoft/llava-rad (r 64, alpha 128 there; r 4, alpha 8 here).
    (copy / "adapter_config.json").write_text(json.dumps({
        "auto_mapping": None, "base_model_name_or_path": "lmsys/vicuna-7b-v1.5", "bias": "none",
        "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True, "layers_pattern": None,
        "layers_to_transform": None, "lora_alpha": 8, "lora_dropout": 0.05, "modules_to_save": None,
        "peft_type": "LORA", "r": 4, "revision": None,
        "target_modules": ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"],
        "task_type": "CAUSAL_LM"}))
    loaded, _ = load_model(str(copy), str(copy / "base"), device="cpu")
    base = AutoModelForCausalLM.from_pretrained(str(copy / "base"))
    adapter = torch.load(copy / "adapter_model.bin", weights_only=True)
    for layer, module in [(0, "self_attn.q_proj"), (1, "mlp.down_proj")]:
        prefix = f"base_model.model.model.layers.{layer}.{module}"
        a, b = adapter[f"{prefix}.lora_A.weight"], adapter[f"{prefix}.lora_B.weight"]
        assert a.shape[0] == 4
        want = base.state_dict()[f"model.layers.{layer}.{module}.weight"] + (8 / 4) * b @ a
        torch.testing.assert_close(loaded.lm.state_dict()[f"model.layers.{layer}.{module}.weight"], want)


def test_non_lora_trainables_keys_renamed_like_the_reference(written, tmp_path):
    from llavarad_cli.model.loading import load_model
    from llavarad_cli.model.released import rename_like_reference, split_non_lora_trainables

    t = torch.zeros(1)
    released = {f"base_model.model.model.mm_projector.{i}.{w}": t for i in (0, 2) for w in ("weight", "bias")}
    assert sorted(rename_like_reference(released)) == sorted(
        f"model.mm_projector.{i}.{w}" for i in (0, 2) for w in ("weight", "bias"))
    # Only one `model.` goes, and only when some key starts with `model.model.`.
    assert list(rename_like_reference({"base_model.model.lm_head.weight": t, "model.model.x": t})) == [
        "lm_head.weight", "model.x"]
    assert list(rename_like_reference({"model.mm_projector.0.weight": t})) == ["model.mm_projector.0.weight"]
    projector, lm_state = split_non_lora_trainables({**released, "base_model.model.lm_head.weight": t}, "f")
    assert sorted(projector) == ["0.bias", "0.weight", "2.bias", "2.weight"] and list(lm_state) == ["lm_head.weight"]

    # Extra LM tensors in the file are loaded into the LM (as the reference does); a stray key is refused.
    root, _ = written
    copy = tmp_path / "released"
    shutil.copytree(root / "released", copy)
    state = torch.load(copy / "non_lora_trainables.bin", weights_only=True)
    head = torch.full((1000, 64), 0.5)
    torch.save({**state, "base_model.model.lm_head.weight": head}, copy / "non_lora_trainables.bin")
    loaded, _ = load_model(str(copy), str(copy / "base"), device="cpu")
    torch.testing.assert_close(loaded.lm.lm_head.weight, head)
    torch.save({**state, "base_model.model.model.not_a_weight": head}, copy / "non_lora_trainables.bin")
    with pytest.raises(UserError, match="fit neither the projector nor the base LM"):
        load_model(str(copy), str(copy / "base"), device="cpu")


def test_one_pad_rule_for_tokenizers_and_lm_configs():
    from types import SimpleNamespace

    from llavarad_cli.model.loading import pad_token_id

    assert pad_token_id(SimpleNamespace(pad_token_id=5, unk_token_id=0, eos_token_id=2)) == 5
    assert pad_token_id(SimpleNamespace(pad_token_id=None, unk_token_id=0, eos_token_id=2)) == 0  # pad := unk
    assert pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=[2, 7])) == 2  # an LM config: no unk
    assert pad_token_id(SimpleNamespace()) == 0


def test_tokenizer_without_pad_pads_with_unk(tmp_path):
    from llavarad_cli.model.loading import load_tokenizer, pad_token_id
    from llavarad_cli.testing import tiny_tokenizer as build

    tiny_tokenizer = build()
    tiny_tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    assert tiny_tokenizer.pad_token is None and loaded.pad_token == "<unk>"
    assert loaded.pad_token_id == pad_token_id(loaded) == loaded.unk_token_id == 0


def test_default_device_is_this_process_gpu_or_cpu(monkeypatch):
    import torch

    from llavarad_cli.model.loading import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert pick_device() == torch.device("cuda", 3)  # a launcher's rank 3 owns GPU 3
    monkeypatch.delenv("LOCAL_RANK")
    assert pick_device() == torch.device("cuda", 0)
