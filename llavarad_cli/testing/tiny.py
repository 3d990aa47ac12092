"""Tiny, offline, seeded stand-ins for the real parts: for tests, benchmarks and smoke-testing an install.

- a tiny LLaMA-family LM (``LlamaForCausalLM``) with a SentencePiece-shaped BPE tokenizer trained here, offline;
- a tiny DINOv2 ViT: BiomedCLIP-CXR's ``vit_base_patch14_dinov2`` trunk with its size given as
  ``timm_model_kwargs`` in the tower JSON, so the product builds it like any tower and nothing is registered
  with timm (a tiny checkpoint written here loads in another process, e.g. ``llavarad infer``).

Nothing here touches the Hugging Face hub. Production code never imports this package.
"""

from __future__ import annotations

import json
from pathlib import Path

#: The released tower's timm architecture; the tiny one is the same blocks, layer scale and CLS token, shrunk.
TINY_VIT_ARCH = "vit_base_patch14_dinov2"
TINY_IMAGE_SIZE = 56          # 56 / 14 = 4 -> 16 patch tokens
TINY_VIT_WIDTH = 32
#: ``timm.create_model`` arguments that shrink the architecture (the JSON's ``timm_model_kwargs``).
TINY_VIT_KWARGS = {"img_size": TINY_IMAGE_SIZE, "patch_size": 14, "embed_dim": TINY_VIT_WIDTH, "depth": 3,
                   "num_heads": 2, "mlp_ratio": 2.0}
TINY_VISION_CONFIG_NAME = "llavarad-tiny-biomedclip"
TINY_LM_HIDDEN = 64
TINY_VOCAB_SIZE = 1000
SEED = 1234

#: Text the tiny tokenizer is trained on: report language plus every fixed prompt string.
TOKENIZER_CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions.",
    "USER: Provide a description of the findings in the radiology image given the following indication: "
    "shortness of breath ASSISTANT:",
    "Provide a description of the findings in the radiology image.",
    "The heart is normal in size. The mediastinum is unremarkable. The lungs are clear.",
    "There is no pleural effusion or pneumothorax. No focal consolidation is seen.",
    "Large left pleural effusion is new. Small right effusion is new. Cardiac size cannot be evaluated.",
    "Mild cardiomegaly with pulmonary edema. Bibasilar atelectasis. Endotracheal tube in place.",
    "Degenerative changes in the thoracic spine. No acute cardiopulmonary abnormality.",
    "Preop lumbar surgery. Chest pain, cough, fever, dyspnea, evaluate for pneumonia.",
    "Heart size and pulmonary vascularity appear within normal limits. No pneumothorax or pleural effusion.",
    "Opacity in the right lower lobe may reflect consolidation or aspiration. Support devices are unchanged.",
    "0 1 2 3 4 5 6 7 8 9 cm mm x-XXXX ___ ? ! , . ; : ( ) / - + = % ' \" [ ] < > # * & @ $ ^ ~ `",
]


def _alphabet() -> list[str]:
    """Printable ASCII plus the newline, so no ordinary report text maps to <unk>."""
    return [chr(c) for c in range(32, 127)] + ["\n", "\t", "▁"]


def tiny_tokenizer():
    """A LLaMA-shaped tokenizer: SentencePiece-style BPE (``▁`` word prefix), ids <unk>=0 <s>=1 </s>=2, BOS added.

    Deterministic: the same corpus always trains the same merges.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB_SIZE, special_tokens=specials,
                                  initial_alphabet=_alphabet(), show_progress=False)
    tok.train_from_iterator(TOKENIZER_CORPUS * 4, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                 model_max_length=2048, padding_side="right")
    return hf


def tiny_llama_config(vocab_size: int = TINY_VOCAB_SIZE):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=TINY_LM_HIDDEN, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                       max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                       tie_word_embeddings=False)


def tiny_lm(seed: int = SEED):
    """A 2-layer LlamaForCausalLM (about 0.2 M parameters), initialised from ``seed``."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config())
    model.eval()
    return model


def tiny_vision_config() -> dict:
    """An open_clip model JSON shaped like ``biomedclipcxr_518.json``, with a tiny trunk.

    ``text_cfg`` is open_clip's built-in text transformer, tiny (the released JSON names BiomedBERT); llavarad
    never builds the text side, but the checkpoint file carries its weights as the released one does.
    """
    return {
        "embed_dim": 16,
        "vision_cfg": {"timm_model_name": TINY_VIT_ARCH, "timm_model_kwargs": dict(TINY_VIT_KWARGS),
                       "timm_model_pretrained": False, "timm_pool": "", "timm_proj": "linear",
                       "image_size": TINY_IMAGE_SIZE},
        "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 16, "heads": 2, "layers": 1},
    }


def tiny_vision_tower(seed: int = SEED):
    """The tiny ``VisionTower``, built by the product's own builder from ``tiny_vision_config``, seeded."""
    import torch

    from llavarad_cli.model.vision import vision_tower_from_config

    torch.manual_seed(seed)
    return vision_tower_from_config(tiny_vision_config(), name=TINY_VISION_CONFIG_NAME)


