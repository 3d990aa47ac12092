"""The toolkit's own checkpoint layout ("native"): writing it, reading its config, loading it.

Native layout (what ``pretrain``/``finetune`` save), all safetensors, one config file::

    llavarad.json                   format, base LM, how the LM weights are stored, projector, tower, template
    projector.safetensors           projector weights ({0,2}.{weight,bias} for mlp2x_gelu)
    vision_tower.json               the open_clip model JSON of the tower
    vision_tower.safetensors        the tower's visual.trunk.* weights (frozen; copied so the folder is complete)
    adapter_config.json             \\ with lm_weights = "adapter": a PEFT LoRA adapter on the base LM
    adapter_model.safetensors       /
    lm/                             with lm_weights = "full": a whole Hugging Face LM folder (base = "lm")
    tokenizer files                 optional; otherwise the base LM's tokenizer is used
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from llavarad_cli.errors import UserError
from llavarad_cli.io_utils import atomic_write_bytes, atomic_write_json, read_json_object
from llavarad_cli.model.assemble import assemble_model
from llavarad_cli.model.llavarad import LlavaRadModel
from llavarad_cli.model.loading import NATIVE_CONFIG, load_lm, load_tokenizer
from llavarad_cli.model.lora import merge_lora
from llavarad_cli.model.projector import PROJECTOR_TYPES, projector_depth, projector_state_from
from llavarad_cli.model.vision import build_vision_tower
from llavarad_cli.model.weights import (check_name, confine, config_value, load_state_file, model_folder,
                                        resolve_file)

NATIVE_FORMAT = "llavarad-checkpoint"
NATIVE_VERSION = 1
LM_WEIGHTS = ("none", "adapter", "full")


#: The vision tower's files in the native layout: its open_clip JSON and its trunk weights.
TOWER_FILES = ("vision_tower.json", "vision_tower.safetensors")


def _is_peft(lm) -> bool:
    return hasattr(lm, "peft_config") and hasattr(lm, "merge_and_unload")


def write_tower(out_dir: Path, tower) -> tuple[Path, Path]:
    """The frozen tower's open_clip JSON and ``visual.trunk.*`` weights in ``out_dir``, written atomically.

    A file that already holds the same bytes is left as it is, so hard links made to it stay links to the
    same, complete file (a rewrite in place could tear every checkpoint that links it).
    """
    from safetensors.torch import save as to_bytes

    if tower.open_clip_config is None:
        raise ValueError("the vision tower does not know its open_clip config; build it with build_vision_tower")
    trunk = {f"visual.trunk.{k}": v.detach().to("cpu").contiguous() for k, v in tower.trunk.state_dict().items()}
    paths = tuple(Path(out_dir) / name for name in TOWER_FILES)
    for path, data in zip(paths, ((json.dumps(tower.open_clip_config, indent=2) + "\n").encode(), to_bytes(trunk))):
        if not (path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data):
            atomic_write_bytes(path, data)
    return paths


def _link_or_copy(source: Path, target: Path) -> None:
    if target.exists():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or one without hard links
        shutil.copyfile(source, target)


def save_native_checkpoint(out_dir: Path, model: LlavaRadModel, base: str | None = None, tokenizer=None,
                           lm_weights: str | None = None, extra: dict[str, Any] | None = None,
                           tower_files: tuple[Path, Path] | None = None) -> Path:
    """Write ``model`` in the native layout and return the folder.

    ``lm_weights``: ``none`` (stage 1: only the projector is new; needs ``base``), ``adapter`` (the LM is a
    PEFT model; needs ``base``) or ``full`` (the LM's weights are saved under ``lm/``). Default: ``adapter``
    for a PEFT LM, else ``none`` when ``base`` is given, else ``full``. ``llavarad.json`` is written last, so a
    folder without it is an unfinished save.

    ``tower_files``: the tower's files as :func:`write_tower` wrote them elsewhere (a training run's own folder),
    hard-linked into this folder instead of written again (training checkpoints: ~170 MB saved per checkpoint;
    copied where the filesystem has no hard links). The folder stays self-contained either way: a checkpoint's
    configs never name a file outside it. Default: write the tower here.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if lm_weights is None:
        lm_weights = "adapter" if _is_peft(model.lm) else ("none" if base else "full")
    if lm_weights not in LM_WEIGHTS:
        raise ValueError(f"lm_weights must be one of {LM_WEIGHTS}")
    if lm_weights in ("none", "adapter") and not base:
        raise ValueError(f"lm_weights={lm_weights} needs the base LM id/path")
    if lm_weights == "adapter":
        if not _is_peft(model.lm):
            raise ValueError("lm_weights=adapter needs a PEFT-wrapped LM")
        model.lm.save_pretrained(str(out), safe_serialization=True)
    elif lm_weights == "full":
        lm = model.lm.merge_and_unload() if _is_peft(model.lm) else model.lm
        lm.save_pretrained(str(out / "lm"), safe_serialization=True)
        base = "lm"

    cpu = {k: v.detach().to("cpu").contiguous() for k, v in model.projector.state_dict().items()}
    save_file(cpu, str(out / "projector.safetensors"))
    tower = model.vision_tower
    tower_config, tower_weights = TOWER_FILES
    if tower_files is not None:
        for source, name in zip(tower_files, TOWER_FILES):
            _link_or_copy(Path(source), out / name)
    else:
        write_tower(out, tower)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))

    cfg = model.config
    config = {
        "format": NATIVE_FORMAT, "format_version": NATIVE_VERSION,
        "base_lm": base, "lm_weights": lm_weights,
        "projector_type": cfg.projector_type, "mm_hidden_size": cfg.mm_hidden_size,
        "vision_tower": {"config": tower_config, "weights": tower_weights,
                         "select_layer": cfg.select_layer, "name": cfg.vision_config_name},
        "template": cfg.template, "dtype": str(model.dtype).replace("torch.", ""),
        "has_tokenizer": tokenizer is not None, "extra": {**cfg.extra, **(extra or {})},
    }
    atomic_write_json(out / NATIVE_CONFIG, config)
    return out


