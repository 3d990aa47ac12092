"""The image step of `prepare`: check every kept image, or write a resized JPEG copy of it.

Speed comes from the JPEG decoder's reduced-size decoding (`Image.draft`): a 2500x3000 MIMIC image asked for at
shortest side 518 is decoded at 1/4 scale (625x750) straight from the DCT coefficients, so neither the full-size
inverse DCT nor a resample of 7.5 million pixels happens. The entropy decoding still reads every byte and is
about 80% of what remains. Copies are written atomically, and an existing copy is reused, so a rerun after an
interruption carries on.

Reading and writing fail differently on purpose: a source image that cannot be read is a counted skip (a
property of the input), while a copy that cannot be written (disk full, read-only folder) stops the run with
its OSError (a property of the machine: skipping would silently drop every record from there on).
"""

from __future__ import annotations

import io
import itertools
import os
import signal
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Iterator

from PIL import Image, UnidentifiedImageError

from llavarad_cli.data.images import ImageProblem, confine, is_dicom, read_dicom
from llavarad_cli.errors import WorkerFailed
from llavarad_cli.io_utils import atomic_write_bytes

JPEG_QUALITY = 95
#: Antialiased bicubic: the filter the model's own eval transform uses to bring an image to 518 px
#: (open_clip's eval transform, PIL bicubic), so a copy is as close to what the model would make of the original as
#: a LANCZOS copy (within 0.2 dB PSNR after the JPEG save, on a real radiograph scaled to 2500x3000). After a
#: 1/4-scale draft only a ~1.2x reduction is left: LANCZOS costs 3.4 ms of a ~20 ms image there, bicubic 2.3 ms.
RESAMPLE = Image.Resampling.BICUBIC
#: Images without reduced-size decoding (PNG, DICOM) are first box-reduced by an integer factor while at least
#: this ratio is left for the bicubic step, as Pillow's own thumbnail() does: half the time of a 2500x3000 ->
#: 518 resize, 54.7 dB PSNR against the exact one.
REDUCING_GAP = 2.0
_DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass(frozen=True)
class ImageJob:
    index: int
    source: Path
    #: Where the resized copy goes; None = only check that the image opens.
    target: Path | None
    size: int | None
    #: The image folder `source` must stay inside, symbolic links followed (None: not checked).
    root: Path | None = None


@dataclass(frozen=True)
class ImageResult:
    index: int
    status: str  # "ok", "written", "reused", "missing_image", "unreadable_image" or "image_outside_folder"
    detail: str = ""


#: Every JPEG ends with the end-of-image marker. Copies are always JPEGs, so a copy that does not end with it was
#: cut short after it was written (a full disk during a copy of the folder, a sync tool, a power cut without
#: fsync): reading the header alone would reuse it, and training would fail on it later.
JPEG_END = b"\xff\xd9"


