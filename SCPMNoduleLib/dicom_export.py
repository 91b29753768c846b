"""Nodules out as DICOM, for a PACS or Slicer: a TID 1500 Structured Report and a Segmentation.

Both are written with highdicom and reference the DICOM series the nodules were found in (its
study, frame of reference and instances), so they can only be made for a series whose files carry
those UIDs (:func:`check_referable`).

* **SR** (Comprehensive 3D SR, TID 1500 *Imaging Measurement Report*): one measurement group
  (TID 1410) per nodule with its tracking identifier (``N1``...) and tracking UID, its centre as a
  SCOORD3D ``POINT`` in the series' frame of reference (geometric purpose *Center*), its diameter
  (SCT *Diameter*, mm), the model's probability (DCM *Certainty of Finding*, no units, 0-1) and,
  after a review, qualitative evaluations in this project's private coding scheme ``99SCPM``:
  exactly one *Reader review status* (pending, accepted, rejected or added: the reader's decision
  on the finding) and one *Reader correction* per correction the reader made to a detection
  (moved: the centre is the reader's; resized: the diameter is the reader's). A decision and the
  corrections are independent facts (a detection can be accepted, moved and resized), so they are
  two concepts rather than one status folding several facts into one code: a PACS reader sees
  "Reader review status: Accepted" and "Reader correction: Resized" side by side. The observer is
  the algorithm (device), named with its version.
* **SEG** (binary Segmentation): one segment per nodule, the voxels of the source grid whose
  centre lies within the nodule's sphere (the nearest voxel for a sphere that holds none; a nodule
  outside the images is refused), coded
  SCT *Morphologically abnormal structure* / *Nodule* in the *Lung*.

Spheres are drawn from the source images' own geometry (Image Position and Orientation, Pixel
Spacing): frame ``f`` pixel ``(r, c)`` lies at ``P_f + c * dx * u + r * dy * v`` (``u``, ``v``
the row and column direction cosines, ``dx, dy`` = Pixel Spacing ``[1], [0]``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from .detection import Detection
from .dicom_series import DicomSeries
from .errors import UserInputError
from .io import atomic_write

__all__ = ["PRIVATE_SCHEME", "REVIEW_CORRECTIONS", "REVIEW_STATUSES", "Algorithm", "ReportedNodule", "check_referable",
           "nodules_from_detections", "read_sources", "sphere_masks", "write_measurement_report",
           "write_segmentation"]

PRIVATE_SCHEME = "99SCPM"
"""The coding scheme of the review status (DICOM's ``99`` prefix marks a private scheme)."""
REVIEW_STATUSES = ("pending", "accepted", "rejected", "added")
"""The reader's decision on a nodule (one per reviewed nodule)."""
REVIEW_CORRECTIONS = ("moved", "resized")
"""What the reader corrected on a detection (any of them, in this order)."""
_REVIEW_STATUS_NAME = Code("review-status", PRIVATE_SCHEME, "Reader review status")
_REVIEW_CORRECTION_NAME = Code("review-correction", PRIVATE_SCHEME, "Reader correction")
_NO_UNITS = Code("1", "UCUM", "no units")


@dataclass(frozen=True)
class Algorithm:
    """The software that found the nodules: its name and version (the SR's observer, the SEG's
    algorithm identification)."""

    name: str
    version: str


@dataclass(frozen=True)
class ReportedNodule:
    """One nodule as the DICOM outputs carry it: label (tracking identifier), centre in world LPS
    mm, diameter in mm, the model's probability (``None`` for one a reader added without one), the
    review status (``None`` before a review; else one of :data:`REVIEW_STATUSES`) and the reader's
    corrections (members of :data:`REVIEW_CORRECTIONS`)."""

    label: str
    center_xyz_mm: tuple[float, float, float]
    diameter_mm: float
    probability: float | None = None
    status: str | None = None
    corrections: tuple[str, ...] = ()


def nodules_from_detections(detections: Sequence[Detection]) -> list[ReportedNodule]:
    """The detector's output, labelled ``N1, N2...`` in order (as the markups are), unreviewed."""
    return [ReportedNodule(f"N{rank + 1}", (float(x), float(y), float(z)), float(d.diameter_mm), float(d.probability))
            for rank, d in enumerate(detections) for x, y, z in [d.center_xyz_mm]]


def check_referable(series: DicomSeries | None, source: str | os.PathLike) -> DicomSeries:
    """The series, if DICOM outputs can reference it; else one sentence naming ``source``."""
    if series is None:
        raise UserInputError(f"{source}: DICOM outputs (sr, seg) need a DICOM series as input, and this is an "
                             "image file, so they would claim a source they do not have.")
    missing = series.identity.missing_uids
    if missing:
        raise UserInputError(f"{source}: the DICOM series has no {', '.join(missing)} (anonymised without "
                             "UIDs), so DICOM outputs (sr, seg) could not reference it.")
    return series


def read_sources(files: Sequence[str | os.PathLike]) -> list[pydicom.Dataset]:
    """The source images' headers (no pixels), in the given (slice) order."""
    return [pydicom.dcmread(path, stop_before_pixels=True) for path in files]


def _geometry(sources: Sequence[pydicom.Dataset]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    orientation = np.asarray([float(v) for v in sources[0].ImageOrientationPatient])
    u, v = orientation[:3], orientation[3:]
    dy, dx = (float(s) for s in sources[0].PixelSpacing)
    positions = np.asarray([[float(p) for p in ds.ImagePositionPatient] for ds in sources])
    return positions, u * dx, v * dy, np.cross(u, v)


def sphere_masks(sources: Sequence[pydicom.Dataset], nodules: Sequence[ReportedNodule]) -> np.ndarray:
    """``(frames, rows, columns, nodules)`` bool: which source pixels lie within each sphere.

    A sphere too small to hold a pixel centre marks the pixel nearest its centre.

    Raises:
        UserInputError: a nodule outside the images (its centre more than a slice gap away from
            every slice, or beside them).
    """
    positions, step_column, step_row, normal = _geometry(sources)
    rows, columns = int(sources[0].Rows), int(sources[0].Columns)
    masks = np.zeros((len(sources), rows, columns, len(nodules)), dtype=bool)
    r_index, c_index = np.arange(rows, dtype=np.float64), np.arange(columns, dtype=np.float64)
    max_gap = float(np.max(np.abs(np.diff(np.sort(positions @ normal))), initial=0.0))
    for k, nodule in enumerate(nodules):
        offsets = positions - np.asarray(nodule.center_xyz_mm)
        radius2 = (nodule.diameter_mm / 2) ** 2
        # |offset + c * step_column + r * step_row|^2 with orthogonal steps, expanded per frame
        along_u = offsets @ step_column / (step_column @ step_column)
        along_v = offsets @ step_row / (step_row @ step_row)
        height = offsets @ normal
        for frame in np.flatnonzero(height ** 2 <= radius2):
            f = int(frame)
            du = (along_u[f] + c_index) ** 2 * (step_column @ step_column)
            dv = (along_v[f] + r_index) ** 2 * (step_row @ step_row)
            masks[f, :, :, k] = dv[:, None] + du[None, :] + height[f] ** 2 <= radius2
        if not masks[..., k].any():
            f = int(np.argmin(np.abs(height)))
            r, c = int(np.rint(-along_v[f])), int(np.rint(-along_u[f]))
            if not (0 <= r < rows and 0 <= c < columns and abs(height[f]) <= max_gap):
                raise UserInputError(f"nodule {nodule.label} at {tuple(round(v, 1) for v in nodule.center_xyz_mm)} "
                                     "mm lies outside the series' images, so a Segmentation cannot hold it.")
            masks[f, r, c, k] = True
    return masks


def _save(dataset: pydicom.Dataset, path: str | os.PathLike) -> None:
    with atomic_write(path, "wb") as handle:
        dataset.save_as(handle, enforce_file_format=True)


def _observer(algorithm: Algorithm) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=hd.UID(), name=algorithm.name, manufacturer_name="scpm-nodule", model_name=algorithm.version)
    return hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))


