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
    from llavarad_cli.model.checkpoint import load_model

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
    from llavarad_cli.model.checkpoint import load_model, save_native_checkpoint

    root, models = written
    loaded, tok = load_model(str(root / "native"), device="cpu")
    out = save_native_checkpoint(tmp_path / "full", loaded, tokenizer=tok)  # plain LM -> lm/ full weights
    again, tok2 = load_model(str(out), device="cpu")
    ids, px = _inputs(tok2)
    with torch.no_grad():
        torch.testing.assert_close(again(ids, None, pixel_values=px).logits, loaded(ids, None, pixel_values=px).logits)
    assert (out / "lm" / "config.json").is_file() and (out / "tokenizer.json").is_file()


def test_missing_file_names_the_file_and_the_folder(written, tmp_path):
    from llavarad_cli.model.checkpoint import load_model

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
    from llavarad_cli.model.checkpoint import load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError) as err:
        load_model("someone/not-cached-model", device="cpu")
    assert "offline" in err.value.one_line() and "someone/not-cached-model" in err.value.one_line()


def test_released_pickles_go_through_weights_only(written, tmp_path):
    from llavarad_cli.model.checkpoint import load_model

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
