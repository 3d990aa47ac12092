"""The one way a LlavaRadModel is put together: LM + vision tower + a projector between them + config.

Every source of a model goes through :func:`assemble_model`: the native and the released checkpoint loaders,
the training build (fresh, seeded projector) and the tiny test model. What differs between them (where the LM,
tower and projector weights come from) stays with the caller.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llavarad_cli.errors import UserError

if TYPE_CHECKING:
    import torch

    from llavarad_cli.model.llavarad import LlavaRadModel


def assemble_model(lm, tower, projector_type: str, *, projector_state: dict[str, torch.Tensor] | None = None,
                   projector_origin: str = "projector weights", mm_hidden_size: int | None = None,
                   config_origin: str = "model config", seed: int | None = None, dtype: torch.dtype | None = None,
                   template: str = "v1", vision_config_name: str | None = None,
                   extra: dict[str, Any] | None = None) -> LlavaRadModel:
    """``LlavaRadModel(lm, tower, projector)`` with the tower and projector on the LM's device, in ``dtype``.

    The projector is ``projector_type`` from the tower's width to the LM's; its weights are ``projector_state``
    (strict), or a fresh initialisation seeded by ``seed`` when given. ``mm_hidden_size``, when a config records
    it, must be the tower's width. ``dtype`` defaults to the LM's.
    """
    import torch

    from llavarad_cli.model.llavarad import LlavaRadConfig, LlavaRadModel
    from llavarad_cli.model.projector import build_projector, load_projector_weights

    if mm_hidden_size is not None and int(mm_hidden_size) != tower.hidden_size:
        raise UserError(f"{config_origin}: mm_hidden_size {mm_hidden_size} but the vision tower gives "
                        f"{tower.hidden_size}")
    if seed is not None:
        torch.manual_seed(seed)
    projector = build_projector(projector_type, tower.hidden_size, lm.config.hidden_size)
    if projector_state is not None:
        load_projector_weights(projector, projector_state, projector_origin)
    device = lm.get_input_embeddings().weight.device
    dtype = dtype or lm.get_input_embeddings().weight.dtype
    config = LlavaRadConfig(projector_type=projector_type, mm_hidden_size=tower.hidden_size,
                            select_layer=tower.select_layer, vision_config_name=vision_config_name or tower.name,
                            template=template, extra=dict(extra or {}))
    return LlavaRadModel(lm, tower.to(device=device, dtype=dtype), projector.to(device=device, dtype=dtype), config)
