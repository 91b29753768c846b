"""Files in and out: CT scans, LUNA16's CSV tables and atomic writes.

Scans are read with SimpleITK from ``.mhd``/``.mha``, ``.nrrd``/``.nhdr``, ``.nii``/``.nii.gz``
or a folder holding a DICOM series (:mod:`~SCPMNoduleLib.dicom_series`: headers with pydicom,
checked for missing or uneven slices, identity kept), and checked (3-D, one component, finite values, not empty)
before anything else touches them.

LUNA16's tables (world LPS millimetres, as the challenge defines them):

* annotations / excluded findings: ``seriesuid,coordX,coordY,coordZ,diameter_mm``
* candidates: ``seriesuid,coordX,coordY,coordZ,probability`` (we may append ``diameter_mm``)
* series list: one seriesuid a line, no header

Tables are held column-wise as numpy arrays (:class:`Findings`), so that evaluation and export
work on whole columns instead of looping over rows. A scan name that a spreadsheet would run as
a formula (starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return) is written with a
leading ``'`` and read back without it (:func:`csv_text`, :func:`csv_name`); LUNA16's seriesuids
(DICOM UIDs: digits and dots) never start so, and are written verbatim, as LUNA16's readers need.

Outputs are written atomically (:func:`atomic_write`) through temporary files named by
:mod:`~SCPMNoduleLib.temp_names`; :mod:`~SCPMNoduleLib.temp_files` cleans those a killed run left.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import logging
import math
import multiprocessing
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import SimpleITK as sitk

from .detection import Detection
from .errors import UserInputError, os_error
from .image_files import data_problem, itk_output_captured, itk_problem
from .temp_files import file_replaced_on_success

if TYPE_CHECKING:  # pydicom is imported only when a DICOM folder is read
    from .dicom_series import DicomSeries

__all__ = [
    "ANNOTATION_COLUMNS",
    "CANDIDATE_COLUMNS",
    "SCAN_SUFFIXES",
    "Findings",
    "Scan",
    "atomic_write",
    "check_scan",
    "csv_name",
    "csv_text",
    "list_scans",
    "load_scan",
    "map_in_processes",
    "read_annotations",
    "read_candidates",
    "read_scan",
    "read_seriesuids",
    "safe_file_name",
    "scan_name",
    "sha256_of",
    "write_annotations",
    "write_candidates",
    "write_seriesuids",
]

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)

SCAN_SUFFIXES = (".mhd", ".mha", ".nrrd", ".nhdr", ".nii", ".nii.gz")
LUNG_MASK_FOLDER = "seg-lungs-LUNA16"
"""LUNA16's lung masks, beside the ``subsetK`` folders: not scans, so skipped when a folder is expanded."""
DIRECTION_TOLERANCE = 1e-3
"""Largest entry of ``|DᵀD - I|`` accepted in a direction matrix ``D``: headers round to about 6
digits (DICOM's ImageOrientationPatient), far below; a sheared grid is far above."""

ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
CANDIDATE_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "probability")


