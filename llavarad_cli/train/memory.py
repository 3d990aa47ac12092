"""A per-GPU memory estimate for ``--dry-run``: weights, gradients, optimizer state, activations.

Parameter counts are exact (the LM is built on the ``meta`` device from its config, LoRA shapes from its
linear layers); activations are a rough rule of thumb (Korthikanti et al. 2022, with a fused attention kernel)
and are labelled as such.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llavarad_cli.model.shapes import KNOWN_LM_SHAPES, RELEASED_TOWER
from llavarad_cli.specs import RunSpec

GIB = 1024**3


@dataclass
class Estimate:
    rows: list[tuple[str, float]] = field(default_factory=list)  # (item, GiB)
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(v for _, v in self.rows)


def _lm_shape(spec: RunSpec):
    """(LM parameters, hidden, layers, vocab, LoRA parameters) from the LM's config, without weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from llavarad_cli.model.weights import resolve_dir
    from llavarad_cli.train.build import linear_layer_names

    try:
        config = AutoConfig.from_pretrained(resolve_dir(spec.model.base, "base language model"))
        assumed = False
    except Exception:  # noqa: BLE001 - offline or not downloaded yet: fall back to a shape we know
        if spec.model.base not in KNOWN_LM_SHAPES:
            raise
        from transformers import LlamaConfig

        config = LlamaConfig(**KNOWN_LM_SHAPES[spec.model.base])
        assumed = True
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in lm.parameters())
    lora = 0
    if spec.lora.enabled:
        targets = set(linear_layer_names(lm) if spec.lora.target_modules == "all-linear" else spec.lora.target_modules)
        for name, module in lm.named_modules():
            if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets:
                lora += spec.lora.r * (module.in_features + module.out_features)
    return params, config.hidden_size, config.num_hidden_layers, config.vocab_size, lora, \
        getattr(config, "max_position_embeddings", None), assumed


def _tower_shape(spec: RunSpec):
    """(tower parameters, width, patches) from its open_clip JSON; the released tower's when not local."""
    import torch

    vt = spec.model.vision_tower
    if vt.config is None:
        return RELEASED_TOWER["params"], RELEASED_TOWER["hidden"], RELEASED_TOWER["patches"], True
    from llavarad_cli.model.vision import build_vision_tower

    try:
        with torch.device("meta"):
            tower = build_vision_tower(vt.config, None, vt.select_layer)
    except Exception:  # noqa: BLE001 - some timm inits need real tensors; the tower is small enough
        tower = build_vision_tower(vt.config, None, vt.select_layer)
    return sum(p.numel() for p in tower.parameters()), tower.hidden_size, tower.num_patches, False


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)


def estimate(spec: RunSpec, world_size: int) -> Estimate:
    est = Estimate()
    try:
        lm_params, hidden, layers, vocab, lora, max_positions, lm_assumed = _lm_shape(spec)
    except Exception as exc:  # noqa: BLE001 - a dry run must not fail because the hub is offline
        est.notes.append(f"no estimate: the LM config of `{spec.model.base}` could not be read "
                         f"({exc.__class__.__name__})")
        return est
    if lm_assumed:
        est.notes.append(f"LM config of `{spec.model.base}` not readable here (offline?): its published shape assumed")
    tower_params, tower_hidden, patches, assumed = _tower_shape(spec)
    if assumed:
        est.notes.append("vision tower assumed to be the released ViT-B/14 at 518 px (1369 patches)")
    from llavarad_cli.model.loading import DTYPES
    from llavarad_cli.model.projector import projector_depth

    depth = projector_depth(spec.model.projector_type)
    proj_params = tower_hidden * hidden + hidden + (depth - 1) * (hidden * hidden + hidden)
    trainable = proj_params + lora
    width = DTYPES[spec.train.precision].itemsize
    shard = world_size if spec.deepspeed.zero_stage >= 1 and spec.deepspeed.config is None else 1
    grad_shard = world_size if spec.deepspeed.zero_stage >= 2 and spec.deepspeed.config is None else 1
    master = 4 if width == 2 else 0  # ZeRO keeps fp32 master weights of what trains under bf16/fp16

    est.rows.append((f"LM weights, frozen ({_count(lm_params)} params)", lm_params * width / GIB))
    est.rows.append((f"vision tower, frozen ({_count(tower_params)})", tower_params * width / GIB))
    est.rows.append((f"trainable weights ({_count(proj_params)} projector + {_count(lora)} LoRA)",
                     trainable * width / GIB))
    est.rows.append((f"gradients (ZeRO shard 1/{grad_shard})", trainable * width / grad_shard / GIB))
    est.rows.append((f"AdamW state + fp32 master (ZeRO shard 1/{shard})", trainable * (8 + master) / shard / GIB))

    batch = spec.train.per_device_batch_size
    from llavarad_cli.train.samples import text_budget

    tokens = text_budget(spec.data.model_max_length, max_positions, patches) - 1 + patches  # a full-length report
    if spec.train.gradient_checkpointing:
        acts = layers * batch * tokens * hidden * width + batch * tokens * hidden * 34
        how = "checkpointed layer inputs + one layer"
    else:
        acts = layers * batch * tokens * hidden * 34
        how = "all layers, no checkpointing"
    logits = batch * tokens * vocab * (width + 4 + 4)  # logits, fp32 up-cast and its gradient
    est.rows.append((f"activations, rough ({how}; {batch} x {tokens} positions)", acts / GIB))
    est.rows.append(("logits and loss, rough", logits / GIB))
    est.notes.append("plus the CUDA context and allocator slack (about 1-3 GiB per GPU)")
    return est
