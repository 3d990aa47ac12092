"""Precision as the paper evaluated: fp16 on GPU by default (bf16 a choice), fp32 on CPU; fp16 has no silent
overflow path: the tiny model runs in fp16 with extreme images and long left padding, and non-finite scores
stop generation with a one-line hint instead of decoding as empty findings."""

from __future__ import annotations

import pytest
import torch

from llavarad_cli.errors import UserError
from llavarad_cli.model.loading import pick_device, pick_dtype


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA machine as far as the selection logic can tell (nothing is allocated on it)."""
    def set_gpu(bf16: bool):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    return set_gpu


@pytest.mark.parametrize("bf16", [True, False])
def test_gpu_defaults_to_fp16_whether_or_not_it_has_bf16(fake_gpu, bf16):
    fake_gpu(bf16)
    device = pick_device(None)
    assert device.type == "cuda"
    assert pick_dtype(device) == torch.float16
    assert pick_dtype(pick_device("cuda:1")) == torch.float16


def test_bf16_and_fp32_stay_choices_and_cpu_defaults_to_fp32(fake_gpu):
    assert pick_dtype(torch.device("cpu")) == torch.float32
    fake_gpu(True)
    assert pick_dtype(torch.device("cuda"), "bf16") == torch.bfloat16
    assert pick_dtype(torch.device("cuda"), "fp32") == torch.float32
    assert pick_dtype(torch.device("cpu"), "fp16") == torch.float16
    with pytest.raises(UserError, match="unknown dtype"):
        pick_dtype(torch.device("cuda"), "int8")


def test_no_gpu_means_cpu_and_fp32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    device = pick_device(None)
    assert device.type == "cpu" and pick_dtype(device) == torch.float32
    with pytest.raises(UserError, match="no CUDA GPU"):
        pick_device("cuda")


@pytest.fixture(scope="module")
def tiny_fp16():
    from llavarad_cli import testing

    model, tokenizer, transform = testing.tiny_llavarad_model()
    return model.to(torch.float16), tokenizer, transform


def _extreme_pixels(transform):
    from PIL import Image

    images = [Image.new("RGB", (64, 64), (255, 255, 255)), Image.new("RGB", (64, 64), (0, 0, 0)),
              Image.new("RGB", (64, 64), (255, 0, 255))]
    return torch.stack([transform(i) for i in images])


def test_fp16_tower_and_lm_stay_finite_for_extreme_images_and_long_padding(tiny_fp16):
    from llavarad_cli.infer.generate import GenerationSettings, Predictor
    from llavarad_cli.prompts import user_turn

    model, tokenizer, transform = tiny_fp16
    pixels = _extreme_pixels(transform)
    assert model.vision_tower.dtype == torch.float16
    hidden = model.encode_images(pixels)
    assert hidden.dtype == torch.float16 and torch.isfinite(hidden).all()
    # One prompt hundreds of tokens longer than the others: most of each short row is left padding, whose
    # query rows see no key at all under the padding mask.
    queries = [user_turn(None), user_turn("shortness of breath " * 60), user_turn("x")]
    predictor = Predictor(model, tokenizer, GenerationSettings(max_new_tokens=6))
    batched = predictor.predict(queries, pixels)
    assert batched == [predictor.predict([q], pixels[i:i + 1])[0] for i, q in enumerate(queries)]
    assert all(batched)


def test_non_finite_scores_stop_fp16_generation_with_a_hint(tiny_fp16, monkeypatch):
    from llavarad_cli.infer.generate import GenerationSettings, Predictor
    from llavarad_cli.prompts import user_turn

    model, tokenizer, transform = tiny_fp16
    pixels = _extreme_pixels(transform)[:1]
    real = model.encode_images
    # What an fp16 overflow in the tower looks like downstream: inf activations, then NaN everywhere.
    monkeypatch.setattr(model, "encode_images", lambda px: real(px) * torch.tensor(float("inf"), dtype=torch.float16))
    with pytest.raises(UserError, match="fp16 overflowed") as err:
        Predictor(model, tokenizer, GenerationSettings(max_new_tokens=4)).predict([user_turn(None)], pixels)
    assert "--dtype bf16" in err.value.hint
