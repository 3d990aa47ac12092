"""Finding and reading weight files: a local folder or a hub repo, safetensors or (safely) pickled.

Pickled ``.bin``/``.pt`` files are read with ``torch.load(weights_only=True)``; a file that needs arbitrary code
to unpickle is refused unless the user passes ``--trust-pickle``. A missing file is one message that names the
file and every place looked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from llavarad_cli.errors import UserError


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


#: Seconds the hub gets to answer one HEAD request before it counts as unreachable.
HUB_PROBE_TIMEOUT_S = 3.0
_unreachable: dict[str, str | None] = {}


def hub_unreachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """None when the hub (``HF_ENDPOINT``) answers; else why not. Asked once per process.

    Without network and without ``HF_HUB_OFFLINE=1``, huggingface_hub retries each file for about a minute
    before it falls back to the cache; one quick probe up front avoids that.
    """
    import urllib.error
    import urllib.request

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if endpoint not in _unreachable:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
            _unreachable[endpoint] = None
        except urllib.error.HTTPError:  # an answer, even an error status, means the hub is there
            _unreachable[endpoint] = None
        except Exception as exc:  # DNS failure, refused, timed out, proxy: all mean "cannot reach it"
            _unreachable[endpoint] = f"{endpoint}: {getattr(exc, 'reason', None) or exc}"
    return _unreachable[endpoint]


def offline_if_unreachable() -> str | None:
    """Before asking the hub for anything: when it cannot be reached, work from the local cache only (for
    huggingface_hub and transformers alike) and return why, for the message if a file is missing there."""
    if hub_offline():
        return None
    reason = hub_unreachable()
    if reason:
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = True  # read at call time by huggingface_hub and transformers
    return reason


def is_local(source: str | Path) -> bool:
    """A source is local when it exists on disk or looks like a path rather than ``owner/name``."""
    text = str(source)
    if Path(text).expanduser().exists():
        return True
    return text.startswith((".", "/", "~")) or text.count("/") != 1 or os.sep == "\\" and "\\" in text


def resolve_file(source: str | Path, filename: str, what: str, required: bool = True) -> Path | None:
    """``filename`` inside ``source`` (a local folder or a hub repo id), downloaded/cached when a hub id.

    Offline (``HF_HUB_OFFLINE=1``) only the local HF cache is consulted. Returns None when not ``required``
    and the file does not exist.
    """
    if is_local(source):
        folder = Path(source).expanduser()
        path = folder / filename
        if path.is_file():
            return path
        if not required:
            return None
        where = f"the folder {folder}" if folder.is_dir() else f"{folder} (no such folder)"
        raise UserError(f"{what} `{filename}` not found: looked in {where}")

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError)

    unreachable = offline_if_unreachable()
    try:
        return Path(hf_hub_download(str(source), filename))
    # LocalEntryNotFoundError subclasses EntryNotFoundError: it must be caught first, or a file that is only
    # missing from the cache (offline, or the hub unreachable) reads as "the repo has no such file".
    except LocalEntryNotFoundError:
        if not required:
            return None  # the caller tries another name, or says itself what it looked for
        if unreachable:
            mode = f"the hub is unreachable ({unreachable}) and it is not in the local Hugging Face cache"
            hint = (f"set HF_HUB_OFFLINE=1 to use only local files without asking the hub; download it once "
                    f"online (e.g. `hf download {source}`), or pass a local folder instead of `{source}`")
        else:
            mode = ("offline (HF_HUB_OFFLINE=1), so only the local Hugging Face cache was searched"
                    if hub_offline() else "the hub was unreachable, and it is not in the local Hugging Face cache")
            hint = (f"download it once online (e.g. `hf download {source}`), or pass a local folder "
                    f"instead of `{source}`")
        raise UserError(f"{what} `{filename}` of {source} not found: {mode} ({cache_dir()})", hint=hint) from None
    except RepositoryNotFoundError:
        raise UserError(f"{what}: no hub repo or local folder named `{source}`",
                        hint="check the spelling, or log in with `hf auth login` for gated repos") from None
    except EntryNotFoundError:
        if not required:
            return None
        raise UserError(f"{what} `{filename}` not found: the hub repo {source} has no such file") from None
    except HfHubHTTPError as exc:
        raise UserError(f"{what} `{filename}` of {source}: the hub refused it ({_first_line(exc)})",
                        hint="check access to the repo (`hf auth login`), or pass a local folder") from None


def resolve_dir(source: str | Path, what: str) -> str:
    """A Hugging Face model folder or repo id, for ``from_pretrained``; local folders must exist."""
    if is_local(source):
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise UserError(f"{what} not found: no folder {folder}")
        return str(folder)
    offline_if_unreachable()
    return str(source)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def cache_dir() -> str:
    """The Hugging Face hub cache folder in use (``HF_HUB_CACHE`` / ``HF_HOME``), for messages."""
    from huggingface_hub.constants import HF_HUB_CACHE

    return str(HF_HUB_CACHE)


def load_state_file(path: Path, trust_pickle: bool = False) -> Any:
    """Read a ``.safetensors`` file, or a pickled ``.bin``/``.pt`` file with ``weights_only=True``."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        if trust_pickle:
            raise UserError(f"{path}: cannot be unpickled ({str(exc).splitlines()[0]})") from None
        # torch's message is long and multi-line; the "Unsupported global" line names the offending class.
        detail = next((ln.strip() for ln in str(exc).splitlines() if "Unsupported global" in ln), "")
        raise UserError(
            f"{path}: refusing to unpickle: it needs code beyond plain tensors to load"
            + (f" ({detail[:200]})" if detail else ""),
            hint="pass --trust-pickle only if you trust where this file came from") from None
    except (RuntimeError, EOFError) as exc:
        raise UserError(f"{path}: not a readable torch file ({str(exc).splitlines()[0][:160]})") from None
