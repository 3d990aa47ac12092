"""Merging a PEFT LoRA adapter into its base LM, as both the released and the native layouts store one."""

from __future__ import annotations

from pathlib import Path

from llavarad_cli.errors import UserError
from llavarad_cli.model.weights import load_state_file


def merge_lora(lm, adapter_config: Path, adapter_file: Path, trust_pickle: bool = False):
    """Attach the LoRA adapter and merge it into the base weights (W += alpha/r * B A), like the reference.

    The weights are read by us (safetensors, or ``weights_only`` pickle) rather than by PEFT, so the
    ``--trust-pickle`` rule holds for the adapter too.
    """
    from peft import PeftConfig, get_peft_model, set_peft_model_state_dict

    peft_config = PeftConfig.from_pretrained(str(adapter_config.parent))
    peft_config.inference_mode = True
    state = load_state_file(adapter_file, trust_pickle)
    if not any("lora_" in k for k in state):
        raise UserError(f"{adapter_file}: holds no LoRA weights")
    import warnings

    with warnings.catch_warnings():
        # PEFT asks transformers an outdated gradient-checkpointing question; harmless at inference.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        # A local --model-base folder instead of the adapter's recorded hub id is the normal offline case.
        warnings.filterwarnings("ignore", message=".*base_model_name_or_path.*was renamed.*", category=UserWarning)
        peft_model = get_peft_model(lm, peft_config)
    result = set_peft_model_state_dict(peft_model, state)
    missing_lora = [k for k in result.missing_keys if "lora_" in k] + list(result.unexpected_keys)
    if missing_lora:
        raise UserError(f"{adapter_file}: does not fit the base LM ({len(missing_lora)} LoRA weights missing or unexpected, "
                        f"e.g. {missing_lora[0]})", hint="is --model-base the LM this adapter was trained on?")
    merged = peft_model.merge_and_unload()
    merged.eval()
    return merged
