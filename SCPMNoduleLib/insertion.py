"""Nodules inserted into real CT: ground truth on real anatomy without annotating anything.

A synthetic nodule is defined in world LPS millimetres (a sphere, or the phantom's lobulated or
spiculated blob, :func:`~SCPMNoduleLib.phantom.raster.draw_sphere`; solid, ground-glass or
part-solid) and rendered into the scan's own grid the way the scanner would have seen it:

1. **Partial volume.** Each voxel's value is the shape's average over the voxel's extent,
   including the slice thickness (the voxel's extent along the slice axis; contiguous slices).
   The voxel is cut into ``n = ⌈spacing / h⌉`` sub-cells per axis, ``h = max(subvoxel_mm,
   radius · subvoxel_fraction)`` (the soft edge is exact to second order in h / radius), and the phantom's
   soft-edged rasteriser draws the shape on that fine grid (its sub-cell ramp is exact to second
   order), then each voxel takes the mean of its ``n_z·n_y·n_x`` sub-cells: the cover
   ``c ∈ [0, 1]``. So a 4 mm nodule in a 5 mm slice has the low contrast a scanner gives it.
   The fine grid is the scan's own axes, so the shape is drawn in the frame
   ``q = Dᵀ (w - o)`` (``D`` the direction matrix, orthonormal) and its bump directions are
   turned into that frame: the nodule lands where its world centre says, through flips and
   oblique directions.
2. **What the lesion adds, vessels kept.** HU are linear in attenuation, so a lesion adds to what
   a voxel holds rather than replacing it. A lesion of HU μ fills the air of the parenchyma
   (level ``P``, the median of the lung around it); a voxel already denser than μ (a vessel, an
   airway wall, the chest wall) gets nothing: with ``T₀ = P + V`` the voxel's own density, where
   ``V = max(0, S - P - 2σ, I - P - 3σ)`` is what denser structures add (``I`` the scan, ``S``
   it smoothed over ``smooth_mm`` in-plane, ``σ`` the parenchyma's noise: the smoothed term finds
   wide vessels without following the noise, the other the peak of a thin one), the lesion leaves
   ``T = T₀ + c · max(0, μ - T₀)`` (a part-solid core repeats this on ``T``). Ground glass
   (-650 … -350 HU) thus keeps every vessel through it visible; a solid lesion (0 … 60 HU) hides
   thin vessels as a real one does.
3. **Scanner blur.** The added field ``T - T₀`` is blurred in-plane by the scanner's Gaussian
   point spread (``psf_sigma_mm``), which keeps its sum: the lesion's integral HU, i.e. its
   volume times its contrast, is what the scan shows.
4. **Noise.** The written voxel is ``scan + blurred(T - T₀)``: the scan's own noise is never
   removed, so noise inside the lesion has the level and texture (the noise power spectrum of this
   scanner, kernel and dose) of the parenchyma it sits in. That is also the physics: CT noise is
   set by the projections through the whole body, which a small lesion hardly changes.

Placement is in the lungs found by :func:`~SCPMNoduleLib.lungs.find_lungs` (isolated: deeper than
radius + gap; juxtapleural: centre 0.4-0.8 radii inside the pleura; juxtavascular: touching a
vessel), where vessels and airways take at most ``max_hidden_fraction`` of the ball
(:func:`~SCPMNoduleLib.phantom.findings.taken_share`), away from earlier nodules and from the
findings a scan already holds (:class:`Box`), which go to ``annotations_excluded.csv``.
Everything is drawn from the seed. :mod:`~SCPMNoduleLib.insertion_writer` writes datasets in
LUNA16's layout.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .config_dict import check_choice, invalid_setting
from .errors import UserInputError
from .lungs import LungFinding, find_lungs
from .phantom.config import NODULE_KINDS, NODULE_LOCATIONS, NODULE_MARGINS, PhantomConfig
from .phantom.findings import choose, margin_bumps, part_solid_core, power_law, taken_share
from .phantom.raster import draw_sphere
from .phantom.scanner import Nodule
from .quasirandom import unit_ball_samples
from .scan_geometry import ScanGeometry
from .triples import float_triple

__all__ = ["Box", "InsertedNodule", "InsertionConfig", "NoduleRequest", "ScanForInsertion", "insert_nodules",
           "lesion_cover", "read_boxes"]

log = logging.getLogger(__name__)

_BALL = unit_ball_samples(512)
_DIRECTIONS = unit_ball_samples(4096) / np.linalg.norm(unit_ball_samples(4096), axis=1, keepdims=True)
_FINE_CELLS = 1 << 22
"""Sub-cells drawn at once (a slab of whole voxels)."""


@dataclass(frozen=True)
class InsertionConfig:
    """What shapes inserted nodules; ranges ``(low, high)`` are drawn uniformly per nodule.

    The appearance defaults are the phantom's (:class:`~SCPMNoduleLib.phantom.PhantomConfig`);
    weights follow :data:`~SCPMNoduleLib.phantom.NODULE_KINDS`, ``NODULE_MARGINS`` and
    ``NODULE_LOCATIONS``.

    Attributes:
        diameter_mm: sizes, drawn from p(d) ∝ d^-``diameter_exponent``.
        psf_sigma_mm: the scanner's in-plane point spread (Gaussian standard deviation).
        subvoxel_mm, subvoxel_fraction: the partial-volume integration's sub-cells are at most
            the larger of ``subvoxel_mm`` and this fraction of the radius.
        smooth_mm: in-plane scale of the background estimate that finds vessels under a lesion.
        max_hidden_fraction: largest share of a placed nodule's ball that vessels and airways take.
        gap_mm: least distance between a nodule and another nodule or an existing finding.
        tries: candidate centres drawn per placement.
    """

    diameter_mm: tuple[float, float] = (3.0, 30.0)
    diameter_exponent: float = PhantomConfig.diameter_exponent
    kind_weights: tuple[float, float, float] = PhantomConfig.kind_weights
    margin_weights: tuple[float, float, float] = PhantomConfig.margin_weights
    location_weights: tuple[float, float, float] = PhantomConfig.location_weights
    hu_solid: tuple[float, float] = PhantomConfig.hu_solid
    hu_ground_glass: tuple[float, float] = PhantomConfig.hu_ground_glass
    part_solid_core: tuple[float, float] = PhantomConfig.part_solid_core
    psf_sigma_mm: float = 0.6
    subvoxel_mm: float = 0.35
    subvoxel_fraction: float = 0.125
    smooth_mm: float = 1.0
    max_hidden_fraction: float = PhantomConfig.max_hidden_fraction
    gap_mm: float = PhantomConfig.nodule_gap_mm
    tries: int = 512

    def __post_init__(self) -> None:
        low, high = self.diameter_mm
        if not 0 < low <= high:
            raise invalid_setting(self, "diameter_mm", "is not 0 < smallest <= largest")
        for name in ("kind_weights", "margin_weights", "location_weights"):
            weights = getattr(self, name)
            if min(weights) < 0 or sum(weights) <= 0:
                raise invalid_setting(self, name, "is not non-negative weights, not all zero")


@dataclass(frozen=True)
class NoduleRequest:
    """One nodule asked for; a field left None is drawn as :class:`InsertionConfig` says.

    ``center_xyz_mm`` (world LPS) puts the nodule there, refused when it is outside the lungs; it
    is then not checked for vessels (it was asked for).
    """

    diameter_mm: float | None = None
    kind: str | None = None
    margin: str | None = None
    location: str | None = None
    center_xyz_mm: tuple[float, float, float] | None = None
    hu: float | None = None

    def __post_init__(self) -> None:
        for name, choices in (("kind", NODULE_KINDS), ("margin", NODULE_MARGINS), ("location", NODULE_LOCATIONS)):
            if getattr(self, name) is not None:
                check_choice(self, name, choices)


@dataclass(frozen=True)
class InsertedNodule:
    """An inserted nodule: its truth (``nodule``, an annotation) and how it was rendered.

    Attributes:
        nodule: world centre, diameter (of the core sphere; lobes and spicules reach beyond),
            kind, location, margin; ``included`` True.
        hu: the lesion's HU (a part-solid nodule's ground glass); ``core_hu`` its solid core's.
        parenchyma_hu: ``P``, the median HU of the lung around it; ``noise_hu`` the robust
            standard deviation there.
        hidden_share: share of its ball that vessels and airways took.
    """

    nodule: Nodule
    hu: float
    core_hu: float | None
    parenchyma_hu: float
    noise_hu: float
    hidden_share: float


@dataclass(frozen=True)
class Box:
    """A finding the scan already holds (a tumour), as a world box: kept free of inserted
    nodules and written to ``annotations_excluded.csv`` as the sphere around it."""

    min_xyz_mm: tuple[float, float, float]
    max_xyz_mm: tuple[float, float, float]

    def distance(self, points_xyz_mm: np.ndarray) -> np.ndarray:
        """``(N, 3)`` world points -> ``(N,)`` mm to the box (0 inside)."""
        outside = np.maximum(np.asarray(self.min_xyz_mm) - points_xyz_mm, points_xyz_mm - np.asarray(self.max_xyz_mm))
        return np.linalg.norm(np.maximum(outside, 0.0), axis=-1)

    @property
    def sphere(self) -> tuple[np.ndarray, float]:
        """Centre and diameter of the sphere through its corners."""
        low, high = np.asarray(self.min_xyz_mm), np.asarray(self.max_xyz_mm)
        return 0.5 * (low + high), float(np.linalg.norm(high - low))


def read_boxes(path: str | os.PathLike) -> list[Box]:
    """The per-slice boxes of a ``*_boxes.csv`` (columns ``center_x_mm, center_y_mm,
    center_z_mm, width_mm, height_mm``: world LPS, width along x, height along y), each as thick
    as the spacing of its slices (the median step between the listed slices' z)."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        values = np.array([[float(row[k]) for k in ("center_x_mm", "center_y_mm", "center_z_mm", "width_mm",
                                                     "height_mm")] for row in rows]).reshape(-1, 5)
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise UserInputError(f"{path}: not a boxes table with center_x_mm, center_y_mm, center_z_mm, "
                             f"width_mm and height_mm ({error}).") from None
    steps = np.diff(np.unique(values[:, 2]))
    thickness = float(np.median(steps)) if len(steps) else 1.0
    half = np.column_stack([values[:, 3] / 2, values[:, 4] / 2, np.full(len(values), thickness / 2)])
    return [Box(float_triple(c - h), float_triple(c + h)) for c, h in zip(values[:, :3], half)]


