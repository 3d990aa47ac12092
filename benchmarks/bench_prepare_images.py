"""Throughput of `llavarad prepare --image-size` against a plain full-decode-then-resize baseline.

Builds a synthetic tree of large grayscale JPEGs shaped like MIMIC-CXR-JPG (about 2500x3000, quality 95, with
film-like structure and noise so the files are the size of real ones), then runs, in the same process and with
one worker and with --workers processes:

  baseline   Image.open -> full decode -> LANCZOS resize to shortest side N -> JPEG q95 (a plain loop, and
             the same function in a worker pool, to separate the gain of reduced-size decoding from parallelism)
  baseline, bicubic   the plain loop with prepare's resampling filter instead of LANCZOS (for reference only:
             it shows how much of the ratio the cheaper filter accounts for; ratios stay against the baseline)
  prepare    llavarad's image step (Image.draft reduced-size decoding, antialiased bicubic resize, JPEG q95)
  check      llavarad's image step without --image-size (decode check at 1/8 scale)

and prints images/s, the ratio to the plain (one-process) baseline, and the projected time for all 377,110 MIMIC-CXR-JPG images.

    python benchmarks/bench_prepare_images.py --count 48 --workers 2
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from llavarad_cli.data.resize import RESAMPLE, ImageJob, run_jobs, target_size

MIMIC_IMAGES = 377_110


def make_image(seed: int, width: int, height: int) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    # Two bright "lungs" on a darker body, ribs as a faint periodic pattern, plus grain.
    body = 90 + 60 * np.exp(-(((x - width / 2) / (width * 0.45)) ** 2))
    for cx in (0.32, 0.68):
        body += 70 * np.exp(-(((x - width * cx) / (width * 0.14)) ** 2 + ((y - height * 0.45) / (height * 0.3)) ** 2))
    # Grain tuned so a quality-95 file is ~1.6 MB, about what we expect of a MIMIC-CXR-JPG image (not measured).
    body += 12 * np.sin(y / (height / 40.0)) + rng.normal(0, 2.2, size=body.shape)
    pixels = np.clip(body, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def baseline_job(job: tuple[Path, Path, int], resample: Image.Resampling = Image.Resampling.LANCZOS) -> None:
    source, target, size = job
    with Image.open(source) as image:
        image = image.convert("L")  # full-size decode
        resized = image.resize(target_size(*image.size, size), resample)
    target.parent.mkdir(parents=True, exist_ok=True)
    resized.save(target, "JPEG", quality=95)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=48, help="synthetic images (default 48)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes for every method (default 2)")
    parser.add_argument("--size", type=int, default=518, help="shortest side of the copies (default 518)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the best time of each method counts")
    parser.add_argument("--width", type=int, default=2500)
    parser.add_argument("--height", type=int, default=3000)
    args = parser.parse_args()

    console = Console(width=max(110, Console().width))
    root = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    try:
        sources = []
        with console.status(f"writing {args.count} synthetic {args.width}x{args.height} JPEGs"):
            template = [make_image(seed, args.width, args.height) for seed in range(min(args.count, 8))]
            for index in range(args.count):
                path = root / "files" / f"p1{index % 10}" / f"img{index:05d}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(template[index % len(template)])
                sources.append(path)
        mean_mb = sum(len(t) for t in template) / len(template) / 1e6

        def baseline_plain():
            for source in sources:
                baseline_job((source, root / "out" / "baseline-plain" / source.name, args.size))

        def baseline_same_filter():
            for source in sources:
                baseline_job((source, root / "out" / "baseline-bicubic" / source.name, args.size), RESAMPLE)

        def baseline_pool():
            jobs = [(s, root / "out" / "baseline-pool" / s.name, args.size) for s in sources]
            with get_context("fork").Pool(args.workers) as pool:
                list(pool.imap_unordered(baseline_job, jobs, chunksize=1))

        def prepare(workers):
            def run():
                target = root / "out" / f"prepare-{workers}"
                jobs = [ImageJob(i, s, target / s.name, args.size) for i, s in enumerate(sources)]
                results = list(run_jobs(jobs, workers))
                assert all(r.status == "written" for r in results), results[:3]
            return run

        def check():
            jobs = [ImageJob(i, s, None, None) for i, s in enumerate(sources)]
            results = list(run_jobs(jobs, args.workers))
            assert all(r.status == "ok" for r in results), results[:3]

        # Warm the page cache so every method reads from memory.
        for path in sources:
            path.read_bytes()
        w = args.workers
        methods = {
            "baseline: full decode + resize, plain loop (1 process)": baseline_plain,
            f"baseline: full decode + resize, {w} workers": baseline_pool,
            "(baseline with prepare's bicubic filter, plain loop)": baseline_same_filter,
            "prepare image step, 1 worker": prepare(1),
            f"prepare image step, {w} workers": prepare(w),
            f"prepare check only (no --image-size), {w} workers": check,
        }
        # Rounds interleave the methods so load from other users of the machine hits them alike; best round wins.
        load_before = os.getloadavg()[0]
        times = {name: float("inf") for name in methods}
        for _ in range(args.repeats):
            for name, fn in methods.items():
                shutil.rmtree(root / "out", ignore_errors=True)
                times[name] = min(times[name], timed(fn))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    table = Table(title=f"image step: {args.count} JPEGs {args.width}x{args.height} (~{mean_mb:.1f} MB) -> "
                        f"shortest side {args.size}, best of {args.repeats}")
    for column in ("method", "seconds", "images/s", "vs baseline", "all 377,110 images"):
        table.add_column(column, justify="left" if column == "method" else "right")
    base_rate = args.count / next(iter(times.values()))  # ratios are against the plain loop
    for name, seconds in times.items():
        rate = args.count / seconds
        hours = MIMIC_IMAGES / rate / 3600
        table.add_row(name, f"{seconds:.1f}", f"{rate:.1f}", f"{rate / base_rate:.1f}x", f"{hours:.1f} h")
    table.caption = (f"load average (1 min) {load_before:.2f} before, {os.getloadavg()[0]:.2f} after, "
                     f"{os.cpu_count()} CPUs: the ratios need the {args.workers} cores free")
    console.print(table)


if __name__ == "__main__":
    main()
