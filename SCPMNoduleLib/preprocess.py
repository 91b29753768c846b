"""From a CT as stored to the network's input: resampling, HU window, lung crop, and geometry.

Resampling keeps the image's own axes: the origin ``o`` and direction matrix ``D`` stay, only
the spacing and the size change, so the resampled grid's index ``i`` (x, y, z order) and the
world point stay one affine map,

    world_xyz_mm = o + D · diag(s) · i_xyz,

with ``s`` the new spacing. :class:`ScanGeometry` holds that map and is the one place that
converts between voxel indices ``(z, y, x)`` and world LPS millimetres ``(x, y, z)``.

Intensities are clipped to the window ``[hu_min, hu_max]`` and scaled to ``[0, 1]``:
``v = (clip(hu, hu_min, hu_max) - hu_min) / (hu_max - hu_min)``.

The optional lung mask is computed on a coarse grid (one sample at the centre of each block of
``mask_block`` voxels): air (below ``lung_threshold_hu``) in connected components that do not
touch the in-plane border (the air around the body does) and are large enough, holes filled
slice by slice, dilated by ``mask_dilation_mm``. Its bounding box is the only part resampled at
full resolution and the volume the network sees; candidates outside the mask are dropped.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .config_dict import dataclass_from_dict, invalid_setting

log = logging.getLogger(__name__)

PREPROCESS_VERSION = 1


@dataclass(frozen=True)
class PreprocessConfig:
    """How a scan becomes the network's input; stored in every checkpoint.

    Attributes:
        version: bumped whenever the meaning of the numbers below changes.
        spacing_xyz_mm: voxel spacing of the network's input.
        hu_min, hu_max: the HU window; values are clipped to it and scaled to [0, 1].
        lung_mask: crop to the lungs' bounding box and drop candidates outside the lungs.
        lung_threshold_hu: air threshold of the lung mask.
        lung_min_volume_ml: smallest air component kept as lung.
        mask_block: the mask is computed on blocks of this many voxels per side.
        mask_dilation_mm: the mask grows by this much so juxtapleural nodules stay inside.
        pad_hu: the intensity around the scan, in HU (windowed like the scan): the detector pads
            the network's input with it to a multiple of the size divisor, and training patches
            that reach beyond the scan are filled with it. Checkpoints and caches made before it
            was a field here hold no value for it and get this default, the one both used then.
    """

    version: int = PREPROCESS_VERSION
    spacing_xyz_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    hu_min: float = -1200.0
    hu_max: float = 600.0
    lung_mask: bool = True
    lung_threshold_hu: float = -400.0
    lung_min_volume_ml: float = 5.0
    mask_block: int = 4
    mask_dilation_mm: float = 10.0
    pad_hu: float = -1200.0

    def __post_init__(self) -> None:
        """Refuse settings no scan can be prepared with (:func:`~SCPMNoduleLib.config_dict.invalid_setting`)."""
        spacing = self.spacing_xyz_mm
        if len(spacing) != 3 or not all(math.isfinite(v) and v > 0 for v in spacing):
            raise invalid_setting(self, "spacing_xyz_mm", "is not three positive spacings")
        if not self.hu_min < self.hu_max:
            raise invalid_setting(self, "hu_max", f"is not above hu_min ({self.hu_min!r})")
        if self.mask_block < 1:
            raise invalid_setting(self, "mask_block", "is not at least 1")
        for name in ("lung_min_volume_ml", "mask_dilation_mm"):
            if not getattr(self, name) >= 0:
                raise invalid_setting(self, name, "is negative")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> PreprocessConfig:
        """Inverse of :meth:`to_dict` (:func:`~SCPMNoduleLib.config_dict.dataclass_from_dict`: lists
        from JSON become tuples; unknown keys and values of the wrong type are refused)."""
        return dataclass_from_dict(cls, values, "pre-processing config")

    def normalize(self, hu: np.ndarray) -> np.ndarray:
        """``(clip(hu) - hu_min) / (hu_max - hu_min)`` as float32, any shape."""
        scale = np.float32(1.0 / (self.hu_max - self.hu_min))
        out = np.clip(hu, self.hu_min, self.hu_max, dtype=np.float32)
        out -= np.float32(self.hu_min)
        out *= scale
        return out


@dataclass(frozen=True)
class ScanGeometry:
    """A voxel grid in world space: ``world_xyz = origin + direction · diag(spacing) · index_xyz``.

    Attributes:
        shape_zyx: grid size.
        origin_xyz_mm: world position of voxel (0, 0, 0), LPS mm.
        spacing_xyz_mm: voxel size.
        direction: ``(3, 3)`` direction cosines (columns = the x, y, z index axes in world LPS).
    """

    shape_zyx: tuple[int, int, int]
    origin_xyz_mm: np.ndarray
    spacing_xyz_mm: np.ndarray
    direction: np.ndarray

    @classmethod
    def from_image(cls, image: sitk.Image) -> ScanGeometry:
        return cls(tuple(int(n) for n in reversed(image.GetSize())),
                   np.asarray(image.GetOrigin(), dtype=np.float64),
                   np.asarray(image.GetSpacing(), dtype=np.float64),
                   np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3))

    @property
    def index_to_world_matrix(self) -> np.ndarray:
        """``(3, 3)`` matrix ``D · diag(s)`` acting on index_xyz."""
        return self.direction * self.spacing_xyz_mm[None, :]

    def index_to_world(self, index_zyx: np.ndarray) -> np.ndarray:
        """``(..., 3)`` voxel indices (z, y, x), fractional allowed -> ``(..., 3)`` world LPS mm (x, y, z)."""
        index_xyz = np.asarray(index_zyx, dtype=np.float64)[..., ::-1]
        return self.origin_xyz_mm + index_xyz @ self.index_to_world_matrix.T

    def world_to_index(self, world_xyz_mm: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`index_to_world`: ``(..., 3)`` world mm -> ``(..., 3)`` fractional index (z, y, x)."""
        offset = np.asarray(world_xyz_mm, dtype=np.float64) - self.origin_xyz_mm
        index_xyz = np.linalg.solve(self.index_to_world_matrix, offset.reshape(-1, 3).T).T
        return index_xyz[:, ::-1].reshape(offset.shape)


