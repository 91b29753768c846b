"""Exports: JSON report round trip, LUNA16 candidates, Slicer markups valid against the schema."""

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import SimpleITK as sitk

from SCPMNoduleLib.detection import Detection
from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.export import (
    describe_scan,
    read_detections_json,
    write_candidates_csv,
    write_detections_json,
    write_markups_json,
)
from SCPMNoduleLib.io import read_candidates

SCHEMA = json.loads((Path(__file__).parent / "data" / "markups-schema-v1.0.3.json").read_text(encoding="utf-8"))

DETECTIONS = [
    Detection((-101.25, 42.5, -230.0), 6.25, 0.9375, 0),
    Detection((12.0, -3.5, 17.75), 12.5, 0.5, 1),
]


def test_json_report_round_trips_and_carries_the_scan(tmp_path):
    image = sitk.Image(4, 5, 6, sitk.sitkInt16)
    image.SetSpacing((0.7, 0.7, 2.5))
    path = tmp_path / "out" / "scan.json"
    write_detections_json(path, DETECTIONS, scan=describe_scan(image, "scan.mhd"),
                          model={"name": "demo"}, timings={"forward": 1.5})
    assert read_detections_json(path) == DETECTIONS
    document = json.loads(path.read_text(encoding="utf-8"))
    assert document["format"] == "scpm-nodule-detections" and document["version"] == 1
    assert document["scan"]["size_xyz"] == [4, 5, 6]
    assert document["scan"]["spacing_xyz_mm"] == [0.7, 0.7, 2.5]
    assert document["timings_s"] == {"forward": 1.5}
    assert [p.name for p in path.parent.iterdir()] == ["scan.json"]


@pytest.mark.parametrize("text, message", [
    ("{", "not valid JSON"),
    ('{"format": "other"}', "not a scpm-nodule-detections report"),
    ('{"format": "scpm-nodule-detections", "version": 7}', "version 7"),
    ('{"format": "scpm-nodule-detections", "version": 1, "detections": [{"diameter_mm": 1}]}', "lacks"),
])
def test_bad_reports_are_refused(tmp_path, text, message):
    (tmp_path / "r.json").write_text(text, encoding="utf-8")
    with pytest.raises(UserInputError, match=message):
        read_detections_json(tmp_path / "r.json")


def test_candidates_csv_is_luna16_with_diameter(tmp_path):
    write_candidates_csv(tmp_path / "c.csv", "1.2.3", DETECTIONS)
    assert (tmp_path / "c.csv").read_text(encoding="utf-8").splitlines()[0] == \
        "seriesuid,coordX,coordY,coordZ,probability,diameter_mm"
    table = read_candidates(tmp_path / "c.csv")
    assert list(table.seriesuids) == ["1.2.3", "1.2.3"]
    np.testing.assert_array_equal(table.centers_xyz_mm, [d.center_xyz_mm for d in DETECTIONS])
    np.testing.assert_array_equal(table.probabilities, [0.9375, 0.5])
    np.testing.assert_array_equal(table.diameters_mm, [6.25, 12.5])


def test_markups_validate_against_slicer_schema_in_lps(tmp_path):
    write_markups_json(tmp_path / "n.mrk.json", DETECTIONS)
    document = json.loads((tmp_path / "n.mrk.json").read_text(encoding="utf-8"))
    jsonschema.validate(document, SCHEMA)
    markup = document["markups"][0]
    assert markup["type"] == "Fiducial" and markup["coordinateSystem"] == "LPS"
    assert markup["coordinateUnits"] == "mm"
    points = markup["controlPoints"]
    assert [p["label"] for p in points] == ["N1", "N2"]
    assert [p["position"] for p in points] == [[-101.25, 42.5, -230.0], [12.0, -3.5, 17.75]]
    assert points[0]["description"] == "probability 0.938, diameter 6.2 mm"
    # an invalid coordinate system is caught by the same schema, so the check can fail
    markup["coordinateSystem"] = "XYZ"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, SCHEMA)


def test_no_file_is_left_when_a_write_fails(tmp_path):
    with pytest.raises(TypeError):
        write_detections_json(tmp_path / "r.json", DETECTIONS, scan={"bad": object()})
    assert list(tmp_path.iterdir()) == []
