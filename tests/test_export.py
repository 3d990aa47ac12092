"""`llavarad export`: the transformers LLaVA folder computes what llavarad computes, on the tiny released-layout
checkpoint and a tiny finetune output — pixels, prompt ids, and greedy findings token for token."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dicom_files import write_dicom
from llavarad_cli import testing
from llavarad_cli.data.images import load_image
from llavarad_cli.errors import UserError
from llavarad_cli.infer.generate import Predictor
from llavarad_cli.infer.settings import GenerationSettings
from llavarad_cli.model.loading import load_model
from llavarad_cli.model.export import export_model
from llavarad_cli.model.export_processor import expand_image, probe_messages
from llavarad_cli.prompts import user_turn

DATA = Path(__file__).parent / "data" / "cxr-images"
REPO = Path(__file__).resolve().parents[1]
REASONS = (None, "shortness of breath", "  Chest pain.  \n\nEvaluate  for PNA \n ")
NEW_TOKENS = 24


def _finetune_output(root: Path) -> Path:
    """A finetune run's final folder, written by the training save code (native layout, LoRA adapter)."""
    from llavarad_cli.specs import build_spec
    from llavarad_cli.train.outputs import save_final

    lm = testing.write_tiny_lm(root / "lm")
    tower_config, tower_ckpt = testing.write_tiny_vision_tower(root / "tower")
    records = root / "train.json"
    records.write_text("[]")
    spec = build_spec("finetune", {
        "model": {"base": str(lm), "projector_type": "mlp2x_gelu",
                  "vision_tower": {"config": str(tower_config), "checkpoint": str(tower_ckpt)}},
        "data": {"train_records": str(records), "image_folder": str(DATA)},
        "lora": {"enabled": True, "r": 4, "alpha": 8}, "output": {"dir": str(root / "run")}})
    model, tokenizer = testing.tiny_lora_model()
    save_final(model, spec, root / "run")
    return root / "run"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-sources")
    testing.write_tiny_checkpoint(root / "released", layout="released")
    return {"released": (root / "released", str(root / "released" / "base")),
            "finetune": (_finetune_output(root / "finetune"), None)}