def tiny_open_clip_state(seed: int = SEED) -> dict:
    """A whole open_clip CLIP state dict like the released checkpoint's: ``visual.trunk.*`` (the tiny tower),
    ``visual.head.proj.weight`` and the text tower's weights, which llavarad must ignore."""
    import torch
    from open_clip import CLIP

    config = tiny_vision_config()
    trunk = tiny_vision_tower(seed).trunk
    torch.manual_seed(seed + 3)
    # Only the text side of this CLIP is kept; its small non-timm ViT is a stand-in that is thrown away.
    clip = CLIP(config["embed_dim"], vision_cfg={"image_size": TINY_IMAGE_SIZE, "layers": 1, "width": 16,
                                                 "patch_size": 14, "head_width": 8},
                text_cfg=config["text_cfg"])
    state = {k: v for k, v in clip.state_dict().items() if not k.startswith("visual.")}
    state.update({f"visual.trunk.{k}": v for k, v in trunk.state_dict().items()})
    state["visual.head.proj.weight"] = torch.randn(config["embed_dim"], TINY_VIT_WIDTH,
                                                   generator=torch.Generator().manual_seed(seed + 4))
    return state


def write_tiny_vision_tower(out_dir: Path, seed: int = SEED, training_checkpoint: bool = True) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>_checkpoint.pt`` like the released BiomedCLIP-CXR files.

    With ``training_checkpoint`` the weights are wrapped as open_clip training checkpoints are:
    ``{"state_dict": {"module.visual...": ...}, "epoch": ..., "name": ...}``.
    """
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path = out_dir / f"{TINY_VISION_CONFIG_NAME}.json"
    config_path.write_text(json.dumps(tiny_vision_config(), indent=2))
    state = tiny_open_clip_state(seed)
    if training_checkpoint:
        state = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 1, "name": "tiny"}
    ckpt_path = out_dir / f"{TINY_VISION_CONFIG_NAME}_checkpoint.pt"
    torch.save(state, ckpt_path)
    return config_path, ckpt_path


def write_tiny_lm(out_dir: Path, seed: int = SEED) -> Path:
    """Save the tiny LM and its tokenizer as a Hugging Face model folder (usable as a ``model.base``)."""
    from transformers.utils import logging as hf_logging

    out_dir = Path(out_dir)
    hf_logging.disable_progress_bar()  # a one-shard "Writing model shards" bar is noise
    tiny_lm(seed).save_pretrained(out_dir)
    tiny_tokenizer().save_pretrained(out_dir)
    return out_dir


def tiny_llavarad_model(seed: int = SEED, projector_type: str = "mlp2x_gelu"):
    """An in-memory tiny LLaVA-Rad: ``(model, tokenizer, image_transform)``, fp32, eval mode, seeded.

    The tower's weights equal those ``write_tiny_vision_tower(seed)`` writes, so checkpoints written from the
    same seed load back into the same model.
    """
    from llavarad_cli.model.assemble import assemble_model

    tower = tiny_vision_tower(seed)
    model = assemble_model(tiny_lm(seed), tower, projector_type, seed=seed + 1,
                           vision_config_name=TINY_VISION_CONFIG_NAME).eval()
    return model, tiny_tokenizer(), tower.image_transform


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_lora_model(seed: int = SEED):
    """``tiny_llavarad_model`` with a PEFT LoRA (r 4, alpha 8, all seven projections, like LLaVA-Rad's r 64 /
    alpha 128) whose B matrices are random, so merging it really changes the LM. Returns (model, tokenizer)."""
    import torch
    from peft import LoraConfig, get_peft_model

    model, tokenizer, _ = tiny_llavarad_model(seed)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.05, target_modules=LORA_TARGETS, bias="none",
                        task_type="CAUSAL_LM")
    import warnings

    with warnings.catch_warnings():
        # PEFT asks transformers an outdated gradient-checkpointing question; harmless here.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model.lm = get_peft_model(model.lm, config)
    generator = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        for name, param in model.lm.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    model.eval()
    return model, tokenizer


def write_tiny_checkpoint(out_dir: Path, layout: str = "native", seed: int = SEED):
    """Write a tiny random model in the ``released`` (microsoft/llava-rad) or ``native`` (llavarad) layout.

    The base LM goes to ``OUT/base`` (pass it as ``--model-base`` for the released layout; the native layout
    records it). Returns the in-memory model (LoRA unmerged) whose outputs the loaded checkpoint reproduces.
    """
    import torch
    from peft import get_peft_model_state_dict

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, tokenizer = tiny_lora_model(seed)
    write_tiny_lm(out_dir / "base", seed)
    if layout == "native":
        from llavarad_cli.model.native import save_native_checkpoint

        save_native_checkpoint(out_dir, model, base="base", extra={"made_by": "llavarad_cli.testing"})
        return model
    if layout != "released":
        raise ValueError("layout must be released or native")
    lm_config = tiny_llama_config().to_dict()
    config = {**lm_config, "model_type": "llava", "architectures": ["LlamaForCausalLM"],
              "mm_vision_tower": "biomedclip_cxr_518",
              "mm_vision_tower_config": f"/train/time/path/{TINY_VISION_CONFIG_NAME}.json",
              "mm_vision_tower_checkpoint": f"{TINY_VISION_CONFIG_NAME}_checkpoint.pt",
              "mm_projector_type": model.config.projector_type, "mm_hidden_size": TINY_VIT_WIDTH,
              "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "image_aspect_ratio": "square",
              "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "use_mm_proj": True,
              "tune_mm_mlp_adapter": False, "freeze_mm_mlp_adapter": False, "image_grid_pinpoints": None,
              "use_cache": True}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    model.lm.peft_config["default"].save_pretrained(str(out_dir))
    # PEFT 0.4 naming and pickled .bin files, as in the released repo.
    torch.save(get_peft_model_state_dict(model.lm), out_dir / "adapter_model.bin")
    projector = {f"base_model.model.model.mm_projector.{k}": v for k, v in model.projector.state_dict().items()}
    torch.save(projector, out_dir / "non_lora_trainables.bin")
    write_tiny_vision_tower(out_dir, seed)
    return model
