"""Reading scans: every format, DICOM series choice, and one clear sentence for each bad input."""

import numpy as np
import pytest
import SimpleITK as sitk

from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.io import list_scans, read_scan, scan_name


def _volume(shape_zyx=(5, 6, 7), seed=0) -> sitk.Image:
    values = np.random.default_rng(seed).integers(-1000, 400, shape_zyx).astype(np.int16)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((-100.0, 20.0, -300.0))
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, -1))
    return image


@pytest.mark.parametrize("suffix", [".mhd", ".mha", ".nrrd", ".nii", ".nii.gz"])
def test_each_format_round_trips_values_and_geometry(tmp_path, suffix):
    image = _volume()
    path = tmp_path / f"1.2.840.5{suffix}"
    sitk.WriteImage(image, str(path))
    again = read_scan(path)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(again), sitk.GetArrayViewFromImage(image))
    np.testing.assert_allclose(again.GetSpacing(), image.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(again.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(again.GetDirection(), image.GetDirection(), atol=1e-6)
    assert scan_name(path) == "1.2.840.5"


def _write_dicom_series(folder, uid, n_slices, seed):
    values = np.random.default_rng(seed).integers(-1000, 400, (n_slices, 8, 9)).astype(np.int16)
    folder.mkdir(exist_ok=True)
    for k in range(n_slices):
        slice_image = sitk.GetImageFromArray(values[k:k + 1])
        slice_image.SetSpacing((0.7, 0.8, 1.0))
        for tag, value in {
            "0020|000e": uid, "0020|000d": "1.2.3", "0008|0060": "CT",
            "0020|0032": f"-10\\-20\\{2.5 * k}", "0020|0013": str(k + 1),
            "0020|0037": "1\\0\\0\\0\\1\\0", "0008|0018": f"{uid}.{k}",
        }.items():
            slice_image.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"{uid}_{k}.dcm"))
        writer.Execute(slice_image)
    return values


def test_dicom_folder_takes_the_largest_series_or_the_named_one(tmp_path):
    large = _write_dicom_series(tmp_path, "1.2.3.9", 6, seed=1)
    small = _write_dicom_series(tmp_path, "1.2.3.7", 3, seed=2)
    image = read_scan(tmp_path)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), large)
    np.testing.assert_allclose(image.GetSpacing(), (0.7, 0.8, 2.5), rtol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_scan(tmp_path, "1.2.3.7")), small)
    with pytest.raises(UserInputError, match="no DICOM series 4.5"):
        read_scan(tmp_path, "4.5")


def test_list_scans_expands_folders_and_keeps_files(tmp_path):
    (tmp_path / "subset0").mkdir()
    for name in ("b.mhd", "a.nii.gz"):
        sitk.WriteImage(_volume(), str(tmp_path / "subset0" / name))
    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    found = list_scans([tmp_path, tmp_path / "missing.mhd"])
    assert [p.name for p in found] == ["a.nii.gz", "b.mhd", "missing.mhd"]


def _write(tmp_path, name, image):
    path = tmp_path / name
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "absent.mhd", "absent.mhd: file not found."),
        (lambda d: (d / "junk.nrrd").write_bytes(b"not an image") and d / "junk.nrrd",
         "junk.nrrd: the file could not be read as an image"),
        (lambda d: _write(d, "flat.nrrd", sitk.Image(8, 8, sitk.sitkInt16) + 1),
         "flat.nrrd: the image is 2-D"),
        (lambda d: _write(d, "time.nii", sitk.GetImageFromArray(np.arange(16.0).reshape(2, 2, 2, 2),
                                                                isVector=False)),
         "time.nii: the image is 4-D"),
        (lambda d: _write(d, "blank.mha", sitk.Image(6, 6, 6, sitk.sitkInt16)),
         "blank.mha: the image is empty"),
        (lambda d: _write(d, "nan.mha", sitk.GetImageFromArray(
            np.where(np.arange(64.0).reshape(4, 4, 4) == 5, np.nan, np.arange(64.0).reshape(4, 4, 4)))),
         "nan.mha: the image holds NaN"),
        (lambda d: _write(d, "rgb.mha", sitk.GetImageFromArray(
            np.arange(192, dtype=np.uint8).reshape(4, 4, 4, 3), isVector=True)),
         "rgb.mha: the image has 3 components"),
        (lambda d: d, "holds neither an image file nor a DICOM series"),
    ],
)
def test_bad_scans_are_refused_with_one_sentence(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(UserInputError) as caught:
        read_scan(path)
    text = str(caught.value)
    assert message in text
    assert "\n" not in text and text.count(". ") == 0
