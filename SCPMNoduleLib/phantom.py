"""Synthetic chest CT phantoms with known nodules, written in LUNA16's layout.

A phantom is drawn in Hounsfield units on the scan's own voxel grid, in the "patient frame"
``p_zyx_mm = index_zyx * spacing_zyx`` (x towards the patient's left, y posterior, z superior,
as in LPS), then stored with an optional flip of the array axes and a small oblique rotation, so
that world = origin + D · diag(spacing) · index_xyz holds for the stored image and the anatomy
keeps its place in world space.

Anatomy (all sizes scale with the body, which fills most of the field of view):

* body: an ellipse with a flattened back on a patient table; skin-side fat, a muscle layer, a
  thoracic cavity; spine (vertebral bodies with discs, canal, posterior arch), sternum, ribs as
  oblique bony bands in the chest wall;
* mediastinum (fat) with heart (ellipsoid), aorta (ascending, arch, descending), pulmonary trunk,
  trachea; liver and spleen below a domed diaphragm;
* two lungs (parenchyma about -850 HU, denser posteriorly) following the chest wall, each with an
  arterial and a venous tree and an airway tree. Trees are grown by *territory splitting*: a
  branch owns a set of points sampled in the lung, runs towards their centroid, and splits them
  in two across their principal axis; its radius follows Murray's law, r = r_root · (n / N)^(1/3)
  for a territory of n of the N points, so vessels taper from about 6 mm at the hilum to below a
  millimetre at the periphery;
* nodules: diameters from a power law p(d) ∝ d^-a on [3, 30] mm (skewed to small ones), solid,
  ground-glass or part-solid, with smooth, lobulated or spiculated margins, isolated,
  juxtavascular (touching a vessel) or juxtapleural (touching the chest wall), each placed where
  vessels and airways take at most a fifth of its volume, so that every annotated nodule can be
  seen; and excluded findings (nodules under 3 mm, calcified granulomas) for
  ``annotations_excluded.csv``.

Partial volume comes from analytic soft edges: a shape of signed distance d (mm, positive
outside) covers ``clip(0.5 - d / w, 0, 1)`` of a voxel, a ramp of width w = |n ⊙ spacing| along the
surface normal n (the box profile's standard deviation times √12). On a curved surface a
symmetric ramp adds volume (its outer half covers more area than its inner half), so tubes and
nodules are drawn with their radius lowered by the ramp's variance over the curvature:
r - w² / (24 r) for a tube, r - w² / (12 r) for a sphere, exact to second order. Sub-voxel
vessels are splatted: each sample of length h along the
centre line adds π r² h / voxel_volume of tissue to its 8 neighbouring voxels (trilinear weights).
The scanner's point spread and correlated noise come from one Gaussian filter applied to
(anatomy + white noise), with the white noise scaled so that the filtered noise has the drawn
standard deviation. The result is stored as int16 in [-1024, 3071].

Everything is vectorised with numpy: the body is drawn from 2D templates and per-slab analytic
fields, tubes are rasterised in batches of equal-sized local stencils, and trees grow one
generation at a time.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .errors import UserInputError
from .io import Findings, map_in_processes, write_annotations, write_seriesuids
from .plotting import save_orthogonal_slices
from .quasirandom import unit_ball_samples

log = logging.getLogger(__name__)

UID_PREFIX = "1.3.6.1.4.1.14519.5.2.1.6279.6001."
"""LIDC-IDRI's series-uid root, which every LUNA16 seriesuid starts with."""

LUNG_LABELS = {"right": 3, "left": 4}
"""Values of the two lungs in the masks, as in LUNA16's ``seg-lungs-LUNA16``."""

NODULE_KINDS = ("solid", "ground_glass", "part_solid")
NODULE_LOCATIONS = ("isolated", "juxtavascular", "juxtapleural")
NODULE_MARGINS = ("smooth", "lobulated", "spiculated")
HU_MIN, HU_MAX = -1024, 3071
_REFERENCE_BODY_HALF_WIDTH_MM = 170.0
_BALL_SAMPLES = unit_ball_samples(512)
"""About 270 quasi-random points filling the unit ball, for a nodule's hidden share."""
_PARENCHYMA_MARGIN_HU = 100.0
"""Before the scanner's blur and noise, lung voxels further than this outside the parenchyma's HU
range hold something else: a vessel, an airway or a finding (a thin vessel's splat included)."""


@dataclass(frozen=True)
class PhantomConfig:
    """Every number that shapes a phantom; ranges ``(low, high)`` are drawn uniformly per scan.

    Sizes of anatomy are given for an adult chest (body half-width 170 mm) and scaled with the
    drawn body size; nodule sizes are absolute millimetres.
    """

    matrix_x: tuple[int, int] = (120, 136)
    matrix_y: tuple[int, int] = (112, 136)
    slices: tuple[int, int] = (88, 104)
    spacing_xy_mm: tuple[float, float] = (0.6, 0.9)
    spacing_z_mm: tuple[float, float] = (0.6, 1.0)
    scan_length: tuple[float, float] = (1.2, 1.6)
    """Scan length over the body's half-width (then clipped to the ``slices`` range)."""
    body_fill: tuple[float, float] = (0.80, 0.92)
    """Body width as a fraction of the field of view."""
    body_aspect: tuple[float, float] = (0.62, 0.74)
    """Antero-posterior over lateral body size."""
    fat_mm: tuple[float, float] = (6.0, 25.0)
    muscle_mm: tuple[float, float] = (12.0, 20.0)
    lung_height_fraction: tuple[float, float] = (0.9, 1.2)
    """Lung height (base to apex) over 1.6 body half-widths."""
    table: bool = True
    oblique: bool = False
    """Store with random axis flips and a small rotation (non-identity direction matrix)."""
    max_tilt_deg: float = 8.0

    hu_air: float = -1000.0
    hu_fat: float = -100.0
    hu_muscle: float = 45.0
    hu_mediastinal_fat: float = -90.0
    hu_blood: float = 40.0
    hu_liver: float = 55.0
    hu_cortical_bone: float = 800.0
    hu_cancellous_bone: float = 230.0
    hu_disc: float = 80.0
    hu_csf: float = 15.0
    hu_rib: float = 550.0
    hu_table: float = -250.0
    hu_parenchyma: tuple[float, float] = (-875.0, -800.0)
    """Anterior and posterior (dependent) parenchyma."""
    hu_airway_wall: float = 20.0

    vessel_root_radius_mm: float = 6.0
    vessel_min_radius_mm: float = 0.4
    airway_root_radius_mm: float = 7.0
    airway_min_radius_mm: float = 1.2
    airway_wall_fraction: float = 0.25
    leaf_points: int = 3
    """A territory of this many points or fewer ends its branch."""
    branch_reach: tuple[float, float] = (0.45, 0.65)
    """A branch runs this fraction of the way from its start to its territory's centroid."""
    split_offset: float = 0.5
    """Split plane offset from the centroid, in standard deviations, drawn in ±this (asymmetry)."""
    splat_radius_voxels: float = 1.0
    """Tubes thinner than this many in-plane voxels are splatted instead of rasterised."""

    nodules: tuple[int, int] = (1, 3)
    excluded: tuple[int, int] = (0, 2)
    diameter_mm: tuple[float, float] = (3.0, 30.0)
    diameter_exponent: float = 1.8
    max_radius_depth_fraction: float = 0.6
    """A nodule's radius is at most this fraction of the lung's largest inner distance."""
    kind_weights: tuple[float, float, float] = (0.6, 0.2, 0.2)
    location_weights: tuple[float, float, float] = (0.5, 0.25, 0.25)
    margin_weights: tuple[float, float, float] = (0.55, 0.3, 0.15)
    hu_solid: tuple[float, float] = (0.0, 60.0)
    hu_ground_glass: tuple[float, float] = (-650.0, -350.0)
    part_solid_core: tuple[float, float] = (0.3, 0.6)
    hu_calcified: tuple[float, float] = (300.0, 900.0)
    excluded_small_mm: tuple[float, float] = (1.5, 2.9)
    excluded_calcified_mm: tuple[float, float] = (2.0, 8.0)
    nodule_gap_mm: float = 3.0
    max_hidden_fraction: float = 0.2
    """A finding is placed only where vessels, airways and earlier findings take at most this share
    of its ball, so that every annotated nodule can be seen (a solid nodule drawn inside a vessel of
    its own density, or a ground-glass one under it, would not be)."""

    psf_sigma_mm: tuple[float, float] = (0.45, 0.8)
    slice_profile: float = 0.35
    """Slice-profile standard deviation over slice spacing."""
    noise_hu: tuple[float, float] = (10.0, 40.0)
    coarse_mm: float = 2.0
    """Grid of the lung distance map used to place branches and nodules."""
    slab: int = 8
    """Slices drawn at once."""


