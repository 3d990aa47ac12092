"""Batched, resumable findings generation; chunk planning for several GPUs; merging chunk outputs.

Library use::

    from llavarad_cli.infer import GenerationSettings, Predictor, read_queries, run_queries, merge_chunks
    from llavarad_cli.model.loading import load_model

    model, tokenizer = load_model("microsoft/llava-rad")
    queries = read_queries("test.json").queries
    run_queries(Predictor(model, tokenizer, GenerationSettings()), queries, "images/", "preds.jsonl")

Names are imported on first use, so importing this package (as the CLI does for each command) stays cheap and
torch is loaded only with ``Predictor``.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Query": "queries", "QuerySet": "queries", "read_queries": "queries",
    "GenerationSettings": "settings", "Predictor": "generate",
    "RunSummary": "runner", "run_queries": "runner", "select_chunk": "runner",
    "PredictionWriter": "writer", "scan_predictions": "writer",
    "MergeReport": "merge", "merge_chunks": "merge",
    "chunk_bounds": "chunks", "chunk_output": "chunks",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
