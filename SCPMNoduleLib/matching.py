"""Center-points matching (paper section 3.2): per-level classification and regression targets.

For every head level (stride ``s``, output points ``p(j) = j*s + (s-1)/2`` in input voxels, see
:mod:`SCPMNoduleLib.coder`) and every nodule of a patch (center ``c``, radius ``r``, input
voxels = mm):

1. distances ``d(n, j) = ||c_n - p(j)||_2`` between the nodule centers and all points;
2. the ``K = top_k`` nearest points of nodule ``n`` (ties broken by the lower flat point index)
   are its *claimed* points ``T_n``;
3. a point claimed by several kept nodules is positive for the nearest of them (equal
   distances: the lower nodule index), so no point is positive for two nodules; a nodule that
   loses a contested point is not given a replacement;
4. the ignore shell: a point that is not positive is ignored (label -1) when it lies within
   ``ignore_dilation`` grid steps, per axis (Chebyshev distance on the grid), of a claimed point
   of some nodule, or strictly closer than ``ignore_radius_factor * r_n`` to the center of some
   nodule ``n``. The authors' reference code (CPMNetv2) ignores the ``26 * K`` points that
   come next in distance after the ``K`` positives; the 26-neighbourhood of each claimed point
   used here is a smaller shell of the same idea that does not grow where the patch border cuts
   the neighbourhood, and the body rule keeps large nodules' inner points out of the negatives.
   Ignored points get no training signal at all (neither classification nor regression), so a
   trained network may give them any probability and any sphere;
5. every other point is a negative (label 0); online hard-negative mining happens in the loss.

Nodules cut by the patch border. The patch covers ``[-0.5, L - 0.5]`` per axis (voxel ``i``
covers ``[i - 0.5, i + 0.5]``). The fraction of each sphere's volume inside the patch is
estimated on a fixed quasi-random (Halton) set of points filling the unit ball. A nodule is
*kept* (its claimed points become positives) when that fraction is at least
``min_visible_fraction`` and its center lies in the patch; a nodule that is partly visible but
not kept keeps its ignore region (claimed points, shell and body) but gets no positives; a
nodule with no visible volume has no effect at all.

Ignored findings. Spheres passed as ``ignored_*`` (LUNA16's excluded findings: nodules under
3 mm, calcified granulomas, ...) are matched like nodules that are never kept: their claimed
points, shell and body are ignored and they give no positives. The evaluation neither rewards
nor penalises a candidate on them, so training should not either: as negatives, a 2.9 mm
excluded nodule would teach the network to suppress the 3.0 mm annotated one beside it in
appearance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from SCPMNoduleLib.coder import encode_spheres, grid_points_zyx_vox
from SCPMNoduleLib.config_dict import invalid_setting
from SCPMNoduleLib.quasirandom import unit_ball_samples

__all__ = ["LevelTargets", "MatchingConfig", "match_center_points", "sphere_fraction_inside_patch"]


@dataclass
class MatchingConfig:
    """Hyper-parameters of center-points matching (see the module docstring for the rules).

    Attributes:
        top_k: positives per nodule and level (paper: K = 7).
        ignore_dilation: grid steps (per axis) around each claimed point that are ignored.
        ignore_radius_factor: points closer than this times the radius to a center are ignored.
        min_visible_fraction: smallest fraction of a sphere's volume inside the patch for the
            nodule to be trained on as a positive.
        visibility_samples: quasi-random samples used to estimate that fraction.
    """

    top_k: int = 7
    ignore_dilation: int = 1
    ignore_radius_factor: float = 1.0
    min_visible_fraction: float = 0.5
    visibility_samples: int = 4096

    def __post_init__(self) -> None:
        """Refuse values the rules cannot use (:func:`~SCPMNoduleLib.config_dict.invalid_setting`)."""
        for name in ("top_k", "visibility_samples"):
            if not getattr(self, name) >= 1:
                raise invalid_setting(self, name, "is not at least 1")
        if not self.ignore_dilation >= 0:
            raise invalid_setting(self, "ignore_dilation", "is negative")
        if not (math.isfinite(self.ignore_radius_factor) and self.ignore_radius_factor >= 0):
            raise invalid_setting(self, "ignore_radius_factor", "is not a non-negative number")
        if not 0.0 <= self.min_visible_fraction <= 1.0:
            raise invalid_setting(self, "min_visible_fraction", "is not in [0, 1]")


@dataclass
class LevelTargets:
    """Training targets of one head level for a batch.

    Attributes:
        labels: ``(B, d, h, w)`` int8: 1 positive, 0 negative, -1 ignored.
        radius: ``(B, d, h, w)`` float32: target radius in grid voxels (valid where labels == 1).
        offset: ``(B, 3, d, h, w)`` float32: target offset ``(c - p) / s`` in grid voxels, z y x
            (valid where labels == 1).
        nodule_index: ``(B, d, h, w)`` long: index of the matched nodule in that patch's list,
            -1 where not positive.
    """

    labels: Tensor
    radius: Tensor
    offset: Tensor
    nodule_index: Tensor

    def to(self, device: torch.device | str) -> LevelTargets:
        """The same targets on ``device``."""
        return LevelTargets(
            labels=self.labels.to(device),
            radius=self.radius.to(device),
            offset=self.offset.to(device),
            nodule_index=self.nodule_index.to(device),
        )


def sphere_fraction_inside_patch(
    centers_zyx_vox: Tensor, radii_vox: Tensor, patch_shape_zyx: Sequence[int], num_samples: int = 4096
) -> Tensor:
    """Fraction of each sphere's volume inside the patch ``[-0.5, L - 0.5]^3`` (per axis ``L``).

    Estimated on a fixed quasi-random set of ``Q`` points filling the unit ball (Halton
    sequence), scaled by ``r`` and moved to ``c``: fraction = (points inside the patch) / Q.
    Deterministic; the error is below 0.01 at the default 4096 samples (about 2100 in the ball).

    Args:
        centers_zyx_vox: ``(N, 3)`` centers, input voxels.
        radii_vox: ``(N,)`` radii, input voxels.
        patch_shape_zyx: ``(D, H, W)`` of the patch.
        num_samples: Halton points drawn in the cube ``[-1, 1]^3`` (about half land in the ball).

    Returns:
        ``(N,)`` fractions in ``[0, 1]``, the centers' dtype.
    """
    unit = torch.from_numpy(unit_ball_samples(num_samples).copy()).to(centers_zyx_vox)
    samples = centers_zyx_vox[:, None, :] + radii_vox[:, None, None] * unit[None]
    upper = torch.as_tensor(patch_shape_zyx, dtype=samples.dtype, device=samples.device) - 0.5
    inside = ((samples >= -0.5) & (samples <= upper)).all(dim=-1)
    return inside.to(centers_zyx_vox.dtype).mean(dim=1)


def _k_nearest_mask(distance: Tensor, k: int) -> Tensor:
    """``(N, P)`` bool: the ``k`` smallest entries of each row, ties at the k-th value going to
    the lower column index. Linear in ``P`` (``topk`` for the k-th value, no sort)."""
    kth = distance.topk(k, dim=1, largest=False).values[:, -1:]
    closer = distance < kth
    tied = distance == kth
    missing = k - closer.sum(dim=1, keepdim=True)
    return closer | (tied & (tied.cumsum(dim=1) <= missing))


def _visible_nodules(
    centers: Tensor, radii: Tensor, patch_shape_zyx: Sequence[int], config: MatchingConfig, num_annotated: int
) -> tuple[Tensor, Tensor]:
    """Indices of the spheres with some volume in the patch, and which of them are kept (only the
    first ``num_annotated`` spheres, the nodules, can be; the others are ignored findings)."""
    fraction = sphere_fraction_inside_patch(centers, radii, patch_shape_zyx, config.visibility_samples)
    upper = torch.as_tensor(patch_shape_zyx, dtype=centers.dtype, device=centers.device) - 0.5
    center_inside = ((centers >= -0.5) & (centers <= upper)).all(dim=-1)
    visible = torch.nonzero(fraction > 0).squeeze(1)
    annotated = torch.arange(centers.shape[0], device=centers.device) < num_annotated
    kept = (fraction >= config.min_visible_fraction) & center_inside & annotated
    return visible, kept[visible]


def _match_one_patch(
    centers: Tensor,
    radii: Tensor,
    kept: Tensor,
    visible: Tensor,
    points: Tensor,
    grid_shape: Sequence[int],
    stride: int,
    config: MatchingConfig,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Targets of one patch at one level, all points at once (float64 inside).

    Args:
        centers, radii, kept: the patch's visible nodules ``(N, 3)``, ``(N,)``, and which are kept.
        visible: ``(N,)`` their indices in the patch's list of nodules.
        points: ``(P, 3)`` the level's grid points, input voxels, row-major (z, y, x).

    Returns:
        labels ``(P,)`` int8, radius ``(P,)``, offset ``(P, 3)`` and nodule_index ``(P,)``.
    """
    num_points = points.shape[0]
    labels = torch.zeros(num_points, dtype=torch.int8, device=points.device)
    radius = torch.zeros(num_points, dtype=torch.float64, device=points.device)
    offset = torch.zeros(num_points, 3, dtype=torch.float64, device=points.device)
    nodule_index = torch.full((num_points,), -1, dtype=torch.long, device=points.device)
    if centers.shape[0] == 0:
        return labels, radius, offset, nodule_index

    distance = torch.cdist(centers, points, compute_mode="donot_use_mm_for_euclid_dist")  # (N, P)
    claimed = _k_nearest_mask(distance, min(config.top_k, num_points))
    positive_claims = claimed & kept[:, None]
    positive = positive_claims.any(dim=0)

    near_claim = F.max_pool3d(
        claimed.any(dim=0).reshape(1, 1, *grid_shape).to(torch.float32),
        kernel_size=2 * config.ignore_dilation + 1,
        stride=1,
        padding=config.ignore_dilation,
    ).reshape(-1) > 0
    inside_body = (distance < config.ignore_radius_factor * radii[:, None]).any(dim=0)
    labels[near_claim | inside_body] = -1
    labels[positive] = 1

    matched = torch.where(positive_claims[:, positive], distance[:, positive], torch.inf).argmin(dim=0)
    offset[positive], radius[positive] = encode_spheres(
        centers[matched], radii[matched], points[positive], stride
    )
    nodule_index[positive] = visible[matched]
    return labels, radius, offset, nodule_index


