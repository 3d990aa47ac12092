"""Loading the released ``microsoft/llava-rad`` layout, as the reference builder does.

Files: ``config.json`` (``model_type: "llava"``, read as plain JSON: registering it with AutoConfig collides with
transformers' own LLaVA), ``adapter_config.json`` + ``adapter_model.bin`` (LoRA, merged into the base),
``non_lora_trainables.bin`` (the projector), ``biomedclipcxr_518.json`` + ``biomedclipcxr_518_checkpoint.pt``
(the vision tower), and the base LM from ``--model-base``.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import torch

from llavarad_cli.errors import UserError
from llavarad_cli.io_utils import read_json_object
from llavarad_cli.model.assemble import assemble_model
from llavarad_cli.model.loading import load_lm, load_tokenizer
from llavarad_cli.model.lora import merge_lora
from llavarad_cli.model.projector import PROJECTOR_TYPES, projector_depth, projector_state_from
from llavarad_cli.model.shapes import RELEASED_BASE
from llavarad_cli.model.vision import build_vision_tower
from llavarad_cli.model.weights import config_value, load_state_file, resolve_file

#: The name the reference falls back to when the configured tower JSON path does not exist.
RELEASED_TOWER_CONFIG = "biomedclipcxr_518.json"
RELEASED_TOWER_CHECKPOINT = "biomedclipcxr_518_checkpoint.pt"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
DEFAULT_BASE = RELEASED_BASE


def read_released_config(path: Path) -> dict[str, Any]:
    """The LLaVA ``config.json``, with the fields llavarad reads checked for their types and defaults filled."""
    config = read_json_object(path, "LLaVA-Rad config")
    if "mm_projector_type" not in config:
        raise UserError(f"{path}: not a LLaVA(-Rad) config (no mm_projector_type)",
                        hint="--model must be the released llava-rad layout or a llavarad checkpoint")
    projector_type = config_value(config, "mm_projector_type", str, path)
    if projector_depth(projector_type) is None:
        raise UserError(f"{path}: unknown mm_projector_type `{projector_type}`", hint=f"use {PROJECTOR_TYPES}")
    return {
        **config, "mm_projector_type": projector_type,
        "mm_hidden_size": config_value(config, "mm_hidden_size", int, path, default=None),
        "mm_vision_select_layer": config_value(config, "mm_vision_select_layer", int, path, default=-2,
                                               what="a block index"),
        "mm_vision_select_feature": config_value(config, "mm_vision_select_feature", str, path, default="patch"),
        "mm_use_im_start_end": config_value(config, "mm_use_im_start_end", bool, path, default=False),
        "mm_use_im_patch_token": config_value(config, "mm_use_im_patch_token", bool, path, default=False),
        "mm_vision_tower_config": config_value(config, "mm_vision_tower_config", str, path, default=None),
        "mm_vision_tower_checkpoint": config_value(config, "mm_vision_tower_checkpoint", str, path, default=None),
    }


def _tower_file(model: str, configured: str | None, default: str, what: str, origin: Path) -> Path:
    """The tower files are looked up by bare filename in the model repo/folder (the config holds a
    training-time path), falling back to the released name, as the reference does; so a configured path
    never leads out of the folder."""
    names = [PurePosixPath(configured.replace("\\", "/")).name] if configured else []
    names = [name for name in names if name not in ("", ".", "..")]
    names += [default] if default not in names else []
    for name in names[:-1]:
        found = resolve_file(model, name, what, required=False, origin=origin)
        if found is not None:
            return found
    return resolve_file(model, names[-1], what, origin=origin)


def load_released(model: str, model_base: str | None, device: torch.device, dtype: torch.dtype,
                  attn_implementation: str = "sdpa", trust_pickle: bool = False):
    """``(LlavaRadModel, tokenizer)`` from the released LoRA layout plus its base LM."""
    config_path = resolve_file(model, "config.json", "LLaVA-Rad config")
    config = read_released_config(config_path)
    model_base = model_base or DEFAULT_BASE
    if config["mm_use_im_start_end"] or config["mm_use_im_patch_token"]:
        raise UserError(f"{config_path}: mm_use_im_start_end / mm_use_im_patch_token are not supported "
                        "(LLaVA-Rad uses neither)")
    if config["mm_vision_select_feature"] != "patch":
        raise UserError(f"{config_path}: only mm_vision_select_feature=patch is supported")

    projector_file = resolve_file(model, "non_lora_trainables.bin", "projector weights")
    adapter_config = resolve_file(model, "adapter_config.json", "LoRA adapter config")
    adapter_file = (resolve_file(model, ADAPTER_FILES[0], "LoRA adapter weights", required=False)
                    or resolve_file(model, ADAPTER_FILES[1], "LoRA adapter weights"))
    tower_config = _tower_file(model, config["mm_vision_tower_config"], RELEASED_TOWER_CONFIG,
                               "vision tower config", config_path)
    tower_ckpt = _tower_file(model, config["mm_vision_tower_checkpoint"], RELEASED_TOWER_CHECKPOINT,
                             "vision tower checkpoint", config_path)

    projector_state, lm_state = split_non_lora_trainables(load_state_file(projector_file, trust_pickle),
                                                          str(projector_file))
    tokenizer = load_tokenizer(model_base)
    lm = load_lm(model_base, dtype, device, attn_implementation)
    if lm_state:  # the reference loads these into the LM before merging the LoRA; so do we
        load_lm_weights(lm, lm_state, str(projector_file))
    lm = merge_lora(lm, adapter_config, adapter_file, trust_pickle)

    tower = build_vision_tower(tower_config, tower_ckpt, select_layer=config["mm_vision_select_layer"],
                               trust_pickle=trust_pickle)
    result = assemble_model(lm, tower, config["mm_projector_type"], projector_state=projector_state,
                            projector_origin=str(projector_file), mm_hidden_size=config["mm_hidden_size"],
                            config_origin=str(config_path), dtype=dtype, template="v1",
                            extra={"source": str(model), "layout": "released"})
    return result.eval(), tokenizer


def rename_like_reference(state: dict[str, Any]) -> dict[str, Any]:
    """The reference builder's renaming of ``non_lora_trainables.bin`` keys, step for step: strip a leading
    ``base_model.``; then, if any key starts with ``model.model.``, strip one leading ``model.`` from every key
    that starts with ``model.`` (``base_model.model.model.mm_projector.0.weight`` -> ``model.mm_projector.0.weight``,
    a name in the LLaVA model, whose LM part is named like Hugging Face's ``LlamaForCausalLM``)."""
    state = {(k[len("base_model."):] if k.startswith("base_model.") else k): v for k, v in state.items()}
    if any(k.startswith("model.model.") for k in state):
        state = {(k[len("model."):] if k.startswith("model.") else k): v for k, v in state.items()}
    return state


def split_non_lora_trainables(raw: Any, origin: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(projector weights, LM weights)`` of a ``non_lora_trainables.bin``, keys renamed as the reference does.

    The released file holds only the four projector tensors. Other keys (a run that also trained, say, the
    embeddings) are LM weights, which the reference loads into the LM too; here they must all fit it.
    """
    if not isinstance(raw, dict):
        raise UserError(f"{origin}: not a state dict")
    renamed = rename_like_reference({k: v for k, v in raw.items() if isinstance(v, torch.Tensor)})
    projector = {k: v for k, v in renamed.items() if "mm_projector." in k}
    lm_state = {k: v for k, v in renamed.items() if "mm_projector." not in k}
    return projector_state_from(projector, origin), lm_state


def load_lm_weights(lm, state: dict[str, torch.Tensor], origin: str) -> None:
    """Copy extra trained LM tensors into the base LM; every one must match a parameter's name and shape
    (the reference's ``strict=False`` would drop a misnamed one without a word)."""
    own = lm.state_dict()
    bad = [k for k, v in state.items() if k not in own or tuple(own[k].shape) != tuple(v.shape)]
    if bad:
        raise UserError(f"{origin}: {len(bad)} weight(s) fit neither the projector nor the base LM, e.g. {bad[0]}",
                        hint="is --model-base the LM this checkpoint was trained on?")
    lm.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
