"""From a CT as stored to the network's input: resampling, HU window, lung crop, and geometry.

Resampling keeps the image's own axes: the origin ``o`` and direction matrix ``D`` stay, only
the spacing and the size change, so the resampled grid's index ``i`` (x, y, z order) and the
world point stay one affine map,

    world_xyz_mm = o + D · diag(s) · i_xyz,

with ``s`` the new spacing (:class:`~SCPMNoduleLib.scan_geometry.ScanGeometry` holds that map).

Intensities are clipped to the window ``[hu_min, hu_max]`` and scaled to ``[0, 1]``:
``v = (clip(hu, hu_min, hu_max) - hu_min) / (hu_max - hu_min)``.

The lungs are found on a coarse grid of blocks of ``mask_block`` voxels
(:func:`~SCPMNoduleLib.lungs.find_lungs`: body, air inside it, airways and bowel gas rejected) and
grown by ``mask_dilation_mm``; that region's bounding box is the only part resampled at full
resolution and the volume the network sees, and candidates outside the region are dropped. A scan
in which no lungs are found is refused (:class:`NoLungsError`) unless the mask is switched off
(``lung_mask=False``: the whole volume, for research on crops).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from .config_dict import dataclass_from_dict, invalid_setting
from .errors import UserInputError
from .lungs import LungFinderConfig, LungFinding, find_lungs
from .scan_geometry import ScanGeometry
from .triples import int_triple

__all__ = [
    "NoLungsError",
    "PREPROCESS_VERSION",
    "PreparedScan",
    "PreprocessConfig",
    "RETIRED_SETTINGS",
    "prepare_scan",
    "resampled_geometry",
]

log = logging.getLogger(__name__)

PREPROCESS_VERSION = 1

RETIRED_SETTINGS = frozenset({"lung_min_volume_ml"})
"""Settings that checkpoints written before the lung finder carry and that no longer mean anything
(the finder sizes lungs by the body, :class:`~SCPMNoduleLib.lungs.LungFinderConfig`): read and dropped."""


@dataclass(frozen=True)
class PreprocessConfig:
    """How a scan becomes the network's input; stored in every checkpoint.

    Attributes:
        version: bumped whenever the meaning of the numbers below changes.
        spacing_xyz_mm: voxel spacing of the network's input.
        hu_min, hu_max: the HU window; values are clipped to it and scaled to [0, 1].
        lung_mask: find the lungs, crop to them, drop candidates outside them and refuse a scan
            without lungs; ``False`` runs on the whole volume.
        lung_threshold_hu: air (lung) threshold of the lung finder.
        mask_block: the lungs are found on blocks of this many voxels per side.
        mask_dilation_mm: the lungs grow by this much so juxtapleural nodules stay inside.
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
    mask_block: int = 4
    mask_dilation_mm: float = 10.0
    pad_hu: float = -1200.0

    def __post_init__(self) -> None:
        """Refuse settings no scan can be prepared with (:func:`~SCPMNoduleLib.config_dict.invalid_setting`),
        and numbers written under another version's meaning."""
        if self.version != PREPROCESS_VERSION:
            raise UserInputError(f"pre-processing version {self.version!r} is not the version {PREPROCESS_VERSION} "
                                 "this program reads.")
        spacing = self.spacing_xyz_mm
        if len(spacing) != 3 or not all(math.isfinite(v) and v > 0 for v in spacing):
            raise invalid_setting(self, "spacing_xyz_mm", "is not three positive spacings")
        if not self.hu_min < self.hu_max:
            raise invalid_setting(self, "hu_max", f"is not above hu_min ({self.hu_min!r})")
        if self.mask_block < 1:
            raise invalid_setting(self, "mask_block", "is not at least 1")
        if not self.mask_dilation_mm >= 0:
            raise invalid_setting(self, "mask_dilation_mm", "is negative")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PreprocessConfig:
        """Inverse of :meth:`to_dict` (:func:`~SCPMNoduleLib.config_dict.dataclass_from_dict`: lists
        from JSON become tuples; unknown keys and values of the wrong type are refused), less the
        :data:`RETIRED_SETTINGS`."""
        current = {key: value for key, value in values.items() if key not in RETIRED_SETTINGS}
        return dataclass_from_dict(cls, current, "pre-processing config")

    def lung_finder(self) -> LungFinderConfig:
        """The lung finder's settings that this config sets (the others keep their defaults)."""
        return LungFinderConfig(air_hu=self.lung_threshold_hu, margin_mm=self.mask_dilation_mm)

    def normalize(self, hu: np.ndarray) -> np.ndarray:
        """``(clip(hu) - hu_min) / (hu_max - hu_min)`` as float32, any shape."""
        scale = np.float32(1.0 / (self.hu_max - self.hu_min))
        out = np.clip(hu, self.hu_min, self.hu_max, dtype=np.float32)
        out -= np.float32(self.hu_min)
        out *= scale
        return out