def _check_spheres(what: str, centers_per_patch: Sequence[Tensor], radii_per_patch: Sequence[Tensor],
                   num_patches: int) -> None:
    """Raise ``ValueError`` unless there is one ``(N, 3)`` / ``(N,)`` finite pair per patch, radii > 0."""
    if len(centers_per_patch) != num_patches or len(radii_per_patch) != num_patches:
        raise ValueError(
            f"got {what} centers for {len(centers_per_patch)} patches and radii for {len(radii_per_patch)}, "
            f"expected {num_patches}"
        )
    for centers, radii in zip(centers_per_patch, radii_per_patch):
        if centers.ndim != 2 or centers.shape[1] != 3 or radii.shape != centers.shape[:1]:
            raise ValueError(f"{what} centers {tuple(centers.shape)} and radii {tuple(radii.shape)} do not match")
        if not (torch.isfinite(centers).all() and torch.isfinite(radii).all() and (radii > 0).all()):
            raise ValueError(f"{what} centers must be finite and radii finite and positive")


def match_center_points(
    nodule_centers_zyx_vox: Sequence[Tensor],
    nodule_radii_vox: Sequence[Tensor],
    patch_shape_zyx: Sequence[int],
    strides: Sequence[int],
    config: MatchingConfig | None = None,
    ignored_centers_zyx_vox: Sequence[Tensor] | None = None,
    ignored_radii_vox: Sequence[Tensor] | None = None,
) -> list[LevelTargets]:
    """Assign positive, negative and ignored output points for a batch of patches.

    The rules are in the module docstring. Distances, nearest points and shells are computed
    for all points of a level at once (distance matrix nodules x points); the loop runs over
    levels and patches only.

    Args:
        nodule_centers_zyx_vox: per patch, ``(N_b, 3)`` nodule centers in the patch's input
            voxels (may lie outside the patch; ``N_b`` may be 0).
        nodule_radii_vox: per patch, ``(N_b,)`` radii in input voxels, > 0.
        patch_shape_zyx: ``(D, H, W)``, each a multiple of every stride.
        strides: the head levels' strides, finest first.
        config: matching hyper-parameters (defaults: the paper's).
        ignored_centers_zyx_vox, ignored_radii_vox: per patch, ``(M_b, 3)`` and ``(M_b,)``
            findings whose region is ignored and that give no positives (default: none).

    Returns:
        One :class:`LevelTargets` per level, finest first, on the device of the nodule tensors.
    """
    config = config or MatchingConfig()
    if not nodule_centers_zyx_vox:
        raise ValueError("need the nodules of at least one patch")
    if ignored_centers_zyx_vox is None and ignored_radii_vox is None:
        ignored_centers_zyx_vox = [c.new_zeros((0, 3)) for c in nodule_centers_zyx_vox]
        ignored_radii_vox = [c.new_zeros(0) for c in nodule_centers_zyx_vox]
    if ignored_centers_zyx_vox is None or ignored_radii_vox is None:
        raise ValueError("ignored findings need both their centers and their radii")
    for what, centers_per_patch, radii_per_patch in (
        ("nodule", nodule_centers_zyx_vox, nodule_radii_vox),
        ("ignored-finding", ignored_centers_zyx_vox, ignored_radii_vox),
    ):
        _check_spheres(what, centers_per_patch, radii_per_patch, len(nodule_centers_zyx_vox))
    for stride in strides:
        if any(n % stride for n in patch_shape_zyx):
            raise ValueError(f"patch shape {tuple(patch_shape_zyx)} is not a multiple of stride {stride}")
    nodules = []
    for centers, radii, ignored_centers, ignored_radii in zip(
        nodule_centers_zyx_vox, nodule_radii_vox, ignored_centers_zyx_vox, ignored_radii_vox
    ):
        spheres = torch.cat([centers.double(), ignored_centers.to(centers.device).double()])
        sphere_radii = torch.cat([radii.double(), ignored_radii.to(radii.device).double()])
        visible, kept = _visible_nodules(spheres, sphere_radii, patch_shape_zyx, config, centers.shape[0])
        nodules.append((spheres[visible], sphere_radii[visible], kept, visible))  # _match_one_patch's first four
    device = nodule_centers_zyx_vox[0].device
    targets = []
    for stride in strides:
        grid_shape = [n // stride for n in patch_shape_zyx]
        points = grid_points_zyx_vox(grid_shape, stride, dtype=torch.float64, device=device).reshape(-1, 3)
        per_patch = [_match_one_patch(*patch, points, grid_shape, stride, config) for patch in nodules]
        labels, radius, offset, nodule_index = (torch.stack(t) for t in zip(*per_patch))
        targets.append(
            LevelTargets(
                labels=labels.reshape(-1, *grid_shape),
                radius=radius.float().reshape(-1, *grid_shape),
                offset=offset.float().transpose(1, 2).reshape(-1, 3, *grid_shape),
                nodule_index=nodule_index.reshape(-1, *grid_shape),
            )
        )
    return targets
