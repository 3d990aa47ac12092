"""LlavaRadModel: vision tower -> projector -> a Hugging Face causal LM, with the ``<image>`` splice.

The reference's splice keeps each row's text padding where it was and extends the mask on the left, which is
only right for right-padded batches (a left-padded batch attends to pads). This splice strips each row's padding,
puts the projected patch rows where the -200 sentinel was, then re-pads every row on the side asked for (right for
training, left for generation) with a matching attention mask and position ids — so a left-padded batch
generates exactly what each row would alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from llavarad_cli.prompts import IGNORE_INDEX, IMAGE_TOKEN_INDEX


@dataclass
class LlavaRadConfig:
    """What, besides the LM's own config, is needed to rebuild the model."""

    projector_type: str = "mlp2x_gelu"
    mm_hidden_size: int = 768
    select_layer: int = -2
    vision_config_name: str = "biomedclipcxr_518"
    template: str = "v1"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LlavaRadModel(nn.Module):
    def __init__(self, lm: nn.Module, vision_tower: nn.Module, projector: nn.Module, config: LlavaRadConfig):
        super().__init__()
        self.lm = lm
        self.vision_tower = vision_tower
        self.projector = projector
        self.config = config

    # --- small accessors ---------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.lm.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm.get_input_embeddings().weight.dtype

    @property
    def image_transform(self):
        return self.vision_tower.image_transform

    @property
    def num_image_tokens(self) -> int:
        return self.vision_tower.num_patches

    # --- the multimodal part -----------------------------------------------------------------------------------

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, P, H_lm]``: the frozen tower (no grad, its dtype), then the projector."""
        features = self.vision_tower(pixel_values)
        first = next(self.projector.parameters())
        return self.projector(features.to(device=first.device, dtype=first.dtype))

    def prepare_multimodal(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                           labels: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                           padding_side: str = "right") -> dict[str, torch.Tensor | None]:
        """Replace each ``IMAGE_TOKEN_INDEX`` by the image's P projected embeddings and re-pad the rows.

        Images are consumed in order, one per sentinel, across the batch. Image rows get ``IGNORE_INDEX`` labels.
        Returns ``inputs_embeds``, ``attention_mask``, ``position_ids`` and ``labels`` (None when not given).
        """
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be left or right, not {padding_side!r}")
        embed = self.lm.get_input_embeddings()
        device = embed.weight.device
        input_ids = input_ids.to(device)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        attention_mask = attention_mask.to(device).bool()
        if labels is not None:
            labels = labels.to(device)

        n_sentinels = int((input_ids == IMAGE_TOKEN_INDEX).sum())
        image_features = None
        if n_sentinels:
            if pixel_values is None or pixel_values.shape[0] != n_sentinels:
                got = 0 if pixel_values is None else pixel_values.shape[0]
                raise ValueError(f"{n_sentinels} <image> placeholders but {got} images")
            image_features = self.encode_images(pixel_values).to(embed.weight.dtype)

        # One embedding call for all text; sentinels get a harmless id and are cut out below.
        text_embeds = embed(input_ids.masked_fill(input_ids == IMAGE_TOKEN_INDEX, 0))
        rows_embeds, rows_labels = [], []
        image_idx = 0
        for b in range(input_ids.shape[0]):
            keep = attention_mask[b]
            ids = input_ids[b][keep]
            embs = text_embeds[b][keep]
            labs = labels[b][keep] if labels is not None else None
            cuts = torch.nonzero(ids == IMAGE_TOKEN_INDEX).flatten().tolist()
            pieces_e, pieces_l = [], []
            start = 0
            for cut in cuts + [ids.shape[0]]:
                pieces_e.append(embs[start:cut])
                if labs is not None:
                    pieces_l.append(labs[start:cut])
                if cut < ids.shape[0]:
                    feats = image_features[image_idx]
                    image_idx += 1
                    pieces_e.append(feats)
                    if labs is not None:
                        pieces_l.append(torch.full((feats.shape[0],), IGNORE_INDEX, dtype=labs.dtype, device=device))
                start = cut + 1
            rows_embeds.append(torch.cat(pieces_e))
            rows_labels.append(torch.cat(pieces_l) if labs is not None else None)

        batch, width = len(rows_embeds), max(r.shape[0] for r in rows_embeds)
        hidden = text_embeds.shape[-1]
        out_embeds = text_embeds.new_zeros((batch, width, hidden))
        out_mask = torch.zeros((batch, width), dtype=torch.long, device=device)
        out_pos = torch.zeros((batch, width), dtype=torch.long, device=device)
        out_labels = (torch.full((batch, width), IGNORE_INDEX, dtype=labels.dtype, device=device)
                      if labels is not None else None)
        for b, row in enumerate(rows_embeds):
            n = row.shape[0]
            span = slice(width - n, width) if padding_side == "left" else slice(0, n)
            out_embeds[b, span] = row
            out_mask[b, span] = 1
            out_pos[b, span] = torch.arange(n, device=device)
            if out_labels is not None:
                out_labels[b, span] = rows_labels[b]
        return {"inputs_embeds": out_embeds, "attention_mask": out_mask, "position_ids": out_pos,
                "labels": out_labels}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None, **kwargs):
        """HF ``CausalLMOutput``; ``.loss`` is the token-mean cross-entropy over labels != IGNORE_INDEX."""
        batch = self.prepare_multimodal(input_ids, attention_mask, labels, pixel_values, padding_side="right")
        return self.lm(inputs_embeds=batch["inputs_embeds"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"], labels=batch["labels"], **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 pixel_values: torch.Tensor | None = None, **gen_kwargs) -> torch.Tensor:
        """New token ids only (``[B, T_new]``), from left-padded spliced embeddings.

        Position ids are left to ``generate``, which derives them from the attention mask exactly as the
        splice does (cumsum - 1) and keeps extending them during decoding.
        """
        batch = self.prepare_multimodal(input_ids, attention_mask, None, pixel_values, padding_side="left")
        if "pad_token_id" not in gen_kwargs:
            from llavarad_cli.model.loading import pad_token_id

            gen_kwargs["pad_token_id"] = pad_token_id(self.lm.config)
        return self.lm.generate(inputs_embeds=batch["inputs_embeds"], attention_mask=batch["attention_mask"],
                                **gen_kwargs)
