"""Pre-processing cache: every scan resampled and windowed once, stored memory-mappable.

Layout of a cache folder::

    cache.json                  what was cached: source folder, pre-processing config
    scans/<seriesuid>.npy       (D, H, W) float16 network input of the lung crop (see below)
    scans/<seriesuid>.lungs.npy the coarse lung mask (bool, one value per block), when found
    scans/<seriesuid>.json      metadata, written last: a scan is cached iff this file is valid

The image is exactly what the detector feeds the network
(:func:`SCPMNoduleLib.preprocess.prepare_scan`): resampled in the scan's own axes to the
pre-processing spacing, HU clipped to the window and scaled to [0, 1], cropped to the lungs'
bounding box; stored as float16 (error below 2.5e-4, i.e. under 0.5 HU in a 1800 HU window).

The metadata holds the original and resampled geometry (shape, spacing, origin, direction), the
crop box in the resampled grid, the annotations (``annotations.csv``) and excluded findings
(``annotations_excluded.csv``) both in world mm and in voxels of the stored crop (z, y, x,
radius), and the size and SHA-256 of every array file, so a truncated or corrupt file is found
(and rebuilt by the next ``preprocess``) instead of being trained on.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from SCPMNoduleLib.documents import DocumentError, read_document
from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.io import (
    Findings,
    atomic_write,
    list_scans,
    map_in_processes,
    read_annotations,
    read_scan,
    scan_name,
    sha256_of,
)
from SCPMNoduleLib.preprocess import RETIRED_SETTINGS, PreprocessConfig, prepare_scan
from SCPMNoduleLib.scan_geometry import ScanGeometry
from SCPMNoduleLib.temp_files import check_output_folder

__all__ = [
    "CACHE_FORMAT",
    "CACHE_VERSION",
    "CachedScan",
    "STORAGE_DTYPE",
    "SourceScan",
    "build_cache",
    "find_luna16_scans",
    "load_cache",
    "read_cache_info",
    "scan_problem",
]

log = logging.getLogger(__name__)

CACHE_FORMAT = "scpm-train-cache"
CACHE_VERSION = 1
STORAGE_DTYPE = np.float16
_SUBSET = re.compile(r"^subset(\d+)$")
_SCAN_METADATA = "a scpm-train cached scan's metadata"


@dataclass(frozen=True)
class SourceScan:
    """A scan of a LUNA16-layout folder: ``<data>/subset<fold>/<seriesuid>.mhd``."""

    seriesuid: str
    fold: int
    source: Path


@dataclass(frozen=True)
class CachedScan:
    """One cached scan, as the training data and validation use it.

    Its spheres come twice, for two users: as voxel arrays of the stored crop
    (``centers_zyx_vox``, ``radii_vox``), which the patch sampler and the center-points matching
    take as they are, and as world-mm :class:`~SCPMNoduleLib.io.Findings` rows (``annotations``,
    ``excluded``), which the FROC evaluation of held-out scans takes.

    Attributes:
        seriesuid: LUNA16 series uid.
        fold: the subset number (fold ``k`` validates on subset ``k``).
        image_path: the ``(D, H, W)`` float16 ``.npy`` of the lung crop.
        shape_zyx: shape of that array.
        crop_start_zyx: index of its first voxel in the whole resampled grid.
        resampled_shape_zyx: shape of the whole resampled grid.
        centers_zyx_vox: ``(N, 3)`` annotated nodule centers, voxels of the stored crop.
        radii_vox: ``(N,)`` their radii, voxels (= mm at 1 mm spacing).
        excluded_centers_zyx_vox, excluded_radii_vox: ``(M, 3)`` and ``(M,)``: the same for the
            excluded findings.
        annotations: the same nodules in world LPS mm with diameters (``annotations.csv`` rows).
        excluded: the scan's excluded findings (``annotations_excluded.csv`` rows).
        source: the original scan file.
    """

    seriesuid: str
    fold: int
    image_path: Path
    shape_zyx: tuple[int, int, int]
    crop_start_zyx: tuple[int, int, int]
    resampled_shape_zyx: tuple[int, int, int]
    centers_zyx_vox: np.ndarray
    radii_vox: np.ndarray
    excluded_centers_zyx_vox: np.ndarray
    excluded_radii_vox: np.ndarray
    annotations: Findings
    excluded: Findings
    source: Path

    def volume(self) -> np.ndarray:
        """The stored crop, memory-mapped read-only."""
        return np.load(self.image_path, mmap_mode="r")


def find_luna16_scans(data_dir: str | os.PathLike) -> list[SourceScan]:
    """The scans of ``data_dir/subset<k>/`` (any image format SimpleITK reads), sorted by uid.

    Raises:
        UserInputError: no ``subset<k>`` folder with scans, or one seriesuid appears twice.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserInputError(f"{data_dir}: data folder not found.")
    scans: list[SourceScan] = []
    for folder in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        subset = _SUBSET.match(folder.name)
        if subset is None:
            continue
        fold = int(subset.group(1))
        scans.extend(SourceScan(scan_name(path), fold, path) for path in list_scans([folder]) if path.is_file())
    if not scans:
        raise UserInputError(f"{data_dir}: no scans in subset0..subset9 folders (LUNA16 layout expected).")
    seen: dict[str, Path] = {}
    for scan in scans:
        if scan.seriesuid in seen:
            raise UserInputError(f"{scan.source}: seriesuid {scan.seriesuid} also names {seen[scan.seriesuid]}.")
        seen[scan.seriesuid] = scan.source
    return sorted(scans, key=lambda s: s.seriesuid)


