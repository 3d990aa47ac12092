"""The multimodal projector: vision features -> LM embedding space (LLaVA's ``build_vision_projector``).

Also the one reader of a projector type name and of projector weights in any layout. Light to import (torch is
loaded by the functions that build or load), so run specs can validate a type name without torch.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from llavarad_cli.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

PROJECTOR_TYPES = "`linear` or `mlp{N}x_gelu`"
#: Deeper `mlp{N}x_gelu` projectors are refused: LLaVA-style models use 2 (LLaVA-Rad: mlp2x_gelu), and a typo
#: like mlp999999999x_gelu would otherwise pass validation and then try to build a billion layers.
MAX_PROJECTOR_DEPTH = 8


def projector_depth(projector_type: str) -> int | None:
    """Number of Linear layers a projector type names (``linear`` 1, ``mlp{N}x_gelu`` N), None if unknown."""
    if projector_type == "linear":
        return 1
    match = re.fullmatch(r"mlp([1-9]\d*)x_gelu", projector_type)
    return int(match.group(1)) if match else None


def build_projector(projector_type: str, in_dim: int, out_dim: int) -> nn.Sequential:
    """``linear`` or ``mlp{N}x_gelu``: Linear, then (N-1) x [GELU, Linear].

    Returned as ``nn.Sequential`` so that state-dict keys are ``{0,2,...}.{weight,bias}``, matching the
    reference's ``mm_projector.{0,2}.*`` (LLaVA-Rad: mlp2x_gelu, 768 -> 4096 -> 4096). GELU is the exact one.
    """
    from torch import nn

    depth = projector_depth(projector_type)
    if depth is None:
        raise UserError(f"unknown projector type `{projector_type}`", hint=f"use {PROJECTOR_TYPES}")
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


def projector_state_from(raw: dict[str, Any], origin: str) -> dict[str, torch.Tensor]:
    """Projector weights (``{0,2,...}.{weight,bias}``) from a native, ``mm_projector.bin`` or
    ``non_lora_trainables.bin`` state dict.

    The reference strips ``base_model.`` then one ``model.``; taking whatever follows ``mm_projector.`` is the
    same for every layout it wrote, and also reads our own unprefixed keys.
    """
    import torch

    out: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if not isinstance(value, torch.Tensor):
            continue
        if "mm_projector." in key:
            out[key.split("mm_projector.", 1)[1]] = value
        elif key.split(".", 1)[0].isdigit():
            out[key] = value
    if not out:
        raise UserError(f"{origin}: holds no projector weights (no `mm_projector.*` keys)")
    return out


def load_projector_weights(projector: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Strict: a projector file of another type or size is an error, never a silently random projector."""
    own = projector.state_dict()
    if sorted(own) != sorted(state):
        raise UserError(f"{origin}: projector keys {sorted(state)} do not match this projector {sorted(own)}",
                        hint="check projector_type (e.g. mlp2x_gelu)")
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise UserError(f"{origin}: projector weight {key} has shape {tuple(value.shape)}, "
                            f"expected {tuple(own[key].shape)}")
    projector.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def load_projector_file(projector: nn.Module, path, trust_pickle: bool = False) -> None:
    """Projector weights from a file of any layout (``projector.safetensors``, ``mm_projector.bin``, ...)."""
    from llavarad_cli.model.weights import load_state_file

    load_projector_weights(projector, projector_state_from(load_state_file(path, trust_pickle), str(path)), str(path))
