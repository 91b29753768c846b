"""A tiny LUNA16-layout data set for the training tests (a few seconds to cache, not a phantom).

Each scan: air, an elliptic body of soft tissue, two ellipsoidal lungs of -850 HU, and solid
nodules (+40 HU) of known world center and diameter inside the lungs; anisotropic spacing and a
non-zero origin. The annotations are the exact spheres drawn, so the cache's voxel coordinates
can be checked against the image.
"""

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from SCPMNoduleLib.io import Findings, write_annotations, write_seriesuids

SHAPE_ZYX = (36, 72, 80)
SPACING_XYZ = (1.25, 1.25, 2.0)
NODULE_HU = 40.0
LUNG_HU = -850.0


def write_tiny_luna16(root: Path, n_scans: int = 2, subsets: int = 2, seed: int = 0) -> Findings:
    """Write ``root/subset<k>/<uid>.mhd`` + ``annotations.csv`` + ``seriesuids.csv``; return the annotations."""
    rng = np.random.default_rng(seed)
    spacing = np.asarray(SPACING_XYZ)
    index_zyx = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE_ZYX], indexing="ij"), axis=-1).astype(float)
    mm_zyx = index_zyx * spacing[::-1]
    extent_zyx = (np.asarray(SHAPE_ZYX) - 1) * spacing[::-1]
    center_zyx = extent_zyx / 2
    uids, centers, diameters = [], [], []
    for scan in range(n_scans):
        uid = f"1.3.6.1.4.1.14519.5.2.1.{seed}.{scan}"
        origin_xyz = rng.uniform(-200, -100, size=3)
        hu = np.full(SHAPE_ZYX, -1000.0)
        body = ((mm_zyx[..., 1] - center_zyx[1]) / 40) ** 2 + ((mm_zyx[..., 2] - center_zyx[2]) / 46) ** 2 < 1
        hu[body] = 30.0
        lung_centers = []
        for side in (-1, 1):
            lung_center = center_zyx + [0, 0, side * 22]
            lung_centers.append(lung_center)
            lung = np.sum(((mm_zyx - lung_center) / [30, 30, 17]) ** 2, axis=-1) < 1
            hu[lung] = LUNG_HU
        for lung_center in lung_centers:
            nodule_zyx = lung_center + rng.uniform(-6, 6, size=3) * [1.5, 1, 0.5]
            diameter = rng.uniform(6.0, 10.0)
            hu[np.linalg.norm(mm_zyx - nodule_zyx, axis=-1) < diameter / 2] = NODULE_HU
            uids.append(uid)
            centers.append(origin_xyz + nodule_zyx[::-1])
            diameters.append(diameter)
        hu += rng.normal(0, 10, size=SHAPE_ZYX)
        image = sitk.GetImageFromArray(np.round(hu).astype(np.int16))
        image.SetSpacing(SPACING_XYZ)
        image.SetOrigin(tuple(origin_xyz))
        folder = root / f"subset{scan % subsets}"
        folder.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(folder / f"{uid}.mhd"))
    findings = Findings.from_columns(uids, np.array(centers), diameters)
    write_annotations(root / "annotations.csv", findings)
    write_seriesuids(root / "seriesuids.csv", sorted(set(uids)))
    return findings
