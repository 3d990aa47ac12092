"""F1-RadGraph: annotate each report with the original RadGraph model, then score the partial reward per pair.

Annotations come from one of two places:
- the original RadGraph model (``radgraph.tar.gz``, the ``radgraph`` package's DyGIE code, ``model_type="radgraph"``)
  run here on local files or the hub cache (radgraph_model.py);
- a file of precomputed annotations (``--radgraph-annotations``: JSONL lines ``{"text": ..., "annotation": ...}``).
Anything else: the metric is skipped with what it needs. This module does not re-implement the DyGIE model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from llavarad_cli.errors import UserError
from llavarad_cli.evaluate.assets import MetricSkipped
from llavarad_cli.evaluate.radgraph_reward import reward
from llavarad_cli.evaluate.records import is_empty
from llavarad_cli.io_utils import JSONProblem, iter_jsonl, loads

Annotator = Callable[[Sequence[str]], list]


def load_annotation_file(path: Path) -> dict[str, Mapping]:
    """{report text: RadGraph annotation} from a JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: RadGraph annotation file not found")
    table: dict[str, Mapping] = {}
    for number, line in iter_jsonl(path):
        try:
            rec = loads(line, line=False)
            table[rec["text"]] = rec["annotation"]
        except (JSONProblem, KeyError, TypeError):
            raise UserError(f"{path}, line {number}: expected {{\"text\": ..., \"annotation\": {{\"entities\": ...}}}}") from None
    return table


def file_annotator(table: Mapping[str, Mapping]) -> Annotator:
    def annotate(texts: Sequence[str]) -> list:
        missing = [t for t in texts if t not in table]
        if missing:
            raise MetricSkipped(f"the RadGraph annotation file has no annotation for {len(missing)} report(s), "
                                f"e.g. {missing[0][:60]!r}")
        return [table[t] for t in texts]
    return annotate


def require_package():
    """Check that the ``radgraph`` package (the DyGIE model code) imports, else skip with how to install it."""
    try:
        import radgraph.dygie.models.dygie  # noqa: F401
    except Exception as exc:
        raise MetricSkipped(
            f"needs the `radgraph` package to run the RadGraph model (import failed: {type(exc).__name__}); install "
            "it with `pip install radgraph==0.1.18`, or pass precomputed annotations with --radgraph-annotations FILE "
            "(see the README, Evaluate)") from None


def package_annotator(archive: Path, device: str | None = None) -> Annotator:
    """The original RadGraph model on ``archive`` (radgraph.tar.gz or its unpacked folder); nothing is downloaded
    except, when online, the BERT tokenizer files the archive names and no local copy provides."""
    from llavarad_cli.evaluate.radgraph_model import RadGraphAnnotator, find_files

    require_package()
    return RadGraphAnnotator(find_files(Path(archive)), device)


#: Distinct reports handed to the annotator at a time (the progress bar moves by this many); the annotator
#: shares BERT passes among each call's reports of equal wordpiece count.
ANNOTATE_STEP = 128


def radgraph_rewards(hyps: Sequence[str], refs: Sequence[str], annotate: Annotator,
                     progress=None) -> tuple[np.ndarray, list, list]:
    """Per-pair partial reward; an empty (or whitespace-only) report scores 0 and is not annotated."""
    keep = [i for i in range(len(hyps)) if not is_empty(hyps[i]) and not is_empty(refs[i])]
    # by length, so that each call holds many reports of one wordpiece count (they share BERT passes)
    unique = sorted(dict.fromkeys([hyps[i] for i in keep] + [refs[i] for i in keep]), key=len)
    annotations: dict[str, Mapping] = {}
    for start in range(0, len(unique), ANNOTATE_STEP):
        batch = unique[start:start + ANNOTATE_STEP]
        annotations.update(zip(batch, annotate(batch)))
        if progress is not None:
            progress(len(batch))
    rewards = np.zeros(len(hyps), dtype=np.float64)
    hyp_ann: list = [None] * len(hyps)
    ref_ann: list = [None] * len(hyps)
    for i in keep:
        hyp_ann[i], ref_ann[i] = annotations[hyps[i]], annotations[refs[i]]
        rewards[i] = reward(hyp_ann[i], ref_ann[i], "partial")
    return rewards, hyp_ann, ref_ann
