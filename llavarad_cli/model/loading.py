"""Shared loading pieces: device/dtype choice, the base LM and tokenizer, projector weights from any layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from llavarad_cli.errors import UserError
from llavarad_cli.model.weights import cache_dir, hub_offline, is_local, resolve_dir, resolve_file

ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32}


def pick_device(device: str | None) -> torch.device:
    """``cuda`` when available unless told otherwise; a CUDA request without CUDA is a user error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device `{device}`", hint="use cpu, cuda or cuda:N") from None
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: no CUDA GPU is visible", hint="use --device cpu")
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) visible")
    return chosen


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """The model's dtype throughout: bf16 on GPUs that have it, else fp16 on GPU, fp32 on CPU.

    (The reference hard-coded fp16 at inference although the model was trained in bf16.)
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is not None:
        if dtype not in DTYPES:
            raise UserError(f"unknown dtype `{dtype}`", hint="use bf16, fp16 or fp32")
        return DTYPES[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def check_attn(attn_implementation: str) -> str:
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise UserError(f"unknown attention implementation `{attn_implementation}`",
                        hint=f"use one of {', '.join(ATTN_IMPLEMENTATIONS)}")
    if attn_implementation == "flash_attention_2":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is None:
            raise UserError("flash_attention_2 asked for but flash-attn is not installed",
                            hint="pip install 'llavarad[gpu]', or use --attn sdpa")
    return attn_implementation


def load_lm(source: str, dtype: torch.dtype, device: torch.device, attn_implementation: str = "sdpa"):
    """Any Hugging Face causal LM (LLaVA-Rad: Vicuna-7B v1.5), in ``dtype`` on ``device``, eval mode."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress/status lines are enough
    where = resolve_dir(source, "base language model")
    try:
        lm = AutoModelForCausalLM.from_pretrained(
            where, dtype=dtype, attn_implementation=check_attn(attn_implementation), device_map=str(device))
    except OSError as exc:
        raise UserError(f"base language model `{source}` could not be loaded{_where(source)}: {_first_line(exc)}",
                        hint="give a local folder with config.json and the weights, or go online once") from None
    lm.eval()
    return lm


def load_tokenizer(source: str):
    """The LM's tokenizer; ``pad = unk`` when it has no pad token, as the reference sets it.

    A LLaMA SentencePiece folder (``tokenizer.model``; Vicuna) is driven by ``sentencepiece`` itself, as the
    reference's slow tokenizer was (transformers 5's converted BPE gives other ids around runs of spaces; see
    model/sp_tokenizer.py). Anything else goes through ``AutoTokenizer``.
    """
    from transformers import AutoTokenizer

    from llavarad_cli.model.sp_tokenizer import SentencePieceTokenizer

    where = resolve_dir(source, "tokenizer")
    try:
        sp_folder = _sentencepiece_folder(source, where)
        if sp_folder is not None:
            tokenizer = SentencePieceTokenizer.from_folder(sp_folder)
        else:
            tokenizer = AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"tokenizer of `{source}` could not be loaded{_where(source)}: {_first_line(exc)}",
                        hint="give a local folder with the tokenizer files, or go online once") from None
    _ensure_bos(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    return tokenizer


def _sentencepiece_folder(source: str, where: str) -> Path | None:
    """The folder holding a LLaMA ``tokenizer.model`` for ``source`` (local, or its hub snapshot), else None."""
    from llavarad_cli.model.sp_tokenizer import CONFIG_FILE, MODEL_FILE, is_sentencepiece_folder

    if is_local(source):
        folder = Path(where)
    else:
        model = resolve_file(source, MODEL_FILE, "tokenizer", required=False)
        if model is None:
            return None
        resolve_file(source, CONFIG_FILE, "tokenizer", required=False)  # lands in the same snapshot folder
        folder = model.parent
    return folder if is_sentencepiece_folder(folder) else None


def _ensure_bos(tokenizer) -> None:
    """LLaVA-Rad prompts start with BOS (the reference's slow LLaMA tokenizer always added it). A tokenizer
    folder without ``add_bos_token`` loads without it on transformers 5, which would shift every prompt."""
    bos = tokenizer.bos_token_id
    if bos is None or tokenizer("x").input_ids[:1] == [bos]:
        return
    if hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = True
    if tokenizer("x").input_ids[:1] != [bos]:
        raise UserError(f"tokenizer {tokenizer.name_or_path}: does not add its BOS token and cannot be told to")


def projector_state_from(raw: dict[str, Any], origin: str) -> dict[str, torch.Tensor]:
    """Projector weights (``{0,2,...}.{weight,bias}``) from a native, ``mm_projector.bin`` or
    ``non_lora_trainables.bin`` state dict.

    The reference strips ``base_model.`` then one ``model.``; taking whatever follows ``mm_projector.`` is the
    same for every layout it wrote, and also reads our own unprefixed keys.
    """
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


def load_projector_weights(projector: torch.nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
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


def _where(source: str) -> str:
    """Where a hub id was looked for, when that is only the local cache."""
    if is_local(source) or not hub_offline():
        return ""
    return f" (offline, HF_HUB_OFFLINE=1: looked only in the local Hugging Face cache {cache_dir()})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
