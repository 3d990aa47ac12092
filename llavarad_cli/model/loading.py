"""Loading a model: ``load_model`` (any layout, local or hub), and the pieces every layout shares — the device
and dtype rule, the base LM and its tokenizer.

Layouts: ``native`` (what ``pretrain``/``finetune`` write, :mod:`llavarad_cli.model.native`) and ``released``
(``microsoft/llava-rad``, :mod:`llavarad_cli.model.released`); :func:`detect_layout` tells them apart.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from llavarad_cli.errors import UserError
from llavarad_cli.model.weights import (cache_dir, first_line, hub_offline, is_local, pickle_refusal, resolve_dir,
                                        resolve_file)

ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
#: The one dtype table: every name a user may give (``--dtype``, a spec's ``train.precision``) -> torch dtype.
DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32}


#: The native layout's config file (its name is what tells the layouts apart).
NATIVE_CONFIG = "llavarad.json"


def detect_layout(model: str) -> str:
    """``native`` when the source has ``llavarad.json``; with a ``config.json``, ``exported`` for transformers'
    own LLaVA layout (``llavarad export``), else ``released``."""
    if resolve_file(model, NATIVE_CONFIG, "llavarad checkpoint config", required=False) is not None:
        return "native"
    config = resolve_file(model, "config.json", "model config", required=False)
    if config is not None:
        from llavarad_cli.model.hf_layout import is_exported_config

        return "exported" if is_exported_config(config) else "released"
    if is_local(model):
        where = f"the folder {Path(model).expanduser()}"
    elif hub_offline():
        where = (f"a local folder `{model}` (none here) or the local Hugging Face cache for it, {cache_dir()} "
                 "(offline: HF_HUB_OFFLINE=1, the hub was not asked)")
    else:
        where = (f"a local folder `{model}` (none here), the hub repo {model}, or the local Hugging Face cache "
                 f"({cache_dir()}) when the hub was unreachable")
    raise UserError(f"no model found: neither {NATIVE_CONFIG} nor config.json in {where}",
                    hint="--model takes the released microsoft/llava-rad layout or a llavarad checkpoint folder")


def load_model(model: str, model_base: str | None = None, device: str | torch.device | None = None,
               dtype: str | torch.dtype | None = None, attn_implementation: str = "sdpa",
               trust_pickle: bool = False):
    """Load ``(LlavaRadModel, tokenizer)`` from a native checkpoint, the released layout or an exported folder
    (local or hub).

    Device defaults to CUDA when available; dtype to fp16 on GPU (the paper's evaluation), fp32 on CPU.
    """
    chosen = device if isinstance(device, torch.device) else pick_device(device)
    torch_dtype = pick_dtype(chosen, dtype)
    check_attn(attn_implementation)
    # The layout modules import this one for the LM and tokenizer, hence imported here, when needed.
    layout = detect_layout(str(model))
    if layout == "exported":
        from llavarad_cli.model.hf_layout import load_exported

        return load_exported(str(model), chosen, torch_dtype, attn_implementation)
    if layout == "native":
        from llavarad_cli.model.native import load_native as load
    else:
        from llavarad_cli.model.released import load_released as load
    return load(str(model), model_base, chosen, torch_dtype, attn_implementation, trust_pickle)


def pick_device(device: str | None = None) -> torch.device:
    """The one device rule (inference, training workers, scorers): the device asked for, checked; else this
    process's GPU when CUDA is visible (``cuda:LOCAL_RANK`` under a launcher that starts one process per GPU,
    else ``cuda:0``); else the CPU. A CUDA request without CUDA is a user error."""
    if device is None:
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
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
    """The model's dtype throughout: fp16 on GPU, fp32 on CPU, unless asked (``bf16`` stays a choice).

    fp16 is how the paper's numbers were made: the reference cast the LM, the tower and the pixels to fp16 at
    inference although the model was trained in bf16, and bf16's coarser mantissa changes greedy text where fp16
    does not. CPUs have no fast half precision, so fp32 there.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is not None:
        if dtype not in DTYPES:
            raise UserError(f"unknown dtype `{dtype}`", hint="use bf16, fp16 or fp32")
        return DTYPES[dtype]
    return torch.float16 if device.type == "cuda" else torch.float32


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
    what = f"base language model `{source}`"
    attn = check_attn(attn_implementation)
    with _TransformersLog() as log:
        try:
            lm, info = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, attn_implementation=attn,
                                                            device_map=str(device), output_loading_info=True)
        except OSError as exc:
            raise UserError(f"{what} could not be loaded{_where(source)}: {first_line(exc)}",
                            hint="give a local folder with config.json and the weights, or go online once") from None
        except pickle.UnpicklingError as exc:
            refusal = pickle_refusal(f"{what}: {_weights_files(where)}", exc)
            raise UserError(refusal.message, hint="use the LM's safetensors files (pickled .bin weights are read "
                                                   "only when they hold nothing but tensors)") from None
        except torch.OutOfMemoryError:
            raise  # not a fact about the files
        except Exception as exc:  # noqa: BLE001 - any other failure to read these files is a fact about them
            raise UserError(f"{what}: {_bad_lm_files(where, exc, log.messages)}",
                            hint="the files are damaged or do not belong together: download or save them again") \
                from None
        missing = list(info.get("missing_keys") or [])
        mismatched = list(info.get("mismatched_keys") or [])
        if missing or mismatched:
            key = missing[0] if missing else mismatched[0][0]
            raise UserError(f"{what}: {len(missing) + len(mismatched)} weight(s) of its config.json missing from "
                            f"or of another shape in {_weights_files(where)}, e.g. {key}; they would be random",
                            hint="the files are damaged or do not belong together: download or save them again")
    log.replay()
    lm.eval()
    return lm


