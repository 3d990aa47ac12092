"""The vision tower: the timm image trunk of an open_clip model (BiomedCLIP-CXR for LLaVA-Rad).

Only the vision side is built, from the JSON's ``vision_cfg``: no text tower, so no BiomedBERT download, no hub
call and nothing written to /tmp (the reference builds the whole CLIP model and re-saves the checkpoint there).
Features are the output of block ``select_layer`` (default -2, the penultimate block) with the CLS/prefix tokens
dropped and no final norm, as LLaVA-Rad computes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from llavarad_cli.errors import UserError

#: llavarad's one key beyond open_clip's JSON: keyword arguments for ``timm.create_model`` (see build_trunk).
TIMM_KWARGS_KEY = "timm_model_kwargs"


def read_vision_config(config_path: Path) -> dict[str, Any]:
    """The open_clip model JSON; only ``vision_cfg`` matters here, and its fields are checked for their types."""
    from llavarad_cli.io_utils import read_json_object
    from llavarad_cli.model.weights import config_value

    config_path = Path(config_path)
    if not config_path.is_file():
        raise UserError(f"vision tower config not found: {config_path}")
    config = read_json_object(config_path, "vision tower config")
    vision_cfg = config.get("vision_cfg")
    if not isinstance(vision_cfg, dict) or not vision_cfg.get("timm_model_name"):
        raise UserError(f"{config_path}: not an open_clip timm-trunk config (needs vision_cfg.timm_model_name)")
    where = f"{config_path} (vision_cfg)"
    config_value(config, "embed_dim", int, config_path, default=512)
    config_value(vision_cfg, "timm_model_name", str, where)
    config_value(vision_cfg, TIMM_KWARGS_KEY, dict, where, default={})
    config_value(vision_cfg, "timm_pool", str, where, default="avg")
    config_value(vision_cfg, "timm_proj", str, where, default="linear")
    size = config_value(vision_cfg, "image_size", (int, list), where, default=224)
    if isinstance(size, list) and not (len(size) == 2 and all(type(v) is int for v in size) and size[0] == size[1]):
        raise UserError(f"{where}: `image_size` must be an integer (or [n, n]), not {size}")
    return config


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

    def __init__(self, trunk: nn.Module, select_layer: int, image_size: int, image_transform: Callable,
                 name: str = "", open_clip_config: dict[str, Any] | None = None):
        super().__init__()
        #: The open_clip JSON it was built from, so a checkpoint can carry it along.
        self.open_clip_config = open_clip_config
        self.trunk = trunk
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


def build_trunk(vision_cfg: dict[str, Any], origin: str = "vision tower config") -> nn.Module:
    """The timm trunk open_clip's ``TimmModel`` would build for ``vision_cfg``, without its head or text tower.

    Built with ``timm.create_model`` directly (open_clip's builder is private API and cannot pass model
    arguments). ``timm_model_kwargs``, llavarad's one addition to the JSON, are passed to timm: that is how a
    tower of another size (the tiny test tower: ``vit_base_patch14_dinov2`` shrunk) is described without
    registering a model name in timm. Drop rates are not passed: the tower is frozen and always in eval mode.
    """
    import timm

    name = vision_cfg["timm_model_name"]
    kwargs = vision_cfg.get(TIMM_KWARGS_KEY) or {}
    if not isinstance(kwargs, dict):
        raise UserError(f"{origin}: vision_cfg.{TIMM_KWARGS_KEY} must be an object of timm model arguments")
    pool, proj = vision_cfg.get("timm_pool", "avg"), vision_cfg.get("timm_proj", "linear")
    custom_pool = pool in ("abs_attn", "rot_attn")
    try:
        # The same two calls as open_clip's TimmModel, so the trunk has the same modules and weight names.
        if proj not in ("linear", "mlp") and not custom_pool:
            trunk = timm.create_model(name, pretrained=False, num_classes=0 if proj == "none" else
                                      int(vision_cfg.get("embed_dim", 512)), global_pool=pool, **kwargs)
        else:
            trunk = timm.create_model(name, pretrained=False, **kwargs)
            trunk.reset_classifier(0, **({"global_pool": "" if custom_pool else pool} if pool else {}))
    except RuntimeError as exc:  # timm: "Unknown model (...)"
        raise UserError(f"{origin}: timm has no model `{name}` ({str(exc).splitlines()[0][:160]})",
                        hint="use a timm architecture name, with timm_model_kwargs for its size") from None
    except (TypeError, ValueError, AssertionError) as exc:
        raise UserError(f"{origin}: timm cannot build `{name}` with {TIMM_KWARGS_KEY} {kwargs} "
                        f"({str(exc).splitlines()[0][:160]})") from None
    if not hasattr(trunk, "blocks") or not hasattr(trunk, "patch_embed"):
        raise UserError(f"{origin}: `{name}` is not a ViT (LLaVA-Rad takes features from a ViT block)")
    return trunk


def trunk_state_dict(visual: dict[str, Any]) -> dict[str, Any]:
    """The ``trunk.*`` weights of a ``visual.*`` state dict, prefix removed; the open_clip head is unused."""
    return {k[len("trunk."):]: v for k, v in visual.items() if k.startswith("trunk.")}


def vision_tower_from_config(config: dict[str, Any], trunk_state: dict[str, Any] | None = None,
                             select_layer: int = -2, name: str = "", origin: str = "vision tower config",
                             weights_origin: str = "vision tower weights") -> VisionTower:
    """A tower from an open_clip JSON (already read) and, when given, its trunk weights (strict)."""
    vision_cfg = dict(config["vision_cfg"])
    vision_cfg["embed_dim"] = config.get("embed_dim", 512)
    trunk = build_trunk(vision_cfg, origin)
    if trunk_state is not None:
        own = trunk.state_dict()
        missing = sorted(set(own) - set(trunk_state))
        unexpected = sorted(set(trunk_state) - set(own))
        wrong = [k for k in own if k in trunk_state and tuple(trunk_state[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or wrong:
            detail = "; ".join(part for part in (
                f"missing {missing[:3]}" if missing else "", f"unexpected {unexpected[:3]}" if unexpected else "",
                f"{wrong[0]} has shape {tuple(trunk_state[wrong[0]].shape)}, expected {tuple(own[wrong[0]].shape)}"
                if wrong else "") if part)
            raise UserError(f"{weights_origin}: the weights do not fit the tower {origin} describes ({detail})")
        trunk.load_state_dict(trunk_state)
    image_size = vision_cfg.get("image_size", 224)
    image_size = int(image_size if isinstance(image_size, int) else image_size[0])
    grid = tuple(trunk.patch_embed.img_size) if getattr(trunk.patch_embed, "img_size", None) else None
    if grid is not None and grid != (image_size, image_size):
        raise UserError(f"{origin}: vision_cfg.image_size {image_size} but the timm model takes {grid[0]} px",
                        hint=f"set img_size in {TIMM_KWARGS_KEY}, or image_size to match")
    return VisionTower(trunk, select_layer, image_size, eval_transform(image_size), name=name,
                       open_clip_config=config)


def build_vision_tower(config_path: Path, checkpoint_path: Path | None = None, select_layer: int = -2,
                       trust_pickle: bool = False) -> VisionTower:
    """Build the tower from an open_clip JSON and load only its ``visual.trunk.*`` weights (strict)."""
    config = read_vision_config(config_path)
    state = None
    if checkpoint_path is not None:
        from llavarad_cli.model.weights import load_state_file

        state = visual_state_dict(load_state_file(Path(checkpoint_path), trust_pickle=trust_pickle))
        if not state:
            raise UserError(f"{checkpoint_path}: no `visual.*` weights in this open_clip checkpoint")
        state = trunk_state_dict(state)
    return vision_tower_from_config(config, state, select_layer, name=Path(config_path).stem, origin=str(config_path),
                                    weights_origin=str(checkpoint_path))
