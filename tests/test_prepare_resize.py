"""The image step's building blocks: target sizes, reduced-size JPEG decoding, 16-bit images, failures."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from llavarad_cli.data.resize import ImageJob, resize_image, run_job, run_jobs, target_size


@pytest.mark.parametrize("width, height, size, expected", [
    (2500, 3000, 518, (518, 622)),
    (3000, 2500, 518, (622, 518)),
    (518, 700, 518, (518, 700)),
    (300, 400, 518, (300, 400)),  # never upscaled
])
def test_target_size(width, height, size, expected):
    assert target_size(width, height, size) == expected


def test_large_jpeg_matches_full_decode_closely(tmp_path):
    # A smooth gradient: the reduced-size decode must give (nearly) the same picture as decoding everything.
    y, x = np.mgrid[0:1200, 0:1000]
    pixels = ((x * 0.15 + y * 0.1) % 256).astype(np.uint8)
    source = tmp_path / "big.jpg"
    Image.fromarray(pixels, "L").save(source, quality=95)
    target = tmp_path / "out" / "big.jpg"
    resize_image(source, target, 200)
    with Image.open(target) as fast, Image.open(source) as full:
        assert fast.size == (200, 240) and fast.mode == "L"
        reference = np.asarray(full.resize((200, 240), Image.Resampling.LANCZOS), dtype=np.float32)
        assert np.abs(np.asarray(fast, dtype=np.float32) - reference).mean() < 2.0


def test_sixteen_bit_png_is_stretched_not_clipped(tmp_path):
    pixels = np.linspace(1000, 40000, 64 * 80).reshape(80, 64).astype(np.uint16)
    source = tmp_path / "x.png"
    Image.fromarray(pixels).save(source)
    target = tmp_path / "x.jpg"
    resize_image(source, target, 32)
    with Image.open(target) as image:
        values = np.asarray(image)
        assert image.mode == "L" and image.size == (32, 40)
        assert values.min() < 10 and values.max() > 245


def test_rgb_png_to_jpeg(data_dir, tmp_path):
    target = tmp_path / "iu.jpg"
    resize_image(data_dir / "cxr-images" / "iu" / "CXR7_IM-2263-1001.png", target, 100)
    with Image.open(target) as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (100, 100))


def test_failures_are_results_not_exceptions(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a full jpeg")
    results = list(run_jobs([
        ImageJob(0, tmp_path / "missing.jpg", tmp_path / "o" / "a.jpg", 64),
        ImageJob(1, bad, tmp_path / "o" / "b.jpg", 64),
        ImageJob(2, bad, None, None),
    ], workers=1))
    assert [(r.index, r.status) for r in results] == [(0, "missing_image"), (1, "unreadable_image"),
                                                      (2, "unreadable_image")]
    assert str(tmp_path) not in results[1].detail
    assert not (tmp_path / "o" / "b.jpg").exists()


def test_existing_copy_is_reused_without_reading_the_source(tmp_path):
    target = tmp_path / "done.jpg"
    Image.new("L", (8, 8)).save(target)
    assert run_job(ImageJob(0, tmp_path / "gone.jpg", target, 64)).status == "reused"


def test_empty_copy_left_by_a_crash_is_redone(tmp_path):
    source = tmp_path / "src.jpg"
    Image.new("L", (80, 100), 50).save(source)
    target = tmp_path / "copy.jpg"
    target.write_bytes(b"")
    assert run_job(ImageJob(0, source, target, 40)).status == "written"
    with Image.open(target) as image:
        assert image.size == (40, 50)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_large_png_box_reduction_stays_close_to_exact_resampling(data_dir, tmp_path):
    # No reduced-size decoding for PNG: the integer box reduction before the bicubic step must not show.
    source = data_dir / "cxr-images" / "nih" / "00000003_000.png"  # 1024x1024 radiograph
    target = tmp_path / "nih.jpg"
    resize_image(source, target, 128)
    exact_path = tmp_path / "exact.jpg"
    with Image.open(source) as full:
        full.convert("L").resize((128, 128), Image.Resampling.BICUBIC).save(exact_path, quality=95)
    with Image.open(target) as fast, Image.open(exact_path) as exact:
        assert fast.size == (128, 128)
        # Both carry the q95 JPEG's own error (~0.9 grey levels against the unsaved image); a box or bilinear
        # reduction all the way down differs by more than 1.1, nearest-neighbour by 3.
        difference = np.abs(np.asarray(fast, dtype=np.float32) - np.asarray(exact, dtype=np.float32)).mean()
        assert difference < 1.0


def test_pool_results_and_early_stop(tmp_path):
    images = []
    for number in range(6):
        path = tmp_path / f"{number}.jpg"
        Image.new("L", (16, 16), number * 40).save(path)
        images.append(path)
    jobs = [ImageJob(number, path, None, None) for number, path in enumerate(images)]
    assert sorted((r.index, r.status) for r in run_jobs(jobs, workers=2)) == [(n, "ok") for n in range(6)]
    # A caller that stops reading (an error in the progress loop, Ctrl-C) stops the workers instead of hanging.
    results = run_jobs(jobs, workers=2)
    next(results)
    results.close()


def test_in_process_run_leaves_pillow_buffer_cache_as_it_was(tmp_path):
    source = tmp_path / "src.jpg"
    Image.new("L", (80, 100), 50).save(source)
    before = Image.core.get_blocks_max()
    results = list(run_jobs([ImageJob(0, source, tmp_path / "a.jpg", 40), ImageJob(1, source, None, None)], 1))
    assert [r.status for r in results] == ["written", "ok"]
    assert Image.core.get_blocks_max() == before


def _write_copy(tmp_path):
    source = tmp_path / "src.jpg"
    noise = np.random.RandomState(0).randint(0, 256, (200, 160), dtype=np.uint8)
    Image.fromarray(noise, "L").save(source, quality=90)
    target = tmp_path / "copies" / "copy.jpg"
    assert run_job(ImageJob(0, source, target, 40)).status == "written"
    return source, target


def test_copy_cut_short_after_it_was_written_is_redone_not_reused(tmp_path):
    # The header still opens, so a header-only check would reuse it and training would fail on it later.
    source, target = _write_copy(tmp_path)
    whole = target.read_bytes()
    target.write_bytes(whole[: len(whole) * 2 // 3])
    with Image.open(target) as image:
        assert image.size == (40, 50)  # what the old check looked at
    assert run_job(ImageJob(0, source, target, 40)).status == "written"
    assert target.read_bytes() == whole
    assert run_job(ImageJob(0, source, target, 40)).status == "reused"


def test_small_jpeg_with_bytes_after_its_end_is_re_encoded_so_its_copy_is_reusable(tmp_path):
    source = tmp_path / "small.jpg"
    Image.new("L", (20, 24), 90).save(source)
    source.write_bytes(source.read_bytes() + b"trailing junk")
    target = tmp_path / "copy.jpg"
    assert run_job(ImageJob(0, source, target, 40)).status == "written"
    assert target.read_bytes().endswith(b"\xff\xd9")
    assert run_job(ImageJob(0, source, target, 40)).status == "reused"


class _FullDisk:
    """What os.fdopen returns on a full disk: the file opens, every write fails with ENOSPC."""

    def __init__(self, fh):
        self._fh = fh

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()

    def write(self, data):
        import errno
        import os

        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._fh, name)


def full_disk(monkeypatch, after: int = 0):
    """Make atomic writes fail as on a full disk once `after` files were written in this process (root
    ignores chmod, so a read-only folder would not do). Forked workers inherit it."""
    import os

    from llavarad_cli import io_utils

    real = os.fdopen
    opened = []

    def fdopen(fd, *args, **kwargs):
        opened.append(fd)
        fh = real(fd, *args, **kwargs)
        return fh if len(opened) <= after else _FullDisk(fh)

    monkeypatch.setattr(io_utils.os, "fdopen", fdopen)


def test_full_disk_is_an_error_naming_the_copy_not_an_unreadable_image(tmp_path, monkeypatch):
    source = tmp_path / "src.jpg"
    Image.new("L", (80, 100), 70).save(source)
    target = tmp_path / "copies" / "copy.jpg"
    full_disk(monkeypatch)
    with pytest.raises(OSError) as err:
        run_job(ImageJob(0, source, target, 40))
    assert err.value.strerror == "No space left on device" and err.value.filename == str(target)
    assert list(target.parent.iterdir()) == []  # no temp file, no partial copy


def test_full_disk_in_a_worker_stops_the_pool_with_the_same_error(tmp_path, monkeypatch):
    jobs = []
    for number in range(6):
        path = tmp_path / f"{number}.jpg"
        Image.new("L", (80, 100), number * 30).save(path)
        jobs.append(ImageJob(number, path, tmp_path / "copies" / f"{number}.jpg", 40))
    full_disk(monkeypatch)  # the forked workers inherit it
    with pytest.raises(OSError) as err:
        list(run_jobs(jobs, workers=2))
    assert err.value.strerror == "No space left on device"
    assert err.value.filename.startswith(str(tmp_path / "copies"))


def _kill_myself_on(name, function="check_image"):
    """resize.`function` (called with the source first), dying like a worker taken by the OOM killer when it
    reaches the image `name`."""
    import os
    import signal

    from llavarad_cli.data import resize

    real = getattr(resize, function)

    def or_die(source, *args):
        if source.name == name:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(source, *args)

    return or_die


def test_a_killed_worker_ends_the_run_with_one_clear_error_instead_of_hanging(tmp_path, monkeypatch):
    import signal

    from llavarad_cli.data import resize
    from llavarad_cli.errors import WorkerFailed

    jobs = []
    for number in range(40):
        path = tmp_path / f"{number}.jpg"
        Image.new("L", (16, 16), number * 5).save(path)
        jobs.append(ImageJob(number, path, None, None))
    monkeypatch.setattr(resize, "check_image", _kill_myself_on("7.jpg"))  # the forked workers inherit it

    def hung(signum, frame):
        raise AssertionError("run_jobs still waiting on a dead worker")

    # Not a time limit on the work: multiprocessing.Pool waits forever here, and a test must fail, not hang.
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)
    try:
        with pytest.raises(WorkerFailed) as err:
            list(run_jobs(jobs, workers=2))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert "worker process died" in err.value.message and "run the same command again" in err.value.hint


def test_dicom_sources_are_read_by_the_model_input_reader_and_its_problems_are_counted(tmp_path):
    from test_images import _compressed_dicom, _dicom, _ramp

    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    good = _dicom(tmp_path / "good.dcm", _ramp(h=64, w=80), "MONOCHROME1")
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not a dicom at all")
    results = list(run_jobs([ImageJob(0, good, tmp_path / "o" / "good.jpg", 32), ImageJob(1, good, None, None),
                             ImageJob(2, bad, tmp_path / "o" / "bad.jpg", 32), ImageJob(3, bad, None, None)], 1))
    assert [(r.index, r.status) for r in results] == [(0, "written"), (1, "ok"), (2, "unreadable_image"),
                                                      (3, "unreadable_image")]
    assert "not a valid DICOM file" in results[2].detail
    with Image.open(tmp_path / "o" / "good.jpg") as copy:
        assert copy.size == (40, 32) and copy.mode == "L"
        row = np.asarray(copy)[16]
        assert row[0] > 240 and row[-1] < 15  # MONOCHROME1 inverted, as infer sees it
    if not get_decoder(JPEGLSLossless).is_available:
        jls = _compressed_dicom(tmp_path / "jls.dcm", JPEGLSLossless, b"\xff\xd8\xff\xf7 stream")
        result = run_job(ImageJob(4, jls, tmp_path / "o" / "jls.jpg", 32))
        assert result.status == "unreadable_image" and "llavarad[dicom]" in result.detail
