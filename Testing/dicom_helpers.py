"""Test data: a SimpleITK volume written as a single-frame CT Image Storage series with pydicom.

Each slice ``k`` of the image becomes one file whose Image Position (Patient) is the world position
of voxel ``(0, 0, k)`` and whose Image Orientation (Patient) is the first two columns of the
image's direction, so the series has the image's geometry (flipped and oblique ones included), and
real UIDs from :func:`pydicom.uid.generate_uid`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


@dataclass(frozen=True)
class WrittenSeries:
    folder: Path
    files: list[Path]
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str


def write_ct_series(image: sitk.Image, folder: Path, study_uid: str | None = None, series_number: int = 1,
                    patient_id: str = "PHANTOM-1", uids: bool = True) -> WrittenSeries:
    """Write ``image`` (int16 HU) as ``folder/slice_###.dcm``; ``uids=False`` leaves the UIDs empty
    (as an anonymiser that blanks them does)."""
    folder.mkdir(parents=True, exist_ok=True)
    values = sitk.GetArrayFromImage(image).astype(np.int16)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    study_uid = study_uid or generate_uid()
    series_uid, frame_uid = generate_uid(), generate_uid()
    files = []
    for k in range(values.shape[0]):
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid() if uids else ""
        ds.StudyInstanceUID = study_uid if uids else ""
        ds.SeriesInstanceUID = series_uid if uids else ""
        ds.FrameOfReferenceUID = frame_uid if uids else ""
        ds.PatientName = "Phantom^Chest"
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240102", "101500", "1", "A1"
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "CT", "Phantom", series_number, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ConvolutionKernel = "B30f"
        ds.SliceThickness = f"{image.GetSpacing()[2]:.6g}"
        ds.KVP = "120"
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*direction[:, 0], *direction[:, 1])]
        ds.PixelSpacing = [f"{image.GetSpacing()[1]:.6g}", f"{image.GetSpacing()[0]:.6g}"]
        ds.Rows, ds.Columns = values.shape[1], values.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
        ds.PixelData = values[k].tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID or generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"slice_{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return WrittenSeries(folder, files, series_uid, study_uid, frame_uid)