SIZES: dict[str, PhantomConfig] = {
    "small": PhantomConfig(),
    "full": PhantomConfig(matrix_x=(512, 512), matrix_y=(512, 512), slices=(100, 300),
                          spacing_xy_mm=(0.5, 0.9),
                          spacing_z_mm=(0.6, 2.5), scan_length=(1.8, 2.2),
                          lung_height_fraction=(0.75, 1.0), nodules=(1, 5),
                          excluded=(0, 3)),
}


def phantom_config(size: str = "small", **overrides) -> PhantomConfig:
    """The preset ``small`` (about 128×128×96 voxels, a miniature chest) or ``full``
    (512×512×100-300, an adult chest), with any field replaced by ``overrides``."""
    if size not in SIZES:
        raise UserInputError(f"size {size!r} is not one of {', '.join(SIZES)}.")
    unknown = set(overrides) - set(PhantomConfig.__dataclass_fields__)
    if unknown:
        raise UserInputError(f"unknown phantom option(s): {', '.join(sorted(unknown))}.")
    return replace(SIZES[size], **overrides)


@dataclass(frozen=True)
class Nodule:
    """A nodule or excluded finding of a phantom.

    Attributes:
        center_xyz_mm: world LPS position of the centre (the stored image's geometry).
        center_zyx_vox: continuous index of the centre in the stored image array.
        diameter_mm: diameter of the nodule's core sphere (spicules and lobes reach beyond it).
        kind: ``solid``, ``ground_glass``, ``part_solid`` or ``calcified``.
        location: ``isolated``, ``juxtavascular`` or ``juxtapleural``.
        margin: ``smooth``, ``lobulated`` or ``spiculated``.
        included: True for ``annotations.csv``, False for ``annotations_excluded.csv``.
    """

    center_xyz_mm: tuple[float, float, float]
    center_zyx_vox: tuple[float, float, float]
    diameter_mm: float
    kind: str
    location: str
    margin: str
    included: bool


@dataclass
class Phantom:
    """A generated scan: the CT (int16 HU), its lung mask (uint8, :data:`LUNG_LABELS`) with the
    same geometry, and its findings."""

    image: sitk.Image
    lung_mask: sitk.Image
    nodules: list[Nodule] = field(default_factory=list)


# ----------------------------------------------------------------------------- soft shapes


def _cover(signed_distance_mm: np.ndarray, width_mm: float | np.ndarray) -> np.ndarray:
    """Fraction of a voxel inside a surface: ``clip(0.5 - d / w, 0, 1)``, d > 0 outside."""
    return np.clip(0.5 - signed_distance_mm / width_mm, 0.0, 1.0)


def _ellipse_distance(dx: np.ndarray, dy: np.ndarray, ax, ay) -> np.ndarray:
    """First-order signed distance to the ellipse (dx/ax)² + (dy/ay)² = 1: f / |∇f|.

    Exact on the boundary, which is all a soft edge needs (it is clipped within a voxel).
    """
    u, v = dx / ax, dy / ay
    f = u * u + v * v - 1.0
    grad = 2.0 * np.sqrt((u / ax) ** 2 + (v / ay) ** 2)
    return f / np.maximum(grad, 1e-6)


def _paint(volume: np.ndarray, cover: np.ndarray, hu) -> None:
    """In place: ``volume += cover · (hu - volume)`` (a partial-volume mixture)."""
    volume += cover * (hu - volume)


def _segment_distance_2d(x, y, a, b):
    """Distance from points (x, y) to the segment a-b in a plane."""
    abx, aby = b[0] - a[0], b[1] - a[1]
    t = np.clip(((x - a[0]) * abx + (y - a[1]) * aby) / (abx * abx + aby * aby), 0.0, 1.0)
    return np.hypot(x - a[0] - t * abx, y - a[1] - t * aby)


# ----------------------------------------------------------------------------- anatomy


@dataclass
class _Geometry:
    """Drawn anatomy parameters (mm, body-centred X right→left, Y anterior→posterior)."""

    shape_zyx: tuple[int, int, int]
    spacing_zyx: np.ndarray
    center_x: float
    center_y: float
    scale: float
    body: tuple[float, float, float]        # ax, ay, back
    inner: tuple[float, float, float]
    cavity: tuple[float, float]             # semi-axes
    lung_base_z: float
    lung_height: float
    mediastinum: tuple[float, float]        # half-width anterior, posterior
    vertebra: tuple[float, float]           # y, radius
    aorta: tuple[float, float, float]       # x, y, radius (descending)
    heart: tuple[tuple[float, float, float], tuple[float, float, float]]  # centre zyx, axes zyx
    dome: tuple[float, float]               # right, left heights
    rib: tuple[float, float, float, float]  # pitch, thickness, drop, phase

    def z_of(self, t: float) -> float:
        return self.lung_base_z + t * self.lung_height


def _draw_geometry(rng: np.random.Generator, config: PhantomConfig) -> _Geometry:
    sxy = float(rng.uniform(*config.spacing_xy_mm))
    sz = float(rng.uniform(*config.spacing_z_mm))
    nx = int(rng.integers(config.matrix_x[0], config.matrix_x[1] + 1))
    ny = int(rng.integers(config.matrix_y[0], config.matrix_y[1] + 1))
    fov = min(nx, ny / 0.8) * sxy
    ax = 0.5 * fov * rng.uniform(*config.body_fill)
    nz = int(np.clip(round(ax * rng.uniform(*config.scan_length) / sz), *config.slices))
    ay = ax * rng.uniform(*config.body_aspect)
    k = ax / _REFERENCE_BODY_HALF_WIDTH_MM
    center_y = 0.5 * (ny - 1) * sxy - 0.06 * ny * sxy
    fat = k * rng.uniform(*config.fat_mm)
    muscle = k * rng.uniform(*config.muscle_mm)
    back = 0.86 * ay
    cx, cy = ax - fat - muscle, ay - fat - muscle
    height = 1.6 * ax * rng.uniform(*config.lung_height_fraction)
    base = max(0.5 * (nz * sz - height), 0.25 * nz * sz - 0.2 * height) + rng.uniform(-0.05, 0.05) * height
    vert_r = 0.11 * ax
    vert_y = 0.98 * cy - 0.6 * vert_r
    heart_axes = (0.22 * height, 0.55 * cy, 0.42 * cx)
    heart_center = (base + 0.12 * height, -0.25 * cy, 0.17 * cx)
    return _Geometry(
        shape_zyx=(nz, ny, nx), spacing_zyx=np.array([sz, sxy, sxy]),
        center_x=0.5 * (nx - 1) * sxy, center_y=center_y, scale=k,
        body=(ax, ay, back), inner=(ax - fat, ay - fat, back - fat), cavity=(cx, cy),
        lung_base_z=base, lung_height=height,
        mediastinum=(0.2 * cx, 0.07 * cx), vertebra=(vert_y, vert_r),
        aorta=(0.2 * cx, vert_y - 0.95 * vert_r, 0.075 * ax),
        heart=(heart_center, heart_axes),
        dome=(rng.uniform(0.12, 0.2) * height, rng.uniform(0.08, 0.15) * height),
        rib=(rng.uniform(0.11, 0.13) * height, 11.0 * k, rng.uniform(0.25, 0.35) * height,
             rng.uniform(0.0, 1.0)),
    )


