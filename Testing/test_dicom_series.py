"""Reading a DICOM series: its identity, the same geometry as the image it was made from (axial,
flipped, oblique), the series choice, and one sentence for a missing, truncated or garbage slice."""

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_helpers import write_ct_series

from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.io import load_scan, scan_name
from SCPMNoduleLib.phantom import make_phantom

SHARED_REALCT_DICOM = Path("/work/shared/realct/totalsegmentator-example/ct_dicom")


def _small_volume(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), n_slices=6, seed=0) -> sitk.Image:
    values = np.random.default_rng(seed).integers(-1000, 400, (n_slices, 10, 12)).astype(np.int16)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((-30.0, 20.0, -300.0))
    image.SetDirection(direction)
    return image


def _same_world_volume(read: sitk.Image, written: sitk.Image) -> None:
    """The two images hold the same values at the same world points (their index orders may differ)."""
    resampled = sitk.Resample(read, written, sitk.Transform(), sitk.sitkNearestNeighbor, -5000)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(resampled), sitk.GetArrayViewFromImage(written))


@pytest.mark.parametrize("direction", [
    (1, 0, 0, 0, 1, 0, 0, 0, 1),
    (1, 0, 0, 0, 1, 0, 0, 0, -1),  # slices stored feet-first: left-handed, read back in reverse order
    (-1, 0, 0, 0, -1, 0, 0, 0, 1),
], ids=["axial", "z-flipped", "xy-flipped"])
def test_series_reads_back_with_the_written_geometry_and_identity(tmp_path, direction):
    image = _small_volume(direction)
    written = write_ct_series(image, tmp_path / "series")
    scan = load_scan(written.folder)
    _same_world_volume(scan.image, image)
    identity = scan.dicom.identity
    assert scan.name == identity.series_instance_uid == written.series_uid == scan_name(written.folder)
    assert identity.study_instance_uid == written.study_uid
    assert identity.frame_of_reference_uid == written.frame_of_reference_uid
    assert (identity.patient_id, identity.modality, identity.manufacturer, identity.convolution_kernel) == (
        "PHANTOM-1", "CT", "Phantom", "B30f")
    assert identity.slice_thickness_mm == pytest.approx(2.5) and identity.study_date == "20240102"
    assert len(set(identity.sop_instance_uids)) == 6 and identity.missing_uids == []
    # slice k of the image is files[k], whose instance UID is sop_instance_uids[k]
    for k, path in enumerate(scan.dicom.files):
        origin = sitk.ReadImage(str(path)).GetOrigin()
        np.testing.assert_allclose(scan.image.TransformIndexToPhysicalPoint((0, 0, k)), origin, atol=1e-4)


def test_oblique_phantom_series_has_the_phantoms_geometry(tmp_path):
    image, _ = make_phantom(9, "small", oblique=True)
    written = write_ct_series(image, tmp_path / "oblique")
    read = load_scan(written.folder).image
    np.testing.assert_allclose(np.abs(np.linalg.det(np.reshape(read.GetDirection(), (3, 3)))), 1, atol=1e-6)
    _same_world_volume(read, image)


def test_a_folder_of_several_series_reads_the_largest_or_the_named_one(tmp_path, caplog):
    large = write_ct_series(_small_volume(n_slices=6, seed=1), tmp_path, series_number=1)
    small = write_ct_series(_small_volume(n_slices=4, seed=2), tmp_path / "x", series_number=2)
    for path in small.files:
        path.rename(tmp_path / f"small_{path.name}")
    caplog.set_level("INFO")
    assert load_scan(tmp_path).name == large.series_uid
    assert small.series_uid in caplog.text
    assert load_scan(tmp_path, small.series_uid).image.GetSize()[2] == 4
    with pytest.raises(UserInputError, match="no DICOM series 1.2.3.4"):
        load_scan(tmp_path, "1.2.3.4")


def _one_sentence(error: UserInputError) -> str:
    text = str(error)
    assert "\n" not in text and text.endswith(".") and "Traceback" not in text
    return text


def test_a_missing_slice_is_refused_naming_the_gap(tmp_path):
    written = write_ct_series(_small_volume(n_slices=8), tmp_path / "s")
    written.files[4].unlink()
    with pytest.raises(UserInputError) as caught:
        load_scan(written.folder)
    text = _one_sentence(caught.value)
    assert "not evenly spaced: 2.500 mm apart but 5.000 mm between slice_003.dcm and slice_005.dcm" in text


def test_a_truncated_slice_is_refused_naming_the_file(tmp_path):
    written = write_ct_series(_small_volume(n_slices=8), tmp_path / "s")
    data = written.files[5].read_bytes()
    written.files[5].write_bytes(data[: len(data) - 100])
    with pytest.raises(UserInputError) as caught:
        load_scan(written.folder)
    assert _one_sentence(caught.value).startswith(f"{written.files[5]}: the image could not be decoded")


def test_a_garbage_file_is_refused_naming_it(tmp_path):
    written = write_ct_series(_small_volume(n_slices=8), tmp_path / "s")
    written.files[2].write_bytes(os.urandom(4000))
    with pytest.raises(UserInputError) as caught:
        load_scan(written.folder)
    assert _one_sentence(caught.value) == f"{written.files[2]}: the file is not DICOM; a DICOM series folder " \
                                          "must hold only DICOM files."


def test_duplicate_and_sheared_slices_are_refused(tmp_path):
    written = write_ct_series(_small_volume(n_slices=5), tmp_path / "dup")
    extra = tmp_path / "dup" / "copy.dcm"
    dataset = pydicom.dcmread(written.files[2])
    dataset.SOPInstanceUID = pydicom.uid.generate_uid()
    dataset.save_as(extra)
    with pytest.raises(UserInputError, match="lies at the same position as"):
        load_scan(written.folder)
    tilted = write_ct_series(_small_volume(n_slices=5), tmp_path / "tilt")
    for k, path in enumerate(tilted.files):
        dataset = pydicom.dcmread(path)
        x, y, z = (float(v) for v in dataset.ImagePositionPatient)
        dataset.ImagePositionPatient = [x, y + 0.5 * k, z]
        dataset.save_as(path)
    with pytest.raises(UserInputError, match="sheared by 2.00 mm"):
        load_scan(tilted.folder)


def test_a_series_without_uids_reads_under_the_folders_name(tmp_path):
    written = write_ct_series(_small_volume(), tmp_path / "anonymous", uids=False)
    scan = load_scan(written.folder)
    assert scan.name == "anonymous"
    assert scan.dicom.identity.missing_uids == ["SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID",
                                                "SOPInstanceUID"]


@pytest.mark.skipif(not SHARED_REALCT_DICOM.is_dir(), reason="the shared real CT folder is not on this machine")
def test_the_anonymised_real_series_reads_as_before(tmp_path):
    scan = load_scan(SHARED_REALCT_DICOM)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(SHARED_REALCT_DICOM)))
    before = reader.Execute()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(scan.image), sitk.GetArrayViewFromImage(before))
    np.testing.assert_allclose(scan.image.GetOrigin(), before.GetOrigin(), atol=1e-4)
    assert scan.name == "ct_dicom" and "SeriesInstanceUID" in scan.dicom.identity.missing_uids