def _save_array(path: Path, array: np.ndarray) -> dict[str, Any]:
    with atomic_write(path, "wb") as handle:
        np.save(handle, array)
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_of(path)}


_Spheres = tuple[np.ndarray, np.ndarray]
"""Centers ``(n, 3)`` (world x, y, z mm) and diameters ``(n,)`` (mm) of one scan's annotations
(or of its excluded findings)."""
_NO_SPHERES: _Spheres = (np.zeros((0, 3)), np.zeros(0))


def _findings_by_uid(findings: Findings) -> dict[str, _Spheres]:
    groups: dict[str, list[int]] = defaultdict(list)
    for row, uid in enumerate(findings.seriesuids):
        groups[str(uid)].append(row)
    return {uid: (findings.centers_xyz_mm[rows], findings.diameters_mm[rows]) for uid, rows in groups.items()}


def _spheres_in_crop(
    centers_xyz_mm: np.ndarray, diameters_mm: np.ndarray, geometry: ScanGeometry, crop_start: np.ndarray
) -> list[dict[str, Any]]:
    """World spheres -> records with the center in crop voxels (z, y, x) and the radius in voxels."""
    centers_zyx = geometry.world_to_index(np.asarray(centers_xyz_mm).reshape(-1, 3)) - crop_start
    radii = np.asarray(diameters_mm, dtype=np.float64) / 2.0 / float(geometry.spacing_xyz_mm[0])
    return [
        {"center_xyz_mm": [float(v) for v in world], "diameter_mm": float(diameter),
         "center_zyx_vox": [float(v) for v in voxel], "radius_vox": float(radius)}
        for world, diameter, voxel, radius in zip(centers_xyz_mm, diameters_mm, centers_zyx, radii)
    ]


def _geometry_record(geometry: ScanGeometry) -> dict[str, Any]:
    return {"shape_zyx": [int(n) for n in geometry.shape_zyx],
            "spacing_xyz_mm": geometry.spacing_xyz_mm.tolist(),
            "origin_xyz_mm": geometry.origin_xyz_mm.tolist(),
            "direction": geometry.direction.reshape(-1).tolist()}


