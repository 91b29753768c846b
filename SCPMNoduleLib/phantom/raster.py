"""Rasterising primitives: soft-edged shapes painted into a HU volume with partial volume.

Partial volume comes from analytic soft edges: a shape of signed distance d (mm, positive
outside) covers ``clip(0.5 - d / w, 0, 1)`` of a voxel, a ramp of width w = |n ⊙ spacing| along the
surface normal n (the box profile's standard deviation times √12). On a curved surface a
symmetric ramp adds volume (its outer half covers more area than its inner half), so tubes and
nodules are drawn with their radius lowered by the ramp's variance over the curvature:
r - w² / (24 r) for a tube, r - w² / (12 r) for a sphere, exact to second order. Sub-voxel
vessels are splatted: each sample of length h along the center line adds π r² h / voxel_volume of
tissue to its 8 neighbouring voxels (trilinear weights).

Tubes are rasterised in batches of equal-sized local stencils. Volumes are (z, y, x) arrays on
the patient frame ``p_zyx_mm = index_zyx * spacing_zyx``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Tubes", "draw_sphere", "draw_tubes", "edge_cover", "ellipse_distance", "paint",
           "segment_distance_2d"]


def edge_cover(signed_distance_mm: np.ndarray, width_mm: float | np.ndarray) -> np.ndarray:
    """Fraction of a voxel inside a surface: ``clip(0.5 - d / w, 0, 1)``, d > 0 outside."""
    return np.clip(0.5 - signed_distance_mm / width_mm, 0.0, 1.0)


def ellipse_distance(dx: np.ndarray, dy: np.ndarray, ax: float | np.ndarray, ay: float | np.ndarray) -> np.ndarray:
    """First-order signed distance to the ellipse (dx/ax)² + (dy/ay)² = 1: f / |∇f|.

    Exact on the boundary, which is all a soft edge needs (it is clipped within a voxel).
    """
    u, v = dx / ax, dy / ay
    f = u * u + v * v - 1.0
    grad = 2.0 * np.sqrt((u / ax) ** 2 + (v / ay) ** 2)
    return f / np.maximum(grad, 1e-6)


def paint(volume: np.ndarray, cover: np.ndarray, hu: float | np.ndarray) -> None:
    """In place: ``volume += cover · (hu - volume)`` (a partial-volume mixture)."""
    volume += cover * (hu - volume)


def segment_distance_2d(x: np.ndarray, y: np.ndarray, a: tuple[float, float],
                        b: tuple[float, float]) -> np.ndarray:
    """Distance from points (x, y) (broadcastable arrays) to the segment a-b in a plane."""
    abx, aby = b[0] - a[0], b[1] - a[1]
    t = np.clip(((x - a[0]) * abx + (y - a[1]) * aby) / (abx * abx + aby * aby), 0.0, 1.0)
    return np.hypot(x - a[0] - t * abx, y - a[1] - t * aby)


@dataclass
class Tubes:
    """Tapered capsules in patient-frame mm, zyx: ends ``a``, ``b`` (N, 3), radii ``ra``, ``rb``."""

    a: np.ndarray
    b: np.ndarray
    ra: np.ndarray
    rb: np.ndarray

    @classmethod
    def of(cls, a: np.ndarray | Sequence[np.ndarray], b: np.ndarray | Sequence[np.ndarray], ra: float | np.ndarray,
           rb: float | np.ndarray) -> Tubes:
        """Tubes from ends ``(N, 3)`` or ``(3,)`` and radii (scalars broadcast), as float64 copies."""
        a, b = np.atleast_2d(np.asarray(a, np.float64)), np.atleast_2d(np.asarray(b, np.float64))
        n = len(a)
        return cls(a, b, np.broadcast_to(np.asarray(ra, np.float64), (n,)).copy(),
                   np.broadcast_to(np.asarray(rb, np.float64), (n,)).copy())

    @classmethod
    def concat(cls, parts: Sequence[Tubes]) -> Tubes:
        """All tubes of ``parts``, in order."""
        return cls(*(np.concatenate([getattr(p, name) for p in parts])
                     for name in ("a", "b", "ra", "rb")))

    def scaled(self, factor: float) -> Tubes:
        """The same center lines with both radii times ``factor``."""
        return Tubes(self.a, self.b, self.ra * factor, self.rb * factor)

    def select(self, mask: np.ndarray) -> Tubes:
        """The tubes where ``mask`` (bool or index array) selects."""
        return Tubes(self.a[mask], self.b[mask], self.ra[mask], self.rb[mask])

    def __len__(self) -> int:
        return len(self.a)


def _splat_cover(tubes: Tubes, spacing: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """Sub-voxel tubes as voxel fractions: samples every half voxel along each center line, each
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
    """Cover of voxels by tapered capsules: ``pa`` (n, m, 3) voxel centers minus the capsule
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
    return edge_cover(dist - radius, width)


def _capsule_cover(tubes: Tubes, spacing: np.ndarray, shape, big_radius_mm: float = 4.0,
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
        grid = np.stack(np.meshgrid(*(np.arange(a, b + 1, dtype=np.int64) for a, b in zip(lo, hi)),
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
            center = np.rint((a[sl] + 0.5 * ab[sl]) / spacing).astype(np.int64)
            center = np.clip(center, 0, shape - 1)
            pa = (center * spacing - a[sl]).astype(np.float32)[:, None, :] + offsets_mm[None]
            cover = _capsule_kernel(pa, ab[sl], ra[sl], rb[sl], spacing)
            border = np.flatnonzero(np.any((center < half) | (center + half >= shape), axis=1))
            if len(border):
                index = center[border, None, :] + offsets[None]
                cover[border] *= np.all((index >= 0) & (index < shape), axis=-1)
            collect((center @ strides)[:, None] + offsets @ strides, cover)
    if not indices:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(indices), np.concatenate(covers)


def draw_tubes(volume: np.ndarray, spacing: np.ndarray, tubes: Tubes, hu: float,
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


def draw_sphere(volume: np.ndarray, spacing: np.ndarray, center_mm: np.ndarray, radius: float, hu: float,
                bumps: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> None:
    """Paint a soft-edged blob where brighter than the volume, in its bounding box only.

    Its surface is at r(u) = radius · (1 + Σ_j α_j max(0, u·v_j)^p_j) along the unit direction u
    from the center: broad bumps (small p) make lobulations, narrow ones (large p) spicules.
    ``center_mm`` is ``(3,)`` patient-frame zyx; ``bumps`` is ``(v (J, 3) unit vectors, α (J,),
    p (J,))``, None for a sphere.
    """
    directions, heights, powers = bumps if bumps is not None else (np.zeros((0, 3)), np.zeros(0), np.zeros(0))
    reach = radius * (1.0 + heights.sum()) + spacing.max()
    lo = np.maximum(0, np.floor((center_mm - reach) / spacing).astype(np.int64))
    hi = np.minimum(volume.shape, np.ceil((center_mm + reach) / spacing).astype(np.int64) + 1)
    if np.any(hi <= lo):
        return
    view = volume[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    axes = [(np.arange(a, b, dtype=np.float32) * s - c).reshape([-1 if i == j else 1 for j in range(3)])
            for i, (a, b, s, c) in enumerate(zip(lo, hi, spacing, center_mm))]
    dist = np.sqrt(axes[0] ** 2 + axes[1] ** 2 + axes[2] ** 2)
    inv = 1.0 / np.maximum(dist, 1e-6)
    surface = np.full(dist.shape, radius, np.float32)
    for v, alpha, p in zip(directions, heights, powers):
        cosine = (axes[0] * v[0] + axes[1] * v[1] + axes[2] * v[2]) * inv
        surface += radius * alpha * np.maximum(cosine, 0.0) ** p
    width = np.sqrt(sum((axis * s) ** 2 for axis, s in zip(axes, spacing))) * inv
    width = np.maximum(width, float(spacing.min()))
    surface = np.maximum(surface - width * width / (12.0 * surface), 0.5 * surface)
    cover = edge_cover(dist - surface, width)
    np.maximum(view, view + cover * (hu - view), out=view)
