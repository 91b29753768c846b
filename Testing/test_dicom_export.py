"""DICOM out: the TID 1500 SR and the SEG of phantom series (axial, flipped, oblique) pass
dciodvfy, read back with highdicom to the nodules' centres and diameters, and their segments lie
on the spheres; ``detect --formats sr,seg`` writes them from a DICOM folder and refuses them,
in one sentence and with nothing written, where no series can be referenced."""

import csv
import json
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import SimpleITK as sitk
from dicom_helpers import write_ct_series
from pydicom.sr.codedict import codes

from SCPMNoduleLib.cli import main
from SCPMNoduleLib.dicom_export import (
    PRIVATE_SCHEME,
    Algorithm,
    ReportedNodule,
    read_sources,
    write_measurement_report,
    write_segmentation,
)
from SCPMNoduleLib.dicom_series import find_series
from SCPMNoduleLib.phantom import make_phantom

ALGORITHM = Algorithm("scpm-net-test", "0.1")
STATUS_NAME = hd.sr.CodedConcept("review-status", PRIVATE_SCHEME, "Reader review status")
CORRECTION_NAME = hd.sr.CodedConcept("review-correction", PRIVATE_SCHEME, "Reader correction")


def _dciodvfy(path: Path) -> None:
    """dicom3tools' validator finds no error (warnings about our private coding scheme are allowed)."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian's dicom3tools) is not installed")
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]
    assert not errors, "\n".join(errors)


def read_report(path: Path) -> dict[str, dict]:
    """label -> centre (LPS mm), diameter, probability, status (at most one), corrections, from the
    SR as highdicom reads it."""
    sr = hd.sr.srread(path)
    found = {}
    for group in sr.content.get_planar_roi_measurement_groups():
        assert group.roi.graphic_type == hd.sr.GraphicTypeValues3D.POINT
        status = group.get_qualitative_evaluations(name=STATUS_NAME)
        probability = group.get_measurements(name=codes.DCM.CertaintyOfFinding)
        assert len(status) <= 1
        found[group.tracking_identifier] = {
            "center": group.roi.value[0], "frame": group.roi.frame_of_reference_uid,
            "diameter": group.get_measurements(name=codes.SCT.Diameter)[0].value,
            "probability": probability[0].value if probability else None,
            "status": status[0].value.value if status else None,
            "corrections": tuple(e.value.value for e in group.get_qualitative_evaluations(name=CORRECTION_NAME))}
    return found


def segment_voxels_world(path: Path) -> dict[str, np.ndarray]:
    """label -> ``(n, 3)`` world LPS mm of the segment's voxels, by the SEG's own geometry."""
    seg = hd.seg.segread(path)
    voxels = {}
    for description in seg.SegmentSequence:
        volume = seg.get_volume(segment_numbers=[description.SegmentNumber], combine_segments=False)
        index = np.argwhere(volume.array[..., 0] > 0)
        voxels[description.SegmentLabel] = (volume.affine[:3, :3] @ index.T).T + volume.affine[:3, 3]
    return voxels


def _sphere_voxels(image: sitk.Image, center, diameter) -> int:
    """Voxels of ``image`` whose centre lies in the sphere, counted with SimpleITK's geometry."""
    size = image.GetSize()
    index = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), -1).reshape(-1, 3)
    direction = np.reshape(image.GetDirection(), (3, 3))
    world = np.asarray(image.GetOrigin()) + (direction @ (index * image.GetSpacing()).T).T
    return int((np.sum((world - center) ** 2, axis=1) <= (diameter / 2) ** 2).sum())


def _flipped(image: sitk.Image) -> sitk.Image:
    image = sitk.Image(image)
    image.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, -1))
    return image


