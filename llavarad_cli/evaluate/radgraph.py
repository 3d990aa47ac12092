"""F1-RadGraph: annotate each report with the original RadGraph model, then score the partial reward per pair.

Annotations come from one of two places:
- a file of precomputed annotations (``--radgraph-annotations``: JSONL lines ``{"text": ..., "annotation": ...}``),
  for example written by RadGraph in another environment, since the ``radgraph`` package pins old transformers;
- the ``radgraph`` package (its DyGIE model, ``model_type="radgraph"``) when it is importable here, run on
  ``radgraph.tar.gz``.
Anything else: the metric is skipped with what it needs. This module does not re-implement the DyGIE model.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from llavarad_cli.errors import UserError
from llavarad_cli.evaluate.assets import MetricSkipped
from llavarad_cli.evaluate.radgraph_reward import reward
from llavarad_cli.evaluate.records import is_empty
from llavarad_cli.io_utils import iter_jsonl

Annotator = Callable[[Sequence[str]], list]


def load_annotation_file(path: Path) -> dict[str, Mapping]:
    """{report text: RadGraph annotation} from a JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: RadGraph annotation file not found")
    table: dict[str, Mapping] = {}
    for number, line in iter_jsonl(path):
        try:
            rec = json.loads(line)
            table[rec["text"]] = rec["annotation"]
        except (json.JSONDecodeError, KeyError, TypeError):
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


def _unpacked_dir(archive: Path) -> Path:
    """A folder named ``radgraph`` holding the unpacked archive (the layout the package expects)."""
    if archive.is_dir():
        return archive
    target = archive.parent / f".{archive.name}.unpacked" / "radgraph"
    if not (target / "weights.th").is_file():
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive, "r:gz") as tar:
            # the "data" filter refuses absolute paths and links out of the folder (Python >= 3.10.12)
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(path=target, **kwargs)
    return target


def require_package():
    """The ``radgraph`` package's RadGraph class, or a skip that says how to get F1-RadGraph anyway."""
    try:
        from radgraph import RadGraph
    except Exception as exc:
        raise MetricSkipped(
            f"needs the `radgraph` package to run the RadGraph model (import failed: {type(exc).__name__}) plus "
            "radgraph.tar.gz from StanfordAIMI/RRG_scorers; radgraph pins transformers<4.50, so run it in a separate "
            "environment and pass its annotations with --radgraph-annotations FILE (see the README, Evaluate)") from None
    return RadGraph


def package_annotator(archive: Path, device: str | None = None) -> Annotator:
    """RadGraph's own model through the ``radgraph`` package, on the given archive (no download)."""
    RadGraph = require_package()
    folder = _unpacked_dir(Path(archive))
    cache_dir = folder.parent
    if folder.name != "radgraph":  # the package looks for <cache>/<model_type>/
        cache_dir = folder.parent / f".{folder.name}.cache"
        cache_dir.mkdir(exist_ok=True)
        link = cache_dir / "radgraph"
        if not link.exists():
            link.symlink_to(folder.resolve(), target_is_directory=True)
    cuda = None if device is None else (-1 if device == "cpu" else int(device.split(":")[1]) if ":" in device else 0)
    model = RadGraph(model_type="radgraph", model_cache_dir=str(cache_dir), cuda=cuda)

    def annotate(texts: Sequence[str]) -> list:
        out = []
        for text in texts:  # batch size 1, as the paper ran it
            result = model([text])
            out.append(result.get("0", {}))
        return out
    return annotate


def radgraph_rewards(hyps: Sequence[str], refs: Sequence[str], annotate: Annotator,
                     progress=None) -> tuple[np.ndarray, list, list]:
    """Per-pair partial reward; an empty (or whitespace-only) report scores 0 and is not annotated."""
    keep = [i for i in range(len(hyps)) if not is_empty(hyps[i]) and not is_empty(refs[i])]
    unique = list(dict.fromkeys([hyps[i] for i in keep] + [refs[i] for i in keep]))
    annotations: dict[str, Mapping] = {}
    step = 64
    for start in range(0, len(unique), step):
        batch = unique[start:start + step]
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
