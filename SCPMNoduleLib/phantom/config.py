"""What shapes a phantom: :class:`PhantomConfig`, its two presets and the labels it writes."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import UserInputError

__all__ = ["HU_MAX", "HU_MIN", "LUNG_LABELS", "NODULE_KINDS", "NODULE_LOCATIONS", "NODULE_MARGINS", "SIZES",
           "PhantomConfig", "phantom_config"]

LUNG_LABELS = {"right": 3, "left": 4}
"""Values of the two lungs in the masks, as in LUNA16's ``seg-lungs-LUNA16``."""

NODULE_KINDS = ("solid", "ground_glass", "part_solid")
NODULE_LOCATIONS = ("isolated", "juxtavascular", "juxtapleural")
NODULE_MARGINS = ("smooth", "lobulated", "spiculated")
"""The kinds, locations and margins a nodule is drawn with (an excluded finding may also be
``calcified``)."""
HU_MIN, HU_MAX = -1024, 3071
"""The stored images' range (int16 HU)."""


@dataclass(frozen=True)
class PhantomConfig:
    """Every number that shapes a phantom; ranges ``(low, high)`` are drawn uniformly per scan.

    Sizes of anatomy are given for an adult chest (body half-width 170 mm) and scaled with the
    drawn body size; nodule sizes are absolute millimetres.
    """

    matrix_x: tuple[int, int] = (120, 136)
    matrix_y: tuple[int, int] = (112, 136)
    slices: tuple[int, int] = (88, 104)
    spacing_xy_mm: tuple[float, float] = (0.6, 0.9)
    spacing_z_mm: tuple[float, float] = (0.6, 1.0)
    scan_length: tuple[float, float] = (1.2, 1.6)
    """Scan length over the body's half-width (then clipped to the ``slices`` range)."""
    body_fill: tuple[float, float] = (0.80, 0.92)
    """Body width as a fraction of the field of view."""
    body_aspect: tuple[float, float] = (0.62, 0.74)
    """Antero-posterior over lateral body size."""
    fat_mm: tuple[float, float] = (6.0, 25.0)
    muscle_mm: tuple[float, float] = (12.0, 20.0)
    lung_height_fraction: tuple[float, float] = (0.9, 1.2)
    """Lung height (base to apex) over 1.6 body half-widths."""
    table: bool = True
    oblique: bool = False
    """Store with random axis flips and a small rotation (non-identity direction matrix)."""
    max_tilt_deg: float = 8.0

    hu_air: float = -1000.0
    hu_fat: float = -100.0
    hu_muscle: float = 45.0
    hu_mediastinal_fat: float = -90.0
    hu_blood: float = 40.0
    hu_liver: float = 55.0
    hu_cortical_bone: float = 800.0
    hu_cancellous_bone: float = 230.0
    hu_disc: float = 80.0
    hu_csf: float = 15.0
    hu_rib: float = 550.0
    hu_table: float = -250.0
    hu_parenchyma: tuple[float, float] = (-875.0, -800.0)
    """Anterior and posterior (dependent) parenchyma."""
    hu_airway_wall: float = 20.0

    vessel_root_radius_mm: float = 6.0
    vessel_min_radius_mm: float = 0.4
    airway_root_radius_mm: float = 7.0
    airway_min_radius_mm: float = 1.2
    airway_wall_fraction: float = 0.25
    leaf_points: int = 3
    """A territory of this many points or fewer ends its branch."""
    branch_reach: tuple[float, float] = (0.45, 0.65)
    """A branch runs this fraction of the way from its start to its territory's centroid."""
    split_offset: float = 0.5
    """Split plane offset from the centroid, in standard deviations, drawn in ±this (asymmetry)."""
    splat_radius_voxels: float = 1.0
    """Tubes thinner than this many in-plane voxels are splatted instead of rasterised."""

    nodules: tuple[int, int] = (1, 3)
    excluded: tuple[int, int] = (0, 2)
    diameter_mm: tuple[float, float] = (3.0, 30.0)
    diameter_exponent: float = 1.8
    max_radius_depth_fraction: float = 0.6
    """A nodule's radius is at most this fraction of the lung's largest inner distance."""
    kind_weights: tuple[float, float, float] = (0.6, 0.2, 0.2)
    location_weights: tuple[float, float, float] = (0.5, 0.25, 0.25)
    margin_weights: tuple[float, float, float] = (0.55, 0.3, 0.15)
    hu_solid: tuple[float, float] = (0.0, 60.0)
    hu_ground_glass: tuple[float, float] = (-650.0, -350.0)
    part_solid_core: tuple[float, float] = (0.3, 0.6)
    hu_calcified: tuple[float, float] = (300.0, 900.0)
    excluded_small_mm: tuple[float, float] = (1.5, 2.9)
    excluded_calcified_mm: tuple[float, float] = (2.0, 8.0)
    nodule_gap_mm: float = 3.0
    max_hidden_fraction: float = 0.2
    """A finding is placed only where vessels, airways and earlier findings take at most this share
    of its ball, so that every annotated nodule can be seen (a solid nodule drawn inside a vessel of
    its own density, or a ground-glass one under it, would not be)."""

    psf_sigma_mm: tuple[float, float] = (0.45, 0.8)
    slice_profile: float = 0.35
    """Slice-profile standard deviation over slice spacing."""
    noise_hu: tuple[float, float] = (10.0, 40.0)
    coarse_mm: float = 2.0
    """Grid of the lung distance map used to place branches and nodules."""
    slab: int = 8
    """Slices drawn at once."""


SIZES: dict[str, PhantomConfig] = {
    "small": PhantomConfig(),
    "full": PhantomConfig(matrix_x=(512, 512), matrix_y=(512, 512), slices=(100, 300),
                          spacing_xy_mm=(0.5, 0.9),
                          spacing_z_mm=(0.6, 2.5), scan_length=(1.8, 2.2),
                          lung_height_fraction=(0.75, 1.0), nodules=(1, 5),
                          excluded=(0, 3)),
}


def phantom_config(size: str = "small", **overrides) -> PhantomConfig:
    """The preset ``small`` (about 128×128×96 voxels, a miniature chest) or ``full``
    (512×512×100-300, an adult chest), with any field replaced by ``overrides``."""
    if size not in SIZES:
        raise UserInputError(f"size {size!r} is not one of {', '.join(SIZES)}.")
    unknown = set(overrides) - set(PhantomConfig.__dataclass_fields__)
    if unknown:
        raise UserInputError(f"unknown phantom option(s): {', '.join(sorted(unknown))}.")
    return replace(SIZES[size], **overrides)