@dataclass(frozen=True)
class Findings:
    """Rows of a LUNA16 table, column-wise: spheres of many scans, each row with its scan's uid.

    This is the shape for spheres in world millimetres across scans (candidates, annotations,
    excluded findings): the evaluation and the CSV files work on whole columns. One scan's
    detector output is a list of :class:`~SCPMNoduleLib.detection.Detection` instead;
    :meth:`from_detections` turns it into rows, :meth:`concat` joins tables.

    Attributes:
        seriesuids: ``(N,)`` str array.
        centers_xyz_mm: ``(N, 3)`` float64 world LPS coordinates in mm.
        diameters_mm: ``(N,)`` float64; NaN where the table has no diameter (candidates).
        probabilities: ``(N,)`` float64; NaN where the table has no probability (annotations).
    """

    seriesuids: np.ndarray
    centers_xyz_mm: np.ndarray
    diameters_mm: np.ndarray
    probabilities: np.ndarray

    @classmethod
    def from_columns(
        cls,
        seriesuids: np.ndarray | Sequence[str],
        centers_xyz_mm: np.ndarray | Sequence[Sequence[float]],
        diameters_mm: np.ndarray | Sequence[float] | None = None,
        probabilities: np.ndarray | Sequence[float] | None = None,
    ) -> Findings:
        n = len(seriesuids)
        centers = np.asarray(centers_xyz_mm, dtype=np.float64).reshape(n, 3)

        def column(values: np.ndarray | Sequence[float] | None) -> np.ndarray:
            return np.full(n, np.nan) if values is None else np.asarray(values, np.float64).reshape(n)

        return cls(np.asarray(seriesuids, dtype=str).reshape(n), centers, column(diameters_mm),
                   column(probabilities))

    @classmethod
    def from_detections(cls, seriesuid: str, detections: Sequence[Detection]) -> Findings:
        """One scan's detections as candidate rows (world mm, diameter, probability), in order."""
        centers = np.array([d.center_xyz_mm for d in detections], dtype=np.float64).reshape(-1, 3)
        return cls.from_columns([seriesuid] * len(detections), centers,
                                [d.diameter_mm for d in detections],
                                [d.probability for d in detections])

    @classmethod
    def concat(cls, parts: Sequence[Findings]) -> Findings:
        """The rows of ``parts``, table after table (no table: :meth:`empty`)."""
        parts = [part for part in parts if len(part)]
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(part, column) for part in parts])
                     for column in ("seriesuids", "centers_xyz_mm", "diameters_mm", "probabilities")))

    @classmethod
    def empty(cls) -> Findings:
        return cls.from_columns([], np.zeros((0, 3)))

    def __len__(self) -> int:
        return len(self.seriesuids)

    def select(self, mask_or_index: np.ndarray) -> Findings:
        """The rows picked by a boolean mask or an index array."""
        return Findings(self.seriesuids[mask_or_index], self.centers_xyz_mm[mask_or_index],
                        self.diameters_mm[mask_or_index], self.probabilities[mask_or_index])


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator:
    """Open a temporary file beside ``path``; rename it onto ``path`` only if the block succeeds.

    Text is UTF-8 unless ``encoding`` says otherwise: Slicer (and VTK) switch the process to the
    C locale, whose default encoding is ASCII.

    A reader never sees a half-written file, and an exception (or Ctrl-C) leaves no file behind.
    An :class:`OSError` (a full disk) names ``path``, not the temporary file, and stays an
    :class:`OSError` (a batch stops on it); :func:`~SCPMNoduleLib.errors.os_error` makes it the
    sentence ``"<path>: could not write (no space left on the device)."``.
    """
    if "b" not in mode:
        open_kwargs.setdefault("encoding", "utf-8")
    with file_replaced_on_success(path) as tmp_name, open(tmp_name, mode, **open_kwargs) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def _use_one_itk_thread() -> None:
    """Process-pool worker set-up: one ITK thread per process (the pool provides the parallelism)."""
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


@contextlib.contextmanager
def map_in_processes(function: Callable[[T], R], jobs: Sequence[T], workers: int,
                     ordered: bool = True) -> Iterator[Iterator[R]]:
    """``function`` over ``jobs``: in this process when ``workers <= 1`` or there is one job, else
    in a spawn pool of ``min(workers, len(jobs))`` processes with one ITK thread each. Results come
    in job order, or with ``ordered=False`` as each job finishes (a progress count then never waits
    behind one slow job). Leaving the ``with`` block, also by an exception, terminates the pool, so
    no worker writes anything after it. ``function`` must be importable (a module-level function).
    """
    if workers <= 1 or len(jobs) <= 1:
        yield map(function, jobs)
        return
    with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs)), _use_one_itk_thread) as pool:
        yield (pool.imap if ordered else pool.imap_unordered)(function, jobs)


