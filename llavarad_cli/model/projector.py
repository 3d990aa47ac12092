"""The multimodal projector: vision features -> LM embedding space (LLaVA's ``build_vision_projector``)."""

from __future__ import annotations

import re

from torch import nn

from llavarad_cli.errors import UserError


def build_projector(projector_type: str, in_dim: int, out_dim: int) -> nn.Sequential:
    """``linear`` or ``mlp{N}x_gelu``: Linear, then (N-1) x [GELU, Linear].

    Returned as ``nn.Sequential`` so that state-dict keys are ``{0,2,...}.{weight,bias}``, matching the
    reference's ``mm_projector.{0,2}.*`` (LLaVA-Rad: mlp2x_gelu, 768 -> 4096 -> 4096). GELU is the exact one.
    """
    if projector_type == "linear":
        return nn.Sequential(nn.Linear(in_dim, out_dim))
    match = re.fullmatch(r"mlp([1-9]\d*)x_gelu", projector_type)
    if not match:
        raise UserError(f"unknown projector type `{projector_type}`", hint="use `linear` or `mlp{N}x_gelu`")
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(int(match.group(1)) - 1):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)
