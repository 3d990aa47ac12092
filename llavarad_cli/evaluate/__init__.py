"""Report-generation metrics as the LLaVA-Rad paper computed them, with one bootstrap for all of them.

Library use::

    from llavarad_cli.evaluate import load_pairs, evaluate_pairs, EvalOptions, write_outputs
    result = evaluate_pairs(load_pairs("preds.jsonl"), EvalOptions(metrics=("bleu", "rouge")))
"""

from llavarad_cli.evaluate.records import Pair, load_pairs
from llavarad_cli.evaluate.report import write_outputs
from llavarad_cli.evaluate.runner import EvalOptions, EvalResult, evaluate_pairs, parse_metrics

__all__ = ["Pair", "load_pairs", "evaluate_pairs", "EvalOptions", "EvalResult", "parse_metrics", "write_outputs"]
