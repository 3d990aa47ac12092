"""`llavarad doctor`: what a user needs to know before starting a long job."""

from __future__ import annotations

import os
import platform


def hub_status(timeout: float = 3.0) -> str:
    """Offline mode if set; otherwise whether the Hugging Face hub answers within ``timeout`` seconds."""
    flags = [v for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if os.environ.get(v, "").lower() in ("1", "true", "yes")]
    if flags:
        return f"offline mode ({', '.join(flags)}=1): only local files and the cache are used"
    from llavarad_cli.model.weights import hub_unreachable

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    reason = hub_unreachable(timeout)
    if reason is None:
        return f"reachable ({endpoint})"
    return f"NOT reachable ({reason}); pass local paths or set HF_HUB_OFFLINE=1"


def hf_cache_dir() -> str:
    try:
        from huggingface_hub import constants
        return str(constants.HF_HUB_CACHE)
    except Exception:
        home = os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface"))
        return os.path.join(home, "hub")


def _cached(repo: str, filename: str, revision: str | None = None) -> str | None:
    """The file's path in the local Hugging Face cache, or None; never downloads."""
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(repo, filename, revision=revision)
    except Exception:  # an unreadable or odd cache means "not found here"
        return None
    return path if isinstance(path, str) else None


def scorer_rows() -> list[tuple[str, str]]:
    """Whether `evaluate` finds the CheXbert and RadGraph weights in the HF cache (looked up, not downloaded)."""
    from llavarad_cli.evaluate.assets import RADGRAPH_REVISION, SCORERS_REPO

    rows = []
    for label, filename, revision, flag in (("CheXbert weights", "chexbert.pth", None, "--chexbert-weights"),
                                            ("RadGraph weights", "radgraph.tar.gz", RADGRAPH_REVISION,
                                             "--radgraph-weights")):
        metric = "F1-" + label.split()[0]
        path = _cached(SCORERS_REPO, filename, revision)
        if path:
            rows.append((label, f"found in the HF cache: {path}"))
        else:
            pin = f" --revision {revision}" if revision else ""
            rows.append((label, f"not in the HF cache: {metric} needs `evaluate {flag} DIR` after "
                                f"`hf download {SCORERS_REPO} {filename}{pin} --local-dir DIR`"))
    return rows


def dicom_row() -> tuple[str, str]:
    """Which compressed DICOM images `prepare`, `infer` and training can read (uncompressed ones always)."""
    from llavarad_cli.data.images import DICOM_DECODER_HINT, dicom_decoding

    readable, unreadable = dicom_decoding()
    if not unreadable:
        return ("DICOM decoders", f"uncompressed, {', '.join(readable)}")
    return ("DICOM decoders", f"uncompressed, {', '.join(readable) or 'no compressed encoding'}; not "
                              f"{', '.join(unreadable)} (such images are counted skips): {DICOM_DECODER_HINT}")


def collect(check_hub: bool = True) -> list[tuple[str, str]]:
    from llavarad_cli.versions import package_versions

    versions = package_versions()
    flash_attn = versions.pop("flash-attn", None)  # its own row below says whether the kernel can be used
    rows: list[tuple[str, str]] = [("python", versions.pop("python")),
                                   ("platform", f"{platform.system()} {platform.machine()}")]
    rows += [(name, version or "not installed") for name, version in versions.items()]

    import torch

    if torch.cuda.is_available():
        rows.append(("CUDA", f"{torch.version.cuda} ({torch.cuda.device_count()} device(s))"))
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            rows.append((f"cuda:{i}", f"{props.name}, {props.total_memory / 2**30:.1f} GiB, "
                                      f"compute {props.major}.{props.minor}"))
        bf16 = "yes" if torch.cuda.is_bf16_supported() else "no (use fp16)"
    else:
        rows.append(("CUDA", "no GPU visible: training and inference run on CPU (slow for 7B models)"))
        bf16 = "CPU only (fp32 is used on CPU)"
    rows.append(("bf16", bf16))
    rows.append(("flash-attn", f"{flash_attn} (--attn flash_attention_2 can be used)" if flash_attn
                 else "not installed: SDPA attention is used (pip install '.[gpu]')"))
    rows.append(("HF hub", hub_status() if check_hub else "not checked"))
    rows.append(("HF cache", hf_cache_dir()))
    rows.extend(scorer_rows())
    rows.append(dicom_row())
    rows.append(("CPU cores", str(os.cpu_count())))
    return rows