def copy_is_usable(path: Path) -> bool:
    """An existing copy is reused only if it is a whole JPEG: its header opens and its last bytes are the
    end-of-image marker. Two reads, no decoding, so a rerun over 200,000 copies stays quick."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() < 4:
                return False
            fh.seek(-len(JPEG_END), os.SEEK_END)
            if fh.read() != JPEG_END:
                return False
            fh.seek(0)
            with Image.open(fh) as image:
                return image.format == "JPEG" and image.size[0] > 0
    except _DECODE_ERRORS:
        return False


def target_size(width: int, height: int, size: int) -> tuple[int, int]:
    """Shortest side `size`, aspect kept; images already at or below it keep their size (never upscaled)."""
    shortest = min(width, height)
    if shortest <= size:
        return width, height
    scale = size / shortest
    return max(1, round(width * scale)), max(1, round(height * scale))


def _to_8bit(image: Image.Image) -> Image.Image:
    """Grayscale stays L, colour becomes RGB; 16-/32-bit grayscale is stretched to 8 bits instead of clipped."""
    if image.mode in ("L", "RGB"):
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        import numpy as np

        pixels = np.asarray(image, dtype=np.float32)
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
        return Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    if image.mode in ("1", "LA"):
        return image.convert("L")
    return image.convert("RGB")


def encode_copy(source: Path, size: int) -> bytes:
    """`source` as JPEG bytes with shortest side `size`. Raises one of `_DECODE_ERRORS` or `ImageProblem`
    (DICOM) on a bad image."""
    if is_dicom(source):
        # The model-input reader's DICOM path (LUTs, window, MONOCHROME1), so a copy looks like what infer
        # would make of the original. It returns 8-bit pixels: only the resize is left.
        pixels = read_dicom(source)
        return _jpeg_bytes(pixels, target_size(*pixels.size, size))
    with Image.open(source) as image:
        width, height = image.size
        new_size = target_size(width, height, size)
        if image.format == "JPEG" and new_size == (width, height) and image.mode in ("L", "RGB"):
            with open(source, "rb") as fh:  # already small enough: keep the original bytes, no re-encoding loss
                data = fh.read()
            image.load()  # still prove it decodes
            # Only a JPEG that ends where JPEGs end: trailing bytes would make the copy fail `copy_is_usable`
            # and be redone on every rerun, so such a file is re-encoded instead.
            if data.endswith(JPEG_END):
                return data
        if image.format == "JPEG":
            # Decode at the smallest 1/1, 1/2, 1/4 or 1/8 scale that is still at least new_size.
            image.draft("L" if image.mode == "L" else "RGB", new_size)
        image.load()
        return _jpeg_bytes(_to_8bit(image), new_size)


def _jpeg_bytes(pixels: Image.Image, new_size: tuple[int, int]) -> bytes:
    if pixels.size != new_size:
        pixels = pixels.resize(new_size, RESAMPLE, reducing_gap=REDUCING_GAP)
    buffer = io.BytesIO()
    pixels.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def resize_image(source: Path, target: Path, size: int) -> None:
    """Write `source` as a JPEG with shortest side `size` to `target` (atomically).

    Raises one of `_DECODE_ERRORS` for a bad source, and the OSError of the write (naming `target`) for an
    output that cannot be written: the two must not be confused.
    """
    data = encode_copy(source, size)
    # No fsync: a copy lost to a power cut is caught by `copy_is_usable` on the rerun; fsync cost ~10% here.
    atomic_write_bytes(target, data, durable=False)


def check_image(source: Path) -> None:
    """Decode the image, as cheaply as the format allows, so truncated and corrupt files are caught here.

    A JPEG is decoded at 1/8 scale (entropy decoding plus DC coefficients only), which still reads every byte.
    A DICOM goes through the model-input reader, so what passes here is what infer and training can read.
    """
    if is_dicom(source):
        read_dicom(source)
        return
    with Image.open(source) as image:
        if image.format == "JPEG":
            image.draft("L" if image.mode == "L" else "RGB", (1, 1))
        image.load()


def run_job(job: ImageJob) -> ImageResult:
    """One image's result. Only reading the source is guarded: an OSError writing the copy propagates."""
    if job.root is not None:
        try:
            confine(job.root, job.source, job.source.name)
        except ImageProblem as problem:
            return ImageResult(job.index, str(problem.kind), "a symbolic link out of the image folder")
    if job.target is not None and job.target.is_file() and copy_is_usable(job.target):
        return ImageResult(job.index, "reused")
    try:
        if not job.source.is_file():
            return ImageResult(job.index, "missing_image", "not found")
        if job.target is None:
            check_image(job.source)
            return ImageResult(job.index, "ok")
        data = encode_copy(job.source, job.size)
    except ImageProblem as problem:
        return ImageResult(job.index, str(problem.kind), problem.detail[:200])
    except _DECODE_ERRORS as exc:
        # The summary already names the image; keep Pillow's reason without the long absolute path.
        message = " ".join(str(exc).replace(f"'{job.source}'", "").split()) or type(exc).__name__
        return ImageResult(job.index, "unreadable_image", message[:200])
    # No fsync: a copy lost to a power cut is caught by `copy_is_usable` on the rerun; fsync cost ~10% here.
    atomic_write_bytes(job.target, data, durable=False)
    return ImageResult(job.index, "written")


