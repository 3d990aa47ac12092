"""Model-input image reading: PNG/JPEG modes, 16-bit, DICOM photometry and windowing, safe path resolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dicom_files import secondary_capture, write_dicom
from llavarad_cli.data.images import ImageProblem, load_image, resolve_image_path


_dicom = write_dicom


def _ramp(h=8, w=16, top=4095):
    return np.tile(np.linspace(0, top, w).round().astype(np.uint16), (h, 1))


def test_real_test_images_load_as_rgb(data_dir):
    for path in sorted((data_dir / "cxr-images").rglob("*.png")):
        image = load_image(path)
        assert image.mode == "RGB" and min(image.size) > 100


def test_grayscale_png_becomes_three_equal_channels(tmp_path):
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, mode="L").save(tmp_path / "g.png")
    rgb = np.asarray(load_image(tmp_path / "g.png"))
    assert rgb.shape == (8, 8, 3)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    assert rgb[0, 1, 0] == 4


def test_16bit_png_is_stretched_not_clipped(tmp_path):
    ramp = _ramp()
    Image.fromarray(ramp).save(tmp_path / "deep.png")  # 12-bit data in a 16-bit PNG
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    gray = np.asarray(load_image(tmp_path / "deep.png"))[..., 0]
    assert gray[0, 0] == 0 and gray[0, -1] == 255
    assert len(np.unique(gray[0])) == 16  # a ramp, not white from the second pixel on


def test_dicom_monochrome1_is_inverted(tmp_path):
    ramp = _ramp()
    mono2 = np.asarray(load_image(_dicom(tmp_path / "m2.dcm", ramp, "MONOCHROME2")))[..., 0]
    mono1 = np.asarray(load_image(_dicom(tmp_path / "m1.dcm", ramp, "MONOCHROME1")))[..., 0]
    assert mono2[0, 0] == 0 and mono2[0, -1] == 255
    assert (mono1.astype(int) == 255 - mono2.astype(int)).all()


def test_dicom_window_is_applied(tmp_path):
    ramp = _ramp()
    # Window 1000..2000: everything below is black, above white, in between a ramp.
    gray = np.asarray(load_image(_dicom(tmp_path / "w.dcm", ramp, window=(1500, 1000))))[..., 0]
    row, raw = gray[0], ramp[0]
    assert (row[raw <= 1000] == 0).all() and (row[raw >= 2000] == 255).all()
    inside = row[(raw > 1100) & (raw < 1900)]
    assert len(inside) and ((inside > 0) & (inside < 255)).all()


def test_dicom_without_suffix_is_recognised_by_its_magic(tmp_path):
    path = _dicom(tmp_path / "image.dcm", _ramp())
    renamed = path.rename(tmp_path / "no_suffix")
    assert load_image(renamed).mode == "RGB"


def test_missing_and_corrupt_images_are_reported_problems(tmp_path):
    with pytest.raises(ImageProblem) as err:
        load_image(tmp_path / "nope.png")
    assert err.value.kind == "missing_image"
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ImageProblem) as err:
        load_image(tmp_path / "bad.png")
    assert err.value.kind == "unreadable_image" and "bad.png" in err.value.detail


@pytest.mark.parametrize("bad", ["../secret.png", "a/../../secret.png", "/etc/passwd"])
def test_paths_escaping_the_image_folder_are_refused(tmp_path, bad):
    with pytest.raises(ImageProblem) as err:
        resolve_image_path(tmp_path / "images", bad)
    assert err.value.kind == "image_outside_folder"


def test_mimic_prefix_fallback_cannot_escape_the_folder(tmp_path):
    # `mimic/../secret.png` stays inside as written; dropping `mimic/` must not turn it into `../secret.png`.
    (tmp_path / "secret.png").write_bytes(b"x")
    (tmp_path / "files").mkdir()
    resolved = resolve_image_path(tmp_path / "files", "mimic/../secret.png")
    assert resolved == tmp_path / "files" / "secret.png"  # inside, and missing: a counted skip
    with pytest.raises(ImageProblem) as err:
        load_image(resolved)
    assert err.value.kind == "missing_image"


def test_paths_inside_the_folder_resolve_and_mimic_prefix_is_dropped(tmp_path):
    root = tmp_path / "files"
    (root / "p10" / "p1").mkdir(parents=True)
    (root / "p10" / "p1" / "x.jpg").write_bytes(b"")
    assert resolve_image_path(root, "p10/./p1/../p1/x.jpg") == root / "p10" / "p1" / "x.jpg"
    assert resolve_image_path(root, "mimic/p10/p1/x.jpg") == root / "p10" / "p1" / "x.jpg"


def test_eval_transform_is_open_clip_pil_bicubic_shortest_side_and_centre_crop():
    import torch
    from torchvision.transforms import functional as F

    from llavarad_cli.model.vision import eval_transform

    rng = np.random.RandomState(0)
    image = Image.fromarray(rng.randint(0, 256, (70, 60), dtype=np.uint8), mode="L").convert("RGB")
    got = eval_transform(56)(image)
    resized = image.resize((56, 65), Image.Resampling.BICUBIC)  # shortest side 60 -> 56, 70 -> int(65.33)
    top = int(round((65 - 56) / 2.0))
    manual = F.to_tensor(resized.crop((0, top, 56, top + 56)))
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
    torch.testing.assert_close(got, (manual - mean) / std)


def test_truncated_jpeg_loads_without_leaving_pillow_switched(tmp_path):
    """Concurrent loads of truncated files must not leave Pillow's process-wide switch on."""
    import io
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image, ImageFile

    from llavarad_cli.data.images import load_image

    buf = io.BytesIO()
    Image.new("L", (256, 256), 128).save(buf, "JPEG")
    paths = []
    for i in range(8):
        path = tmp_path / f"cut{i}.jpg"
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
        paths.append(path)
    with ThreadPoolExecutor(4) as pool:
        images = list(pool.map(load_image, paths * 4))
    assert all(image.size == (256, 256) and image.mode == "RGB" for image in images)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def _compressed_dicom(path: Path, syntax, fragment: bytes, bits: int = 8) -> Path:
    """A DICOM whose pixel data is one encapsulated frame of `syntax` (the bytes are the caller's)."""
    from pydicom.encaps import encapsulate

    ds = secondary_capture(syntax, 16, 24, bits=bits)
    ds.PixelData = encapsulate([fragment])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_compressed_with_a_codec_nothing_installed_decodes_is_a_problem_naming_the_package(tmp_path):
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    path = _compressed_dicom(tmp_path / "jls.dcm", JPEGLSLossless, b"\xff\xd8\xff\xf7 jpeg-ls stream")
    with pytest.raises(ImageProblem) as err:
        load_image(path)
    assert err.value.kind == "unreadable_image"
    if get_decoder(JPEGLSLossless).is_available:  # the dicom extra is installed: the stream itself is bad
        assert "cannot be decoded" in err.value.detail
    else:
        assert "JPEG-LS" in err.value.detail and "llavarad[dicom]" in err.value.detail and "pylibjpeg" in err.value.detail


