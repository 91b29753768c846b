"""A DICOM series read with who it is: headers with pydicom, pixels with SimpleITK (GDCM).

A folder may hold several series; :func:`find_series` reads every file's header (never its
pixels), groups the images by SeriesInstanceUID, picks the one asked for or the one with most
slices, and checks that it is one volume before anything reads a pixel:

* every file reads as DICOM (a garbage or non-DICOM file is named);
* every slice has the same orientation, size and pixel spacing, and one image per file;
* the slices are evenly spaced along the slice normal ``n = row x column`` (within
  :data:`SPACING_TOLERANCE`), so that a missing slice is refused by naming the gap instead of
  being read with a stretched spacing, and they are not sheared (no gantry tilt).

:func:`read_series_image` then reads the pixels with SimpleITK, the files in slice order
(ascending along ``n``), so that slice ``k`` of the image is ``files[k]``; a file that GDCM cannot
decode (truncated) is named. :class:`SeriesIdentity` carries the study, patient and instance UIDs
for the reports and for DICOM outputs that reference the series.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from .errors import UserInputError

__all__ = ["SPACING_TOLERANCE", "DicomSeries", "SeriesIdentity", "find_series", "read_dicom_series",
           "read_series_image", "series_from_files"]

log = logging.getLogger(__name__)

SPACING_TOLERANCE = (0.01, 0.01)
"""``(mm, fraction)``: a gap between neighbouring slices may differ from the median gap by the
larger of 0.01 mm and 1 % of it (what the 16-character decimal strings of DICOM positions
round to), and the slice stack may shear sideways by as much over its whole length."""


@dataclass(frozen=True)
class SeriesIdentity:
    """Who a DICOM series is: its UIDs, the study and patient, and how it was made.

    ``sop_instance_uids`` are in slice order (ascending along the slice normal), one per file;
    UIDs are ``""`` where the files leave them empty (anonymised series).
    """

    series_instance_uid: str
    study_instance_uid: str
    frame_of_reference_uid: str
    sop_class_uid: str
    sop_instance_uids: tuple[str, ...]
    patient_id: str
    patient_name: str
    study_date: str
    modality: str
    manufacturer: str
    slice_thickness_mm: float | None
    convolution_kernel: str

    @property
    def missing_uids(self) -> list[str]:
        """The identifying UIDs the files leave empty: a DICOM output could not reference them."""
        missing = [name for name, value in (("SeriesInstanceUID", self.series_instance_uid),
                                            ("StudyInstanceUID", self.study_instance_uid),
                                            ("FrameOfReferenceUID", self.frame_of_reference_uid),
                                            ("SOPClassUID", self.sop_class_uid)) if not value]
        return missing + (["SOPInstanceUID"] if not all(self.sop_instance_uids) else [])

    def to_dict(self) -> dict:
        """JSON-ready fields, the instance UIDs as a list."""
        record = asdict(self)
        record["sop_instance_uids"] = list(self.sop_instance_uids)
        return record


@dataclass(frozen=True)
class DicomSeries:
    """One checked series of a folder: its files in slice order and its identity."""

    folder: Path
    files: tuple[Path, ...]
    identity: SeriesIdentity

    @property
    def name(self) -> str:
        """The SeriesInstanceUID, or the folder's name for a series without one."""
        return self.identity.series_instance_uid or self.folder.name


