"""Find the lungs in a CT (HU): body first, then the air inside it, then which of that air is lung.

Everything runs on a coarse grid: one sample per block of ``block`` voxels of a grid ``G`` (the
network's resampled grid, or the image's own), taken from the CT after averaging it over about a
block (``sitk.BinShrink``), so that noise and vessels do not decide and the cost follows the number
of blocks (about 10⁵-10⁶), not of voxels. With ``s`` the grid's spacing, the coarse grid's index
``c`` maps to the grid's continuous index ``i = b·c + (b - 1)/2`` and to world LPS millimetres
``o + D·diag(s)·i`` (``o`` origin, ``D`` direction), so coarse voxel ``c`` covers the grid voxels
``[b·c, b·c + b)``.

The steps, as whole-array operations (``L`` = the body's size, the square root of its median
axial cross-section, in mm; every length below scales with it, so a miniature phantom and an adult
are treated alike):

1. **Body**: tissue = HU above ``body_hu``; eroded once, its largest connected component (the
   scanner table and blankets hang on by thin bridges that the erosion cuts), grown back within the
   tissue (geodesically), and its holes filled in the axial, coronal and sagittal planes (a chest
   wall thinner than a block can read as air and open a lung in some planes of one family).
2. **Air inside the body**: HU below ``air_hu`` inside the filled body; 3-D connected components.
3. **Airways off**: an opening with a ball of radius ``opening_fraction·L`` (13 mm for an adult:
   wider than the trachea and main bronchi, narrower than a lung) keeps the lungs' thick cores; each
   core is grown back over the air within twice that radius, and without limit further than
   ``midline_fraction·L`` from the body's mid-sagittal plane (a lung's apex and recesses are thin
   too), so airways stay only where they enter the lung, and left and right lungs that touch at a
   thin junction come apart.
4. **Lung or gas**: the cores of each air component are grouped by side (patient left or right of
   the body's center); such a group is a lung when its volume is at least ``min_lung_fraction·L³``
   (adult lungs: 0.06-0.2 L³ each; bowel gas and lung bases in an abdominal scan: under 0.013 L³)
   and at most ``max_pure_air_fraction`` of its blocks are below ``pure_air_hu`` (averaged lung
   parenchyma is -700 to -900 HU; gas in the bowel or stomach is pure air where it is thick).
5. **Region**: the lungs, holes filled in each axial plane (masses and vessels inside them), grown
   by ``margin_mm`` so that juxtapleural nodules lie inside; its bounding box is the crop.

When no group passes, the result says why (:attr:`LungFinding.reason`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .scan_geometry import ScanGeometry
from .triples import float_triple

__all__ = ["LEFT", "RIGHT", "AirGroup", "LungFinderConfig", "LungFinding", "find_lungs"]

log = logging.getLogger(__name__)

RIGHT, LEFT = 1, 2
"""Values of the right and left lung in :attr:`LungFinding.labels`."""


@dataclass(frozen=True)
class LungFinderConfig:
    """The finder's thresholds; lengths and volumes scale with the body size ``L`` (module docstring).

    Attributes:
        air_hu: air (lung) below this, on the block-averaged CT.
        body_hu: tissue above this.
        pure_air_hu: a block below this holds gas, not lung parenchyma.
        opening_fraction: radius of the opening that cuts the airways off, over ``L``.
        midline_fraction: the mediastinum (trachea, main bronchi) lies within this times ``L``
            of the body's center (patient's left-right); outside it, thin air joins its lung
            wherever it is (apex, costophrenic recesses).
        min_lung_fraction: smallest lung, as a volume over ``L³``.
        max_pure_air_fraction: largest share of a lung's blocks below ``pure_air_hu``.
        min_blocks_across: when ``L`` spans fewer blocks than this, the finder runs again with
            blocks half the size (a miniature phantom, a child).
        margin_mm: the region is the lungs grown by this much.
    """

    air_hu: float = -400.0
    body_hu: float = -500.0
    pure_air_hu: float = -950.0
    opening_fraction: float = 0.05
    midline_fraction: float = 0.15
    min_lung_fraction: float = 0.02
    max_pure_air_fraction: float = 0.5
    min_blocks_across: int = 24
    margin_mm: float = 10.0


@dataclass(frozen=True)
class AirGroup:
    """The measurements of one candidate: the thick air of one air component on one side.

    Attributes:
        side: :data:`RIGHT` or :data:`LEFT` (patient's side of the body's center).
        volume_ml: its volume.
        size_fraction: ``volume / L³``.
        pure_air_fraction: share of its blocks below ``pure_air_hu``.
        median_hu: median of its blocks' averaged HU.
        depth_mm: radius of the largest ball inside it.
        center_xyz_mm: its centroid, world LPS.
        is_lung: whether it passed.
    """

    side: int
    volume_ml: float
    size_fraction: float
    pure_air_fraction: float
    median_hu: float
    depth_mm: float
    center_xyz_mm: tuple[float, float, float]
    is_lung: bool


@dataclass(frozen=True, eq=False)
class LungFinding:
    """What :func:`find_lungs` found.

    Attributes:
        labels: ``coarse.shape_zyx`` uint8: 0, :data:`RIGHT` or :data:`LEFT`.
        region: ``coarse.shape_zyx`` bool: the lungs (holes filled) grown by the margin; the
            volume the detector should look in.
        coarse: the blocks' grid.
        block: block size in voxels of the input grid.
        volume_ml: both lungs together (``labels > 0`` over the blocks inside the image).
        volumes_ml: ``(right, left)``.
        n_lungs: 0, 1 or 2.
        box_start_zyx, box_stop_zyx: the region's bounding box in voxels of the input grid
            (``stop`` exclusive, clipped to the grid); the whole grid when no lungs were found.
        box_min_xyz_mm, box_max_xyz_mm: the same box in world LPS mm (the corner voxels'
            centers; the axis-aligned hull of the 8 corners when the grid is oblique).
        body_size_mm: ``L``.
        groups: every candidate measured, lungs and rejected gas.
        reason: empty when lungs were found, else why not (a phrase).
    """

    labels: np.ndarray
    region: np.ndarray
    coarse: ScanGeometry
    block: int
    volume_ml: float
    volumes_ml: tuple[float, float]
    n_lungs: int
    box_start_zyx: np.ndarray
    box_stop_zyx: np.ndarray
    box_min_xyz_mm: np.ndarray
    box_max_xyz_mm: np.ndarray
    body_size_mm: float
    groups: tuple[AirGroup, ...] = field(default_factory=tuple)
    reason: str = ""

    @property
    def found(self) -> bool:
        return self.n_lungs > 0

    def contains(self, points_zyx_vox: np.ndarray) -> np.ndarray:
        """``(N, 3)`` points in voxels of the input grid -> ``(N,)`` bool: inside :attr:`region`
        (points off the grid: False)."""
        blocks = np.floor(np.asarray(points_zyx_vox, dtype=np.float64).reshape(-1, 3) / self.block)
        blocks = blocks.astype(np.int64)
        inside = np.all((blocks >= 0) & (blocks < self.region.shape), axis=1)
        clipped = np.clip(blocks, 0, np.asarray(self.region.shape) - 1)
        return inside & self.region[clipped[:, 0], clipped[:, 1], clipped[:, 2]]


def _sample(image: sitk.Image, coarse: ScanGeometry) -> tuple[np.ndarray, np.ndarray]:
    """The CT averaged over about one block and sampled at the blocks' centers (float32 HU,
    nearest value beyond the image), and which blocks' centers lie inside the image."""
    spacing = np.asarray(image.GetSpacing())
    factors = np.clip(np.floor(coarse.spacing_xyz_mm / spacing + 1e-6), 1, image.GetSize()).astype(int)
    shrunk = sitk.BinShrink(image, [int(f) for f in factors]) if factors.max() > 1 else image
    sampled = coarse.resample(shrunk, outside_value=-1024.0, extrapolate=True)
    # The image index of coarse index c is affine in c, so it is built axis by axis from three
    # ramps (a few additions per block) instead of mapping every block's center through
    # ScanGeometry.contains_world (a 3x3 solve per block: on A0001's 920k blocks 0.12 s against
    # 0.03 s for this whole function).
    image_grid = ScanGeometry.from_image(image)
    to_image = np.linalg.inv(image_grid.index_to_world_matrix)
    base = to_image @ (coarse.index_to_world(np.zeros(3)) - image_grid.origin_xyz_mm)
    per_axis = to_image @ coarse.index_to_world_matrix
    size = np.asarray(image.GetSize())
    inside = np.ones(coarse.shape_zyx, dtype=bool)
    for axis_xyz in range(3):  # each image axis's index is a sum of one ramp per coarse axis
        value = np.full(coarse.shape_zyx, base[axis_xyz])
        for c_xyz in range(3):
            n = coarse.shape_zyx[2 - c_xyz]
            shape = [1, 1, 1]
            shape[2 - c_xyz] = n
            value = value + (per_axis[axis_xyz, c_xyz] * np.arange(n)).reshape(shape)
        inside &= (value >= -0.5) & (value <= size[axis_xyz] - 0.5)
    return sitk.GetArrayFromImage(sampled), inside


