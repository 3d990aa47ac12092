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
from pathlib import Path
from typing import Any

import torch

from llavarad_cli.errors import UserError
from llavarad_cli.io_utils import atomic_write_json
from llavarad_cli.model.assemble import assemble_model
from llavarad_cli.model.llavarad import LlavaRadModel
from llavarad_cli.model.loading import NATIVE_CONFIG, load_lm, load_tokenizer
from llavarad_cli.model.lora import merge_lora
from llavarad_cli.model.projector import projector_state_from
from llavarad_cli.model.vision import build_vision_tower
from llavarad_cli.model.weights import cache_dir, is_local, load_state_file, resolve_file

NATIVE_FORMAT = "llavarad-checkpoint"
NATIVE_VERSION = 1
LM_WEIGHTS = ("none", "adapter", "full")


def _is_peft(lm) -> bool:
    return hasattr(lm, "peft_config") and hasattr(lm, "merge_and_unload")


def save_native_checkpoint(out_dir: Path, model: LlavaRadModel, base: str | None = None, tokenizer=None,
                           lm_weights: str | None = None, extra: dict[str, Any] | None = None,
                           tower_files: tuple[Path, Path] | None = None) -> Path:
    """Write ``model`` in the native layout and return the folder.

    ``lm_weights``: ``none`` (stage 1: only the projector is new; needs ``base``), ``adapter`` (the LM is a
    PEFT model; needs ``base``) or ``full`` (the LM's weights are saved under ``lm/``). Default: ``adapter``
    for a PEFT LM, else ``none`` when ``base`` is given, else ``full``. ``llavarad.json`` is written last, so a
    folder without it is an unfinished save.

    ``tower_files``: the frozen tower's own (open_clip JSON, checkpoint) files, recorded by absolute path in
    ``llavarad.json`` instead of copying the tower's weights into the folder (training checkpoints: ~170 MB
    saved per checkpoint; the folder then needs those files to stay where they are). Default: copy.
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
    if tower.open_clip_config is None:
        raise ValueError("the vision tower does not know its open_clip config; build it with build_vision_tower")
    if tower_files is not None:
        # Absolute paths: load_native's resolve_file(root, name) then finds them wherever the folder is.
        tower_config, tower_weights = (str(Path(p).expanduser().resolve()) for p in tower_files)
    else:
        tower_config, tower_weights = "vision_tower.json", "vision_tower.safetensors"
        (out / tower_config).write_text(json.dumps(tower.open_clip_config, indent=2) + "\n")
        trunk = {f"visual.trunk.{k}": v.detach().to("cpu").contiguous() for k, v in tower.trunk.state_dict().items()}
        save_file(trunk, str(out / tower_weights))
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
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("format") != NATIVE_FORMAT:
        raise UserError(f"{path}: not a llavarad checkpoint config (format != {NATIVE_FORMAT})")
    if int(config.get("format_version", 0)) > NATIVE_VERSION:
        raise UserError(f"{path}: written by a newer llavarad (format_version {config['format_version']})",
                        hint="upgrade llavarad")
    if config.get("lm_weights") not in LM_WEIGHTS:
        raise UserError(f"{path}: lm_weights must be one of {', '.join(LM_WEIGHTS)}")
    return config


def _native_root(model: str) -> Path:
    """A local folder as is; a hub repo fetched whole (it is small except for an optional full LM)."""
    if is_local(model):
        return Path(model).expanduser()
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(model)))
    except (LocalEntryNotFoundError, HfHubHTTPError) as exc:
        raise UserError(f"llavarad checkpoint {model}: could not be fetched whole from the hub or found complete in "
                        f"the local cache ({cache_dir()}): {str(exc).strip().splitlines()[0][:160]}",
                        hint="download it once online, or pass a local folder") from None


def load_native(model: str, model_base: str | None, device: torch.device, dtype: torch.dtype,
                attn_implementation: str = "sdpa", trust_pickle: bool = False):
    root = _native_root(model)
    config = read_native_config(root / NATIVE_CONFIG)
    lm_weights = config["lm_weights"]
    if lm_weights == "full":
        base = str(root / (config.get("base_lm") or "lm"))
    else:
        base = model_base or config.get("base_lm")
        if not base:
            raise UserError(f"{root / NATIVE_CONFIG}: no base LM recorded", hint="pass --model-base")
        if not model_base and not Path(base).is_absolute() and (root / base).is_dir():
            base = str(root / base)  # a base saved beside the checkpoint travels with it
    tokenizer = load_tokenizer(str(root) if config.get("has_tokenizer") else base)
    lm = load_lm(base, dtype, device, attn_implementation)
    if lm_weights == "adapter":
        adapter_config = resolve_file(str(root), "adapter_config.json", "LoRA adapter config")
        adapter_file = (resolve_file(str(root), "adapter_model.safetensors", "LoRA adapter weights", required=False)
                        or resolve_file(str(root), "adapter_model.bin", "LoRA adapter weights"))
        lm = merge_lora(lm, adapter_config, adapter_file, trust_pickle)

    tower_cfg = config.get("vision_tower") or {}
    tower = build_vision_tower(
        resolve_file(str(root), tower_cfg.get("config", "vision_tower.json"), "vision tower config"),
        resolve_file(str(root), tower_cfg.get("weights", "vision_tower.safetensors"), "vision tower weights"),
        select_layer=int(tower_cfg.get("select_layer", -2)), trust_pickle=trust_pickle)
    projector_file = resolve_file(str(root), "projector.safetensors", "projector weights")
    result = assemble_model(lm, tower, config["projector_type"],
                            projector_state=projector_state_from(load_state_file(projector_file), str(projector_file)),
                            projector_origin=str(projector_file), mm_hidden_size=config.get("mm_hidden_size"),
                            config_origin=str(root / NATIVE_CONFIG), dtype=dtype,
                            template=config.get("template", "v1"), vision_config_name=tower_cfg.get("name"),
                            extra={**(config.get("extra") or {}), "source": str(model), "layout": "native"})
    return result.eval(), tokenizer