def resampled_geometry(image: sitk.Image, spacing_xyz_mm: tuple[float, float, float]) -> ScanGeometry:
    """The grid of ``image`` resampled to ``spacing_xyz_mm`` in its own axes.

    Origin and direction are kept; the size is ``floor((n - 1) · s / s') + 1`` per axis, so
    every new voxel centre lies inside the old grid's extent and index ↔ world stays one
    affine map (see the module docstring).
    """
    old = ScanGeometry.from_image(image)
    new_spacing = np.asarray(spacing_xyz_mm, dtype=np.float64)
    old_size_xyz = np.asarray(old.shape_zyx[::-1], dtype=np.float64)
    size_xyz = np.floor((old_size_xyz - 1) * old.spacing_xyz_mm / new_spacing + 1e-6).astype(int) + 1
    return ScanGeometry(tuple(int(n) for n in size_xyz[::-1]), old.origin_xyz_mm, new_spacing, old.direction)


def resample_onto(image: sitk.Image, geometry: ScanGeometry, start_zyx=(0, 0, 0),
                  shape_zyx: tuple[int, int, int] | None = None) -> sitk.Image:
    """Linear resampling of ``image`` onto the box ``[start, start + shape)`` of ``geometry``, float32.

    The box's voxels are exactly the grid's voxels there (its origin is the grid's point at
    ``start``), so resampling a box equals cropping the whole resampled grid. Points outside
    the image get 0.
    """
    shape_zyx = geometry.shape_zyx if shape_zyx is None else shape_zyx
    origin = geometry.index_to_world(np.asarray(start_zyx, dtype=np.float64))
    return sitk.Resample(
        image, [int(n) for n in shape_zyx[::-1]], sitk.Transform(), sitk.sitkLinear,
        [float(v) for v in origin], [float(v) for v in geometry.spacing_xyz_mm],
        [float(v) for v in geometry.direction.ravel()], 0.0, sitk.sitkFloat32,
    )