def sha256_of(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, hex, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 23), b""):
            digest.update(block)
    return digest.hexdigest()


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""What makes a spreadsheet run a cell as a formula (OWASP's CSV-injection list)."""


def csv_text(name: str) -> str:
    """``name`` as written into a CSV cell: with a leading ``'`` when a spreadsheet would run it
    as a formula (``=cmd|...``), else verbatim (every LUNA16 seriesuid)."""
    return "'" + name if name.startswith(_FORMULA_START) else name


def csv_name(text: str) -> str:
    """The name a CSV cell holds: :func:`csv_text` undone."""
    return text[1:] if text.startswith("'") and text[1:].startswith(_FORMULA_START) else text


@contextlib.contextmanager
def _reading_text(path: Path) -> Iterator[None]:
    """Turn a file that is not UTF-8 text, not CSV, or not readable into one sentence."""
    try:
        yield
    except UnicodeDecodeError as error:
        raise UserInputError(f"{path}: not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset "
                             f"{error.start}); expected a CSV table.") from None
    except csv.Error as error:
        raise UserInputError(f"{path}: not a CSV table ({error}).") from None
    except OSError as error:
        raise os_error(error, path, "read") from None


def _read_rows(path: str | os.PathLike, required: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: file not found.")
    with _reading_text(path), open(path, newline="", encoding="utf-8-sig") as handle:
        rows = [row for row in csv.reader(handle) if row]
    if not rows:
        raise UserInputError(f"{path}: the file is empty; expected the header {','.join(required)}.")
    header = [name.strip() for name in rows[0]]
    missing = [name for name in required if name not in header]
    if missing:
        raise UserInputError(
            f"{path}: the header lacks {', '.join(missing)}; expected {','.join(required)}."
        )
    for line_number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise UserInputError(
                f"{path}: line {line_number} has {len(row)} fields, the header has {len(header)}."
            )
    return header, rows[1:]


def _float_column(path: Path, header: list[str], rows: list[list[str]], name: str) -> np.ndarray:
    index = header.index(name)
    try:
        values = np.array([float(row[index]) for row in rows], dtype=np.float64)
    except ValueError as error:
        raise UserInputError(f"{path}: column {name} holds a value that is not a number ({error}).") from None
    if not np.all(np.isfinite(values)):
        raise UserInputError(f"{path}: column {name} holds NaN or infinite values.")
    return values


def _read_table(path: str | os.PathLike, required: Sequence[str]) -> Findings:
    header, rows = _read_rows(path, required)
    path = Path(path)
    uid_index = header.index("seriesuid")
    centers = np.stack(
        [_float_column(path, header, rows, name) for name in ("coordX", "coordY", "coordZ")], axis=1
    ) if rows else np.zeros((0, 3))
    optional = {}
    for name in ("diameter_mm", "probability"):
        optional[name] = _float_column(path, header, rows, name) if name in header else None
    return Findings.from_columns([csv_name(row[uid_index].strip()) for row in rows], centers,
                                 optional["diameter_mm"], optional["probability"])


def read_annotations(path: str | os.PathLike) -> Findings:
    """Read ``annotations.csv`` or ``annotations_excluded.csv`` (extra columns are allowed)."""
    return _read_table(path, ANNOTATION_COLUMNS)


def read_candidates(path: str | os.PathLike) -> Findings:
    """Read a candidates file: ``seriesuid,coordX,coordY,coordZ,probability`` (+ optional columns)."""
    return _read_table(path, CANDIDATE_COLUMNS)


def read_seriesuids(path: str | os.PathLike) -> list[str]:
    """Read LUNA16's ``seriesuids.csv``: one uid a line, no header; blank lines skipped."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: file not found.")
    with _reading_text(path):
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    uids = [csv_name(uid) for uid in (line.split(",")[0].strip() for line in lines) if uid]
    if uids and uids[0] == "seriesuid":
        raise UserInputError(f"{path}: a series list has no header, but the first line is 'seriesuid'.")
    return uids


def _format_mm(value: float) -> str:
    return repr(float(value))


def write_annotations(path: str | os.PathLike, findings: Findings,
                      extra_columns: Mapping[str, Sequence[float]] | None = None) -> None:
    """Write ``seriesuid,coordX,coordY,coordZ,diameter_mm`` atomically, followed by
    ``extra_columns`` (name: one number per finding), which readers that pick columns by name,
    as :func:`read_annotations` does, ignore."""
    extra_columns = extra_columns or {}
    for name, values in extra_columns.items():
        if len(values) != len(findings):
            raise ValueError(f"column {name!r} has {len(values)} values for {len(findings)} findings")
    with atomic_write(path, newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(ANNOTATION_COLUMNS + tuple(extra_columns))
        for uid, center, diameter, *extra in zip(findings.seriesuids, findings.centers_xyz_mm,
                                                 findings.diameters_mm, *extra_columns.values()):
            writer.writerow([csv_text(uid), *map(_format_mm, center), _format_mm(diameter),
                             *map(_format_mm, extra)])


def write_candidates(path: str | os.PathLike, findings: Findings, with_diameter: bool = True) -> None:
    """Write ``seriesuid,coordX,coordY,coordZ,probability[,diameter_mm]`` atomically."""
    with atomic_write(path, newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CANDIDATE_COLUMNS + (("diameter_mm",) if with_diameter else ()))
        for uid, center, probability, diameter in zip(
            findings.seriesuids, findings.centers_xyz_mm, findings.probabilities, findings.diameters_mm
        ):
            row = [csv_text(uid), *map(_format_mm, center), _format_mm(probability)]
            writer.writerow(row + ([_format_mm(diameter)] if with_diameter else []))


def write_seriesuids(path: str | os.PathLike, seriesuids: Sequence[str]) -> None:
    """Write one uid a line, no header, atomically."""
    with atomic_write(path) as handle:
        handle.writelines(f"{csv_text(uid)}\n" for uid in seriesuids)


def scan_name(path: str | os.PathLike, series_uid: str | None = None) -> str:
    """The scan's name: the file name without its image suffix (LUNA16's seriesuid), or for a folder
    its DICOM series' SeriesInstanceUID (``series_uid`` or the one with most slices, see
    :func:`~SCPMNoduleLib.dicom_series.find_series`).

    A folder whose series has no UID, or that does not read, is named after the folder (reading it
    then says what is wrong).
    """
    path = Path(path)
    if path.is_dir():
        from .dicom_series import find_series

        try:
            return find_series(path, series_uid).name
        except UserInputError:
            return path.name
    name = path.name
    for suffix in sorted(SCAN_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_scan_file(path: Path, folder: Path) -> bool:
    """An image file found inside ``folder``: not hidden (our temporaries are), not a lung mask."""
    parts = path.relative_to(folder).parts
    return (path.is_file() and path.name.lower().endswith(SCAN_SUFFIXES) and LUNG_MASK_FOLDER not in parts
            and not any(part.startswith(".") for part in parts))


def list_scans(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Expand command-line inputs into scans.

    A file is taken as it is; a folder holding image files (at any depth, e.g. LUNA16's
    ``subset0..9``) gives those files, sorted, but not the lung masks of LUNA16's
    ``seg-lungs-LUNA16`` folder nor hidden files; any other folder is taken as a DICOM series folder.
    A path that does not exist is kept, so that reading it reports the error for that scan.
    """
    scans: list[Path] = []
    for item in map(Path, inputs):
        files = sorted(p for p in item.rglob("*") if _is_scan_file(p, item)) if item.is_dir() else []
        scans.extend(files or [item])
    return scans