def _text(dataset: pydicom.Dataset, keyword: str) -> str:
    value = dataset.get(keyword, "")
    if isinstance(value, pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return "" if value is None else str(value).strip()


def _read_header(path: Path) -> pydicom.Dataset | None:
    """The file's header; ``None`` for a DICOM file that is not an image (SR, DICOMDIR...)."""
    dataset: pydicom.Dataset
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        try:  # DICOM without the preamble (old ACR-NEMA style files) still has its UIDs
            forced: pydicom.Dataset | None = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:
            forced = None
        if forced is None or ("SOPClassUID" not in forced and "SeriesInstanceUID" not in forced):
            raise UserInputError(f"{path}: the file is not DICOM; a DICOM series folder must hold only "
                                 "DICOM files.") from None
        dataset = forced
    except Exception as error:
        raise UserInputError(f"{path}: the DICOM header could not be read ({type(error).__name__}).") from None
    return dataset if "Rows" in dataset and "Columns" in dataset else None


def _headers(folder: Path) -> dict[Path, pydicom.Dataset]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    headers = {}
    for path in files:
        dataset = _read_header(path)
        if dataset is not None:
            headers[path] = dataset
    return headers


def _float_list(dataset: pydicom.Dataset, keyword: str, count: int, path: Path) -> np.ndarray:
    try:
        values = np.asarray([float(v) for v in dataset[keyword].value], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        values = np.zeros(0)
    if values.shape != (count,) or not np.all(np.isfinite(values)):
        raise UserInputError(f"{path}: the image has no valid {keyword}, so its place in the volume is unknown.")
    return values


def _check_slices(files: list[Path], headers: dict[Path, pydicom.Dataset]) -> list[Path]:
    """Sort the files along the slice normal and check that they make one evenly spaced volume.

    Returns the files in slice order.
    """
    first = headers[files[0]]
    orientation = _float_list(first, "ImageOrientationPatient", 6, files[0])
    row, column = orientation[:3], orientation[3:]
    normal = np.cross(row, column)
    pixel_spacing = _float_list(first, "PixelSpacing", 2, files[0])
    shape = (first.Rows, first.Columns)
    positions = []
    for path in files:
        header = headers[path]
        if int(header.get("NumberOfFrames", 1) or 1) > 1:
            raise UserInputError(f"{path}: the file holds a multi-frame image; this reader takes series of "
                                 "single-frame images.")
        if not np.allclose(_float_list(header, "ImageOrientationPatient", 6, path), orientation, atol=1e-4):
            raise UserInputError(f"{path}: the slice is oriented differently from {files[0].name}, so the "
                                 "series is not one volume.")
        if (header.Rows, header.Columns) != shape or not np.allclose(
                _float_list(header, "PixelSpacing", 2, path), pixel_spacing, rtol=1e-4):
            raise UserInputError(f"{path}: the slice's size or pixel spacing differs from {files[0].name}, "
                                 "so the series is not one volume.")
        positions.append(_float_list(header, "ImagePositionPatient", 3, path))
    positions_mm = np.asarray(positions)
    heights = positions_mm @ normal
    order = np.argsort(heights, kind="stable")
    files, heights, positions_mm = [files[i] for i in order], heights[order], positions_mm[order]
    if len(files) < 2:
        return files
    gaps = np.diff(heights)
    same = np.flatnonzero(gaps < SPACING_TOLERANCE[0])
    if same.size:
        k = int(same[0])
        raise UserInputError(f"{files[k]}: the slice lies at the same position as {files[k + 1].name}; the "
                             "series holds two images of one place (choose one acquisition).")
    gap = float(np.median(gaps))
    tolerance = max(SPACING_TOLERANCE[0], SPACING_TOLERANCE[1] * gap)
    uneven = np.flatnonzero(np.abs(gaps - gap) > tolerance)
    if uneven.size:
        k = int(uneven[np.argmax(np.abs(gaps[uneven] - gap))])
        raise UserInputError(
            f"{files[0].parent}: the slices are not evenly spaced: {gap:.3f} mm apart but {gaps[k]:.3f} mm "
            f"between {files[k].name} and {files[k + 1].name} ({uneven.size} uneven gap"
            f"{'s' if uneven.size > 1 else ''}), so a slice is missing or the series is not one volume.")
    shift = positions_mm[-1] - positions_mm[0]
    shear = float(np.linalg.norm(shift - (shift @ normal) * normal))
    if shear > tolerance:
        raise UserInputError(f"{files[0].parent}: the slices are sheared by {shear:.2f} mm along the stack "
                             "(gantry tilt); resample the series to an orthogonal grid first.")
    return files


def _identity(files: Sequence[Path], headers: dict[Path, pydicom.Dataset]) -> SeriesIdentity:
    first = headers[files[0]]
    thickness = _text(first, "SliceThickness")
    try:
        thickness_mm = float(thickness) if thickness else None
    except ValueError:
        thickness_mm = None
    return SeriesIdentity(
        series_instance_uid=_text(first, "SeriesInstanceUID"),
        study_instance_uid=_text(first, "StudyInstanceUID"),
        frame_of_reference_uid=_text(first, "FrameOfReferenceUID"),
        sop_class_uid=_text(first, "SOPClassUID"),
        sop_instance_uids=tuple(_text(headers[path], "SOPInstanceUID") for path in files),
        patient_id=_text(first, "PatientID"), patient_name=_text(first, "PatientName"),
        study_date=_text(first, "StudyDate"), modality=_text(first, "Modality"),
        manufacturer=_text(first, "Manufacturer"), slice_thickness_mm=thickness_mm,
        convolution_kernel=_text(first, "ConvolutionKernel"))


def find_series(folder: str | os.PathLike, series_uid: str | None = None) -> DicomSeries:
    """Read the headers of ``folder``'s files and pick one checked series (see the module's doc).

    Args:
        folder: a folder of DICOM files (not searched below).
        series_uid: the SeriesInstanceUID to read; by default the series with the most slices
            (the others are logged).

    Raises:
        UserInputError: no image series, an unknown ``series_uid``, a file that does not read, or
            slices that do not make one evenly spaced volume; one sentence naming the file or gap.
    """
    folder = Path(folder)
    headers = _headers(folder)
    by_series: dict[str, list[Path]] = {}
    for path, header in headers.items():
        by_series.setdefault(_text(header, "SeriesInstanceUID"), []).append(path)
    if not by_series:
        raise UserInputError(f"{folder}: the folder holds neither an image file nor a DICOM series.")
    if series_uid is not None and series_uid not in by_series:
        raise UserInputError(f"{folder}: the folder has no DICOM series {series_uid} (it holds "
                             f"{', '.join(uid or 'one without a UID' for uid in by_series)}).")
    chosen = series_uid if series_uid is not None else max(by_series, key=lambda uid: len(by_series[uid]))
    for uid, paths in by_series.items():
        if uid != chosen:
            log.info("%s: also holds DICOM series %s (%d images), not read; choose it with --series",
                     folder, uid or "without a UID", len(paths))
    files = _check_slices(by_series[chosen], headers)
    return DicomSeries(folder, tuple(files), _identity(files, headers))


def series_from_files(files: Sequence[str | os.PathLike]) -> DicomSeries:
    """The checked series of exactly these files (for example the instances of a volume that
    Slicer's DICOM database holds), in slice order; the same checks as :func:`find_series`.

    Raises:
        UserInputError: no files, a file that does not read or is no image, files of several
            series, or slices that do not make one evenly spaced volume.
    """
    paths = [Path(f) for f in files]
    if not paths:
        raise UserInputError("no DICOM files were given for the series.")
    headers = {}
    for path in paths:
        header = _read_header(path)
        if header is None:
            raise UserInputError(f"{path}: the DICOM file holds no image.")
        headers[path] = header
    uids = sorted({_text(header, "SeriesInstanceUID") for header in headers.values()})
    if len(uids) > 1:
        raise UserInputError(f"{paths[0].parent}: the files belong to {len(uids)} series ({', '.join(uids)}), "
                             "not one.")
    ordered = _check_slices(paths, headers)
    return DicomSeries(ordered[0].parent, tuple(ordered), _identity(ordered, headers))


def _unreadable_file(files: Sequence[Path]) -> Path | None:
    for path in files:
        try:
            sitk.ReadImage(str(path))
        except RuntimeError:
            return path
    return None


def read_series_image(series: DicomSeries) -> sitk.Image:
    """The series' pixels (as stored, rescaled to HU by GDCM) with their world geometry.

    Raises:
        UserInputError: a file whose pixels do not decode (truncated, corrupt), named.
    """
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(path) for path in series.files])
    try:
        image = reader.Execute()
    except RuntimeError:
        bad = _unreadable_file(series.files)
        where = f"{bad}: the image" if bad else f"{series.folder}: the series {series.name}"
        raise UserInputError(f"{where} could not be decoded (a truncated or corrupt file).") from None
    if image.GetSize()[2] != len(series.files):
        raise UserInputError(f"{series.folder}: {image.GetSize()[2]} slices were decoded from "
                             f"{len(series.files)} files.")
    return image


def read_dicom_series(folder: str | os.PathLike, series_uid: str | None = None) -> tuple[sitk.Image, DicomSeries]:
    """:func:`find_series` then :func:`read_series_image`: the image and the series it came from."""
    series = find_series(folder, series_uid)
    return read_series_image(series), series
