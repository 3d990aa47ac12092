"""The versions of the packages that decide a result: recorded by every run and evaluation, shown by doctor."""

from __future__ import annotations

#: Training, inference, image reading and scoring; one list, so every record of a run names the same packages.
PACKAGES = ("llavarad", "torch", "transformers", "tokenizers", "sentencepiece", "peft", "accelerate", "deepspeed", "open_clip_torch",
            "timm", "safetensors", "flash-attn", "pydicom", "pillow", "numpy", "sacrebleu", "rouge-score",
            "scikit-learn", "radgraph")


def package_versions(names: tuple[str, ...] | list[str] = PACKAGES) -> dict[str, str | None]:
    """``{"python": ..., name: version or None when not installed}``, in ``names`` order."""
    import platform
    from importlib import metadata

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
