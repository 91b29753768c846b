"""Vessel and airway trees: great vessels, trachea, and trees grown into each lung.

Each lung gets an arterial and a venous tree and an airway tree, grown by *territory splitting*:
a branch owns a set of points sampled in the lung, runs towards their centroid, and splits them
in two across their principal axis; its radius follows Murray's law, r = r_root · (n / N)^(1/3)
for a territory of n of the N points, so vessels taper from about 6 mm at the hilum to below a
millimetre at the periphery. Trees grow one generation at a time (vectorised over branches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .anatomy import Geometry, LungMap
from .config import LUNG_LABELS, PhantomConfig
from .raster import Tubes, draw_tubes

__all__ = ["Trees", "draw_trees"]


def _grow_tree(rng: np.random.Generator, points: np.ndarray, root_mm: np.ndarray, root_radius: float,
               min_radius: float, config: PhantomConfig) -> Tubes:
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
        centroid = np.stack([np.bincount(label, points[:, i], n_branch) for i in range(3)], 1) / count[:, None]
        radius = root_radius * np.cbrt(count / total)
        leaf = (count <= config.leaf_points) | (radius * 2.0 ** (-1.0 / 3.0) < min_radius)
        reach = np.where(leaf, 1.0, rng.uniform(*config.branch_reach, n_branch))
        ends = starts + reach[:, None] * (centroid - starts)
        parts.append(Tubes.of(starts, ends, radius, radius * 0.9))
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
    return Tubes.concat(parts)


@dataclass
class Trees:
    """Every tube drawn into a scan: blood vessels (great vessels included) and airways (walls;
    the lumens are the same tubes scaled by 1 - ``airway_wall_fraction``)."""

    vessels: Tubes
    airways: Tubes


def draw_trees(rng: np.random.Generator, geo: Geometry, config: PhantomConfig, volume: np.ndarray,
               lungs: LungMap) -> Trees:
    """Aorta, pulmonary arteries and veins, trachea and bronchi, painted into ``volume``."""
    k = geo.scale
    cx, cy = geo.cavity
    (hz, hy, hx), (az, ay, ax) = geo.heart

    def mm(z, y, x):  # body-centered (x, y) and height z -> patient-frame zyx mm
        return np.array([z, y + geo.center_y, x + geo.center_x])

    vy, vr = geo.vertebra
    arch_z = geo.z_of(0.78)
    aorta_x, aorta_y, aorta_r = geo.aorta
    ascending = mm(arch_z - 8 * k, hy + 0.2 * ay, 0.1 * cx)
    descending = mm(arch_z, aorta_y, aorta_x)
    great = Tubes.of(
        [mm(hz + 0.5 * az, hy + 0.2 * ay, 0.1 * cx), ascending, descending],
        [ascending, descending, mm(-50.0, aorta_y, aorta_x)], aorta_r, aorta_r)
    carina = mm(geo.z_of(0.62), vy - vr - 14 * k, 0.0)
    trunk_top = mm(geo.z_of(0.58), hy + 0.1 * ay, 0.0)
    trunk = Tubes.of(mm(hz + 0.4 * az, hy - 0.2 * ay, 0.25 * cx), trunk_top, 11 * k, 10 * k)
    vessel_parts, airway_parts = [great, trunk], [
        Tubes.of(carina, mm(geo.z_of(1.0) + 100.0, vy - vr - 16 * k, 0.0), 9 * k, 9 * k)]
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
        vessel_parts.append(Tubes.of(trunk_top, hilum[0], 10 * k, root_vessel))
        n = int(math.ceil(config.leaf_points * (root_airway / config.airway_min_radius_mm) ** 3))
        bronchus = carina + np.array([0.0, 0.0, side * 0.15 * cx])
        airway_parts.append(Tubes.of(carina, bronchus, root_airway, root_airway))
        airway_parts.append(_grow_tree(rng, lungs.sample(rng, label, max(n, 8), 2.0), bronchus,
                                       root_airway, config.airway_min_radius_mm, config))
    trees = Trees(Tubes.concat(vessel_parts), Tubes.concat(airway_parts))
    splat = config.splat_radius_voxels * float(geo.spacing_zyx[1:].min())
    draw_tubes(volume, geo.spacing_zyx, trees.vessels, config.hu_blood, False, splat)
    draw_tubes(volume, geo.spacing_zyx, trees.airways, config.hu_airway_wall, False, splat)
    draw_tubes(volume, geo.spacing_zyx, trees.airways.scaled(1.0 - config.airway_wall_fraction),
               config.hu_air, True, splat)
    return trees
