"""LUNA16 tables: round trips, header checks, atomic writes."""

import os
import stat

import numpy as np
import pytest

from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.io import (
    Findings,
    atomic_write,
    read_annotations,
    read_candidates,
    read_seriesuids,
    write_annotations,
    write_candidates,
    write_seriesuids,
)


def test_annotations_round_trip_exactly(tmp_path):
    findings = Findings.from_columns(
        ["1.2.3", "1.2.4"], [[-100.25, 67.1, -231.000001], [0.1, 0.2, 0.3]], diameters_mm=[5.5, 12.0]
    )
    path = tmp_path / "annotations.csv"
    write_annotations(path, findings)
    assert path.read_text(encoding="utf-8").splitlines()[0] == "seriesuid,coordX,coordY,coordZ,diameter_mm"
    again = read_annotations(path)
    assert list(again.seriesuids) == ["1.2.3", "1.2.4"]
    np.testing.assert_array_equal(again.centers_xyz_mm, findings.centers_xyz_mm)
    np.testing.assert_array_equal(again.diameters_mm, [5.5, 12.0])
    assert np.isnan(again.probabilities).all()


def test_annotations_extra_columns_follow_and_are_ignored_when_read(tmp_path):
    findings = Findings.from_columns(["a", "b"], [[1, 2, 3], [4, 5, 6]], diameters_mm=[3.0, 4.0])
    path = tmp_path / "missed.csv"
    write_annotations(path, findings, {"nearest_candidate_mm": [2.5, np.inf]})
    assert path.read_text(encoding="utf-8").splitlines() == [
        "seriesuid,coordX,coordY,coordZ,diameter_mm,nearest_candidate_mm", "a,1.0,2.0,3.0,3.0,2.5",
        "b,4.0,5.0,6.0,4.0,inf"]
    np.testing.assert_array_equal(read_annotations(path).diameters_mm, [3.0, 4.0])
    with pytest.raises(ValueError, match="1 values for 2 findings"):
        write_annotations(tmp_path / "short.csv", findings, {"nearest_candidate_mm": [2.5]})
    assert not (tmp_path / "short.csv").exists()


def test_candidates_round_trip_with_and_without_diameter(tmp_path):
    findings = Findings.from_columns(["a", "b"], [[1, 2, 3], [4, 5, 6]], [3.0, 4.0], [0.9, 0.1])
    write_candidates(tmp_path / "c.csv", findings)
    write_candidates(tmp_path / "plain.csv", findings, with_diameter=False)
    header = (tmp_path / "plain.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == "seriesuid,coordX,coordY,coordZ,probability"
    np.testing.assert_array_equal(read_candidates(tmp_path / "c.csv").diameters_mm, [3.0, 4.0])
    plain = read_candidates(tmp_path / "plain.csv")
    np.testing.assert_array_equal(plain.probabilities, [0.9, 0.1])
    assert np.isnan(plain.diameters_mm).all()


def test_seriesuids_round_trip_and_header_refused(tmp_path):
    write_seriesuids(tmp_path / "s.csv", ["x.1", "x.2"])
    assert (tmp_path / "s.csv").read_text(encoding="utf-8") == "x.1\nx.2\n"
    assert read_seriesuids(tmp_path / "s.csv") == ["x.1", "x.2"]
    (tmp_path / "bad.csv").write_text("seriesuid\nx.1\n", encoding="utf-8")
    with pytest.raises(UserInputError, match="bad.csv"):
        read_seriesuids(tmp_path / "bad.csv")


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("seriesuid,coordX,coordY,diameter_mm\n", "lacks coordZ"),
        ("seriesuid,coordX,coordY,coordZ,diameter_mm\na,1,2,3\n", "line 2 has 4 fields"),
        ("seriesuid,coordX,coordY,coordZ,diameter_mm\na,1,2,x,4\n", "coordZ holds a value"),
        ("seriesuid,coordX,coordY,coordZ,diameter_mm\na,1,2,nan,4\n", "NaN"),
    ],
)
def test_bad_tables_name_the_file_and_the_problem(tmp_path, text, message):
    path = tmp_path / "annotations.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserInputError, match=message) as raised:
        read_annotations(path)
    assert str(path) in str(raised.value)


