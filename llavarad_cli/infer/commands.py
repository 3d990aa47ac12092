"""What the ``infer`` and ``merge-chunks`` commands do, with their console output (cli.py only wires)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn
from rich.text import Text

from llavarad_cli.console import safe, visible
from llavarad_cli.errors import UserError
from llavarad_cli.infer.chunks import chunk_bounds
from llavarad_cli.infer.settings import DEFAULT_BATCH_SIZE, GenerationSettings, ModelChoice


class RateColumn(ProgressColumn):
    """Reports per second over the run so far."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.2f} reports/s" if speed else "… reports/s", style="progress.data.speed")


def _load(choice: ModelChoice, err: Console):
    from llavarad_cli.model.loading import load_model

    with err.status(f"loading {safe(choice.model)} …"):
        model, tokenizer = load_model(choice.model, choice.model_base, device=choice.device, dtype=choice.dtype,
                                      attn_implementation=choice.attn, trust_pickle=choice.trust_pickle)
    err.print(f"model: {safe(choice.model)} ({model.config.extra.get('layout')} layout) on {model.device}, "
              f"{str(model.dtype).replace('torch.', '')}", highlight=False, soft_wrap=True)
    return model, tokenizer


def infer_single(image: Path, reason: Optional[str], choice: ModelChoice, settings, as_json: bool,
                 out: Console, err: Console) -> None:
    from llavarad_cli.data.images import load_image_or_fail
    from llavarad_cli.prompts import user_turn

    picture = load_image_or_fail(image)  # before torch and the (slow) model load: a typo fails fast
    from llavarad_cli.infer.generate import Predictor

    model, tokenizer = _load(choice, err)
    predictor = Predictor(model, tokenizer, settings)
    if reason is not None and not reason.strip():
        reason = None  # `--reason ""` from a script with an empty variable means "no reason"
    query = user_turn(reason)
    findings = predictor.predict([query], predictor.pixel_values(picture).unsqueeze(0))[0]
    if as_json:
        out.print_json(json.dumps({"image": str(image), "reason": reason, "query": query,
                                   "prompt": predictor.prompt(query), "findings": findings, "model": choice.model}))
    else:
        out.print(visible(findings), markup=False, highlight=False, soft_wrap=True)


@dataclass
class BatchJob:
    """Batch mode: which records, where the findings go, and how to resume (or not)."""

    query_file: Optional[Path]
    image_folder: Optional[Path]
    output: Optional[Path]
    batch_size: int = DEFAULT_BATCH_SIZE
    limit: Optional[int] = None        # only the first N records
    overwrite: bool = False            # start the output again instead of resuming it
    num_chunks: int = 1
    chunk_idx: int = 0

    def check(self) -> None:
        """The arguments alone, before anything slow is imported or loaded."""
        if self.output is None:
            raise UserError("--query-file needs --output (the predictions JSONL)")
        if self.image_folder is None or not self.image_folder.is_dir():
            raise UserError(f"--image-folder {self.image_folder or '(missing)'}: not a folder",
                            hint="the folder the records' `image` paths are relative to")
        chunk_bounds(0, self.num_chunks, self.chunk_idx)

    def cli_args(self) -> list[str]:
        """The records part of a worker's ``llavarad infer`` command line (``--gpus``)."""
        args = ["--query-file", str(self.query_file), "--image-folder", str(self.image_folder),
                "--batch-size", str(self.batch_size)]
        if self.limit is not None:
            args += ["--limit", str(self.limit)]
        if self.overwrite:
            args.append("--overwrite")
        return args


def infer_batch(job: BatchJob, choice: ModelChoice, settings: GenerationSettings, gpus: Optional[int],
                with_image: bool, out: Console, err: Console) -> int:
    """``--query-file`` mode, on this process or on ``gpus`` workers. Returns the exit code."""
    if job.query_file is None or with_image:
        raise UserError("give either --image (one X-ray) or --query-file (batch mode)")
    job.check()
    if gpus:
        if job.num_chunks != 1 or job.chunk_idx != 0:
            raise UserError("--gpus splits the records itself; leave out --num-chunks/--chunk-idx")
        return infer_multi_gpu(job, choice, settings, gpus, out, err)
    _infer_chunk(job, choice, settings, out, err)
    return 0


def _read_records(job: BatchJob, err: Console):
    from llavarad_cli.infer.queries import read_queries

    query_set = read_queries(job.query_file)
    notes = [f"{len(query_set.queries)} records ({query_set.source_format} format)"]
    if query_set.skipped:
        notes.append("left out: " + ", ".join(f"{v} {k}" for k, v in sorted(query_set.skipped.items())))
    if query_set.renamed_duplicates:
        notes.append(f"{query_set.renamed_duplicates} repeated ids got the image name appended")
    queries = query_set.queries
    if job.limit is not None and job.limit < len(queries):
        queries = queries[:job.limit]
        notes.append(f"--limit: the first {job.limit}")
    err.print(f"{safe(job.query_file)}: " + "; ".join(notes), highlight=False, soft_wrap=True)
    return queries


def start_again(output: Path) -> None:
    """``--overwrite``: replace the predictions file by an empty one in one step (a rename), so that a kill
    leaves either the old file or the new one, never a half-deleted one. A file that is not predictions is
    still refused (a mistyped --output must not cost the file it points at)."""
    from llavarad_cli.infer.writer import scan_predictions
    from llavarad_cli.io_utils import atomic_write_text

    scan_predictions(output)
    if output.exists():
        atomic_write_text(output, "")