def _cache_one(job: tuple[SourceScan, Path, dict[str, Any], dict[str, _Spheres]]) -> str:
    """Build one scan's cache files; returns its uid. Runs in a worker process."""
    scan, scans_dir, preprocess, spheres = job
    config = PreprocessConfig.from_dict(preprocess)
    image = read_scan(scan.source)
    prepared = prepare_scan(image, config)
    start = np.asarray(prepared.crop_start_zyx, dtype=np.int64)
    image_record = _save_array(scans_dir / f"{scan.seriesuid}.npy", prepared.image.astype(STORAGE_DTYPE))
    mask_record = None
    if prepared.lungs is not None:
        mask_record = _save_array(scans_dir / f"{scan.seriesuid}.lungs.npy", prepared.lungs.region)
        mask_record["block"] = prepared.lungs.block
    nodules, excluded = (
        _spheres_in_crop(*spheres.get(kind, _NO_SPHERES), prepared.geometry, start)
        for kind in ("annotations", "excluded")
    )
    metadata = {
        "format": CACHE_FORMAT, "version": CACHE_VERSION,
        "seriesuid": scan.seriesuid, "fold": scan.fold, "source": str(scan.source.resolve()),
        "preprocess": preprocess,
        "original": _geometry_record(ScanGeometry.from_image(image)),
        "resampled": _geometry_record(prepared.geometry),
        "crop_start_zyx": start.tolist(),
        "crop_stop_zyx": (start + np.asarray(prepared.image.shape)).tolist(),
        "shape_zyx": list(prepared.image.shape),
        "image": image_record, "lung_mask": mask_record,
        "nodules": nodules, "excluded": excluded,
    }
    with atomic_write(scans_dir / f"{scan.seriesuid}.json") as handle:
        json.dump(metadata, handle, indent=1)
    return scan.seriesuid


def _same_preprocessing(cached: Any, wanted: dict) -> bool:
    """Whether two pre-processing config dicts describe one config; a key missing from either
    counts as its default, so files written before a field was added to
    :class:`PreprocessConfig` (``pad_hu``) stay valid. An unreadable dict describes none, and
    neither does one holding a retired setting: its scans were cropped by the lung mask that the
    lung finder replaced."""
    if isinstance(cached, dict) and RETIRED_SETTINGS & set(cached):
        return False
    try:
        return PreprocessConfig.from_dict(cached) == PreprocessConfig.from_dict(wanted)
    except UserInputError:
        return False


def scan_problem(metadata_path: Path, preprocess: dict | None = None, checksum: bool = True) -> str | None:
    """Why the cached scan behind ``metadata_path`` cannot be used, or ``None`` when it can.

    Checks the metadata's format, the pre-processing config (when given), and each array file's
    size, ``.npy`` header (shape, dtype) and, with ``checksum``, its SHA-256.
    """
    if not metadata_path.is_file():
        return "not cached"
    try:
        metadata = read_document(metadata_path, CACHE_FORMAT, CACHE_VERSION, _SCAN_METADATA)
    except DocumentError as error:
        return error.reason
    if preprocess is not None and not _same_preprocessing(metadata.get("preprocess"), preprocess):
        return "cached with another pre-processing config"
    for key in ("image", "lung_mask"):
        record = metadata.get(key)
        if record is None:
            continue
        path = metadata_path.parent / record["file"]
        if not path.is_file() or path.stat().st_size != record["bytes"]:
            return f"{path.name} is missing or has the wrong size"
        if checksum and sha256_of(path) != record["sha256"]:
            return f"{path.name} is corrupt (checksum mismatch)"
    try:
        array = np.load(metadata_path.parent / metadata["image"]["file"], mmap_mode="r")
    except ValueError as error:
        return f"unreadable image array ({error})"
    if list(array.shape) != metadata["shape_zyx"] or array.dtype != STORAGE_DTYPE:
        return "image array of the wrong shape or type"
    return None


