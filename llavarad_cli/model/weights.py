"""Finding and reading model files: a local folder or a hub repo, safetensors or (safely) pickled, JSON configs.

The one place that decides what a model folder may make llavarad read, and how a bad file is reported:

- a file name taken from a config is confined to its model folder: absolute names, ``..`` and symlinks that
  lead out of the folder are refused (a hub snapshot's links into its own repo's blob store are fine);
- pickled ``.bin``/``.pt`` files are read with ``torch.load(weights_only=True)``; a file that needs arbitrary
  code to unpickle is refused unless the user passes ``--trust-pickle``;
- a truncated or garbage weights file, a config that is not a JSON object, or a config value of the wrong type
  is one line naming the file and the problem; a missing file is one line naming every place looked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath, PureWindowsPath
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


def check_name(filename: Any, what: str, origin: str | Path) -> str:
    """A file name from a config (``origin``): a string naming a path inside the model folder, or a UserError."""
    if not isinstance(filename, str) or not filename.strip():
        raise UserError(f"{origin}: the {what} file name must be a non-empty string, not {_shown(filename)}")
    parts = PurePosixPath(filename.replace("\\", "/"))
    if parts.is_absolute() or PureWindowsPath(filename).drive or ".." in parts.parts:
        raise UserError(f"{origin}: the {what} file `{filename}` points outside the model folder",
                        hint="file names in a model's configs are relative to its folder")
    return filename


def confine(folder: Path, path: Path, what: str, origin: str | Path) -> Path:
    """``path`` if it really lies in ``folder`` once symlinks are followed, else a UserError.

    A Hugging Face cache snapshot links each file into its repo's blob store (``models--x--y/blobs``): the
    repo folder is the confine there.
    """
    real_folder, real = Path(folder).resolve(), Path(path).resolve()
    allowed = [real_folder]
    if real_folder.parent.name == "snapshots":
        allowed.append(real_folder.parent.parent)
    if not any(real == root or root in real.parents for root in allowed):
        raise UserError(f"{origin}: the {what} `{path}` leads outside the model folder {folder} (to {real})",
                        hint="copy the file into the model folder instead of linking to it")
    return path


def _shown(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, list, dict, type(None))) else repr(value)
    return f"{type(value).__name__} {text[:60]}"


def resolve_file(source: str | Path, filename: str, what: str, required: bool = True,
                 origin: str | Path | None = None) -> Path | None:
    """``filename`` inside ``source`` (a local folder or a hub repo id), downloaded/cached when a hub id.

    ``filename`` may come from a config (``origin``, for messages): it must stay inside the folder. Offline
    (``HF_HUB_OFFLINE=1``) only the local HF cache is consulted. Returns None when not ``required`` and the
    file does not exist.
    """
    check_name(filename, what, origin or source)
    if is_local(source):
        folder = Path(source).expanduser()
        path = folder / filename
        if path.is_file():
            return confine(folder, path, what, origin or folder)
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
        raise UserError(f"{what} `{filename}` of {source}: the hub refused it ({first_line(exc)})",
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


def first_line(exc: BaseException) -> str:
    """The first line of an error's message; with the next one when it only introduces it (ends in ``:``)."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    text = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return text[:200]




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
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            # Truncated, garbage or an unknown dtype: the header says how much data there should be.
            raise UserError(f"{path}: not a readable safetensors file ({first_line(exc)})",
                            hint="the file is damaged or incomplete: download or save it again") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        raise pickle_refusal(path, exc, trust_pickle) from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise UserError(f"{path}: not a readable torch file ({first_line(exc)[:160]})",
                        hint="the file is damaged or incomplete: download or save it again") from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: holds a {type(state).__name__}, not a state dict of named tensors")
    return state


def pickle_refusal(path: Path | str, exc: BaseException, trust_pickle: bool = False) -> UserError:
    """The one line for a pickle torch will not load: code it refuses to run, or bytes that are no pickle."""
    lines = [ln.strip() for ln in str(exc).splitlines()]
    # torch's message is long and multi-line; an "Unsupported global" line names the class it would have to
    # import and run, any other refusal ("Unsupported operand 103") means the bytes are no pickle at all.
    detail = next((ln for ln in lines if "unsupported global" in ln.lower()), "")
    if trust_pickle or not detail:
        reason = next((ln for ln in lines if ln.startswith("Unsupported")), first_line(exc))
        return UserError(f"{path}: not a readable torch file ({reason[:160]})",
                         hint="the file is damaged or incomplete: download or save it again")
    return UserError(f"{path}: refusing to unpickle: it needs code beyond plain tensors to load"
                     + (f" ({detail[:200]})" if detail else ""),
                     hint="pass --trust-pickle only if you trust where this file came from")


_NO_DEFAULT = object()


def config_value(config: dict[str, Any], key: str, kind: type | tuple[type, ...], origin: str | Path,
                 default: Any = _NO_DEFAULT, what: str | None = None) -> Any:
    """``config[key]`` checked to be of ``kind`` (``bool`` is never an ``int`` here), else one line.

    ``default`` applies when the key is absent (or null); without one the key is required.
    """
    value = config.get(key)
    if value is None:
        if default is _NO_DEFAULT:
            raise UserError(f"{origin}: `{key}` is missing")
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = " or ".join("integer" if k is int else "number" if k is float else "string" if k is str else
                            "object" if k is dict else "list" if k is list else k.__name__
                            for k in kinds if not (k is int and float in kinds))
        raise UserError(f"{origin}: `{key}` must be {'an' if names[0] in 'aeiou' else 'a'} {names}"
                        f"{' (' + what + ')' if what else ''}, not {_shown(value)}")
    return value


def model_folder(model: str, what: str) -> Path:
    """A local folder as is; a hub repo fetched whole (a llavarad checkpoint or an export: every file of it is
    needed). ``what`` names the kind of model in the error line."""
    if is_local(model):
        return Path(model).expanduser()
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(model)))
    except (LocalEntryNotFoundError, HfHubHTTPError) as exc:
        raise UserError(f"{what} {model}: could not be fetched whole from the hub or found complete in the local "
                        f"cache ({cache_dir()}): {str(exc).strip().splitlines()[0][:160]}",
                        hint="download it once online, or pass a local folder") from None