@dataclass(frozen=True)
class LungMask:
    """A coarse lung mask over the resampled grid.

    Attributes:
        mask: ``(D/b, H/b, W/b)`` bool, one value per block of ``block`` voxels per side.
        block: block size in resampled voxels.
    """

    mask: np.ndarray
    block: int

    def bounding_box(self, shape_zyx: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        """``(start_zyx, stop_zyx)`` in resampled voxels of the mask's true blocks, inside ``shape_zyx``."""
        where = np.argwhere(self.mask)
        start = where.min(axis=0) * self.block
        stop = np.minimum((where.max(axis=0) + 1) * self.block, shape_zyx)
        return start, stop

    def contains(self, points_zyx_vox: np.ndarray) -> np.ndarray:
        """``(N, 3)`` resampled-voxel points -> ``(N,)`` bool: inside the mask (points off the grid: False)."""
        blocks = np.floor(np.asarray(points_zyx_vox, dtype=np.float64).reshape(-1, 3) / self.block)
        blocks = blocks.astype(np.int64)
        inside = np.all((blocks >= 0) & (blocks < self.mask.shape), axis=1)
        clipped = np.clip(blocks, 0, np.asarray(self.mask.shape) - 1)
        return inside & self.mask[clipped[:, 0], clipped[:, 1], clipped[:, 2]]


def lung_mask(image: sitk.Image, geometry: ScanGeometry, config: PreprocessConfig) -> LungMask | None:
    """The coarse lung mask of a CT (HU) over the resampled grid ``geometry``, or ``None``
    when no lung-sized air is found.

    The CT is sampled once per block of ``mask_block`` grid voxels (at the block's centre,
    without resampling the whole grid); then, as whole-array operations: air = value below
    ``lung_threshold_hu``; connected components (6-connectivity); drop those touching the
    y or x border (the air around the body) or smaller than ``lung_min_volume_ml``; fill holes
    within each axial slice; dilate by ``mask_dilation_mm``. A chest wall thinner than a block
    can fall between the samples, joining the lungs to the outside air; when nothing is found,
    the mask is tried once more with blocks half the size.
    """
    blocks = [config.mask_block] + ([config.mask_block // 2] if config.mask_block > 1 else [])
    for block in blocks:
        mask = _lung_mask_of_blocks(image, geometry, config, block)
        if mask is not None:
            if block != config.mask_block:
                log.info("lung mask found with %d-voxel blocks (none with %d)", block, config.mask_block)
            return mask
    return None


def _lung_mask_of_blocks(image: sitk.Image, geometry: ScanGeometry, config: PreprocessConfig,
                         block: int) -> LungMask | None:
    """:func:`lung_mask` at one block size, or ``None`` when that finds no lung-sized air."""
    coarse_grid = ScanGeometry(
        tuple(-(-n // block) for n in geometry.shape_zyx),
        geometry.index_to_world(np.full(3, (block - 1) / 2)), geometry.spacing_xyz_mm * block,
        geometry.direction)
    coarse = sitk.GetArrayFromImage(resample_onto(image, coarse_grid)) < config.lung_threshold_hu
    labels, count = ndimage.label(coarse)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    border = np.unique(np.concatenate([labels[:, [0, -1], :].ravel(), labels[:, :, [0, -1]].ravel()]))
    block_ml = float(np.prod(coarse_grid.spacing_xyz_mm)) / 1000.0
    keep = sizes * block_ml >= config.lung_min_volume_ml
    keep[border] = False
    keep[0] = False
    mask = keep[labels]
    if not mask.any():
        return None
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    mask = ndimage.binary_fill_holes(mask, structure=in_plane)
    iterations = math.ceil(config.mask_dilation_mm / float(coarse_grid.spacing_xyz_mm.min()))
    if iterations > 0:
        mask = ndimage.binary_dilation(mask, ndimage.generate_binary_structure(3, 3), iterations)
    return LungMask(mask, block)


@dataclass(frozen=True)
class PreparedScan:
    """A scan ready for the network.

    Attributes:
        image: ``(D, H, W)`` float32 normalised intensities of the crop.
        geometry: the whole resampled grid (crop offsets are relative to it).
        crop_start_zyx: index of ``image[0, 0, 0]`` in the whole resampled grid.
        mask: the lung mask, or ``None`` when disabled or no lungs were found.
    """

    image: np.ndarray
    geometry: ScanGeometry
    crop_start_zyx: np.ndarray
    mask: LungMask | None


def prepare_scan(image: sitk.Image, config: PreprocessConfig, align: int = 1) -> PreparedScan:
    """Resample, window and (optionally) crop a CT (in HU) for the network.

    Only the crop is resampled at full resolution (the lung mask samples the CT once per
    block), so the cost follows the lungs' size, not the scan's.

    Args:
        image: 3-D scalar image in HU, any spacing and direction.
        config: the checkpoint's pre-processing.
        align: the crop's start is rounded down to a multiple of this (the network's total
            stride), so the crop's grid points fall where the whole scan's would.
    """
    geometry = resampled_geometry(image, config.spacing_xyz_mm)
    mask = lung_mask(image, geometry, config) if config.lung_mask else None
    start = np.zeros(3, dtype=np.int64)
    stop = np.asarray(geometry.shape_zyx, dtype=np.int64)
    if config.lung_mask and mask is None:
        log.warning("no lungs found in the scan; running on the whole volume")
    if mask is not None:
        start, stop = mask.bounding_box(geometry.shape_zyx)
        start = start // align * align
        log.info("lung crop %s of %s voxels", tuple(int(n) for n in stop - start), geometry.shape_zyx)
    crop = resample_onto(image, geometry, start, tuple(int(n) for n in stop - start))
    return PreparedScan(config.normalize(sitk.GetArrayViewFromImage(crop)), geometry, start, mask)
