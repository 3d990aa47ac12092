"""The vision tower: the timm image trunk of an open_clip model (BiomedCLIP-CXR for LLaVA-Rad).

Only the vision side is built, from the JSON's ``vision_cfg``: no text tower, so no BiomedBERT download, no hub
call and nothing written to /tmp (the reference builds the whole CLIP model and re-saves the checkpoint there).
Features are the output of block ``select_layer`` (default -2, the penultimate block) with the CLS/prefix tokens
dropped and no final norm, as LLaVA-Rad computes them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from llavarad_cli.errors import UserError


def read_vision_config(config_path: Path) -> dict[str, Any]:
    """The open_clip model JSON; only ``vision_cfg`` matters here."""
    config_path = Path(config_path)
    if not config_path.is_file():
        raise UserError(f"vision tower config not found: {config_path}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{config_path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    vision_cfg = config.get("vision_cfg") if isinstance(config, dict) else None
    if not isinstance(vision_cfg, dict) or not vision_cfg.get("timm_model_name"):
        raise UserError(f"{config_path}: not an open_clip timm-trunk config (needs vision_cfg.timm_model_name)")
    return config


def _ensure_timm_name(name: str) -> None:
    """The tiny test tower lives in our own timm registry entry; register it when a JSON names it."""
    from llavarad_cli import testing

    if name.split(".")[0] == testing.TINY_VIT_NAME:
        testing.register_tiny_vit()


def visual_state_dict(raw: dict[str, Any]) -> dict[str, torch.Tensor]:
    """``visual.*`` weights of an open_clip checkpoint, prefix removed.

    Accepts a plain state dict or a training checkpoint (``{"state_dict": ...}``, keys under ``module.``), like
    open_clip's own ``load_state_dict``; text-tower keys are ignored.
    """
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else raw
    if not isinstance(state, dict):
        raise UserError("vision tower checkpoint holds no state dict")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("module."):
            key = key[len("module."):]
        if key.startswith("visual."):
            out[key[len("visual."):]] = value
    return out


class VisionTower(nn.Module):
    """Frozen timm ViT trunk returning ``[B, num_patches, hidden]`` patch features."""

    def __init__(self, visual: nn.Module, select_layer: int, image_size: int, image_transform: Callable,
                 name: str = "", open_clip_config: dict[str, Any] | None = None):
        super().__init__()
        #: The open_clip JSON it was built from, so a checkpoint can carry it along.
        self.open_clip_config = open_clip_config
        self.trunk = visual.trunk
        self.select_layer = select_layer
        self.image_size = image_size
        self.image_transform = image_transform
        self.name = name
        self.hidden_size = int(self.trunk.embed_dim)
        self.num_prefix_tokens = int(getattr(self.trunk, "num_prefix_tokens", 1))
        grid = self.trunk.patch_embed.grid_size
        self.num_patches = int(grid[0] * grid[1])
        depth = len(self.trunk.blocks)
        if not -depth - 1 <= select_layer <= depth:
            raise UserError(f"select_layer {select_layer} is outside the tower's {depth} blocks")
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True):
        # Frozen and always in eval mode, whatever the caller asks (the reference left it in train mode).
        return super().train(False)

    @property
    def dtype(self) -> torch.dtype:
        return self.trunk.patch_embed.proj.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.trunk.patch_embed.proj.weight.device

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        t = self.trunk
        x = pixel_values.to(device=self.device, dtype=self.dtype)
        x = t.norm_pre(t.patch_drop(t._pos_embed(t.patch_embed(x))))
        # hidden_states[0] is the pre-block tensor, [i] the output of block i; only as many blocks as needed run.
        n_blocks = len(t.blocks)
        index = self.select_layer % (n_blocks + 1)
        for block in t.blocks[:index]:
            x = block(x)
        return x[:, self.num_prefix_tokens:]


def eval_transform(image_size: int):
    """open_clip's own eval transform with its defaults: shortest side to ``image_size`` (PIL bicubic), centre
    crop, RGB, to-tensor, OpenAI-CLIP mean/std. The released JSON has no ``preprocess_cfg``, so this is what the
    released model saw."""
    from open_clip.transform import image_transform

    return image_transform(image_size, is_train=False)


def build_vision_tower(config_path: Path, checkpoint_path: Path | None = None, select_layer: int = -2,
                       trust_pickle: bool = False) -> VisionTower:
    """Build the tower from an open_clip JSON and load only its ``visual.*`` weights (strict)."""
    from open_clip.model import _build_vision_tower

    config = read_vision_config(config_path)
    vision_cfg = dict(config["vision_cfg"])
    _ensure_timm_name(vision_cfg["timm_model_name"])
    if vision_cfg.get("timm_model_pretrained"):
        # Weights always come from the checkpoint; never let timm fetch its own.
        vision_cfg["timm_model_pretrained"] = False
    visual = _build_vision_tower(int(config.get("embed_dim", 512)), vision_cfg)
    if checkpoint_path is not None:
        from llavarad_cli.model.weights import load_state_file

        state = visual_state_dict(load_state_file(Path(checkpoint_path), trust_pickle=trust_pickle))
        if not state:
            raise UserError(f"{checkpoint_path}: no `visual.*` weights in this open_clip checkpoint")
        missing, unexpected = visual.load_state_dict(state, strict=False)
        missing_trunk = [k for k in missing if k.startswith("trunk.")]
        if missing_trunk or unexpected:
            raise UserError(
                f"{checkpoint_path}: does not match {Path(config_path).name} "
                f"(missing {missing_trunk[:3]}, unexpected {list(unexpected)[:3]})")
    image_size = vision_cfg.get("image_size", 224)
    image_size = int(image_size if isinstance(image_size, int) else image_size[0])
    return VisionTower(visual, select_layer, image_size, eval_transform(image_size),
                       name=Path(config_path).stem, open_clip_config=config)
