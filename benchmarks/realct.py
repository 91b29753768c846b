"""The shared real CTs the benchmarks run on: ``../shared/realct`` when present, else the small
derivatives in ``Testing/data/realct`` (see its README for sources and licences)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

DERIVATIVES = Path(__file__).resolve().parent.parent / "Testing" / "data" / "realct"

# (file in the shared folder, its derivative; the tumour boxes in each)
CHESTS = (
    ("lung-pet-ct-dx-A0001/ct_5mm_L.nii.gz", "A0001_5mm_L.nii.gz",
     "lung-pet-ct-dx-A0001/ct_5mm_L_boxes.csv", "A0001_5mm_L_boxes.csv"),
    ("lung-pet-ct-dx-A0001/ct_5mm_B.nii.gz", "A0001_5mm_B.nii.gz",
     "lung-pet-ct-dx-A0001/ct_5mm_L_boxes.csv", "A0001_5mm_L_boxes.csv"),
    ("lung-pet-ct-dx-A0002/ct_8mm_B70f.nii.gz", "A0002_8mm_B70f.nii.gz",
     "lung-pet-ct-dx-A0002/ct_8mm_B70f_boxes.csv", "A0002_8mm_B70f_boxes.csv"),
    ("lung-pet-ct-dx-A0002/ct_8mm_B40f.nii.gz", "A0002_8mm_B40f.nii.gz",
     "lung-pet-ct-dx-A0002/ct_8mm_B70f_boxes.csv", "A0002_8mm_B70f_boxes.csv"),
)
WITHOUT_LUNGS = (("totalsegmentator-example/abdomen_3mm.nii.gz", "abdomen_6mm.nii.gz"),
                 ("totalsegmentator-example/ct_dicom", "pelvis_dicom_2mm.nii.gz"))


def real_scans(realct: Path, chests_only: bool = False) -> Iterator[tuple[str, Path, Path | None]]:
    """``(name, scan path, tumour-boxes CSV or None)`` of each real CT, the chest CTs first."""
    shared = realct.is_dir()
    for shared_scan, derivative, shared_boxes, derivative_boxes in CHESTS:
        yield ((shared_scan, realct / shared_scan, realct / shared_boxes) if shared else
               (f"{derivative} (derivative)", DERIVATIVES / derivative, DERIVATIVES / derivative_boxes))
    if not chests_only:
        for shared_scan, derivative in WITHOUT_LUNGS:
            yield ((shared_scan, realct / shared_scan, None) if shared else
                   (f"{derivative} (derivative)", DERIVATIVES / derivative, None))


def best_of(function: Callable[[], T], repeats: int) -> tuple[float, T]:
    """The fastest of ``repeats`` calls, in seconds, and the last call's result."""
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result
