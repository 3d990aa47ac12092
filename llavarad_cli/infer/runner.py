"""Batch inference over a query file: chunk, skip what is done, length-sort, batch, write as we go, and put
the output in input order at the end."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from llavarad_cli.data.images import ImageProblem, load_image, resolve_image_path
from llavarad_cli.errors import UserError
from llavarad_cli.infer.chunks import chunk_bounds
from llavarad_cli.infer.queries import Query
from llavarad_cli.infer.writer import PredictionWriter, put_in_order
from llavarad_cli.predictions import Prediction

#: Images decoded ahead of the GPU, in threads (PIL and the transform release the GIL for most of the work).
PREFETCH_THREADS = 4


@dataclass
class RunSummary:
    output: Path
    already_done: int = 0
    predicted: int = 0
    skipped: Counter = field(default_factory=Counter)
    skipped_examples: list[str] = field(default_factory=list)
    seconds: float = 0.0
    resumed_torn_line: bool = False

    @property
    def reports_per_second(self) -> float:
        return self.predicted / self.seconds if self.seconds > 0 else 0.0


def select_chunk(queries: Sequence[Query], num_chunks: int, chunk_idx: int) -> list[Query]:
    start, end = chunk_bounds(len(queries), num_chunks, chunk_idx)
    return list(queries[start:end])


def _prepare(predictor, image_folder: Path, query: Query):
    """(query, pixels) or (query, ImageProblem): a bad image is a counted skip, never a crash."""
    try:
        path = resolve_image_path(image_folder, query.image)
        return query, predictor.pixel_values(load_image(path))
    except ImageProblem as problem:
        return query, problem


def _batches(predictor, queries: list[Query], image_folder: Path, batch_size: int) -> Iterator[list]:
    """Batches of prepared items; the next batch's images load while the current one generates."""
    groups = [queries[i:i + batch_size] for i in range(0, len(queries), batch_size)]
    with ThreadPoolExecutor(PREFETCH_THREADS) as pool:
        pending = [pool.submit(_prepare, predictor, image_folder, q) for q in groups[0]] if groups else []
        for index in range(len(groups)):
            current = pending
            pending = ([pool.submit(_prepare, predictor, image_folder, q) for q in groups[index + 1]]
                       if index + 1 < len(groups) else [])
            yield [f.result() for f in current]


def run_queries(predictor, queries: Sequence[Query], image_folder: Path, output: Path, batch_size: int = 8,
                on_progress: Callable[[int, int], None] | None = None,
                on_start: Callable[[int], None] | None = None) -> RunSummary:
    """Predict every query not yet in ``output`` and append the results, flushed per batch.

    ``on_start(n_todo)`` and ``on_progress(n_done_in_batch, n_skipped_in_batch)`` drive a progress bar.
    """
    import torch

    summary = RunSummary(output=Path(output))
    run = run_fields(predictor)
    with PredictionWriter(output) as writer:
        summary.resumed_torn_line = writer.truncated
        todo = [q for q in queries if q.id not in writer.done]
        summary.already_done = len(queries) - len(todo)
        # Longest prompts first: rows of a batch have similar lengths (little padding), and an out-of-memory
        # error shows up on the first batch rather than hours in. The file is put back in input order at the end.
        lengths = {q.id: len(predictor.prompt_ids(q.query)) for q in todo}
        todo.sort(key=lambda q: -lengths[q.id])
        if on_start:
            on_start(len(todo))
        started = time.perf_counter()
        for batch in _batches(predictor, todo, Path(image_folder), batch_size):
            good = [(q, px) for q, px in batch if not isinstance(px, ImageProblem)]
            for q, problem in batch:
                if isinstance(problem, ImageProblem):
                    summary.skipped[problem.kind] += 1
                    if len(summary.skipped_examples) < 5:
                        summary.skipped_examples.append(f"{q.id}: {problem.detail}")
            if good:
                try:
                    texts = predictor.predict([q.query for q, _ in good], torch.stack([px for _, px in good]))
                except torch.OutOfMemoryError:
                    raise UserError(f"out of GPU memory at --batch-size {batch_size}; {summary.predicted} "
                                    f"predictions of this run are saved in {output}",
                                    hint="rerun with a smaller --batch-size; it resumes") from None
                writer.write_batch(Prediction(id=q.id, prediction=t, reference=q.reference, query=q.query, run=run)
                                   for (q, _), t in zip(good, texts))
                summary.predicted += len(good)
            if on_progress:
                on_progress(len(good), len(batch) - len(good))
        summary.seconds = time.perf_counter() - started
    put_in_order(output, [q.id for q in queries])
    return summary


def run_fields(predictor) -> dict[str, str]:
    """How these predictions are made, recorded on every line: the model (its path or hub id, when loaded from
    one) and the dtype it computes in, so an evaluation can say which precision it scored."""
    model = predictor.model
    fields = {}
    source = getattr(getattr(model, "config", None), "extra", {}).get("source")
    if source:
        fields["model"] = str(source)
    dtype = getattr(model, "dtype", None)
    if dtype is not None:
        fields["dtype"] = str(dtype).replace("torch.", "")
    return fields
