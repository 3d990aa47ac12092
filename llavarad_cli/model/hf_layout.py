"""Loading a folder written by ``llavarad export`` (transformers' ``LlavaForConditionalGeneration``) back into a
``LlavaRadModel``, so ``infer`` runs it exactly as the original: open_clip's eval transform for the pixels,
llavarad's chunk-wise prompt ids, and the LM without the image token's extra vocabulary row.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from llavarad_cli.errors import UserError
from llavarad_cli.io_utils import read_json_object
from llavarad_cli.model.weights import model_folder

EXPORT_CHAT_TEMPLATE = "chat_template.jinja"


def is_exported_config(path: Path) -> bool:
    """transformers' LLaVA config (nested ``text_config``), not the released LLaVA-Rad one (``mm_*`` keys)."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(config, dict) and config.get("model_type") == "llava" and "mm_projector_type" not in config
            and isinstance(config.get("text_config"), dict) and isinstance(config.get("vision_config"), dict))


class Dinov2Tower(nn.Module):
    """transformers' ``Dinov2Model`` with llavarad's tower interface: patch features of ``select_layer``."""

    def __init__(self, dinov2: nn.Module, select_layer: int, name: str):
        from llavarad_cli.model.vision import eval_transform

        super().__init__()
        self.dinov2 = dinov2
        config = dinov2.config
        self.select_layer = select_layer
        self.image_size = int(config.image_size)
        self.image_transform = eval_transform(self.image_size)
        self.name = name
        self.open_clip_config = None
        self.hidden_size = int(config.hidden_size)
        self.num_prefix_tokens = 1
        self.num_patches = (self.image_size // int(config.patch_size)) ** 2
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True):
        return super().train(False)  # frozen, always in eval mode, like VisionTower

    @property
    def dtype(self) -> torch.dtype:
        return self.dinov2.embeddings.patch_embeddings.projection.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.dinov2.embeddings.patch_embeddings.projection.weight.device

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values.to(device=self.device, dtype=self.dtype)
        hidden = self.dinov2(x, output_hidden_states=True, return_dict=True).hidden_states
        return hidden[self.select_layer][:, self.num_prefix_tokens:]




def _causal_lm(llava) -> nn.Module:
    """The text model and ``lm_head`` as a causal LM of the text config, minus the image token's last row."""
    from transformers import AutoModelForCausalLM

    text_config = llava.config.text_config
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(text_config)
    lm.model = llava.model.language_model
    lm.lm_head = llava.lm_head
    image_id = int(llava.config.image_token_id)
    rows = lm.get_input_embeddings().weight.shape[0]
    if image_id == rows - 1:
        # The export put the image token in its own last row; without it the LM is the original one.
        embed, head = lm.get_input_embeddings(), lm.lm_head
        embed.weight = nn.Parameter(embed.weight.data[:image_id], requires_grad=False)
        embed.num_embeddings = image_id
        head.weight = nn.Parameter(head.weight.data[:image_id], requires_grad=False)
        head.out_features = image_id
        lm.config.vocab_size = image_id
    lm.eval()
    return lm


def load_exported(model: str, device: torch.device, dtype: torch.dtype, attn_implementation: str = "sdpa"):
    """``(LlavaRadModel, tokenizer)`` from an exported folder (local or hub)."""
    from transformers import LlavaForConditionalGeneration
    from transformers.utils import logging as hf_logging

    from llavarad_cli.model.export_processor import SENTENCEPIECE_DIR, chat_template
    from llavarad_cli.model.llavarad import LlavaRadConfig, LlavaRadModel
    from llavarad_cli.model.loading import load_tokenizer

    root = model_folder(model, "exported model")
    config = read_json_object(root / "config.json", "exported model config")
    vision = config.get("vision_config")
    if not isinstance(vision, dict):
        raise UserError(f"{root / 'config.json'}: no vision_config object: not an exported LLaVA")
    if vision.get("model_type") != "dinov2" or config.get("vision_feature_select_strategy") != "default" \
            or config.get("projector_hidden_act") != "gelu" or not isinstance(config.get("vision_feature_layer"), int):
        raise UserError(f"{root / 'config.json'}: a LLaVA that is not LLaVA-Rad shaped (needs a dinov2 tower, one "
                        "vision_feature_layer, the `default` feature strategy and a GELU projector)")
    hf_logging.disable_progress_bar()
    llava = LlavaForConditionalGeneration.from_pretrained(str(root), dtype=dtype, device_map=str(device),
                                                          attn_implementation=attn_implementation)
    select_layer = int(llava.config.vision_feature_layer)
    tower = Dinov2Tower(llava.model.vision_tower, select_layer, name=f"exported:{root.name}")
    mmp = llava.model.multi_modal_projector
    projector = nn.Sequential(mmp.linear_1, nn.GELU(), mmp.linear_2)
    lm = _causal_lm(llava)
    template_file = root / EXPORT_CHAT_TEMPLATE
    template = "plain" if template_file.is_file() and template_file.read_text() == chat_template("plain") else "v1"
    llava_config = LlavaRadConfig(projector_type="mlp2x_gelu", mm_hidden_size=tower.hidden_size,
                                  select_layer=select_layer, vision_config_name=tower.name, template=template,
                                  extra={"source": str(model), "layout": "exported"})
    result = LlavaRadModel(lm, tower, projector, llava_config).eval()
    # A SentencePiece base's own files, kept by the export: llavarad tokenises with sentencepiece itself.
    sentencepiece = root / SENTENCEPIECE_DIR
    return result, load_tokenizer(str(sentencepiece if sentencepiece.is_dir() else root))