def _measurement_group(nodule: ReportedNodule, frame_of_reference_uid: str,
                       algorithm: Algorithm) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    measurements = [hd.sr.Measurement(name=codes.SCT.Diameter, value=nodule.diameter_mm,
                                      unit=codes.UCUM.Millimeter)]
    if nodule.probability is not None:
        measurements.append(hd.sr.Measurement(name=codes.DCM.CertaintyOfFinding, value=nodule.probability,
                                              unit=_NO_UNITS))
    evaluations = []
    for name, values, allowed in ((_REVIEW_STATUS_NAME, [nodule.status] if nodule.status is not None else [],
                                   REVIEW_STATUSES),
                                  (_REVIEW_CORRECTION_NAME, nodule.corrections, REVIEW_CORRECTIONS)):
        for value in values:
            if value not in allowed:
                raise ValueError(f"{name.meaning.lower()} {value!r} is not one of {', '.join(allowed)}")
            evaluations.append(hd.sr.QualitativeEvaluation(
                name=name, value=Code(value, PRIVATE_SCHEME, value.capitalize())))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=nodule.label),
        referenced_region=hd.sr.ImageRegion3D(
            graphic_type=hd.sr.GraphicTypeValues3D.POINT,
            graphic_data=np.asarray([nodule.center_xyz_mm], dtype=np.float64),
            frame_of_reference_uid=frame_of_reference_uid),
        geometric_purpose=codes.DCM.Center,
        finding_type=codes.SCT.Nodule,
        finding_category=codes.SCT.MorphologicallyAbnormalStructure,
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.Lung)],
        algorithm_id=hd.sr.AlgorithmIdentification(name=algorithm.name, version=algorithm.version),
        measurements=measurements, qualitative_evaluations=evaluations or None)


