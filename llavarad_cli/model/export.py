"""``llavarad export``: any model ``infer`` loads, as a plain transformers ``LlavaForConditionalGeneration`` folder.

The timm DINOv2 trunk becomes ``Dinov2Model`` (same blocks: pre-norm, fused qkv split into q/k/v, layer scale,
exact GELU, LayerNorm eps taken from the trunk; position embedding for the native grid + CLS, so transformers'
interpolation is a no-op), the ``mlp2x_gelu`` projector ``LlavaMultiModalProjector`` (Linear, exact GELU,
Linear, with biases), the LM (LoRA merged) the text model. transformers' LLaVA takes
``hidden_states[vision_feature_layer]`` of the tower — index 0 the embeddings, i the output of block i, the final
LayerNorm never applied to them — and drops the CLS token (``"default"``), which is exactly llavarad's
``select_layer`` feature.

The image token is a new id after the LM's vocabulary (one zero row in the embedding and ``lm_head``): no text
can produce it, its input embedding is always replaced by image features, and the generation config suppresses
it, so greedy decoding ranks exactly the original vocabulary with the original logits.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from llavarad_cli.errors import UserError

DTYPE_CHOICES = ("fp16", "bf16", "fp32")
#: fp16: the precision the paper evaluated in and the base Vicuna's own storage type.
DEFAULT_DTYPE = "fp16"
EXPORTABLE_PROJECTOR = "mlp2x_gelu"


@dataclass(frozen=True)
class ExportResult:
    out: Path
    files: list[str]
    parameters: int
    image_token_id: int
    num_image_tokens: int


def check_out_dir(out: Path, overwrite: bool) -> None:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out}: folder is not empty", hint="pass --overwrite to replace it, or choose another OUT")


def vision_config_from_tower(tower):
    """A ``Dinov2Config`` computing exactly what the timm trunk computes, or a user error naming what differs."""
    from timm.layers import LayerScale, Mlp
    from timm.models.vision_transformer import Block, VisionTransformer
    from torch import nn
    from transformers import Dinov2Config

    trunk = tower.trunk

    def refuse(what: str):
        raise UserError(f"cannot export: the vision tower's {what} has no counterpart in transformers' Dinov2Model")

    if type(trunk) is not VisionTransformer:
        refuse(f"trunk type {type(trunk).__name__}")
    if not trunk.has_class_token or trunk.num_prefix_tokens != 1 or getattr(trunk, "no_embed_class", False):
        refuse("prefix tokens (DINOv2 in transformers has exactly one CLS token with a position embedding)")
    if getattr(trunk, "dynamic_img_size", False) or not isinstance(trunk.norm_pre, nn.Identity):
        refuse("dynamic image size or pre-norm")
    grid = tuple(trunk.patch_embed.grid_size)
    patch = tuple(trunk.patch_embed.patch_size)
    if grid[0] != grid[1] or patch[0] != patch[1] or not isinstance(trunk.patch_embed.norm, nn.Identity):
        refuse(f"patch embedding (grid {grid}, patch {patch})")
    width = int(trunk.embed_dim)
    eps = {float(trunk.norm.eps)} if isinstance(trunk.norm, nn.LayerNorm) else refuse("final norm")
    heads, hidden = set(), set()
    for block in trunk.blocks:
        if type(block) is not Block or not isinstance(block.ls1, LayerScale) or not isinstance(block.ls2, LayerScale):
            refuse("block type or missing layer scale")
        attn, mlp = block.attn, block.mlp
        if not all(isinstance(m, nn.Identity) for m in (attn.q_norm, attn.k_norm, attn.norm)) or attn.qkv.bias is None:
            refuse("attention (qk-norm, extra norm, or no qkv bias)")
        if type(mlp) is not Mlp or not isinstance(mlp.act, nn.GELU) or mlp.act.approximate != "none" \
                or not isinstance(mlp.norm, nn.Identity):
            refuse("MLP (transformers' Dinov2 MLP is fc1, exact GELU, fc2)")
        if not (isinstance(block.norm1, nn.LayerNorm) and isinstance(block.norm2, nn.LayerNorm)):
            refuse("block norms")
        eps |= {float(block.norm1.eps), float(block.norm2.eps)}
        heads.add(int(attn.num_heads))
        hidden.add(int(mlp.fc1.out_features))
    if len(eps) != 1 or len(heads) != 1 or len(hidden) != 1:
        refuse("mixed LayerNorm eps, head counts or MLP widths")
    (mlp_hidden,) = hidden
    if mlp_hidden % width:
        refuse(f"MLP width {mlp_hidden} (not a whole multiple of {width})")
    return Dinov2Config(hidden_size=width, num_hidden_layers=len(trunk.blocks), num_attention_heads=heads.pop(),
                        mlp_ratio=mlp_hidden // width, hidden_act="gelu", layer_norm_eps=eps.pop(),
                        image_size=grid[0] * patch[0], patch_size=patch[0], num_channels=3, qkv_bias=True,
                        layerscale_value=1.0, use_swiglu_ffn=False, drop_path_rate=0.0,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def llava_config(model, image_token_id: int):
    """The ``LlavaConfig``: the tower's ``Dinov2Config``, the LM's own config with the image token's row added."""
    from transformers import LlavaConfig

    config = model.config
    if config.projector_type != EXPORTABLE_PROJECTOR:
        raise UserError(f"cannot export the `{config.projector_type}` projector: transformers' LLaVA projector is "
                        f"Linear-GELU-Linear ({EXPORTABLE_PROJECTOR}) only")
    if model.vision_tower.num_prefix_tokens != 1:
        raise UserError("cannot export: LLaVA's `default` feature strategy drops exactly one CLS token")
    vision = vision_config_from_tower(model.vision_tower)
    text = model.lm.config.__class__.from_dict(model.lm.config.to_dict())
    text.vocab_size = image_token_id + 1
    text.tie_word_embeddings = False
    text.use_cache = True
    return LlavaConfig(vision_config=vision, text_config=text, image_token_id=image_token_id,
                       projector_hidden_act="gelu", multimodal_projector_bias=True,
                       vision_feature_layer=int(model.config.select_layer),
                       vision_feature_select_strategy="default", image_seq_length=model.num_image_tokens,
                       tie_word_embeddings=False)