def build_cache(
    data_dirs: str | os.PathLike | Sequence[str | os.PathLike],
    cache_dir: str | os.PathLike,
    config: PreprocessConfig | None = None,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, int]:
    """Cache every scan of one or several LUNA16-layout folders; skip scans already cached and valid.

    Several folders make one training set (phantoms and nodules inserted into real CT, say): each
    scan keeps its own folder's subset as its fold and its own folder's annotations; a seriesuid
    in two folders is refused.

    Resumable: a scan's metadata is written last and atomically, so an interrupted run leaves
    only complete scans or none; invalid ones (truncated, corrupt, other config) are rebuilt.

    Args:
        data_dirs: folder(s) of ``subset<k>/<uid>.mhd``, ``annotations.csv``, optional
            ``annotations_excluded.csv``.
        cache_dir: the cache folder (created).
        config: pre-processing (default: the library's defaults, 1 mm isotropic).
        workers: processes resampling scans in parallel.
        progress: show a tqdm progress bar.

    Returns:
        ``{"scans": n, "built": b, "skipped": n - b}``.
    """
    config = config or PreprocessConfig()
    spacing = np.asarray(config.spacing_xyz_mm)
    if not np.allclose(spacing, spacing[0]):
        raise UserInputError(f"pre-processing spacing {tuple(spacing)}: training needs an isotropic spacing.")
    folders = [Path(data_dirs)] if isinstance(data_dirs, (str, os.PathLike)) else [Path(d) for d in data_dirs]
    folders = [folder.resolve() for folder in folders]
    cache_dir = Path(cache_dir)
    check_output_folder(cache_dir, "--cache")
    scans: list[SourceScan] = []
    spheres: dict[str, dict[str, _Spheres]] = defaultdict(dict)
    for data_dir in folders:
        scans += _folder_scans(data_dir, {scan.seriesuid: scan.source for scan in scans}, spheres)
    scans.sort(key=lambda scan: scan.seriesuid)
    scans_dir = cache_dir / "scans"
    scans_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(cache_dir / "cache.json") as handle:
        json.dump({"format": CACHE_FORMAT, "version": CACHE_VERSION, "data_dirs": [str(d) for d in folders],
                   "preprocess": config.to_dict()}, handle, indent=2)
    preprocess = json.loads(json.dumps(config.to_dict()))
    todo = []
    for scan in tqdm(scans, desc="checking cache", unit="scan", disable=not progress):
        problem = scan_problem(scans_dir / f"{scan.seriesuid}.json", preprocess)
        if problem is not None:
            if problem != "not cached":
                log.warning("%s: %s; rebuilding it", scan.seriesuid, problem)
            todo.append((scan, scans_dir, preprocess, dict(spheres.get(scan.seriesuid, {}))))
    bar = tqdm(total=len(todo), desc="caching", unit="scan", disable=not progress)
    with map_in_processes(_cache_one, todo, workers, ordered=False) as built:  # each scan writes its own files
        for _ in built:
            bar.update()
    bar.close()
    return {"scans": len(scans), "built": len(todo), "skipped": len(scans) - len(todo)}


def _folder_scans(data_dir: Path, known: dict[str, Path], spheres: dict[str, dict[str, _Spheres]]
                  ) -> list[SourceScan]:
    """The scans of one LUNA16-layout folder, with its findings added to ``spheres`` (by uid);
    a uid already in ``known`` (an earlier folder's scans) is refused."""
    scans = find_luna16_scans(data_dir)
    for scan in scans:
        if scan.seriesuid in known:
            raise UserInputError(f"{scan.source}: seriesuid {scan.seriesuid} is also {known[scan.seriesuid]}; "
                                 "the folders of one cache must not share scans.")
    for kind, name, required in (("annotations", "annotations.csv", True),
                                 ("excluded", "annotations_excluded.csv", False)):
        path = data_dir / name
        if not path.is_file() and not required:
            continue
        for uid, value in _findings_by_uid(read_annotations(path)).items():
            spheres[uid][kind] = value
    unknown = sorted(set(spheres) - {scan.seriesuid for scan in scans} - set(known))
    if unknown:
        log.warning("%s: %d annotated seriesuid(s) have no scan, e.g. %s", data_dir, len(unknown), unknown[0])
    return scans