def read_native_config(path: Path) -> dict[str, Any]:
    """``llavarad.json``, every field checked for its type (a wrong one is one line naming it), defaults filled.

    File names in it (the tower's config and weights) must stay inside the checkpoint folder.
    """
    config = read_json_object(path, "llavarad checkpoint config")
    if config.get("format") != NATIVE_FORMAT:
        raise UserError(f"{path}: not a llavarad checkpoint config (format != {NATIVE_FORMAT})")
    version = config_value(config, "format_version", int, path, default=0)
    if version > NATIVE_VERSION:
        raise UserError(f"{path}: written by a newer llavarad (format_version {version})", hint="upgrade llavarad")
    if config.get("lm_weights") not in LM_WEIGHTS:
        raise UserError(f"{path}: lm_weights must be one of {', '.join(LM_WEIGHTS)}")
    projector_type = config_value(config, "projector_type", str, path)
    if projector_depth(projector_type) is None:
        raise UserError(f"{path}: unknown projector_type `{projector_type}`", hint=f"use {PROJECTOR_TYPES}")
    tower = config_value(config, "vision_tower", dict, path, default={})
    where = f"{path} (vision_tower)"
    return {
        **config, "format_version": version, "projector_type": projector_type,
        "base_lm": config_value(config, "base_lm", str, path, default=None),
        "mm_hidden_size": config_value(config, "mm_hidden_size", int, path, default=None),
        "template": config_value(config, "template", str, path, default="v1"),
        "has_tokenizer": config_value(config, "has_tokenizer", bool, path, default=False),
        "extra": config_value(config, "extra", dict, path, default={}),
        "vision_tower": {
            "config": check_name(config_value(tower, "config", str, where, default="vision_tower.json"),
                                 "vision tower config", where),
            "weights": check_name(config_value(tower, "weights", str, where, default="vision_tower.safetensors"),
                                  "vision tower weights", where),
            "select_layer": config_value(tower, "select_layer", int, where, default=-2, what="a block index"),
            "name": config_value(tower, "name", str, where, default=None),
        },
    }




def load_native(model: str, model_base: str | None, device: torch.device, dtype: torch.dtype,
                attn_implementation: str = "sdpa", trust_pickle: bool = False):
    root = model_folder(model, "llavarad checkpoint")
    config_path = root / NATIVE_CONFIG
    config = read_native_config(config_path)
    lm_weights = config["lm_weights"]
    if lm_weights == "full":
        name = check_name(config["base_lm"] or "lm", "full LM folder", config_path)
        base = str(confine(root, root / name, "full LM folder", config_path))
    else:
        # The base LM is a model reference, as --model-base takes (a hub id, or a folder such as the absolute
        # path training records), not a file of the checkpoint; a relative one must lie inside the folder.
        base = model_base or config["base_lm"]
        if not base:
            raise UserError(f"{config_path}: no base LM recorded", hint="pass --model-base")
        if not model_base and not Path(base).is_absolute():
            check_name(base, "base LM folder", config_path)
            if (root / base).is_dir():
                base = str(confine(root, root / base, "base LM folder", config_path))  # travels with the folder
    tokenizer = load_tokenizer(str(root) if config["has_tokenizer"] else base)
    lm = load_lm(base, dtype, device, attn_implementation)
    if lm_weights == "adapter":
        adapter_config = resolve_file(str(root), "adapter_config.json", "LoRA adapter config")
        adapter_file = (resolve_file(str(root), "adapter_model.safetensors", "LoRA adapter weights", required=False)
                        or resolve_file(str(root), "adapter_model.bin", "LoRA adapter weights"))
        lm = merge_lora(lm, adapter_config, adapter_file, trust_pickle)

    tower_cfg = config["vision_tower"]
    tower = build_vision_tower(
        resolve_file(str(root), tower_cfg["config"], "vision tower config", origin=config_path),
        resolve_file(str(root), tower_cfg["weights"], "vision tower weights", origin=config_path),
        select_layer=tower_cfg["select_layer"], trust_pickle=trust_pickle)
    projector_file = resolve_file(str(root), "projector.safetensors", "projector weights")
    result = assemble_model(lm, tower, config["projector_type"],
                            projector_state=projector_state_from(load_state_file(projector_file), str(projector_file)),
                            projector_origin=str(projector_file), mm_hidden_size=config["mm_hidden_size"],
                            config_origin=str(config_path), dtype=dtype, template=config["template"],
                            vision_config_name=tower_cfg["name"],
                            extra={**config["extra"], "source": str(model), "layout": "native"})
    return result.eval(), tokenizer
