"""Assemble the model a training stage needs from the spec: LM, tower, projector, LoRA, what trains.

Order matters: LoRA is attached to the LM alone, so it can never reach
the projector, the vision tower or ``lm_head``; the projector and LoRA initialisations are seeded (the
reference's were not).
"""

from __future__ import annotations

from pathlib import Path

from llavarad_cli.specs import RunSpec


def tower_files(spec: RunSpec) -> tuple[Path, Path]:
    """The vision tower's open_clip JSON and checkpoint: given in the spec, or the released ones."""
    from llavarad_cli.model.released import RELEASED_TOWER_CHECKPOINT, RELEASED_TOWER_CONFIG
    from llavarad_cli.model.weights import resolve_file

    vt = spec.model.vision_tower
    config = vt.config or resolve_file(vt.released_from, RELEASED_TOWER_CONFIG, "vision tower config")
    checkpoint = vt.checkpoint
    if checkpoint is None:
        # As the spec documents, also when only `config` is given: a tower without weights would train (and save)
        # a randomly initialised vision encoder without a word.
        checkpoint = resolve_file(vt.released_from, RELEASED_TOWER_CHECKPOINT, "vision tower checkpoint")
    return Path(config), Path(checkpoint)


def linear_layer_names(lm) -> list[str]:
    """Last name component of every ``nn.Linear`` of the LM except ``lm_head`` (q/k/v/o/gate/up/down_proj)."""
    from torch import nn

    names = {name.rsplit(".", 1)[-1] for name, module in lm.named_modules() if isinstance(module, nn.Linear)}
    output = lm.get_output_embeddings()
    for name, module in lm.named_modules():
        if module is output:
            names.discard(name.rsplit(".", 1)[-1])
    return sorted(names)


def build_training_model(spec: RunSpec, trust_pickle: bool = False):
    """(LlavaRadModel with only the stage's trainable parameters requiring grad, tokenizer)."""
    from llavarad_cli.model.loading import DTYPES, load_lm, load_tokenizer, pick_device
    from llavarad_cli.model.vision import build_vision_tower

    tokenizer = load_tokenizer(spec.model.base)
    tokenizer.padding_side = "right"
    lm = load_lm(spec.model.base, DTYPES[spec.train.precision], pick_device(), spec.model.attn_implementation)
    config_path, checkpoint_path = tower_files(spec)
    tower = build_vision_tower(config_path, checkpoint_path, select_layer=spec.model.vision_tower.select_layer,
                               trust_pickle=trust_pickle)
    return assemble_training_model(lm, tower, spec, trust_pickle), tokenizer


def assemble_training_model(lm, tower, spec: RunSpec, trust_pickle: bool = False):
    """Freeze the LM and tower, add the (seeded or stage-1) projector, LoRA on the LM alone, checkpointing."""
    import torch

    from llavarad_cli.model.assemble import assemble_model
    from llavarad_cli.model.loading import DTYPES
    from llavarad_cli.model.projector import projector_state_from
    from llavarad_cli.model.weights import load_state_file

    lm.config.use_cache = False
    lm.requires_grad_(False)
    stage1 = spec.model.pretrained_projector
    # A stage-1 projector: our projector.safetensors or the reference's mm_projector.bin (strict either way).
    model = assemble_model(lm, tower, spec.model.projector_type, seed=spec.train.seed,
                           projector_state=projector_state_from(load_state_file(Path(stage1), trust_pickle), str(stage1))
                           if stage1 is not None else None, projector_origin=str(stage1),
                           dtype=DTYPES[spec.train.precision], template=spec.data.template,
                           vision_config_name=tower.name or "vision_tower")
    model.projector.requires_grad_(True)

    if spec.lora.enabled:
        from peft import LoraConfig, get_peft_model

        targets = spec.lora.target_modules
        if targets == "all-linear":
            targets = linear_layer_names(lm)
        torch.manual_seed(spec.train.seed + 1)
        model.lm = get_peft_model(lm, LoraConfig(r=spec.lora.r, lora_alpha=spec.lora.alpha,
                                                 lora_dropout=spec.lora.dropout, bias="none", task_type="CAUSAL_LM",
                                                 target_modules=targets))
    if spec.train.gradient_checkpointing:
        # Non-reentrant checkpointing gives grads to the projector through a frozen LM without the
        # enable_input_require_grads hook the reference needed.
        model.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def parameter_groups(model, spec: RunSpec) -> list[dict]:
    """AdamW groups: the projector (optionally its own LR) and the adapters; only parameters that train."""
    projector = [p for p in model.projector.parameters() if p.requires_grad]
    ids = {id(p) for p in projector}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups = [{"params": projector, "lr": spec.train.projector_learning_rate or spec.train.learning_rate,
               "name": "projector"}]
    if others:
        groups.append({"params": others, "lr": spec.train.learning_rate, "name": "lora"})
    return groups