def _infer_chunk(job: BatchJob, choice: ModelChoice, settings: GenerationSettings, out: Console,
                 err: Console) -> None:
    from llavarad_cli.infer.runner import select_chunk
    from llavarad_cli.infer.writer import scan_predictions

    output = job.output
    chunk = select_chunk(_read_records(job, err), job.num_chunks, job.chunk_idx)
    label = f"chunk {job.chunk_idx + 1}/{job.num_chunks}: " if job.num_chunks > 1 else ""
    if job.overwrite:
        start_again(output)
    done = scan_predictions(output).done
    if all(q.id in done for q in chunk):
        if not output.exists():  # an empty chunk (more chunks than records) still leaves its file for the merge
            output.parent.mkdir(parents=True, exist_ok=True)
            output.touch()
        if chunk:
            text = f"all {len(chunk)} records already in {safe(output)}; nothing to do"
        else:
            text = f"no records fall in this chunk (more chunks than records); wrote an empty {safe(output)}"
        out.print(label + text, highlight=False, soft_wrap=True)
        return

    from llavarad_cli.infer.generate import Predictor
    from llavarad_cli.infer.runner import run_queries

    model, tokenizer = _load(choice, err)
    predictor = Predictor(model, tokenizer, settings)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
               TimeElapsedColumn(), TimeRemainingColumn()]
    try:
        with Progress(*columns, console=err, transient=False) as progress:
            task = progress.add_task(f"{label}writing findings", total=None)
            summary = run_queries(
                predictor, chunk, job.image_folder, output, job.batch_size,
                on_start=lambda n: progress.update(task, total=n),
                on_progress=lambda ok, bad: progress.advance(task, ok + bad))
    except OSError as exc:
        if exc.filename is None:  # a write or fsync on the open predictions file (disk full) names no file
            exc.filename = str(output)
        raise
    _print_summary(summary, label, out, err)


def _print_summary(summary, label: str, out: Console, err: Console) -> None:
    parts = [f"{summary.predicted} predicted", f"{summary.already_done} already done"]
    if summary.predicted:
        parts.append(f"{summary.reports_per_second:.2f} reports/s")
    if summary.resumed_torn_line:
        parts.append("a half-written last line was redone")
    out.print(f"{label}{safe(str(summary.output))}: " + ", ".join(parts), highlight=False, soft_wrap=True)
    if summary.skipped:
        total = sum(summary.skipped.values())
        kinds = ", ".join(f"{v} {k}" for k, v in sorted(summary.skipped.items()))
        err.print(f"[yellow]skipped {total} record(s) with image problems ({kinds}); rerun to retry them[/]",
                  highlight=False, soft_wrap=True)
        for example in summary.skipped_examples:
            err.print(f"  {safe(example)}", highlight=False, soft_wrap=True)


def infer_multi_gpu(job: BatchJob, choice: ModelChoice, settings: GenerationSettings, gpus: int, out: Console,
                    err: Console) -> int:
    """Exit code of the final merge: 1 when it found bad lines or conflicting ids (records skipped for image
    problems are reported but allowed)."""
    from llavarad_cli.infer.launch import check_gpus, run_workers

    check_gpus(gpus)
    queries = _read_records(job, err)  # fail here, not in N workers
    args = [*job.cli_args(), *choice.cli_args(), *settings.cli_args()]
    logs = job.output.parent / "logs"
    with err.status(f"{gpus} workers running (logs in {safe(logs)}) …"):
        parts = run_workers(args, job.output, gpus, logs)
    return report_merge(parts, job.output, [q.id for q in queries], allow_missing=True, out=out, err=err)


def report_merge(files, output: Path, query_ids, allow_missing: bool, out: Console, err: Console) -> int:
    from llavarad_cli.infer.merge import merge_chunks

    report = merge_chunks(files, output, query_ids)
    for line in report.bad_lines[:20]:
        err.print(f"[red]bad line[/] {safe(line)}", highlight=False, soft_wrap=True)
    if len(report.bad_lines) > 20:
        err.print(f"… and {len(report.bad_lines) - 20} more bad lines", highlight=False, soft_wrap=True)
    for conflict in report.conflicts[:20]:
        err.print(f"[red]conflicting duplicate id[/] {safe(conflict)}", highlight=False, soft_wrap=True)
    if report.unexpected:
        err.print(f"[red]{len(report.unexpected)} id(s) not in the query file[/], e.g. "
                  f"{safe(', '.join(report.unexpected[:5]))}", highlight=False, soft_wrap=True)
    if report.missing:
        colour = "yellow" if allow_missing else "red"
        err.print(f"[{colour}]{len(report.missing)} id(s) of the query file not predicted[/]: "
                  f"{safe(', '.join(report.missing[:10]))}{' …' if len(report.missing) > 10 else ''}",
                  highlight=False, soft_wrap=True)
    if report.conflicts:
        err.print(f"[red]nothing written[/]: {len(report.conflicts)} id(s) predicted differently in two places",
                  highlight=False, soft_wrap=True)
    else:
        extra = f", {report.identical_duplicates} identical duplicate(s) dropped" if report.identical_duplicates else ""
        of = f" of {report.query_total}" if report.query_total is not None else ""
        out.print(f"merged {len(report.files)} file(s) -> {safe(str(output))}: {report.written}{of} "
                  f"predictions{extra}", highlight=False, soft_wrap=True)
    return report.exit_code(allow_missing)
