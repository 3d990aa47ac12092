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
