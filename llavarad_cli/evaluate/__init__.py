"""Report-generation metrics as the LLaVA-Rad paper computed them, with one bootstrap for all of them.

Library use::

    from llavarad_cli.evaluate import load_pairs, evaluate_pairs, EvalOptions, write_outputs
    result = evaluate_pairs(load_pairs("preds.jsonl"), EvalOptions(metrics=("bleu", "rouge")))

The names are imported on first use, so that ``llavarad_cli.evaluate.options`` (the defaults the CLI shows in
its help) loads without numpy and the scorers.
"""

from importlib import import_module

_HOMES = {
    "Pair": "records", "load_pairs": "records",
    "write_outputs": "report",
    "EvalOptions": "options",
    "EvalResult": "runner", "evaluate_pairs": "runner", "parse_metrics": "runner",
}

__all__ = ["Pair", "load_pairs", "evaluate_pairs", "EvalOptions", "EvalResult", "parse_metrics", "write_outputs"]


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