def run_chunk(jobs: list[ImageJob]) -> list[ImageResult]:
    """What one worker does with one message: a few images, so the messages cost nothing next to the work."""
    return [run_job(job) for job in jobs]


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


#: Freed image buffers Pillow keeps for the next image (its PILLOW_BLOCKS_MAX, 0 by default). Without them every
#: image's buffers come back from the kernel as fresh pages: ~330 page faults and ~0.7 ms of a ~20 ms image.
#: Blocks are at most 16 MB, so this holds at most 64 MB per worker.
IMAGE_BLOCKS_CACHED = 4


def _cache_image_blocks() -> int:
    """Let Pillow reuse image buffers (unless the user set PILLOW_BLOCKS_MAX); returns the previous setting."""
    previous = Image.core.get_blocks_max()
    if "PILLOW_BLOCKS_MAX" not in os.environ:
        Image.core.set_blocks_max(max(previous, IMAGE_BLOCKS_CACHED))
    return previous


def _init_worker() -> None:
    """Ctrl-C reaches the whole process group: only the parent should react (it stops the pool), so the
    workers do not each print a KeyboardInterrupt traceback over the progress bar."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _cache_image_blocks()


def run_jobs(jobs: list[ImageJob], workers: int) -> Iterator[ImageResult]:
    """Yield each job's result as it finishes, from `workers` processes (in this process for 1).

    The pool forks where the platform can: workers then start at once, without re-importing anything. The
    caller must not run other threads meanwhile (the progress bar is refreshed by hand for that reason).
    """
    if workers <= 1 or len(jobs) <= 1:
        previous = _cache_image_blocks()
        try:
            yield from map(run_job, jobs)
        finally:
            Image.core.set_blocks_max(previous)  # leave the calling process as it was
        return
    # An image is ~20 ms of work and a message between processes ~0.1 ms, so chunks only need to be a few images:
    # big chunks leave one worker idle at the end (3 images of 48 at once cost the 2-worker run ~6%).
    chunksize = max(1, min(16, len(jobs) // (workers * 64)))
    chunks = (jobs[start:start + chunksize] for start in range(0, len(jobs), chunksize))
    workers = min(workers, -(-len(jobs) // chunksize))  # no idle processes forked for a handful of images
    context = get_context("fork") if "fork" in get_all_start_methods() else get_context()
    # concurrent.futures rather than multiprocessing.Pool: a Pool replaces a worker that the OOM killer or a
    # `kill -9` ended and waits forever for the chunk it held; this executor fails every pending future with
    # BrokenProcessPool instead, so the run ends.
    executor = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker)
    try:
        # A few chunks per worker in flight keep every worker busy without pickling all the jobs up front.
        pending = {executor.submit(run_chunk, chunk) for chunk in itertools.islice(chunks, workers * 4)}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield from future.result()
            pending.update(executor.submit(run_chunk, chunk) for chunk in itertools.islice(chunks, len(done)))
    except BrokenProcessPool:
        raise WorkerFailed("an image worker process died (killed by the out-of-memory killer or a signal); "
                        "nothing was written but the image copies already finished",
                        hint="run the same command again to continue (finished copies are reused); "
                             "fewer --workers need less memory") from None
    finally:
        # An error, Ctrl-C or a caller that stopped early: drop what has not started. The workers ignore
        # SIGINT, so each finishes the few images it holds (well under a second) and exits.
        executor.shutdown(wait=True, cancel_futures=True)
