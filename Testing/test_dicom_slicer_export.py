"""The Slicer module's DICOM export (logic on slicer-core): a reviewed volume loaded from DICOM
becomes a TID 1500 SR with each nodule's status and corrections and a SEG without the rejected
ones, both on the volume's series; a volume not from DICOM, or from an anonymised series, is
refused in one sentence."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import slicer  # noqa: F401  (slicer-core, from the test extra)
from dicom_helpers import write_ct_series
from test_dicom_export import _dciodvfy, read_report, segment_voxels_world

from SCPMNoduleLib.detection import Detection
from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.io import load_scan
from SCPMNoduleLib.phantom import make_phantom

from slicer_scene import make_scene

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SCPMNodule"))

import SCPMNoduleMRML as logic  # noqa: E402
from SCPMNoduleMRML.exports import dicom_instance_uids, write_review_dicom  # noqa: E402

PHANTOM = make_phantom(9, "small", oblique=True)[0]
MIDDLE = np.asarray(PHANTOM.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in PHANTOM.GetSize()]))
DETECTIONS = [Detection(tuple(MIDDLE + offset), diameter, probability, 0) for offset, diameter, probability in (
    ((10.0, -5.0, 12.0), 8.0, 0.93), ((-7.5, 3.0, 0.0), 5.0, 0.61), ((2.0, 8.0, -10.0), 12.0, 0.35))]


def _dicom_volume(scene, folder: Path, uids: bool = True):
    """A volume as Slicer's DICOM loader leaves it: named, with its instance UIDs recorded."""
    written = write_ct_series(PHANTOM, folder, uids=uids)
    scan = load_scan(folder)
    volume = logic.volume_node_from_image(scene, scan.image, "3: CT chest")
    volume.SetAttribute("DICOM.instanceUIDs", " ".join(scan.dicom.identity.sop_instance_uids))
    return volume, written


def test_reviewed_dicom_volume_exports_sr_with_statuses_and_seg_without_rejected(tmp_path):
    scene = make_scene().scene
    volume, written = _dicom_volume(scene, tmp_path / "series")
    database = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in written.files}
    files = [database[uid] for uid in dicom_instance_uids(volume)][::-1]  # any order
    review = logic.NoduleReview.create(volume, DETECTIONS)
    review.accept(0)
    review.reject(1)
    outputs = write_review_dicom(tmp_path / "out", review, files, "scpm-net-test", "0.1")
    assert set(outputs) == {"sr", "seg"} and Path(outputs["sr"]).name == f"{written.series_uid}.sr.dcm"
    _dciodvfy(Path(outputs["sr"]))
    _dciodvfy(Path(outputs["seg"]))
    report = read_report(Path(outputs["sr"]))
    for nodule in review.nodules():
        entry = report[nodule.label]
        np.testing.assert_allclose(entry["center"], nodule.center_xyz_mm, atol=0.01)
        assert entry["diameter"] == pytest.approx(nodule.diameter_mm)
        assert entry["status"] == nodule.status.value
        assert entry["corrections"] == ()
    assert [report[label]["status"] for label in ("N1", "N2", "N3")] == ["accepted", "rejected", "pending"]
    segments = segment_voxels_world(Path(outputs["seg"]))
    assert sorted(segments) == ["N1", "N3"]
    for nodule in review.nodules():
        if nodule.label in segments:
            distance = np.linalg.norm(segments[nodule.label] - nodule.center_xyz_mm, axis=1)
            assert len(distance) > 10 and distance.max() <= nodule.diameter_mm / 2 + 1e-3


def test_moved_and_resized_nodules_carry_their_corrections_into_the_sr(tmp_path):
    scene = make_scene().scene
    volume, written = _dicom_volume(scene, tmp_path / "series")
    extra = Detection(tuple(MIDDLE + (0.0, -8.0, 5.0)), 6.0, 0.5, 0)
    review = logic.NoduleReview.create(volume, [*DETECTIONS, extra])
    review.move(0, np.add(review.nodule(0).center_ras_mm, (2.0, -1.0, 1.5)))
    review.accept(0)
    review.set_diameter(1, 6.5)
    review.reject(1)
    review.set_diameter(2, 10.0)  # resized, still pending
    review.accept(3)
    added = review.add_nodule(review.nodule(3).center_ras_mm, 4.0)
    review.move(added, np.add(review.nodule(added).center_ras_mm, (0.0, 0.0, -6.0)))
    outputs = write_review_dicom(tmp_path / "out", review, written.files, "scpm-net-test", "0.1")
    _dciodvfy(Path(outputs["sr"]))
    report = read_report(Path(outputs["sr"]))
    assert {label: (entry["status"], entry["corrections"]) for label, entry in report.items()} == {
        "N1": ("accepted", ("moved",)), "N2": ("rejected", ("resized",)), "N3": ("pending", ("resized",)),
        "N4": ("accepted", ()), "N5": ("added", ())}
    for nodule in review.nodules():
        np.testing.assert_allclose(report[nodule.label]["center"], nodule.center_xyz_mm, atol=0.01)
        assert report[nodule.label]["diameter"] == pytest.approx(nodule.diameter_mm)


def test_a_nodule_outside_the_series_is_refused_for_the_segmentation(tmp_path):
    scene = make_scene().scene
    volume, written = _dicom_volume(scene, tmp_path / "series")
    review = logic.NoduleReview.create(volume, [Detection(tuple(MIDDLE + (0, 0, 500.0)), 6.0, 0.5, 0)])
    with pytest.raises(UserInputError, match="nodule N1 at .* lies outside the series' images"):
        write_review_dicom(tmp_path / "out", review, written.files, "scpm-net-test", "0.1")
    assert not list((tmp_path / "out").iterdir())


def test_volumes_without_a_referable_series_are_refused(tmp_path):
    scene = make_scene().scene
    volume, written = _dicom_volume(scene, tmp_path / "anonymous", uids=False)
    review = logic.NoduleReview.create(volume, DETECTIONS)
    with pytest.raises(UserInputError, match="Volume '3: CT chest': the DICOM series has no SeriesInstanceUID"):
        write_review_dicom(tmp_path / "out", review, written.files, "scpm-net-test", "0.1")
    volume.RemoveAttribute("DICOM.instanceUIDs")
    assert dicom_instance_uids(volume) == []
    with pytest.raises(UserInputError, match="was not loaded from DICOM"):
        write_review_dicom(tmp_path / "out", review, [], "scpm-net-test", "0.1")
    assert not (tmp_path / "out").exists()