def _check_direction(direction: np.ndarray, name: str | os.PathLike) -> None:
    """Refuse a direction matrix whose columns are not perpendicular unit vectors.

    Refused, not warned about: resampling, tiling and every size in mm here treat the spacing as
    the voxel's edges along perpendicular axes, so a sheared grid (a skewed matrix) would put
    nodules in the wrong place with the wrong diameters; a singular one gives voxels no place.
    """
    if not np.all(np.isfinite(direction)) or abs(np.linalg.det(direction)) < 1e-6:
        raise UserInputError(f"{name}: the direction matrix is singular, so voxels have no place in space.")
    if np.abs(direction.T @ direction - np.eye(3)).max() > DIRECTION_TOLERANCE:
        unit = direction / np.linalg.norm(direction, axis=0)
        angle = min(math.degrees(math.acos(min(1.0, abs(float(unit[:, a] @ unit[:, b])))))
                    for a, b in ((0, 1), (0, 2), (1, 2)))
        raise UserInputError(f"{name}: the direction matrix is not orthonormal (two voxel axes meet at "
                             f"{angle:.1f} degrees, not 90); resample the scan onto a perpendicular grid first.")


def check_scan(image: sitk.Image, name: str | os.PathLike) -> None:
    """Refuse an image that is not a usable CT volume, with one sentence naming ``name``.

    A scan must be 3-D with more than one voxel along every axis, scalar, with positive
    finite spacing, finite values, and not one constant value throughout.
    """
    size = image.GetSize()
    if image.GetDimension() != 3:
        raise UserInputError(f"{name}: the image is {image.GetDimension()}-D; a CT scan must be 3-D.")
    if min(size) == 0:
        raise UserInputError(f"{name}: the image is empty (size {size}).")
    if min(size) == 1:
        raise UserInputError(f"{name}: the image has a single slice (size {size}); a CT scan must be 3-D.")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise UserInputError(
            f"{name}: the image has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
            "a CT scan has one.")
    spacing = np.asarray(image.GetSpacing())
    if not (np.all(np.isfinite(spacing)) and np.all(spacing > 0)):
        raise UserInputError(f"{name}: the voxel spacing {tuple(spacing)} is not positive.")
    _check_direction(np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3), name)
    values = sitk.GetArrayViewFromImage(image)
    if not np.isfinite(values).all():
        raise UserInputError(f"{name}: the image holds NaN or infinite values.")
    if values.min() == values.max():
        raise UserInputError(f"{name}: the image is empty (every voxel is {values.flat[0]}).")