@pytest.mark.parametrize("kind", ["axial", "flipped", "oblique"])
def test_sr_and_seg_carry_every_phantom_nodule(tmp_path, kind):
    image, truth = make_phantom(9, "small", oblique=kind == "oblique")
    image = _flipped(image) if kind == "flipped" else image
    if kind == "flipped":  # the truth is where the flipped image puts the nodules' voxels
        original, _ = make_phantom(9, "small")
        truth = [type(n)(**{**n.__dict__, "center_xyz_mm": image.TransformContinuousIndexToPhysicalPoint(
            original.TransformPhysicalPointToContinuousIndex(n.center_xyz_mm))}) for n in truth]
    written = write_ct_series(image, tmp_path / "series")
    series = find_series(written.folder)
    reviews = [("accepted", ("moved",)), ("rejected", ()), ("added", ()), ("accepted", ("moved", "resized")),
               ("pending", ("resized",)), (None, ())]
    first = {"axial": 0, "flipped": 3, "oblique": 1}[kind]  # the phantom has 3 nodules: every review once
    nodules = [ReportedNodule(f"N{k + 1}", tuple(n.center_xyz_mm), n.diameter_mm, 0.1 + 0.1 * k,
                              *reviews[(first + k) % len(reviews)]) for k, n in enumerate(truth)]
    assert nodules
    sources = read_sources(series.files)
    write_measurement_report(tmp_path / "n.sr.dcm", sources, nodules, ALGORITHM)
    write_segmentation(tmp_path / "n.seg.dcm", sources, nodules, ALGORITHM)
    _dciodvfy(tmp_path / "n.sr.dcm")
    _dciodvfy(tmp_path / "n.seg.dcm")

    report = read_report(tmp_path / "n.sr.dcm")
    assert sorted(report) == sorted(n.label for n in nodules)
    for nodule in nodules:
        found = report[nodule.label]
        np.testing.assert_allclose(found["center"], nodule.center_xyz_mm, atol=0.01)
        assert found["frame"] == written.frame_of_reference_uid
        assert found["diameter"] == pytest.approx(nodule.diameter_mm, abs=1e-6)
        assert found["probability"] == pytest.approx(nodule.probability, abs=1e-6)
        assert (found["status"], found["corrections"]) == (nodule.status, nodule.corrections)

    voxels = segment_voxels_world(tmp_path / "n.seg.dcm")
    for nodule in nodules:
        points = voxels[nodule.label]
        distance = np.linalg.norm(points - nodule.center_xyz_mm, axis=1)
        assert len(points) and distance.max() <= max(nodule.diameter_mm / 2 + 1e-3, 1.0)
        expected = _sphere_voxels(image, nodule.center_xyz_mm, nodule.diameter_mm)
        assert len(points) == max(expected, 1)


def test_sr_references_the_source_series_and_names_the_algorithm(tmp_path):
    image, truth = make_phantom(9, "small")
    written = write_ct_series(image, tmp_path / "series")
    sources = read_sources(find_series(written.folder).files)
    sr = write_measurement_report(tmp_path / "n.sr.dcm", sources, [ReportedNodule("N1", (0, 0, 0), 5.0)],
                                  ALGORITHM)
    assert sr.StudyInstanceUID == written.study_uid and sr.PatientID == "PHANTOM-1"
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == written.series_uid
    assert {item.ReferencedSOPInstanceUID for item in evidence.ReferencedSOPSequence} == {
        ds.SOPInstanceUID for ds in sources}
    text = str(sr)
    assert "scpm-net-test" in text and "0.1" in text


@pytest.mark.parametrize("nodule, message", [
    (ReportedNodule("N1", (0, 0, 0), 5.0, 0.5, "moved"), "reader review status 'moved' is not one of pending"),
    (ReportedNodule("N1", (0, 0, 0), 5.0, 0.5, "accepted", ("nudged",)),
     "reader correction 'nudged' is not one of moved, resized")])
def test_a_status_or_correction_outside_the_vocabulary_is_refused(tmp_path, nodule, message):
    image, _ = make_phantom(9, "small")
    sources = read_sources(find_series(write_ct_series(image, tmp_path / "series").folder).files)
    with pytest.raises(ValueError, match=message):
        write_measurement_report(tmp_path / "n.sr.dcm", sources, [nodule], ALGORITHM)


