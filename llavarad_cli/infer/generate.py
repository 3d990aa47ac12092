"""Turning (query, image) pairs into findings with a loaded LlavaRadModel: prompts, left padding, decoding."""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

from llavarad_cli.infer.settings import GenerationSettings  # also imported from here by library users
from llavarad_cli.model.loading import pad_token_id
from llavarad_cli.prompts import IMAGE_TOKEN, V1_SEP2, render_v1_inference, tokenizer_image_token


def render_prompt(query: str, template: str) -> str:
    """v1: the Vicuna chat prompt; plain (a stage-1 checkpoint): the bare image token, as it was trained."""
    return IMAGE_TOKEN if template == "plain" else render_v1_inference(query)


class Predictor:
    """Holds the model, tokenizer and settings; ``predict`` handles one batch of any size."""

    def __init__(self, model, tokenizer, settings: GenerationSettings | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings or GenerationSettings()
        if self.settings.seed is not None:
            torch.manual_seed(self.settings.seed)  # CPU and every CUDA device: sampled findings repeat
        self.template = getattr(model.config, "template", "v1")
        self.pad_id = pad_token_id(tokenizer)
        self.eos_id = tokenizer.eos_token_id

    def prompt(self, query: str) -> str:
        return render_prompt(query, self.template)

    def prompt_ids(self, query: str) -> list[int]:
        return tokenizer_image_token(self.prompt(query), self.tokenizer)

    def pixel_values(self, image: Image.Image) -> torch.Tensor:
        return self.model.image_transform(image)

    @torch.inference_mode()
    def predict(self, queries: Sequence[str], pixels: torch.Tensor) -> list[str]:
        """Findings for each (query, preprocessed image); left-padded so rows do not affect each other."""
        rows = [self.prompt_ids(q) for q in queries]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
        device = self.model.device
        pixels = pixels.to(device=device, dtype=self.model.dtype)
        kwargs = self.settings.kwargs()
        kwargs.setdefault("pad_token_id", self.pad_id)
        if self.eos_id is not None:
            kwargs.setdefault("eos_token_id", self.eos_id)
        from transformers import LogitsProcessorList

        kwargs.setdefault("logits_processor", LogitsProcessorList([FiniteScores(self.model.dtype)]))
        out = self.model.generate(ids.to(device), mask.to(device), pixels, **kwargs)
        texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        return [clean_prediction(t) for t in texts]


class FiniteScores:
    """A logits processor that refuses NaN or +inf next-token scores instead of decoding them.

    fp16 (the default on GPU) tops out at 65504; an activation past that (the vision tower's layer-scaled
    residual stream, an attention score) turns into inf and then NaN, and greedy argmax over NaN scores picks id
    0, which decodes as empty findings: a silent failure bf16's range would have hidden. The check costs one
    reduction per step (generate already synchronises every step). -inf is allowed: top-k/top-p set it.
    """

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if bool(torch.isnan(scores).any() | torch.isposinf(scores).any()):
            step = input_ids.shape[1]
            if self.dtype == torch.float16:
                from llavarad_cli.errors import UserError

                raise UserError(f"fp16 overflowed while generating (non-finite next-token scores at step {step})",
                                hint="run with --dtype bf16 (or fp32), which has the range fp16 lacks")
            raise FloatingPointError(f"non-finite next-token scores in {self.dtype} at step {step}")
        return scores


def clean_prediction(text: str) -> str:
    """Strip, drop a trailing ``</s>``, strip again: the reference's decode."""
    text = text.strip()
    if text.endswith(V1_SEP2):
        text = text[: -len(V1_SEP2)]
    return text.strip()
