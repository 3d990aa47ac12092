"""The commented default run spec that `llavarad pretrain|finetune --print-spec` prints.

Every field of ``specs.RunSpec`` with its description as a comment, filled with the stage's LLaVA-Rad recipe.
"""

from __future__ import annotations

import json

import yaml
from pydantic import BaseModel

from llavarad_cli.specs import STAGE_DEFAULTS, RunSpec

_SECTION_HELP = {
    "model": "What to build: base LM, vision tower, projector.",
    "data": "Records from `llavarad prepare` and the images they point to.",
    "train": "Optimisation (defaults = the LLaVA-Rad recipe for this stage).",
    "lora": "LoRA adapters on every linear layer of the LM (never the projector, the vision tower or lm_head).",
    "deepspeed": "DeepSpeed ZeRO settings.",
    "launcher": "How workers are started (DeepSpeed launcher).",
    "output": "Where the run writes checkpoints, logs and final weights.",
}


def _render(model_cls: type[BaseModel], values: dict, indent: int) -> list[str]:
    pad = "  " * indent
    lines: list[str] = []
    for name, field in model_cls.model_fields.items():
        value = values.get(name)
        sub = field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) else None
        if sub is not None:
            lines.append(f"{pad}{name}:")
            lines.extend(_render(sub, value or {}, indent + 1))
            continue
        if field.description:
            lines.append(f"{pad}# {field.description}")
        dumped = yaml.safe_dump({name: value}, default_flow_style=True, width=1000).strip()
        lines.append(f"{pad}{dumped[1:-1] if dumped.startswith('{') else dumped}")
    return lines


def default_spec_yaml(stage: str) -> str:
    """A complete, commented spec with this stage's defaults (paths are placeholders to edit)."""
    defaults = stage_defaults(stage)
    out = [f"# llavarad {stage} run spec — the LLaVA-Rad recipe. Edit the paths, then run:",
           f"#   llavarad {stage} run.yaml --dry-run", ""]
    for name, field in RunSpec.model_fields.items():
        if name == "stage":
            out.append(f"stage: {stage}")
            out.append("")
            continue
        out.append(f"# {_SECTION_HELP[name]}")
        out.append(f"{name}:")
        out.extend(_render(field.annotation, defaults.get(name, {}), 1))
        out.append("")
    return "\n".join(out)


def stage_defaults(stage: str) -> dict:
    """Every field's default merged with the stage recipe, without checking that placeholder paths exist."""
    def fill(model_cls: type[BaseModel], given: dict) -> dict:
        result = {}
        for name, field in model_cls.model_fields.items():
            sub = field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) else None
            if sub is not None:
                result[name] = fill(sub, given.get(name, {}))
            elif name in given:
                result[name] = given[name]
            elif not field.is_required():
                default = field.get_default(call_default_factory=True)
                result[name] = json.loads(json.dumps(default, default=str))
            else:
                result[name] = None
        return result
    return fill(RunSpec, STAGE_DEFAULTS[stage])