def _reach(radius: float, bumps: tuple[np.ndarray, np.ndarray, np.ndarray] | None) -> float:
    """The blob's largest radius, over many directions and the bumps' own."""
    if bumps is None:
        return radius
    directions, heights, powers = bumps
    u = np.concatenate([_DIRECTIONS, directions])
    cosine = np.maximum(u @ directions.T, 0.0)
    return float(radius * (1.0 + (heights * cosine ** powers).sum(axis=1)).max())


def lesion_cover(geometry: ScanGeometry, center_xyz_mm: np.ndarray, radius_mm: float,
                 bumps_xyz: tuple[np.ndarray, np.ndarray, np.ndarray] | None, start_zyx: np.ndarray,
                 stop_zyx: np.ndarray, subvoxel_mm: float = InsertionConfig.subvoxel_mm,
                 subvoxel_fraction: float = InsertionConfig.subvoxel_fraction) -> np.ndarray:
    """The share of each voxel of the box ``[start, stop)`` that the blob fills: ``(stop - start)``
    float32 in [0, 1] (module docstring, step 1).

    Args:
        geometry: the scan's grid (its direction must be orthonormal).
        center_xyz_mm: the blob's centre, world LPS.
        radius_mm: its core sphere's radius.
        bumps_xyz: lobes or spicules as :func:`~SCPMNoduleLib.phantom.raster.draw_sphere` takes
            them, directions in world (x, y, z); None for a sphere.
        start_zyx, stop_zyx: the box in voxels.
        subvoxel_mm, subvoxel_fraction: sub-cells are at most the larger of ``subvoxel_mm`` and
            ``subvoxel_fraction · radius_mm``.
    """
    spacing = geometry.spacing_xyz_mm[::-1].astype(np.float64)
    n = np.maximum(1, np.ceil(spacing / max(subvoxel_mm, subvoxel_fraction * radius_mm) - 1e-9)).astype(np.int64)
    fine = spacing / n
    start, stop = np.asarray(start_zyx, np.int64), np.asarray(stop_zyx, np.int64)
    shape = stop - start
    # fine cell f of the box lies at voxel coordinate start + (f + 0.5)/n - 0.5, i.e. at f·fine in
    # the frame whose origin is (start - 0.5 + 0.5/n) voxels: the centre in that frame, in mm
    center = (geometry.world_to_index(np.asarray(center_xyz_mm, np.float64)) - start) * spacing + 0.5 * (spacing - fine)
    bumps = None
    if bumps_xyz is not None:
        directions = (np.asarray(bumps_xyz[0]) @ geometry.direction)[:, ::-1]  # Dᵀ v, as (z, y, x)
        bumps = (directions, bumps_xyz[1], bumps_xyz[2])
    cover = np.zeros(shape, np.float32)
    plane = int(n[1] * shape[1] * n[2] * shape[2] * n[0])
    step = max(1, _FINE_CELLS // max(plane, 1))
    for z0 in range(0, int(shape[0]), step):
        z1 = min(int(shape[0]), z0 + step)
        cells = np.zeros(((z1 - z0) * n[0], shape[1] * n[1], shape[2] * n[2]), np.float32)
        draw_sphere(cells, fine, center - np.array([z0 * spacing[0], 0.0, 0.0]), radius_mm, 1.0, bumps)
        cover[z0:z1] = cells.reshape(z1 - z0, n[0], shape[1], n[1], shape[2], n[2]).mean(axis=(1, 3, 5))
    return cover


class ScanForInsertion:
    """A scan prepared for insertion: its HU, grid, lungs and parenchyma, found once and shared
    by every copy drawn from it.

    Raises:
        UserInputError: no lungs in the scan, or a sheared grid (non-orthonormal direction).
    """

    def __init__(self, image: sitk.Image, name: str, config: InsertionConfig | None = None) -> None:
        self.name, self.config = name, config or InsertionConfig()
        self.image = image
        self.geometry = ScanGeometry.from_image(image)
        direction = self.geometry.direction
        if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
            raise UserInputError(f"{name}: the direction matrix is not orthonormal (a sheared grid); "
                                 "resample the scan before inserting nodules.")
        self.hu = sitk.GetArrayFromImage(image)
        self.lungs: LungFinding = find_lungs(image)
        if not self.lungs.found:
            raise UserInputError(f"{name}: no lungs found ({self.lungs.reason}); nodules go into the lungs "
                                 "of a chest CT.")
        self.spacing = self.geometry.spacing_xyz_mm[::-1]
        self.axial = self.geometry.axial_axis
        lung = self.lungs.labels > 0
        coarse_spacing = self.lungs.coarse.spacing_xyz_mm[::-1]
        in_plane = np.delete(coarse_spacing, self.axial).min()
        # distance from a block centre to the nearest non-lung block centre, less half a block:
        # the pleura lies between the two
        self.depth = ndimage.distance_transform_edt(lung, sampling=coarse_spacing) - 0.5 * in_plane
        self.blocks = np.argwhere(lung)
        offsets = np.zeros((9, 3), np.int64)
        offsets[:, [a for a in range(3) if a != self.axial]] = np.array(list(np.ndindex(3, 3))) - 1
        self._neighbours = offsets
        rng = np.random.default_rng(0)
        sample = self._sample_points(rng, 20000)[0]
        smooth = self.smooth_at(sample)
        self.parenchyma = (float(np.percentile(smooth, 5)), float(np.percentile(smooth, 75)))
        level = self.hu_at(sample)
        self.parenchyma_median = float(np.median(level))
        self.noise = float(1.4826 * np.median(np.abs(level - self.parenchyma_median)))

    def _sample_points(self, rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
        """``count`` random points in the lungs: voxel indices (z, y, x) and depth (mm)."""
        pick = self.blocks[rng.integers(0, len(self.blocks), count)] + rng.uniform(-0.5, 0.5, (count, 3))
        depth = ndimage.map_coordinates(self.depth, pick.T, order=1, mode="nearest")
        block = self.lungs.block
        return pick * block + 0.5 * (block - 1), depth

    def _voxels(self, index_zyx: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(index_zyx).astype(np.int64), 0, np.asarray(self.hu.shape) - 1)

    def hu_at(self, index_zyx: np.ndarray) -> np.ndarray:
        """HU of the nearest voxels to ``(..., 3)`` indices."""
        v = self._voxels(index_zyx)
        return self.hu[v[..., 0], v[..., 1], v[..., 2]].astype(np.float64)

    def smooth_at(self, index_zyx: np.ndarray) -> np.ndarray:
        """Mean HU of the 3×3 in-plane voxels around the nearest voxels to ``(..., 3)`` indices."""
        v = self._voxels(index_zyx)[..., None, :] + self._neighbours
        v = np.clip(v, 0, np.asarray(self.hu.shape) - 1)
        return self.hu[v[..., 0], v[..., 1], v[..., 2]].astype(np.float64).mean(axis=-1)

    def in_lung(self, index_zyx: np.ndarray) -> np.ndarray:
        """Whether the voxels nearest to ``(..., 3)`` indices lie in a lung (not its margin)."""
        blocks = np.rint(np.asarray(index_zyx)).astype(np.int64) // self.lungs.block
        inside = np.all((blocks >= 0) & (blocks < self.lungs.labels.shape), axis=-1)
        blocks = np.clip(blocks, 0, np.asarray(self.lungs.labels.shape) - 1)
        return inside & (self.lungs.labels[blocks[..., 0], blocks[..., 1], blocks[..., 2]] > 0)

    def hidden_share(self, centers_xyz_mm: np.ndarray, radius: float) -> np.ndarray:
        """Share of each ball that vessels and airways take (:func:`taken_share` on the smoothed
        HU, the parenchyma's range measured in this scan)."""
        index = self.geometry.world_to_index(centers_xyz_mm[:, None, :] + radius * _BALL[None])
        return taken_share(self.smooth_at(index), self.in_lung(index), self.parenchyma)

    def place(self, rng: np.random.Generator, radius: float, location: str, taken: Sequence[tuple[np.ndarray, float]],
              boxes: Sequence[Box]) -> tuple[np.ndarray, float] | None:
        """A world centre for a nodule of ``radius`` at ``location`` and its hidden share, or None
        (module docstring); ``taken`` holds the (centre, radius) of nodules placed before."""
        config = self.config
        points, depth = self._sample_points(rng, config.tries)
        if location == "juxtavascular":
            smooth = self.smooth_at(points)
            vessel = (smooth > self.parenchyma[1] + 100.0) & (smooth < 300.0)
            side = rng.normal(size=(config.tries, 3))
            side *= radius / np.linalg.norm(side, axis=1, keepdims=True)
            centers = self.geometry.index_to_world(points) + side
            points = self.geometry.world_to_index(centers)
            depth = depth - radius
            ok = vessel & (depth > radius + config.gap_mm)
        else:
            centers = self.geometry.index_to_world(points)
            near = (depth > 0.4 * radius) & (depth < 0.8 * radius)
            ok = near if location == "juxtapleural" else depth > radius + config.gap_mm
        reach = radius / self.spacing
        ok &= np.all((points - reach >= 0) & (points + reach <= np.asarray(self.hu.shape) - 1), axis=1)
        ok &= self.in_lung(points)
        for box in boxes:
            ok &= box.distance(centers) > radius + config.gap_mm
        for center, other in taken:
            ok &= np.linalg.norm(centers - center, axis=1) > radius + other + config.gap_mm
        share = np.ones(len(centers))
        share[ok] = self.hidden_share(centers[ok], radius)
        ok &= share <= config.max_hidden_fraction
        if location == "juxtavascular" and ok.any():
            ok[ok] &= self.hidden_share(centers[ok], 1.3 * radius) > 0.02  # it touches the vessel
        hits = np.flatnonzero(ok)
        return (centers[hits[0]], float(share[hits[0]])) if len(hits) else None

    def render(self, hu: np.ndarray, center_xyz_mm: np.ndarray, radius: float,
               bumps: tuple[np.ndarray, np.ndarray, np.ndarray] | None, lesion_hu: float,
               core: tuple[np.ndarray, float, float] | None = None) -> tuple[float, float]:
        """Add a lesion to ``hu`` (this scan's array or a copy) in place (module docstring,
        steps 1-4); ``core`` is a part-solid core's (centre, radius, HU). Returns the
        parenchyma's level and noise around it."""
        config, spacing, shape = self.config, self.spacing, np.asarray(hu.shape)
        center_index = self.geometry.world_to_index(center_xyz_mm)
        pad = np.ceil(3.0 * config.psf_sigma_mm / spacing).astype(np.int64) + 1
        pad[self.axial] = 0
        half = np.ceil(_reach(radius, bumps) / spacing).astype(np.int64) + 1 + pad
        start = np.maximum(np.floor(center_index).astype(np.int64) - half, 0)
        stop = np.minimum(np.floor(center_index).astype(np.int64) + half + 2, shape)
        box = tuple(slice(a, b) for a, b in zip(start, stop))
        cover = lesion_cover(self.geometry, center_xyz_mm, radius, bumps, start, stop, config.subvoxel_mm,
                             config.subvoxel_fraction)
        scan = hu[box].astype(np.float32)
        smooth_sigma = np.where(np.arange(3) == self.axial, 0.0, config.smooth_mm / spacing)
        smooth = ndimage.gaussian_filter(scan, smooth_sigma, mode="nearest")
        grid = np.stack(np.meshgrid(*(np.arange(a, b) for a, b in zip(start, stop)), indexing="ij"), -1)
        shell = (self.in_lung(grid) & (cover == 0) & (smooth > self.parenchyma[0] - 100.0)
                 & (smooth < self.parenchyma[1] + 100.0))
        if shell.sum() >= 20:
            level = float(np.median(scan[shell]))
            noise = float(1.4826 * np.median(np.abs(scan[shell] - level)))
        else:
            level, noise = self.parenchyma_median, self.noise
        own = level + np.maximum(np.maximum(smooth - level - 2.0 * noise, scan - level - 3.0 * noise), 0.0)
        lesion = own + cover * np.maximum(lesion_hu - own, 0.0)
        if core is not None:
            core_cover = lesion_cover(self.geometry, core[0], core[1], None, start, stop, config.subvoxel_mm,
                                      config.subvoxel_fraction)
            lesion += core_cover * np.maximum(core[2] - lesion, 0.0)
        psf = np.where(np.arange(3) == self.axial, 0.0, config.psf_sigma_mm / spacing)
        added = ndimage.gaussian_filter(lesion - own, psf, mode="constant")
        result = scan + added
        if np.issubdtype(hu.dtype, np.integer):
            limits = np.iinfo(hu.dtype)
            result = np.clip(np.rint(result), limits.min, limits.max)
        hu[box] = result.astype(hu.dtype)
        return level, noise


@dataclass(frozen=True)
class _Plan:
    """A request with every appearance field decided."""

    diameter_mm: float
    kind: str
    margin: str
    location: str
    center_xyz_mm: tuple[float, float, float] | None
    hu: float | None


def _plan(rng: np.random.Generator, request: NoduleRequest, config: InsertionConfig, largest_mm: float) -> _Plan:
    """A request with every field drawn that it leaves open (all drawn, in a fixed order, for determinism)."""
    high = max(config.diameter_mm[0], min(config.diameter_mm[1], largest_mm))
    diameter = power_law(rng, config.diameter_mm[0], high, config.diameter_exponent) \
        if config.diameter_mm[0] < high else config.diameter_mm[0]
    kind = choose(rng, NODULE_KINDS, config.kind_weights)
    margin = choose(rng, NODULE_MARGINS, config.margin_weights)
    location = choose(rng, NODULE_LOCATIONS, config.location_weights)
    kind = request.kind or kind
    margin = request.margin or ("smooth" if kind == "ground_glass" else margin)
    return _Plan(request.diameter_mm or diameter, kind, margin, request.location or location, request.center_xyz_mm,
                 request.hu)


def insert_nodules(scan: ScanForInsertion, count: int, rng: np.random.Generator,
                   requests: Sequence[NoduleRequest] = (), boxes: Sequence[Box] = ()
                   ) -> tuple[sitk.Image, list[InsertedNodule]]:
    """A copy of ``scan`` with ``requests`` and ``count`` more nodules drawn from ``rng``.

    Nodules are placed largest first; one with no room at its location is placed isolated, one
    with no room at all is left out (logged). Returns the image (the scan's pixel type and
    geometry) and the nodules, in the order placed.

    Raises:
        UserInputError: a requested centre outside the scan's lungs.
    """
    config = scan.config
    for request in requests:
        if request.center_xyz_mm is not None and not scan.in_lung(
                scan.geometry.world_to_index(np.asarray(request.center_xyz_mm, np.float64))):
            x, y, z = request.center_xyz_mm
            raise UserInputError(f"{scan.name}: the requested centre ({x:.1f}, {y:.1f}, {z:.1f}) mm lies "
                                 "outside the lungs, where a lung nodule cannot be inserted.")
    largest = 2.0 * 0.6 * float(scan.depth.max())
    plans = [_plan(rng, request, config, largest) for request in [*requests, *[NoduleRequest()] * count]]
    order = sorted(range(len(plans)), key=lambda i: (plans[i].center_xyz_mm is None, -plans[i].diameter_mm))
    hu = scan.hu.copy()
    taken: list[tuple[np.ndarray, float]] = []
    inserted: list[InsertedNodule] = []
    for i in order:
        plan = plans[i]
        radius = 0.5 * plan.diameter_mm
        location = plan.location
        if plan.center_xyz_mm is not None:
            center = np.asarray(plan.center_xyz_mm, np.float64)
            share = float(scan.hidden_share(center[None], radius)[0])
        else:
            placed = scan.place(rng, radius, location, taken, boxes)
            if placed is None and location != "isolated":
                location = "isolated"
                placed = scan.place(rng, radius, location, taken, boxes)
            if placed is None:
                log.warning("%s: no room for a %.1f mm %s nodule; left out", scan.name, plan.diameter_mm, plan.kind)
                continue
            center, share = placed
        bumps = margin_bumps(rng, plan.margin)
        ground_glass = plan.kind != "solid"
        lesion_hu = plan.hu if plan.hu is not None else float(
            rng.uniform(*(config.hu_ground_glass if ground_glass else config.hu_solid)))
        core = None
        if plan.kind == "part_solid":
            core_center, core_radius = part_solid_core(rng, center, radius, config.part_solid_core)
            core = (core_center, core_radius, float(rng.uniform(*config.hu_solid)))
        level, noise = scan.render(hu, center, radius, bumps, lesion_hu, core)
        taken.append((center, radius))
        index = scan.geometry.world_to_index(center)
        nodule = Nodule(float_triple(center), float_triple(index), plan.diameter_mm, plan.kind, location,
                        plan.margin, True)
        inserted.append(InsertedNodule(nodule, lesion_hu, core[2] if core else None, level, noise, share))
    image = sitk.GetImageFromArray(hu)
    image.CopyInformation(scan.image)
    return image, inserted
