"""Merging a PEFT LoRA adapter into its base LM, as both the released and the native layouts store one."""

from __future__ import annotations

from pathlib import Path

from llavarad_cli.errors import UserError
from llavarad_cli.io_utils import read_json_object
from llavarad_cli.model.weights import config_value, first_line, load_state_file


def merge_lora(lm, adapter_config: Path, adapter_file: Path, trust_pickle: bool = False):
    """Attach the LoRA adapter and merge it into the base weights (W += alpha/r * B A), like the reference.

    The weights are read by us (safetensors, or ``weights_only`` pickle) rather than by PEFT, so the
    ``--trust-pickle`` rule holds for the adapter too.
    """
    from peft import PeftConfig, get_peft_model, set_peft_model_state_dict

    check_adapter_config(adapter_config)
    try:
        peft_config = PeftConfig.from_pretrained(str(adapter_config.parent))
    except (TypeError, ValueError, KeyError) as exc:
        raise UserError(f"{adapter_config}: not a usable PEFT adapter config ({first_line(exc)})") from None
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
        try:
            peft_model = get_peft_model(lm, peft_config)
        except (TypeError, ValueError, KeyError) as exc:  # e.g. target modules the LM does not have
            raise UserError(f"{adapter_config}: does not fit the base LM ({first_line(exc)})",
                            hint="is --model-base the LM this adapter was trained on?") from None
    try:
        result = set_peft_model_state_dict(peft_model, state)
    except RuntimeError as exc:  # torch's "size mismatch for <key>: ..." list
        detail = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), first_line(exc))
        raise UserError(f"{adapter_file}: a LoRA weight has another shape than {adapter_config.name} and the base "
                        f"LM give it ({detail[:200]})", hint="is --model-base the LM this adapter was trained on?") \
            from None
    missing_lora = [k for k in result.missing_keys if "lora_" in k] + list(result.unexpected_keys)
    if missing_lora:
        raise UserError(f"{adapter_file}: does not fit the base LM ({len(missing_lora)} LoRA weights missing or unexpected, "
                        f"e.g. {missing_lora[0]})", hint="is --model-base the LM this adapter was trained on?")
    merged = peft_model.merge_and_unload()
    merged.eval()
    return merged


def check_adapter_config(path: Path) -> dict:
    """The fields of ``adapter_config.json`` a merge depends on, checked for their types before PEFT sees them
    (PEFT would fail deep inside with a bare ``TypeError``)."""
    config = read_json_object(path, "LoRA adapter config")
    if config.get("peft_type", "LORA") != "LORA":
        raise UserError(f"{path}: peft_type {config.get('peft_type')!r} is not LORA (only LoRA adapters are merged)")
    r = config_value(config, "r", int, path, default=8)
    if r <= 0:
        raise UserError(f"{path}: `r` must be a positive integer, not {r}")
    config_value(config, "lora_alpha", (int, float), path, default=8)
    config_value(config, "lora_dropout", (int, float), path, default=0.0)
    config_value(config, "fan_in_fan_out", bool, path, default=False)
    config_value(config, "bias", str, path, default="none")
    targets = config_value(config, "target_modules", (list, str), path, default=[])
    if isinstance(targets, list) and not all(isinstance(t, str) for t in targets):
        raise UserError(f"{path}: `target_modules` must be module names (strings)")
    modules_to_save = config_value(config, "modules_to_save", list, path, default=[])
    if not all(isinstance(m, str) for m in modules_to_save):
        raise UserError(f"{path}: `modules_to_save` must be module names (strings)")
    return config