class _TransformersLog:
    """Holds back transformers' log while it loads, so a bad folder is our one line rather than its load-report
    table followed by a traceback; on success what it said is passed on (``replay``)."""

    def __enter__(self):
        import logging

        self.logger = logging.getLogger("transformers")
        self.messages: list[str] = []
        self.records: list = []
        outer = self

        class _Hold(logging.Handler):
            def emit(self, record):
                outer.records.append(record)
                outer.messages.append(record.getMessage())

        self.saved = (self.logger.handlers[:], self.logger.propagate)
        self.logger.handlers, self.logger.propagate = [_Hold(logging.WARNING)], False
        return self

    def __exit__(self, *exc) -> None:
        self.logger.handlers, self.logger.propagate = self.saved

    def replay(self) -> None:
        for record in self.records:
            self.logger.handle(record)


def _weights_files(where: str) -> str:
    folder = Path(where)
    names = sorted(p.name for p in folder.glob("*") if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
    return f"{folder / names[0]}" + (f" (and {len(names) - 1} more)" if len(names) > 1 else "") if names else where


def _bad_lm_files(where: str, exc: BaseException, log: list[str]) -> str:
    """Which file of an LM folder is bad, and how, for transformers' many ways of failing on one."""
    import re

    folder = Path(where)
    if folder.is_dir():
        from safetensors import safe_open

        for path in sorted(folder.glob("*.safetensors")):
            try:
                with safe_open(str(path), framework="pt"):
                    pass
            except Exception as bad:  # noqa: BLE001 - the reason is reported
                return f"{path}: not a readable safetensors file ({first_line(bad)})"
    report = next((m for m in log if "MISMATCH" in m), "")
    row = next((re.sub(r"\x1b\[[0-9;]*m", "", line) for line in report.splitlines() if "size mismatch" in line), "")
    if row:
        key = row.split("|")[0].strip()
        shapes = row.rsplit("-", 1)[-1].strip()
        return f"a weight in {_weights_files(where)} has another shape than its config.json says ({key}: {shapes})"
    config = folder / "config.json" if folder.is_dir() else "its config.json"
    return f"{config} or its weights could not be used ({type(exc).__name__}: {first_line(exc)})"


def load_tokenizer(source: str):
    """The LM's tokenizer; ``pad = unk`` when it has no pad token, as the reference sets it.

    A LLaMA SentencePiece folder (``tokenizer.model``; Vicuna) is driven by ``sentencepiece`` itself, as the
    reference's slow tokenizer was (transformers 5's converted BPE gives other ids around runs of spaces; see
    model/sp_tokenizer.py). Anything else goes through ``AutoTokenizer``.
    """
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoTokenizer

    from llavarad_cli.model.sp_tokenizer import SentencePieceTokenizer

    where = resolve_dir(source, "tokenizer")
    try:
        sp_folder = _sentencepiece_folder(source, where)
        if sp_folder is not None:
            tokenizer = SentencePieceTokenizer.from_folder(sp_folder)
        else:
            tokenizer = AutoTokenizer.from_pretrained(where)
    except StrictDataclassError as exc:  # a config.json value of the wrong type
        raise UserError(f"{Path(where) / 'config.json' if Path(where).is_dir() else where}: {first_line(exc)}",
                        hint="the model's config.json is damaged: download or save it again") from None
    except (OSError, ValueError, RuntimeError, TypeError) as exc:
        raise UserError(f"tokenizer of `{source}` could not be loaded{_where(source)}: {first_line(exc)}",
                        hint="give a local folder with the tokenizer files, or go online once") from None
    _ensure_bos(tokenizer)
    if tokenizer.pad_token is None and (tokenizer.unk_token is not None or tokenizer.eos_token is not None):
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_token_id(tokenizer))
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


def pad_token_id(source) -> int:
    """The one pad rule, for a tokenizer or an LM config: its pad token, else unk (the reference pads with unk:
    pad := unk for every template but v0), else eos, else 0. Pad positions are masked out in training and
    generation alike, so what matters is that batching, training and generation agree."""
    for name in ("pad_token_id", "unk_token_id", "eos_token_id"):
        value = getattr(source, name, None)
        if isinstance(value, (list, tuple)):  # a generation config may list several eos ids
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return 0


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


def _where(source: str) -> str:
    """Where a hub id was looked for, when that is only the local cache."""
    if is_local(source) or not hub_offline():
        return ""
    return f" (offline, HF_HUB_OFFLINE=1: looked only in the local Hugging Face cache {cache_dir()})"