def test_missing_file(tmp_path):
    with pytest.raises(UserInputError, match="not found"):
        read_candidates(tmp_path / "nope.csv")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.csv"
    with pytest.raises(RuntimeError):
        with atomic_write(target) as handle:
            handle.write("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_respects_the_umask_like_open(tmp_path):
    mask = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "out.csv") as handle:
            handle.write("x")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "out.csv").stat().st_mode) == 0o644


def test_detections_become_rows_and_tables_concatenate_in_order():
    from SCPMNoduleLib.detection import Detection

    detections = [Detection((1.0, 2.0, 3.0), 6.5, 0.9, 1), Detection((-4.0, 5.0, -6.0), 3.25, 0.25)]
    first = Findings.from_detections("1.2.3", detections)
    assert list(first.seriesuids) == ["1.2.3", "1.2.3"]
    np.testing.assert_array_equal(first.centers_xyz_mm, [[1.0, 2.0, 3.0], [-4.0, 5.0, -6.0]])
    np.testing.assert_array_equal(first.diameters_mm, [6.5, 3.25])
    np.testing.assert_array_equal(first.probabilities, [0.9, 0.25])
    none = Findings.from_detections("1.2.4", [])
    assert len(none) == 0 and none.centers_xyz_mm.shape == (0, 3)
    second = Findings.from_detections("1.2.40", detections[1:])
    joined = Findings.concat([first, none, second])
    assert list(joined.seriesuids) == ["1.2.3", "1.2.3", "1.2.40"]
    np.testing.assert_array_equal(joined.centers_xyz_mm, [[1.0, 2.0, 3.0], [-4.0, 5.0, -6.0], [-4.0, 5.0, -6.0]])
    np.testing.assert_array_equal(joined.probabilities, [0.9, 0.25, 0.25])
    empty = Findings.concat([])
    assert len(empty) == 0 and empty.centers_xyz_mm.shape == (0, 3)
    assert len(Findings.concat([none, none])) == 0


@pytest.mark.parametrize("name", ["=cmd|' /C calc'!A0", "+1+2", "-2+3", "@SUM(A1)", "\tTAB"])
def test_names_a_spreadsheet_would_run_are_quoted_and_read_back_verbatim(tmp_path, name):
    found = Findings.from_columns([name, "1.3.6.1.4.1.14519.5.2.1.6279.6001.1"], [[1.0, 2.0, 3.0]] * 2,
                                  [4.0, 5.0], [0.5, 0.25])
    write_candidates(tmp_path / "c.csv", found)
    write_annotations(tmp_path / "a.csv", found)
    write_seriesuids(tmp_path / "s.csv", [name, "1.2.3"])
    for path in ("c.csv", "a.csv"):
        lines = (tmp_path / path).read_text(encoding="utf-8").splitlines()
        assert lines[1].startswith("'" + name[0]) and lines[2].startswith("1.3.6.1.4.1.14519.5.2.1.6279.6001.1,")
    assert (tmp_path / "s.csv").read_text(encoding="utf-8").splitlines() == ["'" + name, "1.2.3"]
    assert list(read_candidates(tmp_path / "c.csv").seriesuids) == [name, found.seriesuids[1]]
    assert list(read_annotations(tmp_path / "a.csv").seriesuids) == [name, found.seriesuids[1]]
    assert read_seriesuids(tmp_path / "s.csv") == [name, "1.2.3"]


@pytest.mark.parametrize("content, message", [
    (b"\x00\x01\x02\xff binary", "not UTF-8 text (byte 0xff at offset 3); expected a CSV table."),
    ("seriesuid,coordX\n\xe9\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 at offset 17)"),
])
def test_tables_that_are_not_text_are_refused_in_one_sentence(tmp_path, content, message):
    path = tmp_path / "t.csv"
    path.write_bytes(content)
    for read in (read_candidates, read_annotations, read_seriesuids):
        with pytest.raises(UserInputError) as raised:
            read(path)
        assert str(raised.value) == f"{path}: {message}" or str(raised.value).startswith(f"{path}: {message}")
