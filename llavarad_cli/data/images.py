"""Reading a chest X-ray for the model: JPEG/PNG (8- or 16-bit, grayscale or colour) and DICOM, as RGB PIL.

Also resolves image paths from data files inside their root folder, refusing paths that escape it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from PIL import Image, ImageFile, UnidentifiedImageError

from llavarad_cli.errors import UserError
from llavarad_cli.skips import Skip

DICOM_SUFFIXES = (".dcm", ".dicom")
#: What a broken image raises while decoding; these become counted skips, never a crash of a whole run.
IMAGE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


class ImageProblem(Exception):
    """An image that is missing, outside its folder, or unreadable: the record is skipped and counted."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind  # Skip.MISSING_IMAGE, IMAGE_OUTSIDE_FOLDER or UNREADABLE_IMAGE
        self.detail = detail


def resolve_image_path(root: Path, relative: str) -> Path:
    """``root / relative``, refusing anything that leaves ``root`` (``../``, absolute paths elsewhere).

    The check is lexical, so symlinks inside a data folder (common for big datasets) keep working.
    PhysioNet annotation paths start with ``mimic/``; like the reference loader, that prefix is dropped when the
    path does not exist as written (``--image-folder`` then points at MIMIC-CXR-JPG's ``files/``).
    """
    if not isinstance(relative, str) or not relative.strip():
        raise ImageProblem(Skip.MISSING_IMAGE, "record has no image path")
    root_norm = os.path.normpath(os.path.abspath(os.path.expanduser(str(root))))
    candidate = os.path.normpath(os.path.join(root_norm, os.path.expanduser(relative.strip())))
    if candidate != root_norm and not candidate.startswith(root_norm + os.sep):
        raise ImageProblem(Skip.IMAGE_OUTSIDE_FOLDER, f"image path {relative!r} escapes the image folder {root_norm}")
    path = Path(candidate)
    if not path.exists() and relative.startswith("mimic/"):
        stripped = os.path.normpath(os.path.join(root_norm, os.path.expanduser(relative.strip()[len("mimic/"):])))
        # Checked again: `mimic/../x` stays inside as written but would climb out once `mimic/` is dropped.
        if stripped.startswith(root_norm + os.sep) and Path(stripped).exists():
            return Path(stripped)
    return path


def is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
        return len(head) == 132 and head[128:132] == b"DICM"
    except OSError:
        return False


def _stretch_to_8bit(pixels) -> Image.Image:
    """Min-max stretch to 0..255 (never clip 12/16-bit data at 255, which whites the image out)."""
    import numpy as np

    pixels = np.asarray(pixels, dtype=np.float32)
    low, high = float(pixels.min()), float(pixels.max())
    scaled = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
    return Image.fromarray(np.clip(scaled.round(), 0, 255).astype(np.uint8), mode="L")


def read_dicom(path: Path) -> Image.Image:
    """Modality LUT, then the VOI LUT or window, then MONOCHROME1 inverted so bone is bright, as 8-bit L."""
    import numpy as np
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(str(path))
    pixels = ds.pixel_array
    if pixels.ndim == 3 and getattr(ds, "SamplesPerPixel", 1) == 1:
        pixels = pixels[0]  # multi-frame: the first frame
    if getattr(ds, "SamplesPerPixel", 1) == 3:
        return Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode="RGB")
    pixels = apply_modality_lut(pixels, ds)
    pixels = apply_voi_lut(pixels, ds)
    image = _stretch_to_8bit(pixels)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        image = Image.eval(image, lambda v: 255 - v)
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = _stretch_to_8bit(image)
    return image.convert("RGB")


_TRUNCATED_SWITCH = threading.Lock()


def _open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return _to_rgb(image)


def load_image(path: Path) -> Image.Image:
    """The image as RGB, fully decoded. Raises ``ImageProblem`` for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise ImageProblem(Skip.MISSING_IMAGE, f"image not found: {path}")
    try:
        if is_dicom(path):
            return read_dicom(path).convert("RGB")
        try:
            return _open_rgb(path)
        except OSError as exc:
            if "truncated" not in str(exc):
                raise
        # Like the reference's evaluation, accept images whose last bytes are missing. Pillow only has a
        # process-wide switch for that: flip it for this one file under a lock, so concurrent loaders (the
        # prefetch threads) can never leave it on for the rest of the process.
        with _TRUNCATED_SWITCH:
            previous = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = True
            try:
                return _open_rgb(path)
            finally:
                ImageFile.LOAD_TRUNCATED_IMAGES = previous
    except ImageProblem:
        raise
    except (*IMAGE_ERRORS, AttributeError, KeyError, TypeError) as exc:
        # pydicom reports a file without pixel data or an unknown transfer syntax with these too.
        raise ImageProblem(Skip.UNREADABLE_IMAGE, f"cannot read image {path}: {str(exc).splitlines()[0][:200]}") from None


def load_image_or_fail(path: Path) -> Image.Image:
    """For single-image commands: the problem becomes a one-line user error."""
    try:
        return load_image(path)
    except ImageProblem as problem:
        raise UserError(problem.detail) from None