def _in_plane(normal: int) -> np.ndarray:
    structure = np.zeros((3, 3, 3), dtype=bool)
    index: list[slice | int] = [slice(None)] * 3
    index[normal] = 1
    structure[tuple(index)] = ndimage.generate_binary_structure(2, 1)
    return structure


def _fill_holes_in_planes(mask: np.ndarray, normal: int) -> np.ndarray:
    """Holes filled in each plane across axis ``normal``: the background that is not connected,
    within its plane, to the plane's border."""
    background, _ = ndimage.label(~mask, _in_plane(normal))
    border = np.ones(mask.shape, dtype=bool)
    index = [slice(1, -1)] * 3
    index[normal] = slice(None)
    border[tuple(index)] = False
    outside = np.zeros(background.max() + 1, dtype=bool)
    outside[background[border]] = True
    outside[0] = False
    return mask | ~outside[background]


def _body(hu: np.ndarray, config: LungFinderConfig) -> np.ndarray:
    """The filled body (module docstring, step 1); empty when there is no tissue."""
    tissue = hu > config.body_hu
    cross = ndimage.generate_binary_structure(3, 1)
    eroded = ndimage.binary_erosion(tissue, cross)
    labels, count = ndimage.label(eroded)
    if count == 0:
        return np.zeros_like(tissue)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = ndimage.binary_propagation(labels == sizes.argmax(), cross, mask=tissue)
    # a wall thinner than a block can read as air and open a lung to the outside in some axial
    # planes; the coronal or sagittal planes through that lung are then still closed
    return np.logical_or.reduce([_fill_holes_in_planes(body, normal) for normal in range(3)])


