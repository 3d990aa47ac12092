"""`llavarad prepare` as a library call: pick the source, check or resize the images, write records and summary.

Nothing is written into OUT until the sources have been read, and the JSON files come last, all or none of
them, so an interrupted or failed run leaves at most some finished image copies (which the next run reuses).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from llavarad_cli.console import safe
from llavarad_cli.data.records import SPLIT_FILES, Candidate, SourceResult
from llavarad_cli.data.resize import ImageJob, default_workers, run_jobs
from llavarad_cli.errors import UserError
from llavarad_cli.io_utils import atomic_write_json, atomic_write_text
from llavarad_cli.skips import Skip

SUMMARY_FILE = "prepare-summary.json"
IMAGES_DIR = "images"
#: Remembers the size of the copies under OUT/images, so a rerun never mixes two sizes.
SIZE_MARKER = ".image-size"


def check_output(out: Path, overwrite: bool) -> None:
    existing = [name for name in (*SPLIT_FILES.values(), SUMMARY_FILE) if (out / name).exists()]
    if existing and not overwrite:
        raise UserError(f"{out} already holds {', '.join(existing)}",
                        hint="add --overwrite to replace them (resized images already there are reused)")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --out exists and is not a folder")


def load_source(*, mimic_dir: Path | None = None, reports: Path | None = None, annotations: Path | None = None,
                openi_reports: Path | None = None, openi_projections: Path | None = None,
                openi_images: Path | None = None, split: str | None = None) -> SourceResult:
    """Choose the source from the options given; contradictory combinations are user errors."""
    openi = any(p is not None for p in (openi_reports, openi_projections, openi_images))
    if openi and (mimic_dir is not None or annotations is not None or reports is not None):
        raise UserError("Open-I options cannot be combined with --mimic-dir, --reports or --annotations",
                        hint="run `llavarad prepare` once per dataset, into different --out folders")
    if split is not None and not openi:
        raise UserError("--split applies to Open-I only", hint="MIMIC-CXR splits come from mimic-cxr-2.0.0-split.csv")
    if openi:
        if openi_reports is None or openi_projections is None:
            raise UserError("Open-I needs both --openi-reports indiana_reports.csv and --openi-projections indiana_projections.csv")
        from llavarad_cli.data.openi import load_openi

        return load_openi(openi_reports, openi_projections, openi_images, split)
    if annotations is not None:
        if reports is not None:
            raise UserError("--reports is not used with --annotations (the annotations already hold the sections)")
        from llavarad_cli.data.annotations import load_annotations

        return load_annotations(annotations, mimic_dir)
    if mimic_dir is not None:
        from llavarad_cli.data.mimic import load_mimic

        return load_mimic(mimic_dir, reports)
    raise UserError("nothing to prepare",
                    hint="give --mimic-dir (with reports), --annotations, or --openi-reports and --openi-projections")


def _check_size_marker(images: Path, size: int) -> None:
    marker = images / SIZE_MARKER
    if marker.is_file():
        previous = marker.read_text(errors="replace").strip()
        if previous != str(size):
            raise UserError(f"{images} holds copies at --image-size {previous}, not {size}",
                            hint="use another --out, or delete that images folder first")
    else:
        atomic_write_text(marker, f"{size}\n")


def _copy_path(rel: str) -> str:
    return str(Path(rel).with_suffix(".jpg").as_posix())


def process_images(candidates: list[Candidate], source: SourceResult, out: Path, image_size: int | None,
                   workers: int, console: Console) -> tuple[list[dict], dict[str, int]]:
    """Check (or copy) each candidate's image; return the records that survive and the image counts."""
    images = out / IMAGES_DIR
    if image_size is not None:
        _check_size_marker(images, image_size)
    # One job per distinct image: the annotations hold several records (gpt4 and rule-based) per image.
    users: dict[Path, list[int]] = {}
    for index, candidate in enumerate(candidates):
        if candidate.source_image is not None:
            users.setdefault(candidate.source_image, []).append(index)
    jobs = []
    for number, (source_image, indexes) in enumerate(users.items()):
        rel = candidates[indexes[0]].record["image"]
        target = images / _copy_path(rel) if image_size is not None else None
        jobs.append(ImageJob(number, source_image, target, image_size, source.image_root))
    job_users = list(users.values())

    checked = sum(len(indexes) for indexes in job_users)
    counts = {"checked": 0, "written": 0, "reused": 0, "not_checked": len(candidates) - checked}
    failed: set[int] = set()
    verb = f"resizing to {image_size} px" if image_size is not None else "checking images"
    columns = (TextColumn(f"[bold]{verb}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    # Refreshed by hand: a refresh thread must not be running while the worker pool forks.
    # No bar at all when there is nothing to check (no image folder given).
    with Progress(*columns, console=console, auto_refresh=False, transient=False, disable=not jobs) as progress:
        task = progress.add_task(verb, total=len(jobs))
        last = 0.0
        for result in run_jobs(jobs, workers):
            indexes = job_users[result.index]
            if result.status in (Skip.MISSING_IMAGE, Skip.UNREADABLE_IMAGE, Skip.IMAGE_OUTSIDE_FOLDER):
                failed.update(indexes)
                detail = f" ({result.detail})" if result.status != Skip.MISSING_IMAGE and result.detail else ""
                for index in indexes:
                    source.skips.add(result.status, f"{candidates[index].record['image']}{detail}")
            else:
                counts["checked" if result.status == "ok" else result.status] += 1
            progress.advance(task)
            now = time.monotonic()
            if now - last > 0.2:
                progress.refresh()
                last = now
        progress.refresh()

    kept = []
    for index, candidate in enumerate(candidates):
        if index in failed:
            continue
        record = candidate.record
        if image_size is not None and candidate.source_image is not None:
            record["image"] = _copy_path(record["image"])
        kept.append(record)
    return kept, counts


def prepare(out: Path, *, image_size: int | None = None, workers: int | None = None, overwrite: bool = False,
            console: Console | None = None, **source_options: Any) -> dict[str, Any]:
    """Build the records into `out` and return the summary (also written to OUT/prepare-summary.json)."""
    out = Path(out)
    console = console or Console(stderr=True)
    check_output(out, overwrite)
    images_given = source_options.get("mimic_dir") is not None or source_options.get("openi_images") is not None
    if image_size is not None and not images_given:
        raise UserError("--image-size needs the images", hint="give --mimic-dir (with --annotations) or --openi-images")
    # All of MIMIC-CXR is 377,110 metadata rows and 227,835 reports to read and section: show that something is
    # happening. The spinner's refresh thread is stopped before the image step forks its workers.
    with console.status("reading the tables and reports"):
        source = load_source(**source_options)
    out.mkdir(parents=True, exist_ok=True)
    records, image_counts = process_images(source.candidates, source, out, image_size,
                                           workers or default_workers(), console)

    by_split: dict[str, list[dict]] = {split: [] for split in source.splits}
    for record in records:
        by_split[record["split"]].append(record)
    written = [SPLIT_FILES[split] for split in by_split]
    image_root = out / IMAGES_DIR if image_size is not None else source.image_root
    summary = {
        "source": source.name,
        "inputs": source.inputs,
        "records": {split: len(items) for split, items in by_split.items()},
        "total_records": len(records),
        "skipped": source.skips.to_json(source.skip_reasons),
        "total_skipped": source.skips.total(),
        # Absolute, so the summary still says where the images are when read from another folder.
        "images": {"root": str(image_root.absolute()) if image_root is not None else None, "image_size": image_size,
                   **image_counts},
        "files": written,
    }
    _write_all(out, {**{SPLIT_FILES[split]: items for split, items in by_split.items()}, SUMMARY_FILE: summary})
    if overwrite:  # a replaced run must not leave another source's split files behind
        for name in set(SPLIT_FILES.values()) - set(written):
            (out / name).unlink(missing_ok=True)
    return summary


def _write_all(out: Path, files: dict[str, Any]) -> None:
    """Write all the JSON files or none of them.

    Each is written (atomically) under a hidden staging name first, and only when every one is there are they
    renamed into place: a disk that fills up at dev.json must not leave a new train.json beside the previous
    run's dev.json and summary. A rename needs no space, so the second loop does not fail for that reason.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for name, obj in files.items():
            final = out / name
            tmp = out / f".{name}.staged"
            try:
                atomic_write_json(tmp, obj)
            except OSError as exc:  # name the file the user knows, not the staging name
                if exc.errno is None:
                    raise
                raise type(exc)(exc.errno, exc.strerror, str(final)) from None
            staged.append((tmp, final))
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, final in staged:
        os.replace(tmp, final)


def summary_table(summary: dict[str, Any]) -> Table:
    """The summary as a table: records per split, then every skip reason with its first examples.

    Examples and paths came from the input (file names, CSV values, report locations): `safe` shows their
    control characters as escapes, so an ESC in a file name cannot clear or retitle the user's terminal.
    """
    table = Table(title=f"prepare: {safe(summary['source'])}", show_header=True)
    table.add_column("item", style="bold")
    table.add_column("count", justify="right")
    table.add_column("first examples", overflow="fold")
    for split, count in summary["records"].items():
        table.add_row(f"records: {split}", str(count), f"{SPLIT_FILES[split]}")
    table.add_row("records: total", str(summary["total_records"]), "", end_section=True)
    for reason in summary["skipped"].values():
        style = "yellow" if reason["count"] else "dim"
        examples = "; ".join(reason["examples"][:3])
        table.add_row(f"[{style}]skipped: {reason['label']}[/]", f"[{style}]{reason['count']}[/]", safe(examples))
    table.add_row("skipped: total", str(summary["total_skipped"]), "", end_section=True)
    images = summary["images"]
    if images["image_size"] is not None:
        table.add_row("images: written / reused", f"{images['written']} / {images['reused']}", safe(images["root"]))
    elif images["checked"]:
        table.add_row("images: checked", str(images["checked"]), safe(images["root"] or ""))
    if images["not_checked"]:
        table.add_row("images: not checked", str(images["not_checked"]), "no image folder given")
    return table
