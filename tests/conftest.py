"""Shared test setup: offline hub, few threads, paths to the real data copied into tests/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("LLAVARAD_DS_NO_SHM", "1")

DATA = Path(__file__).parent / "data"
#: The larger shared data folder beside the checkout (optional; tests using it skip without it).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _few_threads():
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from llavarad_cli.testing import tiny_tokenizer as build

    return build()
