"""Shared set-up for the training tests: tiny LM + tower on disk, records from `prepare` on real Open-I data."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml

DATA = Path(__file__).parent / "data"


def tiny_assets(root: Path) -> dict:
    """A tiny LM folder, a tiny BiomedCLIP-shaped tower, and 4 records built by `prepare` from Open-I uid 7."""
    from llavarad_cli import testing
    from llavarad_cli.data.prepare import prepare

    root = Path(root)
    lm = testing.write_tiny_lm(root / "lm")
    tower_cfg, tower_ckpt = testing.write_tiny_vision_tower(root / "tower")
    prepared = root / "prepared"
    prepare(prepared, mimic_dir=None, reports=None, annotations=None,
            openi_reports=DATA / "openi" / "indiana_reports.csv",
            openi_projections=DATA / "openi" / "indiana_projections.csv",
            openi_images=DATA / "cxr-images" / "iu", split="train", workers=1, overwrite=True)
    (record,) = json.loads((prepared / "train.json").read_text())  # uid 7, the frontal view with findings
    # More samples from the same real study: its impression as a second target, and the no-reason prompt.
    from llavarad_cli.prompts import conversations

    records = [record]
    alt = copy.deepcopy(record)
    alt["id"] += "-impression"
    alt["conversations"] = conversations(record["reason"], record["impression"])
    records.append(alt)
    for base in (record, alt):
        bare = copy.deepcopy(base)
        bare["id"] += "-noreason"
        bare["reason"] = None
        bare["conversations"] = conversations(None, bare["conversations"][1]["value"])
        records.append(bare)
    records_path = root / "train.json"
    records_path.write_text(json.dumps(records, indent=1))
    return {"lm": lm, "tower_config": tower_cfg, "tower_checkpoint": tower_ckpt, "records": records_path,
            "images": DATA / "cxr-images" / "iu"}


def write_spec(path: Path, stage: str, assets: dict, out: Path, **sections) -> Path:
    spec = {
        "stage": stage,
        "model": {"base": str(assets["lm"]), "projector_type": "mlp2x_gelu", "attn_implementation": "eager",
                  "vision_tower": {"config": str(assets["tower_config"]),
                                   "checkpoint": str(assets["tower_checkpoint"])}},
        "data": {"train_records": str(assets["records"]), "image_folder": str(assets["images"]),
                 "template": "plain" if stage == "pretrain" else "v1", "num_workers": 0},
        "train": {"learning_rate": 5e-3, "epochs": 4, "global_batch_size": 2, "per_device_batch_size": 1,
                  "precision": "fp32", "gradient_checkpointing": False, "warmup_ratio": 0.0,
                  "lr_scheduler": "constant"},
        "lora": {"enabled": stage == "finetune", "r": 4, "alpha": 8},
        "output": {"dir": str(out), "save_steps": 3, "save_total_limit": 2},
    }
    for name, values in sections.items():
        spec.setdefault(name, {}).update(values)
    Path(path).write_text(yaml.safe_dump(spec, sort_keys=False))
    return Path(path)