def write_measurement_report(path: str | os.PathLike, sources: Sequence[pydicom.Dataset],
                             nodules: Sequence[ReportedNodule], algorithm: Algorithm,
                             series_number: int = 9001) -> pydicom.Dataset:
    """Write the TID 1500 Comprehensive 3D SR of ``nodules`` on the series of ``sources``
    (see the module's doc), atomically; returns the dataset written."""
    frame_of_reference_uid = str(sources[0].FrameOfReferenceUID)
    report = hd.sr.MeasurementReport(
        observation_context=_observer(algorithm),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=[_measurement_group(n, frame_of_reference_uid, algorithm) for n in nodules],
        title=codes.DCM.ImagingMeasurementReport)
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(sources), content=report[0], series_instance_uid=hd.UID(), series_number=series_number,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="scpm-nodule",
        series_description=f"{algorithm.name} nodules", is_complete=True)
    _save(sr, path)
    return sr


def write_segmentation(path: str | os.PathLike, sources: Sequence[pydicom.Dataset],
                       nodules: Sequence[ReportedNodule], algorithm: Algorithm,
                       series_number: int = 9002) -> pydicom.Dataset:
    """Write a binary SEG with one segment per nodule (its sphere on the source grid), atomically.

    Raises:
        ValueError: no nodules (a Segmentation holds at least one segment).
    """
    if not nodules:
        raise ValueError("a Segmentation needs at least one nodule")
    algorithm_id = hd.AlgorithmIdentificationSequence(
        name=algorithm.name, version=algorithm.version, family=codes.cid7162.ArtificialIntelligence)
    segments = [hd.seg.SegmentDescription(
        segment_number=number, segment_label=nodule.label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Nodule, anatomic_regions=[codes.SCT.Lung],
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm_id,
        tracking_uid=hd.UID(), tracking_id=nodule.label) for number, nodule in enumerate(nodules, 1)]
    seg = hd.seg.Segmentation(
        source_images=list(sources), pixel_array=sphere_masks(sources, nodules),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=segments,
        series_instance_uid=hd.UID(), series_number=series_number, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="scpm-nodule", manufacturer_model_name=algorithm.name, software_versions=algorithm.version,
        device_serial_number="0", series_description=f"{algorithm.name} nodules")
    _save(seg, path)
    return seg