def _plane(geo: _Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Body-centred in-plane coordinates in mm, broadcastable: x (1, 1, nx) and y (1, ny, 1)."""
    _, ny, nx = geo.shape_zyx
    _, sy, sx = geo.spacing_zyx
    x = (np.arange(nx, dtype=np.float32) * sx - geo.center_x)[None, None, :]
    y = (np.arange(ny, dtype=np.float32) * sy - geo.center_y)[None, :, None]
    return x, y


def _templates(geo: _Geometry, config: PhantomConfig) -> dict[str, np.ndarray]:
    """The z-invariant part of the chest as 2D fields of shape (1, ny, nx)."""
    x, y = _plane(geo)
    s = float(geo.spacing_zyx[1])
    ax, ay, back = geo.body
    ix, iy, iback = geo.inner
    cx, cy = geo.cavity
    k = geo.scale
    wall = np.full(np.broadcast_shapes(x.shape, y.shape), config.hu_air, np.float32)
    if config.table:
        table_top = back + 14.0 * k - 0.0008 * x * x / k
        table = _cover(np.maximum(table_top - y, y - table_top - 10.0 * k), s) * _cover(
            np.abs(x) - 0.85 * ax, s)
        _paint(wall, table, config.hu_table)
    body = _cover(np.maximum(_ellipse_distance(x, y, ax, ay), y - back), s)
    _paint(wall, body, config.hu_fat)
    _paint(wall, _cover(np.maximum(_ellipse_distance(x, y, ix, iy), y - iback), s), config.hu_muscle)
    cavity = _cover(_ellipse_distance(x, y, cx, cy), s)
    _paint(wall, cavity, config.hu_mediastinal_fat)
    sternum = _cover(_ellipse_distance(x, y + cy + 2.0 * k, 14.0 * k, 5.0 * k), s)
    _paint(wall, sternum, config.hu_cortical_bone)
    _paint(wall, _cover(_ellipse_distance(x, y + cy + 2.0 * k, 11.0 * k, 3.0 * k), s),
           config.hu_cancellous_bone)
    vy, vr = geo.vertebra
    vertebra = _cover(np.hypot(x, y - vy) - vr, s)
    canal_y, canal_r = vy + vr + 7.0 * k, 6.5 * k
    arch = _cover(np.hypot(x, y - canal_y) - canal_r - 4.0 * k, s)
    process = _cover(_segment_distance_2d(x, y, (0.0, canal_y), (0.0, canal_y + 28.0 * k)) - 3.5 * k, s)
    transverse = _cover(_segment_distance_2d(np.abs(x), y, (0.0, canal_y - 3.0 * k),
                                             (26.0 * k, canal_y + 4.0 * k)) - 4.0 * k, s)
    _paint(wall, np.maximum.reduce([vertebra, arch, process, transverse]), config.hu_cortical_bone)
    _paint(wall, _cover(np.hypot(x, y - vy) - vr + 1.6 * k, s), config.hu_cancellous_bone)
    _paint(wall, _cover(np.hypot(x, y - canal_y) - canal_r, s), config.hu_csf)
    aorta_x, aorta_y, aorta_r = geo.aorta
    rib_zone = (_cover(_ellipse_distance(x, y, cx + 10.0 * k, cy + 10.0 * k), s) * (1.0 - cavity)
                * _cover(0.12 * cx - np.abs(x), s))
    rib_depth = _ellipse_distance(x, y, cx + 5.0 * k, cy + 5.0 * k)
    med_ant, med_post = geo.mediastinum
    half_width = med_ant + (med_post - med_ant) * np.clip(y / cy + 0.5, 0.0, 1.0)
    not_lung = np.maximum.reduce([
        _cover(np.abs(x) - half_width, s),
        _cover(np.hypot(x, y - vy) - vr - 3.0 * k, s),
        _cover(np.hypot(x - aorta_x, y - aorta_y) - aorta_r - 2.5 * k, s),
    ])
    lo, hi = config.hu_parenchyma
    parenchyma = lo + (hi - lo) * np.clip(0.5 + 0.5 * y / cy, 0.0, 1.0) ** 2
    full = wall.shape
    return {"wall": wall, "cavity": cavity, "lung_room": cavity * (1.0 - not_lung), "rib_zone": rib_zone,
            "rib_depth": np.broadcast_to(rib_depth, full),
            "parenchyma": np.broadcast_to(parenchyma, full).astype(np.float32)}


def _lung_ellipse(geo: _Geometry, side: int) -> tuple[float, float, float, float]:
    """Centre x, centre y, semi-axes of a lung's cross-section at full size (side -1 right, +1 left)."""
    cx, cy = geo.cavity
    return side * 0.55 * cx, 0.05 * cy, 0.62 * cx, 1.15 * cy


def _diaphragm(geo: _Geometry, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Height (mm) of the diaphragm under (x, y): two domes rising from the lung base."""
    cx, cy = geo.cavity
    height = np.full(np.broadcast_shapes(x.shape, y.shape), geo.lung_base_z, np.float32)
    for side, dome in zip((-1, 1), geo.dome):
        lx, ly, _, _ = _lung_ellipse(geo, side)
        height += dome * np.exp(-((x - lx) / (0.55 * cx)) ** 2 - ((y - ly + 0.25 * cy) / (0.75 * cy)) ** 2)
    return height


def _apex_taper(t: np.ndarray) -> np.ndarray:
    """Cross-section scale of a lung at relative height t (0 base, 1 apex): (1 - u²)^0.65 with u
    the height above 0.3 over 0.7, a dome narrowing to a rounded apex."""
    return np.clip(1.0 - (np.maximum(t - 0.3, 0.0) / 0.7) ** 2, 1e-4, 1.0) ** 0.65


def _index_range(lo_mm: float, hi_mm: float, offset_mm: float, spacing: float, n: int) -> slice:
    """Voxel indices whose centres (index · spacing - offset) may lie in [lo, hi] ± one voxel."""
    start = max(0, int(math.floor((lo_mm + offset_mm) / spacing)) - 1)
    stop = min(n, int(math.ceil((hi_mm + offset_mm) / spacing)) + 2)
    return slice(start, max(start, stop))


def _draw_body(geo: _Geometry, config: PhantomConfig) -> tuple[np.ndarray, np.ndarray]:
    """The chest without tubes and nodules: HU volume (float32) and lung labels (uint8), (z, y, x).

    Drawn ``config.slab`` slices at a time from the 2D templates and per-slab analytic fields
    (ribs, discs, heart, diaphragm, lungs), each only inside its bounding box.
    """
    nz, ny, nx = geo.shape_zyx
    sz, sy, sx = (float(v) for v in geo.spacing_zyx)
    k = geo.scale
    tpl = _templates(geo, config)
    x, y = _plane(geo)
    cx, cy = geo.cavity
    volume = np.empty(geo.shape_zyx, np.float32)
    labels = np.zeros(geo.shape_zyx, np.uint8)
    diaphragm = _diaphragm(geo, x, y)

    ring = np.flatnonzero(tpl["rib_zone"].ravel() > 0)
    ring_cover = tpl["rib_zone"].ravel()[ring]
    ring_x = np.broadcast_to(x, (1, ny, nx)).ravel()[ring]
    ring_y = np.broadcast_to(y, (1, ny, nx)).ravel()[ring]
    ring_phi = np.arctan2(np.abs(ring_x), ring_y)          # 0 at the spine, pi at the sternum
    pitch, thickness, drop, phase = geo.rib
    ring_cover = ring_cover * np.clip((0.85 * np.pi - ring_phi) / 0.15, 0.0, 1.0)
    ring_depth = (tpl["rib_depth"].ravel()[ring] / (5.0 * k)) ** 2
    ring_shift = drop * ring_phi / np.pi

    vy, vr = geo.vertebra
    vert_y, vert_x = _index_range(vy - vr, vy + vr, geo.center_y, sy, ny), \
        _index_range(-vr, vr, geo.center_x, sx, nx)
    vert_cover = _cover(np.hypot(x[..., vert_x], y[:, vert_y] - vy) - vr, sx)
    cav_y = _index_range(-cy, cy, geo.center_y, sy, ny)
    cav_x = {side: _index_range(min(0.0, side * cx), max(0.0, side * cx), geo.center_x, sx, nx)
             for side in (-1, 1)}
    (hz, hy, hx), (az, ay, ax) = geo.heart
    top_z = geo.lung_base_z + geo.lung_height

    for z0 in range(0, nz, config.slab):
        z1 = min(nz, z0 + config.slab)
        slab = volume[z0:z1]
        z = (np.arange(z0, z1, dtype=np.float32) * sz)[:, None, None]
        slab[:] = tpl["wall"]
        # ribs: bands descending from the spine to the sternum, one every `pitch` mm
        u = (z.reshape(-1, 1) + ring_shift[None]) / pitch - phase
        rib_z = (u - np.round(u)) * pitch / (0.5 * thickness)
        rib = ring_cover * _cover((np.sqrt(rib_z * rib_z + ring_depth) - 1.0) * 0.5 * thickness, sz)
        rib *= _cover(z.reshape(-1, 1) - top_z - 0.05 * geo.lung_height, sz)
        flat = slab.reshape(z1 - z0, -1)
        flat[:, ring] += rib * (config.hu_rib - flat[:, ring])
        # intervertebral discs between the vertebral bodies, level with the ribs
        w = (z + phase * pitch) / pitch
        disc = vert_cover * _cover(np.abs(w - np.round(w) - 0.5) * pitch - 2.5 * k, sz)
        _paint(slab[:, vert_y, vert_x], disc, config.hu_disc)
        if z0 * sz > top_z + 5.0 * k:
            continue
        box = slab[:, cav_y]
        xx, yy, dia = x, y[:, cav_y], diaphragm[:, cav_y]
        # abdomen under the diaphragm
        below = tpl["cavity"][:, cav_y] * _cover(z - dia, sz)
        _paint(box, below, config.hu_liver)
        # heart: an ellipsoid in the anterior-left mediastinum on the diaphragm
        heart_gap = None
        if z0 * sz < hz + az + 2 * sz and z1 * sz > hz - az - 2 * sz:
            uz, uy, ux = (z - hz) / az, (yy - hy) / ay, (xx - hx) / ax
            f = uz * uz + uy * uy + ux * ux - 1.0
            gz, gy, gx = uz / az, uy / ay, ux / ax
            grad = np.sqrt(gz * gz + gy * gy + gx * gx)
            dist = f / np.maximum(2.0 * grad, 1e-6)
            width = np.sqrt((gz * sz) ** 2 + (gy * sy) ** 2 + (gx * sx) ** 2) / np.maximum(grad, 1e-6)
            _paint(box, _cover(dist, width), config.hu_blood)
            heart_gap = 1.0 - _cover(dist - 3.0 * k, width)
        # lungs
        t = (z - geo.lung_base_z) / geo.lung_height
        taper = _apex_taper(t)
        for side, label in ((-1, LUNG_LABELS["right"]), (1, LUNG_LABELS["left"])):
            lx, ly, lax, lay = _lung_ellipse(geo, side)
            xs = cav_x[side]
            lx_, ly_ = xx[..., xs], yy
            cover = tpl["lung_room"][:, cav_y, xs] * _cover(dia[..., xs] - z, sz)
            cover = cover * _cover(_ellipse_distance(lx_ - lx, ly_ - ly, lax * taper, lay * taper), sx)
            cover *= (t <= 1.0)
            if heart_gap is not None:
                cover *= heart_gap[..., xs]
            _paint(box[..., xs], cover, tpl["parenchyma"][:, cav_y, xs])
            lab = labels[z0:z1, cav_y, xs]
            lab[cover >= 0.5] = label
    return volume, labels


# ----------------------------------------------------------------------------- tubes


@dataclass
class _Tubes:
    """Tapered capsules in patient-frame mm, zyx: ends ``a``, ``b`` (N, 3), radii ``ra``, ``rb``."""

    a: np.ndarray
    b: np.ndarray
    ra: np.ndarray
    rb: np.ndarray

    @classmethod
    def of(cls, a, b, ra, rb) -> _Tubes:
        a, b = np.atleast_2d(np.asarray(a, np.float64)), np.atleast_2d(np.asarray(b, np.float64))
        n = len(a)
        return cls(a, b, np.broadcast_to(np.asarray(ra, np.float64), (n,)).copy(),
                   np.broadcast_to(np.asarray(rb, np.float64), (n,)).copy())

    @classmethod
    def concat(cls, parts: Sequence[_Tubes]) -> _Tubes:
        return cls(*(np.concatenate([getattr(p, name) for p in parts])
                     for name in ("a", "b", "ra", "rb")))

    def scaled(self, factor: float) -> _Tubes:
        return _Tubes(self.a, self.b, self.ra * factor, self.rb * factor)

    def select(self, mask: np.ndarray) -> _Tubes:
        return _Tubes(self.a[mask], self.b[mask], self.ra[mask], self.rb[mask])

    def __len__(self) -> int:
        return len(self.a)


def _splat_cover(tubes: _Tubes, spacing: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """Sub-voxel tubes as voxel fractions: samples every half voxel along each centre line, each
    carrying π r² h / voxel_volume, spread over its 8 neighbours with trilinear weights.

    Returns flat voxel indices and fractions (indices may repeat).
    """
    step = 0.5 * float(spacing.min())
    length = np.linalg.norm(tubes.b - tubes.a, axis=1)
    count = np.maximum(1, np.ceil(length / step)).astype(np.int64)
    seg = np.repeat(np.arange(len(tubes)), count)
    first = np.cumsum(count) - count
    t = (np.arange(len(seg)) - first[seg] + 0.5) / count[seg]
    points = tubes.a[seg] + t[:, None] * (tubes.b - tubes.a)[seg]
    radius = tubes.ra[seg] + t * (tubes.rb - tubes.ra)[seg]
    amount = np.pi * radius ** 2 * (length / count)[seg] / float(np.prod(spacing))
    q = points / spacing
    base = np.floor(q).astype(np.int64)
    frac = q - base
    indices, fractions = [], []
    for corner in np.ndindex(2, 2, 2):
        c = np.array(corner)
        idx = base + c
        weight = amount * np.prod(np.where(c, frac, 1.0 - frac), axis=1)
        inside = np.all((idx >= 0) & (idx < shape), axis=1)
        indices.append(np.ravel_multi_index(tuple(idx[inside].T), shape))
        fractions.append(weight[inside])
    return np.concatenate(indices), np.concatenate(fractions)


def _capsule_kernel(pa: np.ndarray, ab: np.ndarray, ra: np.ndarray, rb: np.ndarray,
                    spacing: np.ndarray) -> np.ndarray:
    """Cover of voxels by tapered capsules: ``pa`` (n, m, 3) voxel centres minus the capsule
    starts, ``ab`` (n, 3) capsule axes, ``ra``, ``rb`` (n,) end radii; returns (n, m).

    t = clip((p - a)·(b - a) / |b - a|², 0, 1), d = |p - a - t (b - a)| - r'(t),
    cover = clip(0.5 - d / w, 0, 1) with w = |n ⊙ spacing| along the normal n and
    r' = r - w² / (24 r) the radius corrected for the ramp on a curved surface (module docstring).
    """
    ab = ab.astype(np.float32)
    t = np.matmul(pa, ab[:, :, None])[..., 0]
    t /= np.maximum((ab * ab).sum(1), 1e-9)[:, None]
    np.clip(t, 0.0, 1.0, out=t)
    normal = pa - t[..., None] * ab[:, None, :]
    dist = np.sqrt(np.einsum("nmk,nmk->nm", normal, normal))
    width = np.sqrt((normal * normal) @ (spacing * spacing).astype(np.float32))
    width /= np.maximum(dist, 1e-6)
    np.maximum(width, float(spacing.min()), out=width)
    radius = ra.astype(np.float32)[:, None] + t * (rb - ra).astype(np.float32)[:, None]
    radius = np.maximum(radius - width * width / (24.0 * radius), 0.5 * radius)
    return _cover(dist - radius, width)


def _capsule_cover(tubes: _Tubes, spacing: np.ndarray, shape, big_radius_mm: float = 4.0,
                   max_stencil: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
    """Tubes of about a voxel or more as soft-edged tapered capsules (:func:`_capsule_kernel`).

    Thick tubes (a few dozen: aorta, trunk, trachea, roots) are each computed in their own
    bounding box. Thinner ones are cut into pieces about twice their radius long; pieces whose
    radii fall in the same √2 class share one box stencil, so each class is one array computation.
    Returns flat voxel indices and covers (indices may repeat).
    """
    shape = np.asarray(shape)
    spacing32 = spacing.astype(np.float32)
    indices, covers = [], []

    strides = np.array([shape[1] * shape[2], shape[2], 1])

    def collect(flat_index: np.ndarray, cover: np.ndarray) -> None:
        keep = cover > 0
        indices.append(flat_index[keep])
        covers.append(cover[keep])

    r_max = np.maximum(tubes.ra, tubes.rb)
    margin = float(spacing.max())
    for i in np.flatnonzero(r_max >= big_radius_mm):
        lo = np.maximum(0, np.floor((np.minimum(tubes.a[i], tubes.b[i]) - r_max[i] - margin) / spacing))
        hi = np.minimum(shape - 1,
                        np.ceil((np.maximum(tubes.a[i], tubes.b[i]) + r_max[i] + margin) / spacing))
        if np.any(hi < lo):
            continue
        grid = np.stack(np.meshgrid(*(np.arange(l, h + 1, dtype=np.int64) for l, h in zip(lo, hi)),
                                    indexing="ij"), -1).reshape(1, -1, 3)
        pa = (grid * spacing32 - tubes.a[i].astype(np.float32)).astype(np.float32)
        collect(grid[0] @ strides, _capsule_kernel(pa, tubes.b[i:i + 1] - tubes.a[i:i + 1], tubes.ra[i:i + 1],
                                         tubes.rb[i:i + 1], spacing)[0])
    thin = tubes.select(r_max < big_radius_mm)
    r_max = np.maximum(thin.ra, thin.rb)
    upper = 2.0 ** (np.ceil(2.0 * np.log2(np.maximum(r_max, 0.25))) / 2.0)
    for r_up in np.unique(upper):
        part = thin.select(upper == r_up)
        piece_mm = 2.0 * r_up + margin
        length = np.linalg.norm(part.b - part.a, axis=1)
        count = np.maximum(1, np.ceil(length / piece_mm)).astype(np.int64)
        seg = np.repeat(np.arange(len(part)), count)
        j = np.arange(len(seg)) - (np.cumsum(count) - count)[seg]
        t0, t1 = j / count[seg], (j + 1) / count[seg]
        d_ab = (part.b - part.a)[seg]
        a = part.a[seg] + t0[:, None] * d_ab
        ab = d_ab / count[seg][:, None]
        dr = (part.rb - part.ra)[seg]
        ra, rb = part.ra[seg] + t0 * dr, part.ra[seg] + t1 * dr
        half = np.ceil((0.5 * piece_mm + r_up + margin) / spacing + 0.5).astype(np.int64)
        offsets = np.stack(np.meshgrid(*(np.arange(-h, h + 1) for h in half), indexing="ij"),
                           -1).reshape(-1, 3)
        offsets_mm = (offsets * spacing).astype(np.float32)
        chunk = max(1, max_stencil // len(offsets))
        for lo in range(0, len(a), chunk):
            sl = slice(lo, lo + chunk)
            centre = np.rint((a[sl] + 0.5 * ab[sl]) / spacing).astype(np.int64)
            centre = np.clip(centre, 0, shape - 1)
            pa = (centre * spacing - a[sl]).astype(np.float32)[:, None, :] + offsets_mm[None]
            cover = _capsule_kernel(pa, ab[sl], ra[sl], rb[sl], spacing)
            border = np.flatnonzero(np.any((centre < half) | (centre + half >= shape), axis=1))
            if len(border):
                index = centre[border, None, :] + offsets[None]
                cover[border] *= np.all((index >= 0) & (index < shape), axis=-1)
            collect((centre @ strides)[:, None] + offsets @ strides, cover)
    if not indices:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(indices), np.concatenate(covers)


def _draw_tubes(volume: np.ndarray, spacing: np.ndarray, tubes: _Tubes, hu: float,
                darken: bool, splat_below_mm: float) -> None:
    """Paint tubes of tissue ``hu`` into ``volume`` in place.

    Overlapping capsules join by their largest cover, splatted fractions add up (at most 1), and
    the two combine as independent covers: c = 1 - (1 - c_capsule)(1 - c_splat). A voxel becomes
    v + c (hu - v), but only where that is brighter (``darken=False``: vessels, walls) or darker
    (``darken=True``: airway lumens) than it was, so a tube never erases denser tissue.
    """
    if len(tubes) == 0:
        return
    thin = np.maximum(tubes.ra, tubes.rb) < splat_below_mm
    idx_s, frac = _splat_cover(tubes.select(thin), spacing, volume.shape)
    idx_c, cov = _capsule_cover(tubes.select(~thin), spacing, volume.shape)
    voxels, inverse = np.unique(np.concatenate([idx_c, idx_s]), return_inverse=True)
    capsule = np.zeros(len(voxels), np.float32)
    np.maximum.at(capsule, inverse[:len(idx_c)], cov.astype(np.float32))
    splat = np.minimum(np.bincount(inverse[len(idx_c):], weights=frac, minlength=len(voxels)), 1.0)
    cover = 1.0 - (1.0 - capsule) * (1.0 - splat)
    flat = volume.reshape(-1)
    old = flat[voxels]
    new = old + cover * (hu - old)
    flat[voxels] = np.minimum(old, new) if darken else np.maximum(old, new)


# ----------------------------------------------------------------------------- lungs and trees


@dataclass
class _LungMap:
    """The lungs on a coarse grid: labels and depth (mm to the nearest non-lung voxel)."""

    labels: np.ndarray
    depth: np.ndarray
    spacing: np.ndarray       # coarse spacing, zyx mm
    cells: dict[int, np.ndarray] = field(default_factory=dict)

    @classmethod
    def of(cls, labels: np.ndarray, spacing: np.ndarray, coarse_mm: float) -> _LungMap:
        step = np.maximum(1, np.rint(coarse_mm / spacing)).astype(np.int64)
        coarse = labels[::step[0], ::step[1], ::step[2]]
        depth = np.zeros(coarse.shape, np.float32)
        found = np.argwhere(coarse > 0)
        if len(found):
            box = tuple(slice(max(0, lo - 1), hi + 2) for lo, hi in zip(found.min(0), found.max(0)))
            depth[box] = ndimage.distance_transform_edt(coarse[box] > 0, sampling=spacing * step)
        cells = {label: np.argwhere(coarse == label) for label in LUNG_LABELS.values()}
        cells[0] = np.argwhere(coarse > 0)
        return cls(coarse, depth, spacing * step, cells)

    def depth_at(self, points_mm: np.ndarray) -> np.ndarray:
        """Depth (mm, linear interpolation) at patient-frame points (N, 3)."""
        return ndimage.map_coordinates(self.depth, (points_mm / self.spacing).T, order=1, cval=0.0)

    def sample(self, rng: np.random.Generator, label: int, n: int, min_depth: float = 0.0) -> np.ndarray:
        """``n`` points (mm) spread uniformly over the lung ``label`` (0: both lungs) where it is
        deeper than ``min_depth``."""
        cells = self.cells[label]
        if min_depth > 0:
            cells = cells[self.depth[tuple(cells.T)] > min_depth]
        if len(cells) == 0:
            return np.zeros((0, 3))
        pick = cells[rng.integers(0, len(cells), n)]
        return (pick + rng.uniform(-0.5, 0.5, (n, 3))) * self.spacing


def _grow_tree(rng: np.random.Generator, points: np.ndarray, root_mm: np.ndarray, root_radius: float,
               min_radius: float, config: PhantomConfig) -> _Tubes:
    """A branching tree filling the territory ``points`` (N, 3), grown one generation at a time.

    A branch owning n points runs from its start ``reach`` of the way to their centroid, with
    radius r = root_radius · (n / N)^(1/3) (Murray's law for flow ∝ territory), and hands two
    children its points split by a plane across their principal axis, offset from the centroid
    by a random fraction of the standard deviation (asymmetric branching). Branches of at most
    ``leaf_points`` points, or whose children would be thinner than ``min_radius``, end at the
    centroid.
    """
    total = len(points)
    label = np.zeros(total, np.int64)
    starts = np.asarray(root_mm, np.float64)[None]
    parts = []
    while len(starts):
        n_branch = len(starts)
        count = np.bincount(label, minlength=n_branch).astype(np.float64)
        centroid = np.stack([np.bincount(label, points[:, i], n_branch) for i in range(3)], 1)
        centroid /= count[:, None]
        radius = root_radius * np.cbrt(count / total)
        leaf = (count <= config.leaf_points) | (radius * 2.0 ** (-1.0 / 3.0) < min_radius)
        reach = np.where(leaf, 1.0, rng.uniform(*config.branch_reach, n_branch))
        ends = starts + reach[:, None] * (centroid - starts)
        parts.append(_Tubes.of(starts, ends, radius, radius * 0.9))
        keep = ~leaf[label]
        points, label = points[keep], label[keep]
        parents = np.flatnonzero(~leaf)
        if len(parents) == 0:
            break
        renumber = np.full(n_branch, -1)
        renumber[parents] = np.arange(len(parents))
        label = renumber[label]
        d = points - centroid[parents][label]
        pairs = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
        moments = np.stack([np.bincount(label, d[:, i] * d[:, j], len(parents)) for i, j in pairs], 1)
        cov = moments[:, [0, 1, 2, 1, 3, 4, 2, 4, 5]].reshape(-1, 3, 3) / count[parents][:, None, None]
        eigval, eigvec = np.linalg.eigh(cov)
        axis = eigvec[:, :, -1]
        offset = rng.uniform(-config.split_offset, config.split_offset, len(parents)) * np.sqrt(
            np.maximum(eigval[:, -1], 0.0))
        side = (np.einsum("nk,nk->n", d, axis[label]) > offset[label]).astype(np.int64)
        child = 2 * label + side
        child_count = np.bincount(child, minlength=2 * len(parents))
        occupied = np.flatnonzero(child_count > 0)
        renumber = np.full(2 * len(parents), -1)
        renumber[occupied] = np.arange(len(occupied))
        label = renumber[child]
        starts = ends[parents][occupied // 2]
    return _Tubes.concat(parts)


@dataclass
class _Trees:
    vessels: _Tubes
    airways: _Tubes


def _draw_trees(rng: np.random.Generator, geo: _Geometry, config: PhantomConfig, volume: np.ndarray,
                lungs: _LungMap) -> _Trees:
    """Aorta, pulmonary arteries and veins, trachea and bronchi, painted into ``volume``."""
    k = geo.scale
    cx, cy = geo.cavity
    (hz, hy, hx), (az, ay, ax) = geo.heart

    def mm(z, y, x):  # body-centred (x, y) and height z -> patient-frame zyx mm
        return np.array([z, y + geo.center_y, x + geo.center_x])

    vy, vr = geo.vertebra
    arch_z = geo.z_of(0.78)
    aorta_x, aorta_y, aorta_r = geo.aorta
    ascending = mm(arch_z - 8 * k, hy + 0.2 * ay, 0.1 * cx)
    descending = mm(arch_z, aorta_y, aorta_x)
    great = _Tubes.of(
        [mm(hz + 0.5 * az, hy + 0.2 * ay, 0.1 * cx), ascending, descending],
        [ascending, descending, mm(-50.0, aorta_y, aorta_x)], aorta_r, aorta_r)
    carina = mm(geo.z_of(0.62), vy - vr - 14 * k, 0.0)
    trunk_top = mm(geo.z_of(0.58), hy + 0.1 * ay, 0.0)
    trunk = _Tubes.of(mm(hz + 0.4 * az, hy - 0.2 * ay, 0.25 * cx), trunk_top, 11 * k, 10 * k)
    vessel_parts, airway_parts = [great, trunk], [
        _Tubes.of(carina, mm(geo.z_of(1.0) + 100.0, vy - vr - 16 * k, 0.0), 9 * k, 9 * k)]
    root_vessel = config.vessel_root_radius_mm * k
    root_airway = config.airway_root_radius_mm * k
    for side, label in ((-1, LUNG_LABELS["right"]), (1, LUNG_LABELS["left"])):
        hilum = [mm(geo.z_of(0.6), hy + 0.35 * ay, side * 0.2 * cx),          # artery
                 mm(geo.z_of(0.45), hy + 0.45 * ay, side * 0.18 * cx)]         # vein
        for start in hilum:
            n = int(math.ceil(config.leaf_points * (root_vessel / config.vessel_min_radius_mm) ** 3))
            tree = _grow_tree(rng, lungs.sample(rng, label, max(n, 8)), start, root_vessel,
                              config.vessel_min_radius_mm, config)
            vessel_parts.append(tree)
        vessel_parts.append(_Tubes.of(trunk_top, hilum[0], 10 * k, root_vessel))
        n = int(math.ceil(config.leaf_points * (root_airway / config.airway_min_radius_mm) ** 3))
        bronchus = carina + np.array([0.0, 0.0, side * 0.15 * cx])
        airway_parts.append(_Tubes.of(carina, bronchus, root_airway, root_airway))
        airway_parts.append(_grow_tree(rng, lungs.sample(rng, label, max(n, 8), 2.0), bronchus,
                                       root_airway, config.airway_min_radius_mm, config))
    trees = _Trees(_Tubes.concat(vessel_parts), _Tubes.concat(airway_parts))
    splat = config.splat_radius_voxels * float(geo.spacing_zyx[1:].min())
    _draw_tubes(volume, geo.spacing_zyx, trees.vessels, config.hu_blood, False, splat)
    _draw_tubes(volume, geo.spacing_zyx, trees.airways, config.hu_airway_wall, False, splat)
    _draw_tubes(volume, geo.spacing_zyx, trees.airways.scaled(1.0 - config.airway_wall_fraction),
                config.hu_air, True, splat)
    return trees


# ----------------------------------------------------------------------------- nodules


@dataclass
class _Finding:
    """A nodule being drawn, in the patient frame (mm, zyx)."""

    center_mm: np.ndarray
    radius: float
    kind: str
    location: str
    margin: str
    included: bool


def _power_law(rng: np.random.Generator, low: float, high: float, exponent: float) -> float:
    """A draw from p(d) ∝ d^-exponent on [low, high] by inverting its CDF (exponent ≠ 1)."""
    e = 1.0 - exponent
    u = rng.uniform()
    return float((low ** e + u * (high ** e - low ** e)) ** (1.0 / e))


def _choose(rng: np.random.Generator, names: Sequence[str], weights: Sequence[float]) -> str:
    return names[rng.choice(len(names), p=np.asarray(weights, np.float64) / sum(weights))]


def _draw_sphere(volume: np.ndarray, spacing: np.ndarray, center_mm: np.ndarray, radius: float, hu: float,
                 bumps: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> None:
    """Paint a soft-edged blob where brighter than the volume, in its bounding box only.

    Its surface is at r(u) = radius · (1 + Σ_j α_j max(0, u·v_j)^p_j) along the unit direction u
    from the centre: broad bumps (small p) make lobulations, narrow ones (large p) spicules.
    """
    directions, heights, powers = bumps if bumps is not None else (np.zeros((0, 3)), np.zeros(0), np.zeros(0))
    reach = radius * (1.0 + heights.sum()) + spacing.max()
    lo = np.maximum(0, np.floor((center_mm - reach) / spacing).astype(np.int64))
    hi = np.minimum(volume.shape, np.ceil((center_mm + reach) / spacing).astype(np.int64) + 1)
    if np.any(hi <= lo):
        return
    view = volume[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    axes = [(np.arange(l, h, dtype=np.float32) * s - c).reshape([-1 if i == j else 1 for j in range(3)])
            for i, (l, h, s, c) in enumerate(zip(lo, hi, spacing, center_mm))]
    dist = np.sqrt(axes[0] ** 2 + axes[1] ** 2 + axes[2] ** 2)
    inv = 1.0 / np.maximum(dist, 1e-6)
    surface = np.full(dist.shape, radius, np.float32)
    for v, alpha, p in zip(directions, heights, powers):
        cosine = (axes[0] * v[0] + axes[1] * v[1] + axes[2] * v[2]) * inv
        surface += radius * alpha * np.maximum(cosine, 0.0) ** p
    width = np.sqrt(sum((axis * s) ** 2 for axis, s in zip(axes, spacing))) * inv
    width = np.maximum(width, float(spacing.min()))
    surface = np.maximum(surface - width * width / (12.0 * surface), 0.5 * surface)
    cover = _cover(dist - surface, width)
    np.maximum(view, view + cover * (hu - view), out=view)


def _margin_bumps(rng: np.random.Generator, margin: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    if margin == "smooth":
        return None
    lobulated = margin == "lobulated"
    n = int(rng.integers(4, 8) if lobulated else rng.integers(6, 15))
    directions = rng.normal(size=(n, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    heights = rng.uniform(0.1, 0.25, n) if lobulated else rng.uniform(0.5, 1.3, n)
    powers = rng.uniform(2.0, 6.0, n) if lobulated else rng.uniform(80.0, 300.0, n)
    return directions, heights, powers


def _hidden_share(volume: np.ndarray, labels: np.ndarray, spacing: np.ndarray, centers: np.ndarray,
                  radius: float, parenchyma_hu: tuple[float, float]) -> np.ndarray:
    """Share of each ball (``centers`` (N, 3) mm, ``radius``) that the lung's contents already take:
    lung voxels (nearest to the ball's :func:`unit_ball_samples`) whose HU lies more than
    ``_PARENCHYMA_MARGIN_HU`` outside the parenchyma's range (vessels, airway walls and lumens,
    findings). Voxels outside the lung (chest wall, mediastinum) do not count as taken."""
    points = centers[:, None, :] + radius * _BALL_SAMPLES[None]
    index = np.clip(np.rint(points / spacing).astype(np.int64), 0, np.asarray(volume.shape) - 1)
    index = tuple(np.moveaxis(index, -1, 0))
    hu = volume[index]
    taken = ((hu < parenchyma_hu[0] - _PARENCHYMA_MARGIN_HU) | (hu > parenchyma_hu[1] + _PARENCHYMA_MARGIN_HU))
    return (taken & (labels[index] > 0)).mean(axis=1)


def _place(rng: np.random.Generator, radius: float, location: str, lungs: _LungMap, labels: np.ndarray,
           volume: np.ndarray, spacing: np.ndarray, vessels: _Tubes, placed: list[_Finding],
           config: PhantomConfig, tries: int = 256) -> np.ndarray | None:
    """A centre (mm) for a nodule of ``radius`` at ``location``, or None if none fits.

    Isolated: deeper in the lung than radius + gap. Juxtapleural: centre at 0.4-0.8 radii from the
    pleura, so the nodule touches the chest wall. Juxtavascular: beside a vessel of 0.7-3 mm
    radius, touching it. Every centre lies in the lung mask, keeps ``config.nodule_gap_mm`` from
    other findings, and leaves the nodule visible: at most ``config.max_hidden_fraction`` of its
    ball is already taken by what ``volume`` holds there (:func:`_hidden_share`).
    """
    gap = config.nodule_gap_mm
    if location == "juxtavascular":
        r = np.maximum(vessels.ra, vessels.rb)
        pool = np.flatnonzero((r > 0.7) & (r < 3.0))
        if len(pool) == 0:
            return None
        pick = pool[rng.integers(0, len(pool), tries)]
        t = rng.uniform(0.2, 0.8, tries)[:, None]
        axis = vessels.b[pick] - vessels.a[pick]
        side = np.cross(axis, rng.normal(size=(tries, 3)))
        side /= np.maximum(np.linalg.norm(side, axis=1, keepdims=True), 1e-9)
        vessel_r = vessels.ra[pick] + t[:, 0] * (vessels.rb[pick] - vessels.ra[pick])
        centers = vessels.a[pick] + t * axis + side * (vessel_r + 0.8 * radius)[:, None]
        depth = lungs.depth_at(centers)
        ok = depth > radius + gap
    else:
        centers = lungs.sample(rng, 0, tries)
        depth = lungs.depth_at(centers)
        if location == "juxtapleural":
            ok = (depth > 0.4 * radius) & (depth < 0.8 * radius) & (depth > float(spacing.max()))
        else:
            ok = depth > radius + gap
    index = np.rint(centers / spacing).astype(np.int64)
    inside = np.all((index >= 0) & (index < labels.shape), axis=1)
    ok &= inside
    ok[inside] &= labels[tuple(index[inside].T)] > 0
    for other in placed:
        ok &= np.linalg.norm(centers - other.center_mm, axis=1) > radius + other.radius + gap
    ok[ok] = _hidden_share(volume, labels, spacing, centers[ok], radius,
                           config.hu_parenchyma) <= config.max_hidden_fraction
    hits = np.flatnonzero(ok)
    return centers[hits[0]] if len(hits) else None


def _draw_findings(rng: np.random.Generator, geo: _Geometry, config: PhantomConfig, volume: np.ndarray,
                   labels: np.ndarray, lungs: _LungMap, vessels: _Tubes) -> list[_Finding]:
    """Nodules (annotated) and excluded findings, placed and painted into ``volume``.

    Findings are placed largest first; one that finds no room where its location asks is placed
    as an isolated one, and one that finds no room at all is left out.
    """
    spacing = geo.spacing_zyx
    max_radius = config.max_radius_depth_fraction * float(lungs.depth.max())
    high = min(config.diameter_mm[1], 2.0 * max_radius)
    plans: list[tuple[float, str, str, str, bool]] = []
    for _ in range(int(rng.integers(config.nodules[0], config.nodules[1] + 1))):
        diameter = _power_law(rng, config.diameter_mm[0], max(high, config.diameter_mm[0]),
                              config.diameter_exponent)
        kind = _choose(rng, NODULE_KINDS, config.kind_weights)
        location = _choose(rng, NODULE_LOCATIONS, config.location_weights)
        margin = _choose(rng, NODULE_MARGINS, config.margin_weights)
        plans.append((diameter, kind, location, "smooth" if kind == "ground_glass" else margin, True))
    for _ in range(int(rng.integers(config.excluded[0], config.excluded[1] + 1))):
        if rng.uniform() < 0.5:
            plans.append((rng.uniform(*config.excluded_small_mm), "solid", "isolated", "smooth", False))
        else:
            plans.append((rng.uniform(*config.excluded_calcified_mm), "calcified", "isolated", "smooth",
                          False))
    plans.sort(key=lambda plan: -plan[0])        # big ones first: they are hardest to fit
    findings: list[_Finding] = []
    for diameter, kind, location, margin, included in plans:
        radius = 0.5 * diameter
        center = _place(rng, radius, location, lungs, labels, volume, spacing, vessels, findings, config)
        if center is None and location != "isolated":
            location = "isolated"
            center = _place(rng, radius, location, lungs, labels, volume, spacing, vessels, findings, config)
        if center is None:
            log.debug("no room for a %.1f mm %s %s finding; skipped", diameter, location, kind)
            continue
        findings.append(_Finding(center, radius, kind, location, margin, included))
        bumps = _margin_bumps(rng, margin)
        if kind == "solid":
            _draw_sphere(volume, spacing, center, radius, rng.uniform(*config.hu_solid), bumps)
        elif kind == "calcified":
            _draw_sphere(volume, spacing, center, radius, rng.uniform(*config.hu_calcified))
        else:
            _draw_sphere(volume, spacing, center, radius, rng.uniform(*config.hu_ground_glass), bumps)
            if kind == "part_solid":
                core = radius * rng.uniform(*config.part_solid_core)
                shift = rng.normal(size=3)
                shift *= 0.5 * (radius - core) * rng.uniform() / np.linalg.norm(shift)
                _draw_sphere(volume, spacing, center + shift, core, rng.uniform(*config.hu_solid))
    return findings


# ----------------------------------------------------------------------------- acquisition


def _gaussian_kernel(sigma: float, truncate: float) -> np.ndarray:
    """scipy's discrete 1D Gaussian kernel (its impulse response), of radius int(truncate σ + 0.5)."""
    radius = int(truncate * float(sigma) + 0.5)
    impulse = np.zeros(2 * radius + 1)
    impulse[radius] = 1.0
    return ndimage.gaussian_filter1d(impulse, float(sigma), truncate=truncate, mode="constant")


def _noise_gain(sigma_vox: Sequence[float], truncate: float) -> float:
    """Standard deviation of unit white noise after a separable Gaussian filter of ``sigma_vox``:
    sqrt(Π_axes Σ_i k_i²) for the discrete 1D kernels k."""
    return math.sqrt(math.prod(float((_gaussian_kernel(s, truncate) ** 2).sum()) for s in sigma_vox))


def _acquire(rng: np.random.Generator, geo: _Geometry, config: PhantomConfig, volume: np.ndarray,
             truncate: float = 3.0) -> np.ndarray:
    """Point spread and correlated noise in one filter, then int16 HU.

    image = G_σ * (anatomy + σ_w · white), with G_σ the Gaussian point spread (in-plane σ drawn
    from ``psf_sigma_mm``, through-plane from the slice profile) and σ_w chosen so that the
    filtered noise G_σ * (σ_w · white) has the drawn standard deviation ``noise_hu``. The filter
    runs in-plane slice by slice (cache-friendly), then through the slices as a weighted sum of
    a few shifted copies (edges repeat the first and last slice).
    """
    sz, sy, sx = (float(v) for v in geo.spacing_zyx)
    psf = rng.uniform(*config.psf_sigma_mm)
    sigma = (math.hypot(config.slice_profile, psf / sz), psf / sy, psf / sx)
    white = rng.uniform(*config.noise_hu) / _noise_gain(sigma, truncate)
    noise = np.empty(volume.shape[1:], np.float32)
    for z in range(volume.shape[0]):
        rng.standard_normal(out=noise, dtype=np.float32)
        noise *= white
        noise += volume[z]
        ndimage.gaussian_filter(noise, sigma[1:], truncate=truncate, mode="nearest", output=volume[z])
    kernel = _gaussian_kernel(sigma[0], truncate).astype(np.float32)
    radius, nz = len(kernel) // 2, volume.shape[0]
    hu = np.empty(volume.shape, np.int16)
    for z0 in range(0, nz, config.slab):
        index = np.arange(z0, min(nz, z0 + config.slab))
        blurred = np.zeros((len(index),) + volume.shape[1:], np.float32)
        for weight, shift in zip(kernel, range(-radius, radius + 1)):
            blurred += weight * volume[np.clip(index + shift, 0, nz - 1)]
        np.clip(blurred, HU_MIN, HU_MAX, out=blurred)
        hu[index] = np.rint(blurred, out=blurred)
    return hu


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A rotation by at most ``max_deg`` about a random axis (Rodrigues' formula)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = math.radians(max_deg) * rng.uniform(0.3, 1.0)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross


def _store(rng: np.random.Generator, geo: _Geometry, config: PhantomConfig, hu: np.ndarray,
           labels: np.ndarray, findings: list[_Finding]) -> Phantom:
    """The arrays as SimpleITK images with their world geometry, and the findings in world mm.

    The patient frame maps to world as w = o + R · diag(s) · i_xyz (R a small rotation, or
    identity). With ``config.oblique`` the arrays are also stored flipped along random axes:
    i' = F i + c with c = (n - 1) on flipped axes, which leaves each voxel's world position
    unchanged when D' = R F and o' = o + R diag(s) c.
    """
    nz, ny, nx = geo.shape_zyx
    spacing_xyz = geo.spacing_zyx[::-1].astype(np.float64)
    size_xyz = np.array([nx, ny, nz], np.float64)
    origin = np.array([-0.5 * size_xyz[0] * spacing_xyz[0] + rng.uniform(-25, 25),
                       -0.5 * size_xyz[1] * spacing_xyz[1] + rng.uniform(-25, 25),
                       rng.uniform(-400.0, -50.0)])
    rotation, flips = np.eye(3), np.zeros(3, bool)
    if config.oblique:
        rotation = _rotation(rng, config.max_tilt_deg)
        flips = rng.uniform(size=3) < 0.5
    direction = rotation @ np.diag(np.where(flips, -1.0, 1.0))
    origin_stored = origin + rotation @ (spacing_xyz * np.where(flips, size_xyz - 1, 0.0))
    flip_axes = tuple(2 - i for i in range(3) if flips[i])

    def image(array: np.ndarray) -> sitk.Image:
        img = sitk.GetImageFromArray(np.ascontiguousarray(np.flip(array, flip_axes) if flip_axes else array))
        img.SetSpacing(tuple(spacing_xyz))
        img.SetOrigin(tuple(origin_stored))
        img.SetDirection(tuple(direction.ravel()))
        return img

    nodules = []
    for f in findings:
        index_xyz = f.center_mm[::-1] / spacing_xyz
        world = origin + rotation @ (spacing_xyz * index_xyz)
        stored_xyz = np.where(flips, size_xyz - 1 - index_xyz, index_xyz)
        nodules.append(Nodule(tuple(float(v) for v in world), tuple(float(v) for v in stored_xyz[::-1]),
                              2.0 * f.radius, f.kind, f.location, f.margin, f.included))
    return Phantom(image(hu), image(labels), nodules)


# ----------------------------------------------------------------------------- public API


def _draw_anatomy(rng: np.random.Generator, config: PhantomConfig
                  ) -> tuple[_Geometry, np.ndarray, np.ndarray, _Trees, list[_Finding]]:
    """The scan before the scanner: geometry, HU volume (float32, no blur or noise), lung labels,
    the vessel and airway trees, and the findings placed among them."""
    geo = _draw_geometry(rng, config)
    volume, labels = _draw_body(geo, config)
    lungs = _LungMap.of(labels, geo.spacing_zyx, config.coarse_mm)
    trees = _draw_trees(rng, geo, config, volume, lungs)
    findings = _draw_findings(rng, geo, config, volume, labels, lungs, trees.vessels)
    return geo, volume, labels, trees, findings


def generate_phantom(seed: int | Sequence[int], config: PhantomConfig | None = None) -> Phantom:
    """One synthetic chest CT with its lung mask and findings, fully determined by ``seed``.

    Args:
        seed: a non-negative int or a sequence of them (``numpy.random.default_rng`` seeds).
        config: :class:`PhantomConfig`; default the ``small`` preset.
    """
    config = config or SIZES["small"]
    rng = np.random.default_rng(seed)
    geo, volume, labels, _, findings = _draw_anatomy(rng, config)
    hu = _acquire(rng, geo, config, volume)
    del volume
    return _store(rng, geo, config, hu, labels, findings)


def make_phantom(seed: int | Sequence[int], size: str = "small",
                 **options) -> tuple[sitk.Image, list[Nodule]]:
    """A synthetic chest CT (int16 HU, SimpleITK image) and its findings.

    ``options`` are :class:`PhantomConfig` fields (for example ``oblique=True``); see
    :func:`generate_phantom` for the lung mask as well.
    """
    phantom = generate_phantom(seed, phantom_config(size, **options))
    return phantom.image, phantom.nodules


def series_uid(seed: int, index: int) -> str:
    """A LIDC-style series uid, ``1.3.6.1.4.1.14519.5.2.1.6279.6001.`` + 30 digits, from
    (seed, index)."""
    digits = np.random.default_rng([seed, index, 0x5EED]).integers(0, 10, 30)
    digits[0] = 1 + digits[0] % 9
    return UID_PREFIX + "".join(map(str, digits))


def _save_preview(phantom: Phantom, path: Path, title: str) -> None:
    """A PNG of the three orthogonal slices through the largest annotated nodule (the largest
    finding if none is annotated, the centre of the scan if there is none), its annotation circle
    in each, with the nodule's size, kind, location and margin after ``title``."""
    shown = [n for n in phantom.nodules if n.included] or list(phantom.nodules)
    if not shown:
        save_orthogonal_slices(phantom.image, path, title=title)
        return
    nodule = max(shown, key=lambda n: n.diameter_mm)
    caption = (f"{nodule.diameter_mm:.1f} mm {nodule.kind.replace('_', '-')} nodule, "
               f"{nodule.location}, {nodule.margin}")
    save_orthogonal_slices(phantom.image, path, nodule.center_zyx_vox, nodule.diameter_mm,
                           f"{title}  {caption}" if title else caption)


def _write_scan(job: tuple[Path, int, int, int, PhantomConfig, bool, bool]) -> tuple[str, list[Nodule]]:
    """Draw scan ``index`` of a dataset and write its files into ``work``; its uid and findings."""
    work, seed, index, subsets, config, lung_masks, preview = job
    uid = series_uid(seed, index)
    phantom = generate_phantom((seed, index), config)
    sitk.WriteImage(phantom.image, str(work / f"subset{index % subsets}" / f"{uid}.mhd"))
    if lung_masks:
        sitk.WriteImage(phantom.lung_mask, str(work / "seg-lungs-LUNA16" / f"{uid}.mhd"), True)
    if preview:
        _save_preview(phantom, work / "preview" / f"{uid}.png", uid)
    return uid, phantom.nodules


def write_luna16_dataset(out_dir: str | os.PathLike, n_scans: int, seed: int, subsets: int = 10,
                         size: str = "small", lung_masks: bool = True, preview: bool = False,
                         progress: Callable[[int, int], None] | None = None, workers: int = 1,
                         **options) -> dict[str, list[Nodule]]:
    """Write ``n_scans`` phantoms in LUNA16's layout; return each seriesuid's findings, in order.

    Layout: ``subset0 .. subset{subsets-1}/<uid>.mhd + .raw`` (scan i in subset i mod subsets),
    ``annotations.csv`` and ``annotations_excluded.csv`` (world LPS mm, diameters in mm),
    ``seriesuids.csv``, with ``lung_masks`` also ``seg-lungs-LUNA16/<uid>.mhd + .zraw`` (3 right,
    4 left lung) and with ``preview`` a PNG per scan in ``preview/``. Scan i is drawn from the
    seed (seed, i), so a dataset is the same bytes for the same arguments, whatever ``workers``
    (the number of processes drawing scans at once).

    The dataset is built in a temporary folder beside ``out_dir`` and renamed onto it at the
    end; an error or interrupt (also one raised by ``progress(done, total)``) leaves nothing.

    Raises:
        UserInputError: ``out_dir`` exists and is not empty, or a count is not positive.
    """
    out_dir = Path(out_dir)
    for name, value in (("scans", n_scans), ("subsets", subsets), ("workers", workers)):
        if int(value) < 1:
            raise UserInputError(f"the number of {name} must be at least 1, not {value}.")
    if int(seed) < 0:
        raise UserInputError(f"the seed must be a non-negative integer, not {seed}.")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserInputError(f"{out_dir}: already exists and is not an empty folder; choose a new one.")
    config = phantom_config(size, **options)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        for k in range(subsets):
            (work / f"subset{k}").mkdir()
        for name, wanted in (("seg-lungs-LUNA16", lung_masks), ("preview", preview)):
            if wanted:
                (work / name).mkdir()
        written: dict[str, list[Nodule]] = {}
        rows: dict[bool, list[tuple[str, tuple[float, float, float], float]]] = {True: [], False: []}
        jobs = [(work, seed, i, subsets, config, lung_masks, preview) for i in range(n_scans)]
        with map_in_processes(_write_scan, jobs, workers) as results:  # in scan order, so the tables too
            for done, (uid, nodules) in enumerate(results, 1):
                for nodule in nodules:
                    rows[nodule.included].append((uid, nodule.center_xyz_mm, nodule.diameter_mm))
                written[uid] = nodules
                if progress is not None:
                    progress(done, n_scans)
        for included, name in ((True, "annotations.csv"), (False, "annotations_excluded.csv")):
            table = rows[included]
            write_annotations(work / name, Findings.from_columns(
                [r[0] for r in table], np.array([r[1] for r in table]).reshape(-1, 3), [r[2] for r in table]))
        write_seriesuids(work / "seriesuids.csv", list(written))
        if out_dir.exists():
            out_dir.rmdir()
        os.rename(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log.info("wrote %d phantom scans to %s", n_scans, out_dir)
    return written
