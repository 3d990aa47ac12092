"""Small DICOM files written with pydicom, for the tests that read images through llavarad's reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def secondary_capture(syntax, rows: int, columns: int, photometric: str = "MONOCHROME2", bits: int = 16,
                      stored: int | None = None):
    """A one-frame grayscale Secondary Capture dataset with its file meta, pixel data still to be set."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    stored = bits if stored is None else stored
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, stored, stored - 1, 0
    return ds


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", window=None) -> Path:
    """Uncompressed 12-bit pixels in 16-bit words (a typical radiograph), optionally with a VOI window."""
    from pydicom.uid import ExplicitVRLittleEndian

    ds = secondary_capture(ExplicitVRLittleEndian, *pixels.shape, photometric=photometric, bits=16, stored=12)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path