def test_dicom_in_jpeg_2000_decodes_with_the_decoder_pillow_brings(tmp_path):
    import io

    from pydicom.uid import JPEG2000Lossless

    pixels = np.tile(np.arange(24, dtype=np.uint8) * 10, (16, 1))
    buf = io.BytesIO()
    Image.fromarray(pixels, "L").save(buf, "JPEG2000", irreversible=False, no_jp2=True)
    gray = np.asarray(load_image(_compressed_dicom(tmp_path / "j2k.dcm", JPEG2000Lossless, buf.getvalue())))
    assert gray.shape == (16, 24, 3)
    assert gray[0, 0, 0] == 0 and gray[0, -1, 0] == 255  # stretched like any DICOM


@pytest.mark.parametrize("case", ["garbage after the magic", "cut short", "no pixel data", "damaged stream",
                                  "no preamble"])
def test_broken_dicom_files_are_counted_problems_not_crashes(tmp_path, case):
    from pydicom.uid import JPEG2000Lossless

    path = tmp_path / "bad.dcm"
    if case == "garbage after the magic":
        path.write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 8)
    elif case == "cut short":
        whole = _dicom(tmp_path / "whole.dcm", _ramp()).read_bytes()
        path.write_bytes(whole[: len(whole) - 100])
    elif case == "no pixel data":
        import pydicom

        ds = pydicom.dcmread(_dicom(tmp_path / "whole.dcm", _ramp()))
        del ds.PixelData
        ds.save_as(path)
    elif case == "damaged stream":
        _compressed_dicom(path, JPEG2000Lossless, b"\xff\x4f\xff\x51 not really a codestream")
    else:
        path.write_bytes(b"just some bytes in a file named .dcm")
    with pytest.raises(ImageProblem) as err:
        load_image(path)
    assert err.value.kind == "unreadable_image" and "bad.dcm" in err.value.detail


def test_a_symlink_inside_the_image_folder_that_leads_outside_is_refused(tmp_path):
    secret = tmp_path / "private" / "id_rsa.png"
    secret.parent.mkdir()
    Image.new("L", (8, 8)).save(secret)
    root = tmp_path / "images"
    (root / "p10").mkdir(parents=True)
    (root / "p10" / "x.png").symlink_to(secret)
    (root / "p11").symlink_to(secret.parent, target_is_directory=True)
    for relative in ("p10/x.png", "p11/id_rsa.png", "mimic/p10/x.png"):
        with pytest.raises(ImageProblem) as err:
            resolve_image_path(root, relative)
        assert err.value.kind == "image_outside_folder" and "symbolic link" in err.value.detail


def test_symlinks_that_stay_inside_and_an_image_folder_that_is_itself_a_link_keep_working(tmp_path):
    real = tmp_path / "disk2" / "files"
    (real / "p10").mkdir(parents=True)
    Image.new("L", (8, 8)).save(real / "p10" / "a.png")
    (real / "p10" / "b.png").symlink_to(real / "p10" / "a.png")
    (real / "p12").symlink_to(real / "p10", target_is_directory=True)
    root = tmp_path / "files"
    root.symlink_to(real, target_is_directory=True)  # the dataset lives on another disk
    for relative in ("p10/a.png", "p10/b.png", "p12/a.png"):
        assert load_image(resolve_image_path(root, relative)).size == (8, 8)
