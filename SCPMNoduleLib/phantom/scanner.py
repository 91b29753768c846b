"""The scanner model: point spread, correlated noise, int16 storage and the stored geometry.

The scanner's point spread and correlated noise come from one Gaussian filter applied to
(anatomy + white noise), with the white noise scaled so that the filtered noise has the drawn
standard deviation. The result is stored as int16 in [-1024, 3071], with an optional flip of the
array axes and a small oblique rotation, so that world = origin + D · diag(spacing) · index_xyz
holds for the stored image and the anatomy keeps its place in world space.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..io import Findings
from ..triples import float_triple
from .anatomy import Geometry
from .config import HU_MAX, HU_MIN, PhantomConfig
from .findings import Finding

__all__ = ["Nodule", "Phantom", "acquire", "annotation_table", "noise_gain", "store"]


@dataclass(frozen=True)
class Nodule:
    """A nodule or excluded finding of a phantom: its ground truth.

    Why a shape of its own rather than a :class:`~SCPMNoduleLib.io.Findings` row: besides the
    sphere in world LPS mm (which :func:`annotation_table` turns into LUNA16 rows), it carries
    the appearance fields no table has (kind, location, margin), the center's continuous voxel
    index in the stored array (for previews and tests), and no probability: it is the truth.

    Attributes:
        center_xyz_mm: world LPS position of the center (the stored image's geometry).
        center_zyx_vox: continuous index of the center in the stored image array.
        diameter_mm: diameter of the nodule's core sphere (spicules and lobes reach beyond it).
        kind: ``solid``, ``ground_glass``, ``part_solid`` or ``calcified``.
        location: ``isolated``, ``juxtavascular`` or ``juxtapleural``.
        margin: ``smooth``, ``lobulated`` or ``spiculated``.
        included: True for ``annotations.csv``, False for ``annotations_excluded.csv``.
    """

    center_xyz_mm: tuple[float, float, float]
    center_zyx_vox: tuple[float, float, float]
    diameter_mm: float
    kind: str
    location: str
    margin: str
    included: bool


def annotation_table(seriesuid: str, nodules: Sequence[Nodule]) -> Findings:
    """The LUNA16 annotation rows (world LPS mm, diameter; no probability) of one scan's nodules, in order."""
    centers = np.array([n.center_xyz_mm for n in nodules], dtype=np.float64).reshape(-1, 3)
    return Findings.from_columns([seriesuid] * len(nodules), centers, [n.diameter_mm for n in nodules])


@dataclass
class Phantom:
    """A generated scan: the CT (int16 HU), its lung mask (uint8, :data:`LUNG_LABELS`) with the
    same geometry, and its findings."""

    image: sitk.Image
    lung_mask: sitk.Image
    nodules: list[Nodule] = field(default_factory=list)


def _gaussian_kernel(sigma: float, truncate: float) -> np.ndarray:
    """scipy's discrete 1D Gaussian kernel (its impulse response), of radius int(truncate σ + 0.5)."""
    radius = int(truncate * float(sigma) + 0.5)
    impulse = np.zeros(2 * radius + 1)
    impulse[radius] = 1.0
    return ndimage.gaussian_filter1d(impulse, float(sigma), truncate=truncate, mode="constant")


def noise_gain(sigma_vox: Sequence[float], truncate: float) -> float:
    """Standard deviation of unit white noise after a separable Gaussian filter of ``sigma_vox``:
    sqrt(Π_axes Σ_i k_i²) for the discrete 1D kernels k."""
    return math.sqrt(math.prod(float((_gaussian_kernel(s, truncate) ** 2).sum()) for s in sigma_vox))


def acquire(rng: np.random.Generator, geo: Geometry, config: PhantomConfig, volume: np.ndarray,
            truncate: float = 3.0) -> np.ndarray:
    """Point spread and correlated noise in one filter, then int16 HU.

    image = G_σ * (anatomy + σ_w · white), with G_σ the Gaussian point spread (in-plane σ drawn
    from ``psf_sigma_mm``, through-plane from the slice profile) and σ_w chosen so that the
    filtered noise G_σ * (σ_w · white) has the drawn standard deviation ``noise_hu``. The filter
    runs in-plane slice by slice (cache-friendly), then through the slices as a weighted sum of
    a few shifted copies (edges repeat the first and last slice).
    """
    sz, sy, sx = (float(v) for v in geo.spacing_zyx)
    psf = rng.uniform(*config.psf_sigma_mm)
    sigma = (math.hypot(config.slice_profile, psf / sz), psf / sy, psf / sx)
    white = rng.uniform(*config.noise_hu) / noise_gain(sigma, truncate)
    noise = np.empty(volume.shape[1:], np.float32)
    for z in range(volume.shape[0]):
        rng.standard_normal(out=noise, dtype=np.float32)
        noise *= white
        noise += volume[z]
        ndimage.gaussian_filter(noise, sigma[1:], truncate=truncate, mode="nearest", output=volume[z])
    kernel = _gaussian_kernel(sigma[0], truncate).astype(np.float32)
    radius, nz = len(kernel) // 2, volume.shape[0]
    hu = np.empty(volume.shape, np.int16)
    for z0 in range(0, nz, config.slab):
        index = np.arange(z0, min(nz, z0 + config.slab))
        blurred = np.zeros((len(index),) + volume.shape[1:], np.float32)
        for weight, shift in zip(kernel, range(-radius, radius + 1)):
            blurred += weight * volume[np.clip(index + shift, 0, nz - 1)]
        np.clip(blurred, HU_MIN, HU_MAX, out=blurred)
        hu[index] = np.rint(blurred, out=blurred)
    return hu


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A rotation by at most ``max_deg`` about a random axis (Rodrigues' formula)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = math.radians(max_deg) * rng.uniform(0.3, 1.0)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross


def store(rng: np.random.Generator, geo: Geometry, config: PhantomConfig, hu: np.ndarray,
          labels: np.ndarray, findings: list[Finding]) -> Phantom:
    """The arrays as SimpleITK images with their world geometry, and the findings in world mm.

    The patient frame maps to world as w = o + R · diag(s) · i_xyz (R a small rotation, or
    identity). With ``config.oblique`` the arrays are also stored flipped along random axes:
    i' = F i + c with c = (n - 1) on flipped axes, which leaves each voxel's world position
    unchanged when D' = R F and o' = o + R diag(s) c.
    """
    nz, ny, nx = geo.shape_zyx
    spacing_xyz = geo.spacing_zyx[::-1].astype(np.float64)
    size_xyz = np.array([nx, ny, nz], np.float64)
    origin = np.array([-0.5 * size_xyz[0] * spacing_xyz[0] + rng.uniform(-25, 25),
                       -0.5 * size_xyz[1] * spacing_xyz[1] + rng.uniform(-25, 25),
                       rng.uniform(-400.0, -50.0)])
    rotation, flips = np.eye(3), np.zeros(3, bool)
    if config.oblique:
        rotation = _rotation(rng, config.max_tilt_deg)
        flips = rng.uniform(size=3) < 0.5
    direction = rotation @ np.diag(np.where(flips, -1.0, 1.0))
    origin_stored = origin + rotation @ (spacing_xyz * np.where(flips, size_xyz - 1, 0.0))
    flip_axes = tuple(2 - i for i in range(3) if flips[i])

    def image(array: np.ndarray) -> sitk.Image:
        img = sitk.GetImageFromArray(np.ascontiguousarray(np.flip(array, flip_axes) if flip_axes else array))
        img.SetSpacing(tuple(spacing_xyz))
        img.SetOrigin(tuple(origin_stored))
        img.SetDirection(tuple(direction.ravel()))
        return img

    nodules = []
    for f in findings:
        index_xyz = f.center_mm[::-1] / spacing_xyz
        world = origin + rotation @ (spacing_xyz * index_xyz)
        stored_xyz = np.where(flips, size_xyz - 1 - index_xyz, index_xyz)
        nodules.append(Nodule(float_triple(world), float_triple(stored_xyz[::-1]),
                              2.0 * f.radius, f.kind, f.location, f.margin, f.included))
    return Phantom(image(hu), image(labels), nodules)
