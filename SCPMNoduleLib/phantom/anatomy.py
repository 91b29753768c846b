"""The chest before vessels and nodules: drawn geometry, body, lungs and the lungs' depth map.

Sizes scale with the body, which fills most of the field of view: an ellipse with a flattened
back on a patient table; skin-side fat, a muscle layer, a thoracic cavity; spine (vertebral
bodies with discs, canal, posterior arch), sternum, ribs as oblique bony bands in the chest wall;
mediastinum (fat) with heart (ellipsoid); liver and spleen below a domed diaphragm; two lungs
(parenchyma about -850 HU, denser posteriorly) following the chest wall. In-plane coordinates are
body-centered mm (x towards the patient's left, y posterior, z superior, as in LPS).

The body is drawn from 2D templates and per-slab analytic fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .config import LUNG_LABELS, PhantomConfig
from .raster import edge_cover, ellipse_distance, paint, segment_distance_2d

__all__ = ["Geometry", "LungMap", "draw_body", "draw_geometry"]

_REFERENCE_BODY_HALF_WIDTH_MM = 170.0
"""Body half-width of the adult chest for which :class:`PhantomConfig` gives anatomy sizes."""


@dataclass
class Geometry:
    """Drawn anatomy parameters (mm, body-centered X right→left, Y anterior→posterior)."""

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
    heart: tuple[tuple[float, float, float], tuple[float, float, float]]  # center zyx, axes zyx
    dome: tuple[float, float]               # right, left heights
    rib: tuple[float, float, float, float]  # pitch, thickness, drop, phase

    def z_of(self, t: float) -> float:
        """Height (mm) of the relative lung height ``t`` (0 base, 1 apex)."""
        return self.lung_base_z + t * self.lung_height


def draw_geometry(rng: np.random.Generator, config: PhantomConfig) -> Geometry:
    """Draw the scan grid (matrix, spacing, slices) and the body's proportions from ``config``."""
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
    return Geometry(
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


def _plane(geo: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Body-centered in-plane coordinates in mm, broadcastable: x (1, 1, nx) and y (1, ny, 1)."""
    _, ny, nx = geo.shape_zyx
    _, sy, sx = geo.spacing_zyx
    x = (np.arange(nx, dtype=np.float32) * sx - geo.center_x)[None, None, :]
    y = (np.arange(ny, dtype=np.float32) * sy - geo.center_y)[None, :, None]
    return x, y


def _templates(geo: Geometry, config: PhantomConfig) -> dict[str, np.ndarray]:
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
        table = edge_cover(np.maximum(table_top - y, y - table_top - 10.0 * k), s) * edge_cover(
            np.abs(x) - 0.85 * ax, s)
        paint(wall, table, config.hu_table)
    body = edge_cover(np.maximum(ellipse_distance(x, y, ax, ay), y - back), s)
    paint(wall, body, config.hu_fat)
    paint(wall, edge_cover(np.maximum(ellipse_distance(x, y, ix, iy), y - iback), s), config.hu_muscle)
    cavity = edge_cover(ellipse_distance(x, y, cx, cy), s)
    paint(wall, cavity, config.hu_mediastinal_fat)
    sternum = edge_cover(ellipse_distance(x, y + cy + 2.0 * k, 14.0 * k, 5.0 * k), s)
    paint(wall, sternum, config.hu_cortical_bone)
    paint(wall, edge_cover(ellipse_distance(x, y + cy + 2.0 * k, 11.0 * k, 3.0 * k), s),
          config.hu_cancellous_bone)
    vy, vr = geo.vertebra
    vertebra = edge_cover(np.hypot(x, y - vy) - vr, s)
    canal_y, canal_r = vy + vr + 7.0 * k, 6.5 * k
    arch = edge_cover(np.hypot(x, y - canal_y) - canal_r - 4.0 * k, s)
    process = edge_cover(segment_distance_2d(x, y, (0.0, canal_y), (0.0, canal_y + 28.0 * k)) - 3.5 * k, s)
    transverse = edge_cover(segment_distance_2d(np.abs(x), y, (0.0, canal_y - 3.0 * k),
                                                (26.0 * k, canal_y + 4.0 * k)) - 4.0 * k, s)
    paint(wall, np.maximum.reduce([vertebra, arch, process, transverse]), config.hu_cortical_bone)
    paint(wall, edge_cover(np.hypot(x, y - vy) - vr + 1.6 * k, s), config.hu_cancellous_bone)
    paint(wall, edge_cover(np.hypot(x, y - canal_y) - canal_r, s), config.hu_csf)
    aorta_x, aorta_y, aorta_r = geo.aorta
    rib_zone = (edge_cover(ellipse_distance(x, y, cx + 10.0 * k, cy + 10.0 * k), s) * (1.0 - cavity)
                * edge_cover(0.12 * cx - np.abs(x), s))
    rib_depth = ellipse_distance(x, y, cx + 5.0 * k, cy + 5.0 * k)
    med_ant, med_post = geo.mediastinum
    half_width = med_ant + (med_post - med_ant) * np.clip(y / cy + 0.5, 0.0, 1.0)
    not_lung = np.maximum.reduce([
        edge_cover(np.abs(x) - half_width, s),
        edge_cover(np.hypot(x, y - vy) - vr - 3.0 * k, s),
        edge_cover(np.hypot(x - aorta_x, y - aorta_y) - aorta_r - 2.5 * k, s),
    ])
    lo, hi = config.hu_parenchyma
    parenchyma = lo + (hi - lo) * np.clip(0.5 + 0.5 * y / cy, 0.0, 1.0) ** 2
    full = wall.shape
    return {"wall": wall, "cavity": cavity, "lung_room": cavity * (1.0 - not_lung), "rib_zone": rib_zone,
            "rib_depth": np.broadcast_to(rib_depth, full),
            "parenchyma": np.broadcast_to(parenchyma, full).astype(np.float32)}


def _lung_ellipse(geo: Geometry, side: int) -> tuple[float, float, float, float]:
    """Center x, center y, semi-axes of a lung's cross-section at full size (side -1 right, +1 left)."""
    cx, cy = geo.cavity
    return side * 0.55 * cx, 0.05 * cy, 0.62 * cx, 1.15 * cy


def _diaphragm(geo: Geometry, x: np.ndarray, y: np.ndarray) -> np.ndarray:
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
    """Voxel indices whose centers (index · spacing - offset) may lie in [lo, hi] ± one voxel."""
    start = max(0, int(math.floor((lo_mm + offset_mm) / spacing)) - 1)
    stop = min(n, int(math.ceil((hi_mm + offset_mm) / spacing)) + 2)
    return slice(start, max(start, stop))


def draw_body(geo: Geometry, config: PhantomConfig) -> tuple[np.ndarray, np.ndarray]:
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
    vert_cover = edge_cover(np.hypot(x[..., vert_x], y[:, vert_y] - vy) - vr, sx)
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
        rib = ring_cover * edge_cover((np.sqrt(rib_z * rib_z + ring_depth) - 1.0) * 0.5 * thickness, sz)
        rib *= edge_cover(z.reshape(-1, 1) - top_z - 0.05 * geo.lung_height, sz)
        flat = slab.reshape(z1 - z0, -1)
        flat[:, ring] += rib * (config.hu_rib - flat[:, ring])
        # intervertebral discs between the vertebral bodies, level with the ribs
        w = (z + phase * pitch) / pitch
        disc = vert_cover * edge_cover(np.abs(w - np.round(w) - 0.5) * pitch - 2.5 * k, sz)
        paint(slab[:, vert_y, vert_x], disc, config.hu_disc)
        if z0 * sz > top_z + 5.0 * k:
            continue
        box = slab[:, cav_y]
        xx, yy, dia = x, y[:, cav_y], diaphragm[:, cav_y]
        # abdomen under the diaphragm
        below = tpl["cavity"][:, cav_y] * edge_cover(z - dia, sz)
        paint(box, below, config.hu_liver)
        # heart: an ellipsoid in the anterior-left mediastinum on the diaphragm
        heart_gap = None
        if z0 * sz < hz + az + 2 * sz and z1 * sz > hz - az - 2 * sz:
            uz, uy, ux = (z - hz) / az, (yy - hy) / ay, (xx - hx) / ax
            f = uz * uz + uy * uy + ux * ux - 1.0
            gz, gy, gx = uz / az, uy / ay, ux / ax
            grad = np.sqrt(gz * gz + gy * gy + gx * gx)
            dist = f / np.maximum(2.0 * grad, 1e-6)
            width = np.sqrt((gz * sz) ** 2 + (gy * sy) ** 2 + (gx * sx) ** 2) / np.maximum(grad, 1e-6)
            paint(box, edge_cover(dist, width), config.hu_blood)
            heart_gap = 1.0 - edge_cover(dist - 3.0 * k, width)
        # lungs
        t = (z - geo.lung_base_z) / geo.lung_height
        taper = _apex_taper(t)
        for side, label in ((-1, LUNG_LABELS["right"]), (1, LUNG_LABELS["left"])):
            lx, ly, lax, lay = _lung_ellipse(geo, side)
            xs = cav_x[side]
            lx_, ly_ = xx[..., xs], yy
            cover = tpl["lung_room"][:, cav_y, xs] * edge_cover(dia[..., xs] - z, sz)
            cover = cover * edge_cover(ellipse_distance(lx_ - lx, ly_ - ly, lax * taper, lay * taper), sx)
            cover *= (t <= 1.0)
            if heart_gap is not None:
                cover *= heart_gap[..., xs]
            paint(box[..., xs], cover, tpl["parenchyma"][:, cav_y, xs])
            lab = labels[z0:z1, cav_y, xs]
            lab[cover >= 0.5] = label
    return volume, labels


@dataclass
class LungMap:
    """The lungs on a coarse grid: labels and depth (mm to the nearest non-lung voxel)."""

    labels: np.ndarray
    depth: np.ndarray
    spacing: np.ndarray       # coarse spacing, zyx mm
    cells: dict[int, np.ndarray] = field(default_factory=dict)

    @classmethod
    def of(cls, labels: np.ndarray, spacing: np.ndarray, coarse_mm: float) -> LungMap:
        """The map of lung ``labels`` (z, y, x) on ``spacing`` (zyx mm), every ``coarse_mm`` or so."""
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