def _expected_shapes(config) -> dict[str, tuple[int, ...]]:
    import torch
    from transformers import LlavaForConditionalGeneration

    with torch.device("meta"):
        skeleton = LlavaForConditionalGeneration(config)
    return {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}


def _generation_config(tokenizer, image_token_id: int):
    from transformers import GenerationConfig

    from llavarad_cli.infer.settings import GenerationSettings

    settings = GenerationSettings()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.unk_token_id
    return GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=pad, do_sample=False, num_beams=settings.num_beams,
                            max_new_tokens=settings.max_new_tokens, suppress_tokens=[image_token_id])


def _move_into_place(staging: Path, out: Path) -> None:
    """The finished folder replaces OUT in one rename (an old OUT is moved aside first, then deleted)."""
    trash = None
    if out.exists():
        trash = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, trash)
    os.replace(staging, out)
    if trash is not None:
        shutil.rmtree(trash)


def export_model(model: str, out: Path, model_base: str | None = None, dtype: str = DEFAULT_DTYPE,
                 overwrite: bool = False, trust_pickle: bool = False, max_shard_bytes: int | None = None,
                 status=lambda message: None) -> ExportResult:
    """Write ``model`` (anything ``infer --model`` takes) to ``out`` as a transformers LLaVA folder."""
    import torch

    from llavarad_cli import __version__
    from llavarad_cli.export_card import model_card
    from llavarad_cli.infer.generate import Predictor
    from llavarad_cli.model.loading import load_model
    from llavarad_cli.model.export_processor import check_tokenisation, write_processor, write_tokenizer
    from llavarad_cli.model.export_weights import (MAX_SHARD_BYTES, check_plan, plan_lm, plan_projector,
                                                   plan_vision, write_weights)

    if dtype not in DTYPE_CHOICES:
        raise UserError(f"unknown --dtype `{dtype}`", hint=f"use one of {', '.join(DTYPE_CHOICES)}")
    out = Path(out).expanduser()
    check_out_dir(out, overwrite)
    source = Path(str(model)).expanduser()
    if source.exists() and (out.resolve() == source.resolve() or out.resolve() in source.resolve().parents):
        raise UserError(f"{out}: would replace the model being exported", hint="choose another OUT")
    status(f"loading {model}")
    # Loaded straight in the export dtype on CPU: the tensors written are then views of the loaded weights.
    loaded, tokenizer = load_model(model, model_base, device="cpu", dtype=dtype, attn_implementation="eager",
                                   trust_pickle=trust_pickle)
    torch_dtype = loaded.dtype
    image_token_id = int(loaded.lm.get_input_embeddings().weight.shape[0])
    config = llava_config(loaded, image_token_id)
    plan = (plan_vision(loaded.vision_tower.trunk, torch_dtype) + plan_projector(loaded.projector, torch_dtype)
            + plan_lm(loaded.lm, torch_dtype))
    check_plan(plan, _expected_shapes(config))

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        template = loaded.config.template
        write_tokenizer(tokenizer, staging, image_token_id)
        write_processor(staging, loaded.vision_tower.image_size, config.vision_config.patch_size, template)
        predictor = Predictor(loaded, tokenizer)
        check_tokenisation(staging, tokenizer, predictor.prompt, image_token_id, loaded.num_image_tokens)
        config.dtype = torch_dtype
        config.save_pretrained(str(staging))
        _generation_config(tokenizer, image_token_id).save_pretrained(str(staging))
        status(f"writing {sum(p.nbytes for p in plan) / 2**20:,.1f} MiB of weights")
        write_weights(staging, plan, max_shard_bytes or MAX_SHARD_BYTES)
        parameters = sum(p.nbytes // torch.empty((), dtype=p.dtype).element_size() for p in plan)
        provenance = {"model": str(model), "model_base": model_base, "layout": loaded.config.extra.get("layout"),
                  "dtype": dtype, "projector_type": loaded.config.projector_type, "template": template,
                  "vision_tower": loaded.config.vision_config_name, "llavarad_version": __version__}
        (staging / "README.md").write_text(model_card(provenance, parameters), encoding="utf-8")
        del loaded
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    names = sorted(p.name for p in out.iterdir())
    return ExportResult(out, names, parameters, image_token_id, int(config.image_seq_length))


