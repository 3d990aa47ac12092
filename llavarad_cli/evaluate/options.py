"""What ``evaluate`` runs with, and its defaults (the metric set, the bootstrap, the scorers' settings).

Light on purpose (no numpy, no torch): the CLI builds its option defaults from ``EvalOptions`` at import time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llavarad_cli.evaluate.chexprompt import ChexpromptConfig

METRICS = ("bleu", "rouge", "rouge2", "chexbert", "radgraph", "chexprompt")
#: The paper's table: CheXprompt (a paid API) and ROUGE-2 only when asked for.
DEFAULT_METRICS = ("bleu", "rouge", "chexbert", "radgraph")


@dataclass
class EvalOptions:
    metrics: tuple[str, ...] = DEFAULT_METRICS
    bootstrap: int = 500                 # resamples for the 95% percentile intervals (0 = none)
    seed: int = 3
    device: str | None = None
    chexbert_weights: Path | None = None
    chexbert_tokenizer: str | None = None
    chexbert_batch_size: int = 128
    radgraph_weights: Path | None = None
    radgraph_annotations: Path | None = None
    chexprompt: ChexpromptConfig = field(default_factory=ChexpromptConfig)
    chexprompt_prompt: Path | None = None