def read_cache_info(cache_dir: str | os.PathLike) -> dict[str, Any]:
    """``cache.json``: format, version, ``data_dirs`` (the folders it was built from; a cache
    written before several folders were possible names one, as ``data_dir``) and the
    ``preprocess`` config dict."""
    path = Path(cache_dir) / "cache.json"
    if not path.is_file():
        raise UserInputError(f"{cache_dir}: not a training cache (no cache.json); run scpm-train preprocess.")
    try:
        info = read_document(path, CACHE_FORMAT, CACHE_VERSION, "a scpm-train cache description")
    except DocumentError as error:
        raise UserInputError(f"{path}: {error.reason}; run scpm-train preprocess again.") from None
    if isinstance(info.get("data_dir"), str) and "data_dirs" not in info:
        info["data_dirs"] = [info.pop("data_dir")]
    folders = info.get("data_dirs")
    if (not isinstance(folders, list) or not folders or not all(isinstance(d, str) for d in folders)
            or not isinstance(info.get("preprocess"), dict)):
        raise UserInputError(f"{path}: the cache description lacks its data folders or preprocess settings; "
                             "run scpm-train preprocess again.")
    try:
        PreprocessConfig.from_dict(info["preprocess"])
    except UserInputError as error:
        raise UserInputError(f"{path}: its preprocess settings are not usable ({str(error).rstrip('.')}); "
                             "run scpm-train preprocess again.") from None
    return info


def _sphere_centers(records: list[dict[str, Any]]) -> np.ndarray:
    return np.asarray([r["center_zyx_vox"] for r in records], dtype=np.float64).reshape(-1, 3)


def _sphere_radii(records: list[dict[str, Any]]) -> np.ndarray:
    return np.asarray([r["radius_vox"] for r in records], dtype=np.float64).reshape(-1)


def _findings(seriesuid: str, records: list[dict[str, Any]]) -> Findings:
    return Findings.from_columns([seriesuid] * len(records),
                                 np.asarray([r["center_xyz_mm"] for r in records], dtype=np.float64).reshape(-1, 3),
                                 [r["diameter_mm"] for r in records])


def load_cache(cache_dir: str | os.PathLike, checksum: bool = True,
               seriesuids: Sequence[str] | None = None) -> list[CachedScan]:
    """Every cached scan (or those of ``seriesuids``), sorted by uid, after checking its files.

    Raises:
        UserInputError: the folder is not a cache, or a scan's files are missing or corrupt
            (naming the scan and telling to re-run ``scpm-train preprocess``, which rebuilds it).
    """
    cache_dir = Path(cache_dir)
    info = read_cache_info(cache_dir)
    paths = sorted((cache_dir / "scans").glob("*.json"))
    if seriesuids is not None:
        wanted = set(seriesuids)
        paths = [p for p in paths if p.stem in wanted]
    if not paths:
        raise UserInputError(f"{cache_dir}: the cache holds no scans; run scpm-train preprocess.")
    scans = []
    for path in paths:
        problem = scan_problem(path, info["preprocess"], checksum)
        if problem is not None:
            raise UserInputError(
                f"{path}: {problem}; run scpm-train preprocess --data {' '.join(info['data_dirs'])} "
                f"--cache {cache_dir} to rebuild it."
            )
        metadata = read_document(path, CACHE_FORMAT, CACHE_VERSION, _SCAN_METADATA)
        nodules, excluded = metadata["nodules"], metadata["excluded"]
        uid = metadata["seriesuid"]
        scans.append(CachedScan(
            seriesuid=uid,
            fold=int(metadata["fold"]),
            image_path=path.parent / metadata["image"]["file"],
            shape_zyx=tuple(metadata["shape_zyx"]),
            crop_start_zyx=tuple(metadata["crop_start_zyx"]),
            resampled_shape_zyx=tuple(metadata["resampled"]["shape_zyx"]),
            centers_zyx_vox=_sphere_centers(nodules),
            radii_vox=_sphere_radii(nodules),
            excluded_centers_zyx_vox=_sphere_centers(excluded),
            excluded_radii_vox=_sphere_radii(excluded),
            annotations=_findings(uid, nodules),
            excluded=_findings(uid, excluded),
            source=Path(metadata["source"]),
        ))
    return scans
