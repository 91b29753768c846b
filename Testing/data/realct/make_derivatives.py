"""Write the small real-CT derivatives in this folder from ``../shared/realct`` (see README.md).

Each volume is averaged over blocks of whole voxels in-plane (and along z for the abdomen)
(``SimpleITK.BinShrink``: the origin moves to the first block's center, the spacing grows by the
factor), its slices kept, and stored as int16 HU in a ``.nii.gz``; the DICOM series is read with
SimpleITK and stored the same way.

    python Testing/data/realct/make_derivatives.py [../shared/realct]
"""

from __future__ import annotations

import sys
from pathlib import Path

import SimpleITK as sitk

from SCPMNoduleLib.io import read_scan

# derivative name: (source, in-plane factor[, slice factor])
DERIVATIVES = {
    "A0001_5mm_L.nii.gz": ("lung-pet-ct-dx-A0001/ct_5mm_L.nii.gz", 6),
    "A0001_5mm_B.nii.gz": ("lung-pet-ct-dx-A0001/ct_5mm_B.nii.gz", 6),
    "A0002_8mm_B70f.nii.gz": ("lung-pet-ct-dx-A0002/ct_8mm_B70f.nii.gz", 8),
    "A0002_8mm_B40f.nii.gz": ("lung-pet-ct-dx-A0002/ct_8mm_B40f.nii.gz", 8),
    "abdomen_6mm.nii.gz": ("totalsegmentator-example/abdomen_3mm.nii.gz", 2, 2),
    "pelvis_dicom_2mm.nii.gz": ("totalsegmentator-example/ct_dicom", 5),
}


def main() -> None:
    source = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/realct")
    here = Path(__file__).parent
    for csv in ("lung-pet-ct-dx-A0001/ct_5mm_L_boxes.csv", "lung-pet-ct-dx-A0002/ct_8mm_B70f_boxes.csv"):
        target = here / Path(csv).name.replace("ct_", Path(csv).parent.name[-5:] + "_")
        target.write_bytes((source / csv).read_bytes())
    for name, (path, factor, *slices) in DERIVATIVES.items():
        image = read_scan(source / path)
        small = sitk.BinShrink(sitk.Cast(image, sitk.sitkFloat32), [factor, factor, *(slices or [1])])
        sitk.WriteImage(sitk.Cast(sitk.Round(small), sitk.sitkInt16), str(here / name), useCompression=True)
        print(f"{name}: {small.GetSize()} voxels of {tuple(round(s, 3) for s in small.GetSpacing())} mm")


if __name__ == "__main__":
    main()
