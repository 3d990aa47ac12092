"""Reading a chest X-ray for the model: JPEG/PNG (8- or 16-bit, grayscale or colour) and DICOM, as RGB PIL.

Also resolves image paths from data files inside their root folder, refusing paths that escape it.
"""

from __future__ import annotations

import functools
import os
import struct
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
    """``root / relative``, refusing anything that leaves ``root``: ``../``, absolute paths elsewhere, and
    symbolic links inside ``root`` that lead outside it (see `confine`).

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
            return confine(Path(root_norm), Path(stripped), relative)
    return confine(Path(root_norm), path, relative)


def confine(root: Path, path: Path, shown: str) -> Path:
    """``path``, if it is still inside ``root`` once every symbolic link in both is followed.

    A lexical check alone lets a link inside the image folder read any file the user can (``x.png ->
    /home/them/.ssh/id_rsa``) from a records file someone else wrote. The folder itself may be a link (a dataset
    on another disk): it is followed too, and what counts is where the images really are. One function, used
    by `resolve_image_path` (infer, training) and by prepare's image step.
    """
    real_root = _real_folder(str(root))
    real = os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root:
        raise ImageProblem(Skip.IMAGE_OUTSIDE_FOLDER,
                           f"image path {shown!r} leads out of the image folder {root} through a symbolic link")
    return path


@functools.lru_cache(maxsize=16)
def _real_folder(root: str) -> str:
    return os.path.realpath(root)


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


#: What pydicom and numpy raise on a file that is not the DICOM it claims to be (a DICM magic followed by
#: garbage, a cut-off element, a value of the wrong type). They are properties of the file, so they become a
#: counted unreadable image, like Pillow's errors for a broken PNG.
_DICOM_ERRORS = (ValueError, TypeError, AttributeError, KeyError, IndexError, OSError, EOFError, struct.error,
                 NotImplementedError, RuntimeError, UnicodeError, OverflowError)
#: What decodes the compressed transfer syntaxes Pillow does not (JPEG-LS, JPEG lossless, HTJ2K): the
#: `dicom` extra installs pylibjpeg with its libjpeg and openjpeg plugins; GDCM is pydicom's other choice.
DICOM_DECODER_HINT = "pip install 'llavarad[dicom]' (pylibjpeg + pylibjpeg-libjpeg + pylibjpeg-openjpeg) or GDCM"
#: The compressed encodings chest X-ray archives use, by the name `doctor` shows (transfer syntax UIDs).
DICOM_ENCODINGS = {"JPEG baseline": "1.2.840.10008.1.2.4.50", "JPEG extended": "1.2.840.10008.1.2.4.51",
                   "JPEG lossless": "1.2.840.10008.1.2.4.70", "JPEG-LS": "1.2.840.10008.1.2.4.80",
                   "JPEG 2000": "1.2.840.10008.1.2.4.91", "RLE": "1.2.840.10008.1.2.5"}


def dicom_decoding() -> tuple[list[str], list[str]]:
    """(the encodings of DICOM_ENCODINGS an installed decoder reads, those none reads)."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    readable, unreadable = [], []
    for name, syntax in DICOM_ENCODINGS.items():
        (readable if get_decoder(UID(syntax)).is_available else unreadable).append(name)
    return readable, unreadable


def _dicom_pixels(ds):
    """The pixel array, or ImageProblem saying why there is none (no pixel data, no decoder, a bad stream)."""
    from pydicom.pixels import get_decoder

    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageProblem(Skip.UNREADABLE_IMAGE, "DICOM file without pixel data")
    rows, columns = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)  # pydicom decodes every frame
    if Image.MAX_IMAGE_PIXELS and rows * columns * frames > 2 * Image.MAX_IMAGE_PIXELS:
        # Pillow's decompression-bomb bound: a few header bytes must not make us allocate gigabytes.
        raise ImageProblem(Skip.UNREADABLE_IMAGE,
                           f"DICOM of {frames} x {columns}x{rows} pixels, over the decompression-bomb limit")
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is not None and syntax.is_compressed:
        try:
            available = get_decoder(syntax).is_available
        except NotImplementedError:
            raise ImageProblem(Skip.UNREADABLE_IMAGE,
                               f"DICOM transfer syntax {syntax} is not one any decoder reads") from None
        if not available:
            raise ImageProblem(Skip.UNREADABLE_IMAGE, f"DICOM pixel data is {syntax.name}, which no installed decoder "
                                                   f"reads: {DICOM_DECODER_HINT}")
    try:
        return ds.pixel_array
    except _DICOM_ERRORS as exc:
        raise ImageProblem(Skip.UNREADABLE_IMAGE, f"DICOM pixel data cannot be decoded: {_first_line(exc)}") from None


def read_dicom(path: Path) -> Image.Image:
    """Modality LUT, then the VOI LUT or window, then MONOCHROME1 inverted so bone is bright, as 8-bit L.

    Every problem of the file (not DICOM after all, no pixel data, a codec nothing installed decodes, damaged
    content) is an ``ImageProblem``, so `prepare`, `infer` and training all count it and go on.
    """
    import numpy as np
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(str(path))
    except InvalidDicomError as exc:
        raise ImageProblem(Skip.UNREADABLE_IMAGE, f"not a valid DICOM file: {_first_line(exc)}") from None
    except _DICOM_ERRORS as exc:
        raise ImageProblem(Skip.UNREADABLE_IMAGE, f"damaged DICOM file: {_first_line(exc)}") from None
    try:
        pixels = _dicom_pixels(ds)
        samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
        if (pixels.ndim == 3 and samples == 1) or pixels.ndim == 4:
            pixels = pixels[0]  # multi-frame: the first frame
        if samples == 3:
            return Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode="RGB")
        pixels = apply_modality_lut(pixels, ds)
        pixels = apply_voi_lut(pixels, ds)
        if pixels.ndim != 2:
            raise ValueError(f"pixel array of shape {pixels.shape}, not one grayscale frame")
        image = _stretch_to_8bit(pixels)
        if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
            image = Image.eval(image, lambda v: 255 - v)
        return image
    except _DICOM_ERRORS as exc:  # pydicom parses elements lazily: a damaged one fails here
        raise ImageProblem(Skip.UNREADABLE_IMAGE, f"DICOM pixel data cannot be used: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


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
            try:
                return read_dicom(path).convert("RGB")
            except ImageProblem as problem:
                raise ImageProblem(problem.kind, f"cannot read image {path}: {problem.detail}") from None
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
    except (*IMAGE_ERRORS, AttributeError, KeyError, TypeError) as exc:  # some Pillow plugins, on bad headers
        raise ImageProblem(Skip.UNREADABLE_IMAGE, f"cannot read image {path}: {_first_line(exc)}") from None


def load_image_or_fail(path: Path) -> Image.Image:
    """For single-image commands: the problem becomes a one-line user error."""
    try:
        return load_image(path)
    except ImageProblem as problem:
        raise UserError(problem.detail) from None