@dataclass(frozen=True)
class Scan:
    """A checked CT scan, its name (:func:`scan_name`) and, for a DICOM folder, the series it came
    from (its files in slice order and its identity); ``dicom`` is ``None`` for an image file."""

    image: sitk.Image
    name: str
    dicom: DicomSeries | None = None


def load_scan(path: str | os.PathLike, series_uid: str | None = None) -> Scan:
    """Read and check a CT scan: an image file or a folder with a DICOM series.

    Args:
        path: ``.mhd``/``.mha``/``.nrrd``/``.nhdr``/``.nii``/``.nii.gz`` file or DICOM folder.
        series_uid: for a folder with several DICOM series, the one to read; by default the
            series with the most slices (the others are logged).

    Returns:
        The image as stored (pixel type kept), with its origin, spacing and direction, its name
        and its DICOM series.

    Raises:
        UserInputError: missing or unreadable file, a DICOM series with a missing, unreadable or
            unevenly spaced slice, or an image that is not a usable 3-D scan.
    """
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"{path}: file not found.")
    with itk_output_captured() as itk_lines:
        try:
            if path.is_dir():
                from .dicom_series import read_dicom_series

                image, series = read_dicom_series(path, series_uid)
                check_scan(image, path)
                return Scan(image, series.name, series)
            image = _read_image_file(path)
        finally:
            for line in itk_lines:  # what ITK, MetaIO or GDCM printed: the sentence raised says what matters
                log.debug("%s: ITK: %s", path, line)
    check_scan(image, path)
    return Scan(image, scan_name(path))


def read_scan(path: str | os.PathLike, series_uid: str | None = None) -> sitk.Image:
    """The image of :func:`load_scan` (for callers that need neither name nor DICOM identity)."""
    return load_scan(path, series_uid).image


def _read_image_file(path: Path) -> sitk.Image:
    """``sitk.ReadImage`` of a file whose data its header's promise was checked against first
    (ITK reads a truncated NIfTI without an error); a failure named as precisely as we can."""
    try:
        problem = data_problem(path)
    except OSError as error:
        raise os_error(error, path, "read") from None
    if problem is not None:
        raise UserInputError(f"{path}: {problem}.")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        problem = itk_problem(str(error))
        if problem is not None:
            raise UserInputError(f"{path}: {problem}.") from None
        raise UserInputError(
            f"{path}: the file could not be read as an image "
            f"(expected one of {', '.join(SCAN_SUFFIXES)} or a DICOM folder).") from None


def safe_file_name(name: str, fallback: str = "unnamed") -> str:
    """``name`` as a file name that is safe on every platform (a series UID, a volume's name).

    Every character but letters, digits, ``.``, ``_`` and ``-`` becomes ``_``, then leading and
    trailing ``.`` and ``_`` are dropped (no hidden file, no ``..``); ``fallback`` if nothing is left.
    E.g. ``"3: CT chest"`` gives ``"3__CT_chest"``; a DICOM UID is kept as it is.
    """
    kept = "".join(c if c.isalnum() or c in "._-" else "_" for c in name).strip("._")
    return kept or fallback