def _body_size_mm(body: np.ndarray, axial: int, spacing_zyx: np.ndarray) -> float:
    """``L``: the square root of the body's median cross-section over the planes it appears in."""
    others = tuple(a for a in range(3) if a != axial)
    areas = body.sum(axis=others) * float(np.prod(spacing_zyx[list(others)]))
    areas = areas[areas > 0]
    return float(math.sqrt(np.median(areas))) if areas.size else 0.0


def _no_lungs(coarse: ScanGeometry, block: int, grid: ScanGeometry, size_mm: float, reason: str,
              groups: tuple[AirGroup, ...] = ()) -> LungFinding:
    empty = np.zeros(coarse.shape_zyx, dtype=np.uint8)
    start = np.zeros(3, dtype=np.int64)
    stop = np.asarray(grid.shape_zyx, dtype=np.int64)
    low, high = grid.world_box(start, stop)
    return LungFinding(empty, empty.astype(bool), coarse, block, 0.0, (0.0, 0.0), 0, start, stop,
                       low, high, size_mm, groups, reason)


def _thick_air(air_labels: np.ndarray, spacing_zyx: np.ndarray, radius_mm: float,
               lateral: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step 3: ``(parts, depth, component_of_part)``: each core of the air deeper than
    ``radius_mm``, labelled 1..n and grown back over its own air component (nearest core wins)
    within ``2·radius_mm`` (the opening, and thin air beside it), or anywhere ``lateral`` (outside
    the mediastinum: a lung's apex and recesses); the depth map of the air; and each part's air
    component (index 0 unused)."""
    air = air_labels > 0
    depth = ndimage.distance_transform_edt(air, sampling=spacing_zyx).astype(np.float32)
    cores, count = ndimage.label(depth > radius_mm)
    component_of_part = np.zeros(count + 1, dtype=np.int64)
    component_of_part[cores.ravel()] = air_labels.ravel()
    component_of_part[0] = 0
    if count == 0:
        return cores, depth, component_of_part
    distance, nearest = ndimage.distance_transform_edt(cores == 0, sampling=spacing_zyx,
                                                       return_indices=True)
    parts = cores[tuple(nearest)]
    parts[((distance > 2 * radius_mm) & ~lateral) | (component_of_part[parts] != air_labels)] = 0
    return parts, depth, component_of_part


def _measure_groups(hu: np.ndarray, parts: np.ndarray, depth: np.ndarray,
                    component_of_part: np.ndarray, to_world, body_center_x: float, size_mm: float,
                    block_ml: float, inside: np.ndarray, config: LungFinderConfig
                    ) -> tuple[np.ndarray, list[AirGroup]]:
    """Step 4: ``(group_map, groups)``: parts grouped by (air component, side), measured and
    judged; ``group_map`` holds each voxel's 1-based index into ``groups`` (0: none)."""
    count = len(component_of_part) - 1
    index = np.arange(1, count + 1)
    centers = np.asarray(ndimage.center_of_mass(parts > 0, parts, index)).reshape(-1, 3)
    side_of_part = np.where(to_world(centers)[:, 0] >= body_center_x, LEFT, RIGHT)
    keys = sorted(set(zip(component_of_part[1:].tolist(), side_of_part.tolist())))
    group_of_part = np.zeros(count + 1, dtype=np.int64)
    group_of_part[1:] = [keys.index(key) + 1 for key in zip(component_of_part[1:].tolist(),
                                                            side_of_part.tolist())]
    group_map = group_of_part[parts]
    groups = []
    for g, (_, side) in enumerate(keys, start=1):
        where = group_map == g
        values = hu[where]
        volume = float(np.count_nonzero(where & inside)) * block_ml
        fraction = volume / (size_mm / 10.0) ** 3
        pure = float(np.mean(values < config.pure_air_hu))
        center = to_world(np.mean(np.argwhere(where), axis=0))
        is_lung = fraction >= config.min_lung_fraction and pure <= config.max_pure_air_fraction
        groups.append(AirGroup(int(side), volume, fraction, pure, float(np.median(values)),
                               float(depth[where].max()), float_triple(center), is_lung))
    return group_map, groups


def _find_at(image: sitk.Image, grid: ScanGeometry, block: int, config: LungFinderConfig) -> LungFinding:
    coarse = grid.coarsened(block)
    hu, inside = _sample(image, coarse)
    spacing_zyx = coarse.spacing_xyz_mm[::-1]
    axial = coarse.axial_axis
    body = _body(hu, config)
    if not body.any():
        return _no_lungs(coarse, block, grid, 0.0,
                         f"no body (tissue above {config.body_hu:.0f} HU) in the scan")
    size_mm = _body_size_mm(body, axial, spacing_zyx)
    in_plane_mm = float(np.delete(spacing_zyx, axial).max())
    if size_mm < config.min_blocks_across * in_plane_mm and block > 1:
        log.debug("body %.0f mm spans under %d blocks of %d voxels; trying %d", size_mm,
                  config.min_blocks_across, block, block // 2)
        return _find_at(image, grid, block // 2, config)
    block_ml = float(np.prod(coarse.spacing_xyz_mm)) / 1000.0
    min_ml = config.min_lung_fraction * (size_mm / 10.0) ** 3
    air_labels, _ = ndimage.label(body & (hu < config.air_hu), np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(air_labels.ravel()) * block_ml
    sizes[0] = 0.0
    if sizes.max(initial=0.0) < min_ml:
        return _no_lungs(coarse, block, grid, size_mm, (
            f"the largest air inside the body is {sizes.max(initial=0.0):.0f} mL, "
            f"{100 * sizes.max(initial=0.0) / min_ml * config.min_lung_fraction:.1f}% of the body "
            f"size cubed (a lung: at least {100 * config.min_lung_fraction:.0f}%)"))
    # only air components that could hold a lung, in their bounding box grown by the margin
    air_labels[(sizes < min_ml)[air_labels]] = 0
    pad = np.ceil(config.margin_mm / spacing_zyx).astype(int) + 1
    where = np.argwhere(air_labels)
    low = np.maximum(where.min(axis=0) - pad, 0)
    high = np.minimum(where.max(axis=0) + 1 + pad, coarse.shape_zyx)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(low, high))

    def to_world(index_zyx: np.ndarray) -> np.ndarray:
        return coarse.index_to_world(np.asarray(index_zyx) + low)

    radius_mm = config.opening_fraction * size_mm
    body_center_x = float(coarse.index_to_world(np.mean(np.argwhere(body), axis=0))[0])
    steps_x = coarse.direction[0] * coarse.spacing_xyz_mm  # world x per index step (x, y, z)
    shape = tuple(s.stop - s.start for s in crop)
    x_mm = float(to_world(np.zeros(3))[0]) + sum(
        (steps_x[2 - axis] * np.arange(n)).reshape([n if a == axis else 1 for a in range(3)])
        for axis, n in enumerate(shape))
    lateral = np.abs(x_mm - body_center_x) >= config.midline_fraction * size_mm
    parts, depth, component_of_part = _thick_air(air_labels[crop], spacing_zyx, radius_mm, lateral)
    if len(component_of_part) == 1:
        return _no_lungs(coarse, block, grid, size_mm,
                         f"no air inside the body thicker than {2 * radius_mm:.0f} mm")
    group_map, groups = _measure_groups(hu[crop], parts, depth, component_of_part, to_world,
                                        body_center_x, size_mm, block_ml, inside[crop], config)
    lung_groups = [g for g, group in enumerate(groups, start=1) if group.is_lung]
    if not lung_groups:
        biggest = max(groups, key=lambda group: group.volume_ml)
        return _no_lungs(coarse, block, grid, size_mm, (
            f"the largest thick air inside the body, {biggest.volume_ml:.0f} mL, is "
            f"{100 * biggest.size_fraction:.1f}% of the body size cubed (a lung: at least "
            f"{100 * config.min_lung_fraction:.0f}%) and {100 * biggest.pure_air_fraction:.0f}% "
            f"gas (a lung: at most {100 * config.max_pure_air_fraction:.0f}%)"), tuple(groups))
    labels = np.zeros(coarse.shape_zyx, dtype=np.uint8)
    for side in (RIGHT, LEFT):
        members = [g for g in lung_groups if groups[g - 1].side == side]
        if members:
            lung = _fill_holes_in_planes(np.isin(group_map, members), axial)
            labels[crop][lung & (labels[crop] == 0)] = side
    region = np.zeros(coarse.shape_zyx, dtype=bool)
    region[crop] = labels[crop] > 0
    if config.margin_mm > 0:
        region[crop] = ndimage.distance_transform_edt(~region[crop], sampling=spacing_zyx) <= config.margin_mm
    right, left = (float(np.count_nonzero((labels == side) & inside)) * block_ml for side in (RIGHT, LEFT))
    volumes = (right, left)
    where = np.argwhere(region)
    start = where.min(axis=0) * block
    stop = np.minimum((where.max(axis=0) + 1) * block, grid.shape_zyx)
    box_low, box_high = grid.world_box(start, stop)
    return LungFinding(labels, region, coarse, block, sum(volumes), volumes,
                       sum(v > 0 for v in volumes), start, stop, box_low, box_high, size_mm, tuple(groups))


def find_lungs(image: sitk.Image, grid: ScanGeometry | None = None, block: int = 4,
               config: LungFinderConfig | None = None) -> LungFinding:
    """The lungs of a CT in HU (module docstring), on blocks of ``block`` voxels of ``grid``.

    Args:
        image: 3-D scalar CT in HU, any spacing and direction.
        grid: the grid whose voxels the boxes and :meth:`LungFinding.contains` speak of, in the
            image's axes (``preprocess.resampled_geometry``); default the image's own grid.
        block: block size in voxels of ``grid``; halved while the body spans fewer than
            ``config.min_blocks_across`` blocks.
        config: thresholds; default :class:`LungFinderConfig`.

    Returns:
        A :class:`LungFinding`; ``found`` is False, with a ``reason``, when no air inside the
        body is lung-sized and lung-like.
    """
    config = config or LungFinderConfig()
    finding = _find_at(image, grid if grid is not None else ScanGeometry.from_image(image), max(1, int(block)), config)
    if finding.found:
        log.info("lungs: %d found, %.0f mL (right %.0f, left %.0f)", finding.n_lungs,
                 finding.volume_ml, *finding.volumes_ml)
    else:
        log.info("no lungs: %s", finding.reason)
    return finding