@pytest.fixture(scope="module")
def exports(sources, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return {name: export_model(str(src), root / name, base, dtype="fp32").out for name, (src, base) in sources.items()}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """8-bit RGB, 8-bit grayscale, 16-bit grayscale, non-square (both orientations), DICOM — as llavarad reads
    them. The non-square sizes put the crop where rounding down and rounding half to even differ."""
    root = tmp_path_factory.mktemp("images")
    gray = Image.open(DATA / "nih" / "00000001_000.png")
    assert gray.mode == "L"
    png16 = root / "sixteen.png"
    Image.fromarray((np.asarray(gray.resize((540, 512)), dtype=np.uint16) * 257)).save(png16)
    assert Image.open(png16).mode.startswith("I")
    portrait = root / "portrait.png"
    Image.open(DATA / "iu" / "CXR7_IM-2263-1001.png").resize((512, 540)).save(portrait)
    dicom = write_dicom(root / "study.dcm", np.asarray(gray.resize((100, 120)), dtype=np.uint16) * 16, "MONOCHROME1")
    paths = {"rgb8": DATA / "iu" / "CXR7_IM-2263-1001.png", "gray8": DATA / "nih" / "00000001_000.png",
             "png16": png16, "portrait": portrait, "dicom": dicom}
    return {name: load_image(path) for name, path in paths.items()}


def _both_sides(src, out, base=None):
    """llavarad's model (with its predictor) on ``src``, and transformers' model and processor on the export."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    ours, tokenizer = load_model(str(src), base, device="cpu", dtype="fp32")
    predictor = Predictor(ours, tokenizer, GenerationSettings(max_new_tokens=NEW_TOKENS))
    hf = AutoModelForImageTextToText.from_pretrained(str(out))
    processor = AutoProcessor.from_pretrained(str(out), trust_remote_code=True)
    return ours, tokenizer, predictor, hf, processor


def _llavarad_ids(model, predictor: Predictor, query: str, pixels: torch.Tensor) -> list[int]:
    """New token ids exactly as ``Predictor.predict`` generates them (one row)."""
    ids = torch.tensor([predictor.prompt_ids(query)])
    kwargs = {**predictor.settings.kwargs(), "pad_token_id": predictor.pad_id, "eos_token_id": predictor.eos_id}
    return model.generate(ids, torch.ones_like(ids), pixels[None], **kwargs)[0].tolist()


@pytest.mark.parametrize("which", ["released", "finetune"])
def test_transformers_alone_reproduces_llavarad(which, sources, exports, images):
    from transformers import LlavaForConditionalGeneration

    src, base = sources[which]
    ours, tokenizer, predictor, hf, processor = _both_sides(src, exports[which], base)
    assert type(hf) is LlavaForConditionalGeneration
    image_id, n_image = hf.config.image_token_id, ours.num_image_tokens
    assert n_image == (testing.TINY_IMAGE_SIZE // 14) ** 2
    for name, image in images.items():
        pixels = predictor.pixel_values(image)
        with torch.no_grad():
            # The tiny tower's layer scale is 1e-5 (DINOv2's init), so a wrong feature layer barely moves the
            # greedy text: compare the projected features themselves.
            features = hf.model.get_image_features(
                pixel_values=pixels[None], vision_feature_layer=hf.config.vision_feature_layer,
                vision_feature_select_strategy=hf.config.vision_feature_select_strategy).pooler_output[0]
            assert float((features - ours.encode_images(pixels[None])[0]).abs().max()) <= 1e-6, name
        for reason in REASONS:
            query = user_turn(reason)
            prompt = processor.apply_chat_template(probe_messages(reason), add_generation_prompt=True)
            assert prompt == predictor.prompt(query)
            inputs = processor(images=image, text=prompt, return_tensors="pt")
            assert float((inputs["pixel_values"][0] - pixels).abs().max()) <= 1e-6, name
            assert inputs["input_ids"][0].tolist() == expand_image(predictor.prompt_ids(query), image_id, n_image)
            with torch.no_grad():
                logits = hf(**inputs).logits[0, -1]
                own = ours(input_ids=torch.tensor([predictor.prompt_ids(query)]), pixel_values=pixels[None]).logits[0, -1]
            assert float((logits[:image_id] - own).abs().max()) <= 1e-5
            out = hf.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
            theirs = out[0, inputs["input_ids"].shape[1]:].tolist()
            assert theirs == _llavarad_ids(ours, predictor, query, pixels), (name, reason)
            text = processor.decode(theirs, skip_special_tokens=True).strip()
            assert text == predictor.predict([query], pixels[None])[0]


@pytest.fixture(scope="module")
def strong_tower(tmp_path_factory):
    """A tiny native checkpoint whose tower's layer scales are O(1), not DINOv2's 1e-5 init: every block then
    changes the features, so a wrong feature layer, norm or layer-scale mapping shows."""
    from llavarad_cli.model.native import save_native_checkpoint

    root = tmp_path_factory.mktemp("strong-tower")
    model, tokenizer = testing.tiny_lora_model()
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for block in model.vision_tower.trunk.blocks:
            for scale in (block.ls1.gamma, block.ls2.gamma):
                scale.copy_(torch.rand(scale.shape, generator=generator) + 0.5)
    base = testing.write_tiny_lm(root / "base")
    save_native_checkpoint(root / "model", model, base=str(base))
    return root / "model", export_model(str(root / "model"), root / "export", dtype="fp32").out


def test_strong_tower_features_and_logits(strong_tower, images):
    ours, _, predictor, hf, processor = _both_sides(*strong_tower)
    for name in ("rgb8", "portrait"):
        pixels = predictor.pixel_values(images[name])
        with torch.no_grad():
            own_features = ours.encode_images(pixels[None])[0]
            features = hf.model.get_image_features(
                pixel_values=pixels[None], vision_feature_layer=hf.config.vision_feature_layer,
                vision_feature_select_strategy=hf.config.vision_feature_select_strategy).pooler_output[0]
        assert float((features - own_features).abs().max()) <= 1e-5 * float(own_features.abs().max())
        query = user_turn(REASONS[1])
        inputs = processor(images=images[name], text=predictor.prompt(query), return_tensors="pt")
        with torch.no_grad():
            logits = hf(**inputs).logits[0, -1, :hf.config.image_token_id]
            own = ours(input_ids=torch.tensor([predictor.prompt_ids(query)]), pixel_values=pixels[None]).logits[0, -1]
        assert float((logits - own).abs().max()) <= 1e-4
        out_ids = hf.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)[0, inputs["input_ids"].shape[1]:]
        assert out_ids.tolist() == _llavarad_ids(ours, predictor, query, pixels)


def test_batched_transformers_generate_with_padding(exports, images):
    """Left-padded rows of different lengths generate what each does alone (the pad id is not the image id)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    hf = AutoModelForImageTextToText.from_pretrained(str(exports["released"]))
    processor = AutoProcessor.from_pretrained(str(exports["released"]), trust_remote_code=True)
    prompts = [processor.apply_chat_template(probe_messages(r), add_generation_prompt=True) for r in REASONS[:2]]
    pics = [images["rgb8"], images["dicom"]]
    batch = processor(images=pics, text=prompts, return_tensors="pt", padding=True)
    assert processor.tokenizer.padding_side == "left" and batch["attention_mask"][0, 0] == 0
    together = hf.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False)[:, batch["input_ids"].shape[1]:]
    for row, (prompt, pic) in enumerate(zip(prompts, pics)):
        alone = processor(images=pic, text=prompt, return_tensors="pt")
        single = hf.generate(**alone, max_new_tokens=NEW_TOKENS, do_sample=False)[0, alone["input_ids"].shape[1]:]
        assert together[row, :len(single)].tolist() == single.tolist()


