"""What a finished stage leaves behind, in the toolkit's native layout (``llavarad infer --model OUT`` loads it).

Stage 1: ``projector.safetensors`` (+ ``mm_projector.bin`` with the reference's key names, for LLaVA's own
scripts). Stage 2: the LoRA adapter and the projector; with ``--merge`` also ``OUT/merged/``, a standalone
model with the adapter merged into the LM weights.
"""

from __future__ import annotations

from pathlib import Path

from llavarad_cli.specs import RunSpec

MM_PROJECTOR_BIN = "mm_projector.bin"
MERGED_DIR = "merged"


def base_reference(spec: RunSpec) -> str:
    """The base LM as recorded in ``llavarad.json``: an absolute path for a local folder, else the hub id."""
    from llavarad_cli.model.weights import is_local

    base = spec.model.base
    return str(Path(base).expanduser().resolve()) if is_local(base) else base


def save_weights(model, spec: RunSpec, path: Path, reference_tower: bool = False) -> Path:
    """The trainable state in the native layout (stage 1: projector only; stage 2: adapter + projector).

    ``reference_tower`` (intermediate checkpoints): hard-link the frozen tower's files from the run folder's
    own copy (written once, and the final output's) instead of writing them into every checkpoint.
    """
    from llavarad_cli.model.native import save_native_checkpoint, write_tower

    files = None
    if reference_tower:
        files = write_tower(Path(spec.output.dir), model.vision_tower)
    return save_native_checkpoint(Path(path), model, base=base_reference(spec),
                                  lm_weights="adapter" if spec.lora.enabled else "none",
                                  extra={"trained_by": f"llavarad {spec.stage}"}, tower_files=files)


def save_mm_projector_bin(model, path: Path) -> Path:
    """The reference's stage-1 file: ``model.mm_projector.{i}.*`` tensors in a torch pickle."""
    import torch

    state = {f"model.mm_projector.{k}": v.detach().cpu().contiguous() for k, v in model.projector.state_dict().items()}
    tmp = Path(path).with_name(f".{Path(path).name}.tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return Path(path)


def save_final(model, spec: RunSpec, out: Path, merge: bool = False, tokenizer=None) -> list[Path]:
    from llavarad_cli.model.native import save_native_checkpoint

    out = Path(out)
    written = [save_weights(model, spec, out) / "llavarad.json", out / "projector.safetensors"]
    if spec.stage == "pretrain":
        written.append(save_mm_projector_bin(model, out / MM_PROJECTOR_BIN))
    if merge:
        # Last: merging folds the adapter into the LM weights in place.
        written.append(save_native_checkpoint(out / MERGED_DIR, model, lm_weights="full", tokenizer=tokenizer,
                                              extra={"trained_by": f"llavarad {spec.stage} --merge"}))
    return written
