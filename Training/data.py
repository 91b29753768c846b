"""Training patches from the cache: sampling, augmentation, batching.

A sample is addressed by ``(epoch, index)``: its random generator is seeded with
``(seed, epoch, index)``, so a patch depends only on those numbers, not on which DataLoader
worker or DDP process draws it, nor on what was drawn before. Resuming at an epoch therefore
reproduces the data exactly. :class:`EpochSampler` wraps :class:`DistributedSampler` (sharding
and shuffling per epoch) and tags each index with the epoch.

Patch centers: with probability ``nodule_fraction`` (scans with nodules only) the center of a
nodule of the scan (drawn with weights ``r ** -nodule_size_power``, uniform by default) plus a
uniform jitter of up to ``jitter_fraction * P`` voxels per axis; otherwise a point drawn
uniformly in the cached volume, so patches also straddle its edges (padded with the ``fill``
value, as the detector pads its tiles). The patch is then cut out with a random flip / in-plane
swap / rotation / scaling (:mod:`Training.augment`), and every nodule of the scan is mapped into
patch voxels with the same transform. All nodules are returned, those cut by or outside the
patch included: the matching decides from their visible volume whether they are positives,
ignored, or irrelevant. The scan's excluded findings come along, mapped the same way, as regions
the matching ignores (``DataConfig.ignore_excluded``; otherwise none are passed and they are
background like the rest).

Coordinate maps: like the detector's tiles, a patch reports its origin and the scan's shape in
the whole resampled grid (``crop_start + origin in the crop``, ``resampled_shape``). Under a
rotation or flip the reported origin is that of the axis-aligned box centered on the same source
point: the map then describes where the patch is, not how it is turned.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from SCPMNoduleLib.matching import MatchingConfig, match_center_points

from .augment import AugmentConfig, extract_patch, random_transform, transform_spheres
from .cache import CachedScan
from .config import DataConfig

__all__ = ["EpochSampler", "MatchingCollate", "PatchDataset", "collate_patches"]


class PatchDataset(Dataset):
    """Random training patches of cached scans, addressed by ``(epoch, index)``.

    ``index`` runs over ``crops_per_scan * len(scans)``; sample ``index`` is cut from scan
    ``index % len(scans)``.

    Args:
        scans: the training scans.
        data: patch size and sampling shares.
        augment: spatial augmentation, or ``None`` for axis-aligned, unflipped patches.
        seed: base seed of every sample's generator.
        fill: intensity outside the cached volume (network-input units: the normalised
            ``PreprocessConfig.pad_hu``, which the detector pads with too).
    """

    def __init__(self, scans: Sequence[CachedScan], data: DataConfig, augment: AugmentConfig | None,
                 seed: int, fill: float = 0.0) -> None:
        if not scans:
            raise ValueError("a patch dataset needs at least one scan")
        self.scans = list(scans)
        self.data = data
        self.augment = augment
        self.seed = seed
        self.fill = fill

    def __len__(self) -> int:
        return len(self.scans) * self.data.crops_per_scan

    def sample_center(self, scan: CachedScan, rng: np.random.Generator) -> np.ndarray:
        """The source point (crop voxels, z y x) that lands on the patch center, before snapping.

        Every draw is made whichever branch is taken, so the generator is in the same state after.
        """
        patch = self.data.patch_size
        use_nodule = rng.random() < self.data.nodule_fraction
        pick = self.pick_nodule(scan, rng)
        jitter = rng.uniform(-1.0, 1.0, size=3) * self.data.jitter_fraction * patch
        anywhere = rng.uniform(0.0, 1.0, size=3) * (np.asarray(scan.shape_zyx) - 1)
        if use_nodule and len(scan.radii_vox):
            return scan.centers_zyx_vox[pick] + jitter
        return anywhere

    def pick_nodule(self, scan: CachedScan, rng: np.random.Generator) -> int:
        """Index of the nodule a nodule-centered patch is centered on (0 for a scan without any)."""
        count = len(scan.radii_vox)
        power = self.data.nodule_size_power
        if count == 0 or power == 0:
            return int(rng.integers(max(count, 1)))
        weights = np.asarray(scan.radii_vox, dtype=np.float64) ** -power
        return int(rng.choice(count, p=weights / weights.sum()))

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        rng = np.random.default_rng([self.seed, epoch, index])
        scan = self.scans[index % len(self.scans)]
        patch = self.data.patch_size
        center_out = (patch - 1) / 2
        origin = np.rint(self.sample_center(scan, rng) - center_out).astype(np.int64)
        center_src = origin + center_out
        matrix, scale = (np.eye(3), 1.0) if self.augment is None else random_transform(rng, self.augment)
        order = self.augment.interpolation_order if self.augment is not None else 1
        image = extract_patch(scan.volume(), center_src, matrix, patch, self.fill, order)
        centers, radii = transform_spheres(scan.centers_zyx_vox, scan.radii_vox, center_src, matrix, scale, patch)
        if self.data.ignore_excluded:
            ignored_centers, ignored_radii = transform_spheres(scan.excluded_centers_zyx_vox, scan.excluded_radii_vox,
                                                               center_src, matrix, scale, patch)
        else:
            ignored_centers, ignored_radii = np.zeros((0, 3)), np.zeros(0)
        return {
            "image": torch.from_numpy(image)[None],
            "origin_zyx": torch.from_numpy(origin + np.asarray(scan.crop_start_zyx)),
            "scan_shape_zyx": torch.tensor(scan.resampled_shape_zyx, dtype=torch.int64),
            "centers_zyx_vox": torch.from_numpy(centers).float(),
            "radii_vox": torch.from_numpy(radii).float(),
            "ignored_centers_zyx_vox": torch.from_numpy(ignored_centers).float(),
            "ignored_radii_vox": torch.from_numpy(ignored_radii).float(),
            "seriesuid": scan.seriesuid,
        }


def collate_patches(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack images ``(B, 1, P, P, P)``, origins and scan shapes ``(B, 3)``; nodules, ignored
    findings and uids stay per-sample lists."""
    stacked = ("image", "origin_zyx", "scan_shape_zyx")
    return {key: torch.stack([s[key] for s in samples]) if key in stacked else [s[key] for s in samples]
            for key in samples[0]}


class MatchingCollate:
    """``collate_fn`` that batches samples and adds their matching targets (``batch["targets"]``).

    Matching runs here, in the DataLoader workers, so the training loop only moves tensors.
    """

    def __init__(self, strides: Sequence[int], patch_size: int, config: MatchingConfig) -> None:
        self.strides = tuple(strides)
        self.patch_shape = (patch_size,) * 3
        self.config = config

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch = collate_patches(samples)
        batch["targets"] = match_center_points(batch["centers_zyx_vox"], batch["radii_vox"], self.patch_shape,
                                               self.strides, self.config, batch["ignored_centers_zyx_vox"],
                                               batch["ignored_radii_vox"])
        return batch


class EpochSampler(Sampler):
    """:class:`DistributedSampler` whose indices come tagged with the epoch: ``(epoch, index)``.

    With one process (``num_replicas=1``) it is a seeded per-epoch shuffle of all indices.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True) -> None:
        self.inner: DistributedSampler[int] = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank,
                                                                 shuffle=shuffle, seed=seed, drop_last=False)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, index) for index in self.inner)
