"""Run specs for ``pretrain`` / ``finetune``: pydantic models, YAML loading, ``--set`` overrides, errors.

A spec is plain YAML with the sections ``model``, ``data``, ``train``, ``lora``, ``deepspeed``, ``launcher`` and
``output``. Defaults are the LLaVA-Rad recipe for the stage (the paper's and the released scripts' hyper-parameters). Every mistake becomes
one line: ``run.yaml: train.learning_rate: Input should be greater than 0``.
"""

from __future__ import annotations

import difflib
import json
import math
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llavarad_cli.errors import UserError
from llavarad_cli.model.shapes import RELEASED_BASE, RELEASED_MODEL

Stage = Literal["pretrain", "finetune"]
STAGES: tuple[str, ...] = ("pretrain", "finetune")


class Section(BaseModel):
    # allow_inf_nan=False: a string such as "inf" would otherwise be read as a float (non-finite numbers written
    # as YAML floats are refused earlier, by _refuse_non_finite, with the key that holds them)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class _SpecLoader(yaml.SafeLoader):
    """Safe YAML without aliases (``*name``): a run spec has no use for them, and nested aliases (a "billion
    laughs" file of a few hundred bytes) expand exponentially once the spec is merged and validated."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in run specs",
                                              self.peek_event().start_mark)
        return super().compose_node(parent, index)


class _NoAliasDumper(yaml.SafeDumper):
    """Writes a value that appears twice out twice: the resolved spec is read back by _SpecLoader."""

    def ignore_aliases(self, data):
        return True


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_SpecLoader)


def _refuse_non_finite(node: Any, source: str, where: str = "") -> None:
    """``learning_rate: .inf`` (or .nan) anywhere in a spec would train to NaN weights and exit 0: refuse it."""
    if isinstance(node, float) and not math.isfinite(node):
        raise UserError(f"{source}: {where or '(top level)'}: {node} is not a finite number")
    if isinstance(node, dict):
        for key, value in node.items():
            _refuse_non_finite(value, source, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _refuse_non_finite(value, source, f"{where}[{i}]")


def _existing(path: Optional[Path], kind: str) -> Optional[Path]:
    """Resolve against the working directory and insist the path exists (file or dir)."""
    if path is None:
        return None
    path = Path(path).expanduser()
    if kind == "file" and not path.is_file():
        raise ValueError(f"file not found: {path}")
    if kind == "dir" and not path.is_dir():
        raise ValueError(f"directory not found: {path}")
    return path.resolve()


class VisionTowerSection(Section):
    config: Optional[Path] = Field(
        None, description="open_clip model JSON of the vision tower (e.g. biomedclipcxr_518.json); "
        "null = the released BiomedCLIP-CXR tower from `released_from`")
    checkpoint: Optional[Path] = Field(
        None, description="weights of the vision tower (e.g. biomedclipcxr_518_checkpoint.pt); "
        "null = taken from `released_from`")
    released_from: str = Field(
        RELEASED_MODEL, description="hub id or local dir holding biomedclipcxr_518.json and its checkpoint")
    select_layer: int = Field(-2, description="hidden state fed to the projector (-2 = penultimate block)")

    @field_validator("config", "checkpoint")
    @classmethod
    def _must_exist(cls, v):
        return _existing(v, "file")


class ModelSection(Section):
    base: str = Field(RELEASED_BASE, description="base language model: hub id or local directory")
    vision_tower: VisionTowerSection = Field(default_factory=VisionTowerSection)
    projector_type: str = Field("mlp2x_gelu", description="`linear` or `mlp{N}x_gelu`")
    pretrained_projector: Optional[Path] = Field(
        None, description="stage 2: the stage-1 projector to start from, e.g. runs/pretrain/projector.safetensors "
        "(or a reference mm_projector.bin); null = a freshly initialised projector")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa", description="attention kernel; flash_attention_2 needs the `gpu` extra")

    @field_validator("projector_type")
    @classmethod
    def _projector(cls, v: str) -> str:
        from llavarad_cli.model.projector import MAX_PROJECTOR_DEPTH, PROJECTOR_TYPES, projector_depth

        depth = projector_depth(v)
        if depth is None:
            raise ValueError(f"must be {PROJECTOR_TYPES} (e.g. mlp2x_gelu)")
        if depth > MAX_PROJECTOR_DEPTH:
            raise ValueError(f"`{v}`: at most {MAX_PROJECTOR_DEPTH} layers (mlp{MAX_PROJECTOR_DEPTH}x_gelu); "
                             "LLaVA-Rad uses mlp2x_gelu")
        return v

    @field_validator("pretrained_projector")
    @classmethod
    def _projector_file(cls, v):
        return _existing(v, "file")


class DataSection(Section):
    train_records: Path = Field(description="records JSON written by `llavarad prepare` (e.g. out/train.json)")
    image_folder: Path = Field(description="folder the records' `image` paths are relative to")
    template: Literal["plain", "v1"] = Field(description="`plain` for stage 1, `v1` (Vicuna) for stage 2")
    model_max_length: int = Field(2048, gt=0, description="text tokens per sample, not counting image positions")
    num_workers: int = Field(4, ge=0, description="DataLoader worker processes per rank")

    @field_validator("train_records")
    @classmethod
    def _records(cls, v):
        return _existing(v, "file")

    @field_validator("image_folder")
    @classmethod
    def _images(cls, v):
        return _existing(v, "dir")


class TrainSection(Section):
    learning_rate: float = Field(gt=0, description="peak learning rate")
    projector_learning_rate: Optional[float] = Field(
        None, gt=0, description="separate peak lr for the projector (null = learning_rate, as the reference)")
    epochs: float = Field(gt=0, description="passes over the records")
    max_steps: Optional[int] = Field(None, gt=0, description="stop after this many optimizer steps (overrides epochs)")
    global_batch_size: int = Field(gt=0, description="samples per optimizer step over all ranks")
    per_device_batch_size: int = Field(gt=0, description="samples per forward pass per rank")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="decay after warmup")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="fraction of steps spent warming up")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    adam_beta1: float = Field(0.9, gt=0, lt=1)
    adam_beta2: float = Field(0.999, gt=0, lt=1)
    adam_epsilon: float = Field(1e-8, gt=0)
    max_grad_norm: float = Field(
        0.0, ge=0, description="gradient clipping norm; 0 = off (the reference silently had none)")
    precision: Literal["bf16", "fp16", "fp32"] = Field("bf16", description="bf16 on GPUs that have it; fp32 on CPU")
    gradient_checkpointing: bool = Field(True, description="trade compute for activation memory")
    seed: int = Field(42, description="seeds data order, projector init and LoRA init")

    @model_validator(mode="after")
    def _batch_fits(self):
        if self.global_batch_size % self.per_device_batch_size:
            raise ValueError(
                f"global_batch_size ({self.global_batch_size}) must be a multiple of "
                f"per_device_batch_size ({self.per_device_batch_size})")
        return self


class LoraSection(Section):
    enabled: bool = Field(description="train LoRA adapters on the LM (stage 2)")
    r: int = Field(64, gt=0, description="LoRA rank")
    alpha: float = Field(128, gt=0, description="LoRA alpha (scaling = alpha / r)")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA path")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="`all-linear` = every nn.Linear of the LM except lm_head; or a list of names")


class DeepSpeedSection(Section):
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="ZeRO stage of the generated DeepSpeed config")
    config: Optional[Path] = Field(None, description="your own DeepSpeed JSON; replaces the generated one")
    overlap_comm: bool = Field(True)
    contiguous_gradients: bool = Field(True)

    @field_validator("config")
    @classmethod
    def _config(cls, v):
        return _existing(v, "file")


class LauncherSection(Section):
    num_gpus: Optional[int] = Field(None, gt=0, description="GPUs per node (null = all visible)")
    num_nodes: int = Field(1, gt=0, description="machines; more than 1 needs a hostfile")
    hostfile: Optional[Path] = Field(None, description="DeepSpeed hostfile for several machines")
    master_addr: Optional[str] = Field(None, description="rendezvous address (multi-node)")
    master_port: int = Field(29500, ge=1024, le=65535, description="rendezvous port")

    @field_validator("hostfile")
    @classmethod
    def _hostfile(cls, v):
        return _existing(v, "file")

    @model_validator(mode="after")
    def _nodes(self):
        if self.num_nodes > 1 and self.hostfile is None:
            raise ValueError("num_nodes > 1 needs launcher.hostfile")
        return self


class OutputSection(Section):
    dir: Path = Field(description="run directory: checkpoints, logs, final weights")
    save_steps: int = Field(500, gt=0, description="save a resumable checkpoint every N optimizer steps")
    save_total_limit: int = Field(1, gt=0, description="keep only the newest N checkpoints")
    logging_steps: int = Field(1, gt=0, description="log loss / lr / tokens per second every N steps")
    report_to: list[Literal["tensorboard", "wandb"]] = Field(
        default_factory=list, description="extra loggers, when installed")

    @field_validator("dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return Path(v).expanduser().resolve()


class RunSpec(Section):
    stage: Stage = Field(description="pretrain (projector alignment) or finetune (LoRA + projector)")
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection
    train: TrainSection
    lora: LoraSection
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection)
    launcher: LauncherSection = Field(default_factory=LauncherSection)
    output: OutputSection


#: The LLaVA-Rad recipe per stage (the released training scripts' values). Paths are placeholders the user must change.
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "pretrain": {
        "stage": "pretrain",
        "data": {"train_records": "data/train.json", "image_folder": "data/images", "template": "plain"},
        "train": {"learning_rate": 1e-3, "epochs": 1, "global_batch_size": 256, "per_device_batch_size": 32},
        "lora": {"enabled": False},
        "output": {"dir": "runs/pretrain", "save_steps": 24000},
    },
    "finetune": {
        "stage": "finetune",
        "data": {"train_records": "data/train.json", "image_folder": "data/images", "template": "v1"},
        "train": {"learning_rate": 1e-4, "epochs": 3, "global_batch_size": 64, "per_device_batch_size": 16},
        "lora": {"enabled": True},
        "output": {"dir": "runs/finetune", "save_steps": 50000},
    },
}


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.learning_rate=2e-4`` -> (["train", "learning_rate"], 0.0002); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. train.learning_rate=2e-4")
    try:
        value = _load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise UserError(f"--set {text!r}: the value is not valid YAML ({exc.__class__.__name__})") from None
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = json.loads(json.dumps(data, default=str))  # deep copy of plain data
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise UserError(f"--set {text!r}: `{part}` is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names valid at ``loc`` (the parent of an unknown key), for a did-you-mean hint."""
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = field.annotation
        args = getattr(current, "__args__", ())
        current = next((a for a in (current, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def format_validation_error(source: str, exc: ValidationError, model: type[BaseModel] = None) -> str:
    """One line per problem: ``run.yaml: train.learning_rate: Input should be greater than 0``."""
    lines = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        where = ".".join(loc) or "(top level)"
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
            close = difflib.get_close_matches(loc[-1], _allowed_keys(model or RunSpec, loc[:-1]), n=1)
            if close:
                msg += f"; did you mean `{close[0]}`?"
        elif err["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"{source}: {where}: {msg}")
    return "; ".join(lines)


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: spec file not found", hint="`llavarad pretrain --print-spec > run.yaml` writes one")
    try:
        data = _load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"{path.name}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path.name}: not a UTF-8 text file") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path.name}: a run spec must be a mapping of sections (model, data, train, ...)")
    return data


def build_spec(stage: str, user: dict, overrides: list[str] = (), source: str = "spec") -> RunSpec:
    """Stage defaults <- the user's YAML <- ``--set`` overrides, validated as one ``RunSpec``."""
    user_stage = user.get("stage")
    if user_stage is not None and user_stage != stage:
        raise UserError(f"{source}: stage: this spec is for `{user_stage}`, not `{stage}`",
                        hint=f"run `llavarad {user_stage} {source}` or change `stage`")
    merged = deep_merge(STAGE_DEFAULTS[stage], user)
    merged = apply_overrides(merged, list(overrides))
    _refuse_non_finite(merged, source)
    try:
        return RunSpec.model_validate(merged)
    except ValidationError as exc:
        raise UserError(format_validation_error(source, exc)) from None


def load_spec(path: Path, stage: str, overrides: list[str] = ()) -> RunSpec:
    path = Path(path)
    return build_spec(stage, read_yaml(path), overrides, source=path.name)


def spec_to_dict(spec: RunSpec) -> dict:
    return spec.model_dump(mode="json")


def spec_to_yaml(spec: RunSpec) -> str:
    return yaml.dump(spec_to_dict(spec), Dumper=_NoAliasDumper, sort_keys=False)


def write_resolved_spec(spec: RunSpec, out_dir: Path | None = None) -> Path:
    """Write ``resolved_spec.yaml`` (the spec as run, loadable again) and the package versions beside it."""
    from llavarad_cli.io_utils import atomic_write_text
    from llavarad_cli.versions import package_versions

    out_dir = Path(out_dir or spec.output.dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    body = spec_to_yaml(spec)
    versions = yaml.safe_dump({"versions": package_versions()}, sort_keys=False)
    text = "# Resolved by llavarad; rerun with: llavarad {0} {1}\n{2}\n# Package versions of this run\n{3}".format(
        spec.stage, out_dir / "resolved_spec.yaml", body, "".join(f"# {line}\n" for line in versions.splitlines()))
    target = out_dir / "resolved_spec.yaml"
    atomic_write_text(target, text)
    atomic_write_text(out_dir / "versions.json", json.dumps(package_versions(), indent=2) + "\n")
    return target