def resampled_geometry(image: sitk.Image, spacing_xyz_mm: tuple[float, float, float]) -> ScanGeometry:
    """The grid of ``image`` resampled to ``spacing_xyz_mm`` in its own axes.

    Origin and direction are kept; the size is ``floor((n - 1) · s / s') + 1`` per axis, so
    every new voxel center lies inside the old grid's extent and index ↔ world stays one
    affine map (see the module docstring).
    """
    old = ScanGeometry.from_image(image)
    new_spacing = np.asarray(spacing_xyz_mm, dtype=np.float64)
    old_size_xyz = np.asarray(old.shape_zyx[::-1], dtype=np.float64)
    size_xyz = np.floor((old_size_xyz - 1) * old.spacing_xyz_mm / new_spacing + 1e-6).astype(int) + 1
    return ScanGeometry(int_triple(size_xyz[::-1]), old.origin_xyz_mm, new_spacing, old.direction)


class NoLungsError(UserInputError):
    """No lung-sized, lung-like air in a scan: it is not a chest CT (or not a whole one).

    ``reason`` says what was measured; the message is a sentence without the file's name, which
    the caller that knows it puts in front (``"<file>: no lungs found ..."``).
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"no lungs found — is this a chest CT? ({reason}; --no-lung-mask runs on the whole volume)")


@dataclass(frozen=True)
class PreparedScan:
    """A scan ready for the network.

    Attributes:
        image: ``(D, H, W)`` float32 normalised intensities of the crop.
        geometry: the whole resampled grid (crop offsets are relative to it).
        crop_start_zyx: index of ``image[0, 0, 0]`` in the whole resampled grid.
        lungs: what the lung finder found (its region is the mask), or ``None`` when disabled.
        source: the scan's own grid, as stored.
    """

    image: np.ndarray
    geometry: ScanGeometry
    crop_start_zyx: np.ndarray
    lungs: LungFinding | None
    source: ScanGeometry

    def inside_scan(self, points_zyx_vox: np.ndarray) -> np.ndarray:
        """``(N, 3)`` points in voxels of :attr:`geometry` -> ``(N,)`` bool: within the scan's own
        voxels (index ``-0.5 .. n - 0.5`` of :attr:`source` on every axis); the padding around a
        crop or a small scan is not the patient."""
        points = np.asarray(points_zyx_vox, dtype=np.float64).reshape(-1, 3)
        return self.source.contains_world(self.geometry.index_to_world(points))

    def keep(self, points_zyx_vox: np.ndarray) -> np.ndarray:
        """``(N, 3)`` points in voxels of :attr:`geometry` -> ``(N,)`` bool: inside the scan and,
        when the lungs were looked for, inside their region."""
        inside = self.inside_scan(points_zyx_vox)
        return inside & self.lungs.contains(points_zyx_vox) if self.lungs is not None else inside


def prepare_scan(image: sitk.Image, config: PreprocessConfig, align: int = 1) -> PreparedScan:
    """Resample, window and crop a CT (in HU) to its lungs for the network.

    Only the crop is resampled at full resolution (the lung finder samples the CT once per
    block), so the cost follows the lungs' size, not the scan's.

    Args:
        image: 3-D scalar image in HU, any spacing and direction.
        config: the checkpoint's pre-processing.
        align: the crop's start is rounded down to a multiple of this (the network's total
            stride), so the crop's grid points fall where the whole scan's would.

    Raises:
        NoLungsError: ``config.lung_mask`` is on and the scan holds no lungs.
    """
    geometry = resampled_geometry(image, config.spacing_xyz_mm)
    lungs = None
    start = np.zeros(3, dtype=np.int64)
    stop = np.asarray(geometry.shape_zyx, dtype=np.int64)
    if config.lung_mask:
        lungs = find_lungs(image, geometry, config.mask_block, config.lung_finder())
        if not lungs.found:
            raise NoLungsError(lungs.reason)
        start, stop = lungs.box_start_zyx // align * align, lungs.box_stop_zyx
        log.info("lung crop %s of %s voxels", tuple(int(n) for n in stop - start), geometry.shape_zyx)
    crop = geometry.resample(image, start, int_triple(stop - start))
    return PreparedScan(config.normalize(sitk.GetArrayViewFromImage(crop)), geometry, start, lungs,
                        ScanGeometry.from_image(image))