def test_round_trip_infer_on_exported_folder(sources, exports, images):
    """`llavarad infer --model OUT` loads the export and writes the original's findings."""
    from llavarad_cli.model.loading import detect_layout

    src, base = sources["finetune"]
    assert detect_layout(str(exports["finetune"])) == "exported"
    original = Predictor(*load_model(str(src), base, device="cpu", dtype="fp32"), GenerationSettings(NEW_TOKENS))
    exported_model, exported_tok = load_model(str(exports["finetune"]), device="cpu", dtype="fp32")
    exported = Predictor(exported_model, exported_tok, GenerationSettings(NEW_TOKENS))
    assert exported_model.lm.get_input_embeddings().weight.shape == original.model.lm.get_input_embeddings().weight.shape
    for image in (images["rgb8"], images["portrait"]):
        pixels = original.pixel_values(image)
        assert torch.equal(exported.pixel_values(image), pixels)
        queries = [user_turn(r) for r in REASONS]
        assert [exported.prompt_ids(q) for q in queries] == [original.prompt_ids(q) for q in queries]
        assert exported.predict(queries, pixels.expand(3, -1, -1, -1)) == original.predict(queries, pixels.expand(3, -1, -1, -1))


def test_exported_weights_and_config(sources, exports):
    from safetensors.torch import load_file

    folder = exports["released"]
    config = json.loads((folder / "config.json").read_text())
    assert config["vision_config"]["model_type"] == "dinov2" and config["vision_feature_layer"] == -2
    assert config["vision_feature_select_strategy"] == "default" and config["projector_hidden_act"] == "gelu"
    generation = json.loads((folder / "generation_config.json").read_text())
    image_id = config["image_token_index"]
    assert generation["suppress_tokens"] == [image_id] and generation["do_sample"] is False
    assert sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth")) == []
    weights = load_file(str(folder / "model.safetensors"))
    ours, _ = load_model(str(sources["released"][0]), sources["released"][1], device="cpu", dtype="fp32")
    for name in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        assert weights[name].shape[0] == image_id + 1 and not weights[name][image_id].any()
    assert torch.equal(weights["lm_head.weight"][:image_id], ours.lm.lm_head.weight)  # the LoRA merged LM
    qkv = ours.vision_tower.trunk.blocks[1].attn.qkv.weight
    assert torch.equal(torch.cat([weights[f"model.vision_tower.encoder.layer.1.attention.{p}_proj.weight"]
                                  for p in "qkv"]), qkv)
    card = (folder / "README.md").read_text()
    assert "Research use only" in card and str(sources["released"][0]) in card and "llavarad 0." in card


def test_fp16_export_weights_are_fp16(sources, tmp_path):
    from safetensors import safe_open

    src, base = sources["released"]
    out = export_model(str(src), tmp_path / "half", base).out  # the default dtype
    with safe_open(str(out / "model.safetensors"), "pt") as fh:
        assert {fh.get_slice(k).get_dtype() for k in fh.keys()} == {"F16"}


def test_export_is_deterministic(sources, exports, tmp_path):
    src, base = sources["finetune"]
    again = export_model(str(src), tmp_path / "again", base, dtype="fp32").out
    first = exports["finetune"]
    assert sorted(p.name for p in again.iterdir()) == sorted(p.name for p in first.iterdir())
    assert (again / "model.safetensors").read_bytes() == (first / "model.safetensors").read_bytes()
    for name in ("config.json", "tokenizer.json", "processor_config.json", "generation_config.json"):
        assert (again / name).read_bytes() == (first / name).read_bytes(), name


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "llavarad_cli", *args], capture_output=True, text=True, env=env)