FAST = ["--threshold", "0", "--max-detections", "4", "--device", "cpu", "--progress", "none"]


def test_detect_on_a_dicom_folder_names_it_by_uid_and_writes_sr_and_seg(tmp_path, checkpoint):
    image, _ = make_phantom(9, "small", oblique=True)
    written = write_ct_series(image, tmp_path / "dicom")
    out = tmp_path / "out"
    code = main(["detect", str(written.folder), "--out", str(out), "--model", str(checkpoint),
                 "--formats", "csv,json,sr,seg", *FAST])
    assert code == 0
    uid = written.series_uid
    rows = list(csv.DictReader((out / f"{uid}.candidates.csv").open(encoding="utf-8")))
    assert rows and {row["seriesuid"] for row in rows} == {uid}
    report = json.loads((out / f"{uid}.json").read_text(encoding="utf-8"))
    dicom = report["scan"]["dicom"]
    assert (dicom["series_instance_uid"], dicom["study_instance_uid"], dicom["patient_id"]) == (
        uid, written.study_uid, "PHANTOM-1")
    assert len(dicom["sop_instance_uids"]) == image.GetSize()[2]
    _dciodvfy(out / f"{uid}.sr.dcm")
    _dciodvfy(out / f"{uid}.seg.dcm")
    found = read_report(out / f"{uid}.sr.dcm")
    assert len(found) == len(rows)
    for rank, row in enumerate(rows):
        entry = found[f"N{rank + 1}"]
        np.testing.assert_allclose(entry["center"], [float(row[c]) for c in ("coordX", "coordY", "coordZ")],
                                   atol=0.01)
        assert entry["diameter"] == pytest.approx(float(row["diameter_mm"]), abs=1e-6)
        assert entry["probability"] == pytest.approx(float(row["probability"]), abs=1e-6)
    voxels = segment_voxels_world(out / f"{uid}.seg.dcm")
    for rank, row in enumerate(rows):
        center = np.array([float(row[c]) for c in ("coordX", "coordY", "coordZ")])
        distance = np.linalg.norm(voxels[f"N{rank + 1}"] - center, axis=1)
        assert distance.max() <= max(float(row["diameter_mm"]) / 2 + 1e-3, 1.0)


def _refused(capsys, argv, out: Path) -> str:
    assert main(argv) == 2
    message = capsys.readouterr().err.strip().splitlines()
    assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())
    return "\n".join(message)


def test_dicom_outputs_and_series_choice_are_refused_with_one_sentence(tmp_path, checkpoint, capsys):
    model = ["--model", str(checkpoint), *FAST]
    mhd = tmp_path / "scan.mha"
    sitk.WriteImage(make_phantom(9, "small")[0], str(mhd))
    out = tmp_path / "out"
    text = _refused(capsys, ["detect", str(mhd), "--out", str(out), "--formats", "csv,sr", *model], out)
    assert "scan.mha: DICOM outputs (sr, seg) need a DICOM series as input" in text

    anonymous = write_ct_series(make_phantom(9, "small")[0], tmp_path / "anonymous", uids=False)
    text = _refused(capsys, ["detect", str(anonymous.folder), "--out", str(out), "--formats", "seg", *model], out)
    assert "anonymous: the DICOM series has no SeriesInstanceUID" in text and "could not reference it" in text

    written = write_ct_series(make_phantom(9, "small")[0], tmp_path / "named")
    text = _refused(capsys, ["detect", str(written.folder), "--out", str(out), "--series", "1.2.3", *model], out)
    assert "named: the folder has no DICOM series 1.2.3" in text

    empty = tmp_path / "empty"
    empty.mkdir()
    text = _refused(capsys, ["detect", str(empty), "--out", str(out), *model], out)
    assert "empty: the folder holds neither an image file nor a DICOM series" in text

    written.files[10].unlink()
    text = _refused(capsys, ["detect", str(written.folder), "--out", str(out), *model], out)
    assert "the slices are not evenly spaced" in text and "slice_009.dcm and slice_011.dcm" in text