def test_cli_refuses_non_empty_out_without_overwrite(sources, tmp_path):
    src, base = sources["released"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    refused = _cli("export", str(src), str(out), "--model-base", base)
    assert refused.returncode == 2 and "not empty" in refused.stderr and "--overwrite" in refused.stderr
    assert (out / "keep.txt").read_text() == "mine"
    done = _cli("export", str(src), str(out), "--model-base", base, "--overwrite")
    assert done.returncode == 0, done.stderr
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging or old folder left


def test_linear_projector_is_a_one_line_error(tmp_path):
    from llavarad_cli.model.native import save_native_checkpoint

    model, _, _ = testing.tiny_llavarad_model(projector_type="linear")
    base = testing.write_tiny_lm(tmp_path / "base")
    save_native_checkpoint(tmp_path / "linear", model, base=str(base))
    with pytest.raises(UserError, match="cannot export the `linear` projector"):
        export_model(str(tmp_path / "linear"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("size", [(540, 512), (512, 540), (59, 56), (530, 512), (300, 200)])
def test_processor_crop_rounds_like_torchvision(exports, size):
    """The opt-in processor is exact everywhere; stock transformers (PIL backend) differs only where the crop
    offset's rounding does (resized long side exceeding the crop by 3 mod 4)."""
    from transformers import AutoProcessor

    from llavarad_cli.model.vision import eval_transform

    image = Image.open(DATA / "iu" / "CXR7_IM-2263-1001.png").convert("RGB").resize(size)
    expected = eval_transform(testing.TINY_IMAGE_SIZE)(image)
    folder = str(exports["released"])
    exact = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    stock = AutoProcessor.from_pretrained(folder, backend="pil")
    assert type(stock).__name__ == "LlavaProcessor"

    def pixels(processor):
        return torch.as_tensor(processor(images=image, text="<image>", return_tensors="pt")["pixel_values"][0])

    assert float((pixels(exact) - expected).abs().max()) <= 1e-6
    excess = int(testing.TINY_IMAGE_SIZE * max(size) / min(size)) - testing.TINY_IMAGE_SIZE
    stock_diff = float((pixels(stock) - expected).abs().max())
    assert (stock_diff <= 1e-6) == (excess % 4 != 3)


def _readme_snippet() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Use with other tools", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


README_EXPORT = "/tmp/tiny-llavarad-hf"


def test_readme_transformers_snippet_runs_as_written(exports):
    """The README's snippet, from the repo root as the README runs it, only its export folder (the README's
    `llavarad export` writes it to /tmp) pointed at this test's tiny export; the model card has the same."""
    from llavarad_cli.export_card import usage_snippet

    snippet = _readme_snippet()
    assert snippet == usage_snippet(README_EXPORT, "tests/data/cxr-images/iu/CXR3_IM-1384-1001.png")
    assert usage_snippet() in (exports["released"] / "README.md").read_text()
    assert snippet.count(f'"{README_EXPORT}"') == 1
    snippet = snippet.replace(f'"{README_EXPORT}"', json.dumps(str(exports["released"])))
    run = subprocess.run([sys.executable, "-c", snippet], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip()


def test_stream_writer_holds_one_produced_tensor_at_a_time(tmp_path):
    from safetensors.torch import load_file

    from llavarad_cli.model.export_weights import PlannedTensor, write_weights

    live: list[weakref.ref] = []
    values = {f"t{i}": torch.arange(i * 10, i * 10 + 6, dtype=torch.float32).reshape(2, 3) + 0.5 for i in range(5)}

    def producer(name):
        def produce():
            assert all(ref() is None for ref in live), "an earlier tensor is still alive"
            tensor = values[name].clone().to(torch.bfloat16)
            live.append(weakref.ref(tensor))
            return tensor
        return produce

    plan = [PlannedTensor(name, (2, 3), torch.bfloat16, producer(name)) for name in values]
    files = write_weights(tmp_path, plan, max_bytes=30)  # 12 bytes a tensor: shards of two
    assert files[-1] == "model.safetensors.index.json" and len(files) == 4
    loaded = {}
    for name in files[:-1]:
        loaded.update(load_file(str(tmp_path / name)))
    assert sorted(loaded) == sorted(values)
    assert all(torch.equal(loaded[k], values[k].to(torch.bfloat16)) for k in values)
    index = json.loads((tmp_path / files[-1]).read_text())
    assert sorted(index["weight_map"]) == sorted(values)


# -- a SentencePiece base (Vicuna's kind): the export's tokenizer.json encodes like sentencepiece ---------------

WHITESPACE_REASONS = ("No pneumothorax.  Heart normal.", "   leading and trailing   ", "a\n\nb \n c\t d  ",
                      "fièvre 38°C, µg ½ 鬱 🧬", "FINDINGS: \n \n Cardiac size")


@pytest.fixture(scope="module")
def sentencepiece_export(tmp_path_factory):
    """A tiny LM with the real 32000-row vocabulary of a LLaMA-style SentencePiece model (the one the
    tokenisation tests use, from the mistral-common wheel), saved with that tokenizer, and its export."""
    mistral_common = pytest.importorskip("mistral_common")
    import shutil

    from transformers import LlamaForCausalLM

    from llavarad_cli.model.native import save_native_checkpoint
    from llavarad_cli.model.loading import load_tokenizer
    from llavarad_cli.model.sp_tokenizer import SentencePieceTokenizer

    sp_model = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    if not sp_model.is_file():
        pytest.skip("mistral-common has no tokenizer.model.v1")
    root = tmp_path_factory.mktemp("sentencepiece")
    (root / "tok").mkdir()
    shutil.copy(sp_model, root / "tok" / "tokenizer.model")
    (root / "tok" / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
         "add_bos_token": True, "add_eos_token": False, "legacy": False, "clean_up_tokenization_spaces": False}))
    tokenizer = load_tokenizer(str(root / "tok"))
    assert isinstance(tokenizer, SentencePieceTokenizer)
    model, _, _ = testing.tiny_llavarad_model()
    torch.manual_seed(5)
    model.lm = LlamaForCausalLM(testing.tiny_llama_config(vocab_size=32000)).eval()
    save_native_checkpoint(root / "model", model, lm_weights="full", tokenizer=tokenizer)
    return root / "model", export_model(str(root / "model"), root / "export", dtype="fp32").out


def test_sentencepiece_base_export_matches_llavarad(sentencepiece_export, images):
    from tokenizers import Tokenizer

    src, out = sentencepiece_export
    ours, tokenizer, predictor, hf, processor = _both_sides(src, out)
    image_id = hf.config.image_token_id
    assert image_id == 32000
    pixels = predictor.pixel_values(images["gray8"])
    for reason in REASONS + WHITESPACE_REASONS:
        query = user_turn(reason)
        prompt = processor.apply_chat_template(probe_messages(reason), add_generation_prompt=True)
        inputs = processor(images=images["gray8"], text=prompt, return_tensors="pt")
        assert inputs["input_ids"][0].tolist() == expand_image(predictor.prompt_ids(query), image_id,
                                                               ours.num_image_tokens), reason
        theirs = hf.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)[0, inputs["input_ids"].shape[1]:]
        assert theirs.tolist() == _llavarad_ids(ours, predictor, query, pixels), reason
        assert processor.decode(theirs, skip_special_tokens=True).strip() == predictor.predict([query], pixels[None])[0]
    # The text part alone, on whitespace-heavy and byte-fallback strings: sentencepiece's ids and text.
    exported = Tokenizer.from_file(str(out / "tokenizer.json"))
    for text in WHITESPACE_REASONS + ("  ", "\t", "x  \n\n  y", "\x01 ǅ\u2028"):
        assert exported.encode(text).ids == tokenizer(text).input_ids, text
        ids = tokenizer(text).input_ids
        assert exported.decode(ids, skip_special_tokens=True) == tokenizer.decode(ids, skip_special_tokens=True)
    # `infer --model OUT` tokenises with the same sentencepiece files again.
    again, again_tok = load_model(str(out), device="cpu", dtype="fp32")
    assert type(again_tok) is type(tokenizer)
    assert Predictor(again, again_tok, GenerationSettings(NEW_TOKENS)).predict(
        [user_turn(WHITESPACE_REASONS[0])], pixels[None]) == predictor.predict([user_turn(WHITESPACE_REASONS[0])], pixels[None])


def test_export_refuses_to_replace_its_own_source(sources):
    src, base = sources["released"]
    with pytest.raises(UserError, match="would replace the model being exported"):
        export_model(str(src), src, base, overwrite=True)
    with pytest.raises(UserError, match="would replace the model being exported"):
        export_model(str(src), src.parent, base, overwrite=True)
    assert (src / "config.json").is_file()
