"""The training loss of SCPM-Net (paper section 3.4, eq. 16-20).

Per head level, with targets from :func:`SCPMNoduleLib.matching.match_center_points`
(labels 1 positive, 0 negative, -1 ignored) and ``p = sigmoid(logit)``:

* Re-focal classification loss (eq. 16-17) in the standard binary focal form, with the
  focusing factor on the probability of the wrong class and ``alpha`` weighting positives
  against ``1 - alpha`` for negatives, as the authors' reference code applies it
  (``alpha_factor = alpha`` where the target is 1, ``1 - alpha`` elsewhere)::

      positive:  w * alpha * (1 - p)^gamma * (-log p),   w = refocal_weight if p < t else 1
      negative:  (1 - alpha) * p^gamma * (-log(1 - p))

  ``-log p = softplus(-logit)`` and ``-log(1 - p) = softplus(logit)`` (finite for any logit); the
  focal factor is differentiated (as in Lin et al.; the reference code detaches it).
* Online hard-example mining: in each patch only the ``N = ohem_ratio * M`` negatives with the
  largest loss are kept (``N = ohem_negatives_without_positives`` when the patch has no
  positive, ``M`` = the patch's positives at this level); the others count as ignored. The
  patch's classification loss is (sum over positives and kept negatives) / max(M, 1), and the
  level's loss is the mean over the batch (the reference code's normalisation).
* Regression on positives only, averaged over the positive points of the batch:
  smooth-L1 on the radius in grid voxels (eq. 18, ``beta = radius_beta``, in the form of Ren et
  al. that eq. 18 cites: ``|x| - beta / 2`` beyond ``beta``, continuous there); the L2 offset loss
  (eq. 19) taken as the squared Euclidean distance ``||f - f*||^2`` in grid voxels (smooth at
  a perfect prediction, where the plain norm has no gradient); SIoU++ (eq. 15) between the
  predicted sphere (grid point + predicted offset, predicted radius) and the target sphere,
  computed in grid voxels relative to the grid point (SIoU and R_DR do not depend on the unit).
  With no positive the three terms are 0 (still connected to the regression maps, so that every
  parameter gets a gradient, as distributed training requires).

Total (eq. 20): ``classification + radius + offset + siou_weight * siou``, each term summed over
the levels. Everything is computed in float32 (float64 stays float64) outside autocast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from SCPMNoduleLib.config_dict import check_choice, invalid_setting
from SCPMNoduleLib.geometry import SIOU_PP_MODES, siou_pp_loss
from SCPMNoduleLib.matching import LevelTargets

__all__ = ["LOSS_TERMS", "LossConfig", "SCPMLoss", "hard_negative_mask", "refocal_point_loss"]

LOSS_TERMS = ("classification", "radius", "offset", "siou")


@dataclass
class LossConfig:
    """Loss hyper-parameters; defaults are the paper's (section 3.5).

    Attributes:
        alpha: focal weight of positives (negatives get ``1 - alpha``).
        gamma: focal focusing exponent.
        refocal_threshold: ``t``; positives with probability below it get ``refocal_weight``.
        refocal_weight: ``w``.
        ohem_ratio: ``n``; hard negatives kept per positive in a patch.
        ohem_negatives_without_positives: hard negatives kept in a patch without positives.
        radius_beta: ``beta`` of the smooth-L1 radius loss.
        siou_weight: ``lambda_s``, weight of the SIoU++ term in the total.
        siou_mode: ``"continuous"`` or ``"paper"`` (see ``geometry.siou_pp_loss``).
    """

    alpha: float = 0.375
    gamma: float = 2.0
    refocal_threshold: float = 0.9
    refocal_weight: float = 4.0
    ohem_ratio: int = 100
    ohem_negatives_without_positives: int = 100
    radius_beta: float = 1.0 / 9.0
    siou_weight: float = 2.0
    siou_mode: str = "continuous"

    def __post_init__(self) -> None:
        """Refuse values the loss cannot use (:func:`~SCPMNoduleLib.config_dict.invalid_setting`)."""
        check_choice(self, "siou_mode", SIOU_PP_MODES)
        if not 0.0 <= self.alpha <= 1.0:
            raise invalid_setting(self, "alpha", "is not in [0, 1]")
        for name in ("gamma", "refocal_weight", "siou_weight"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise invalid_setting(self, name, "is not a non-negative number")
        for name in ("ohem_ratio", "ohem_negatives_without_positives"):
            if not getattr(self, name) >= 0:
                raise invalid_setting(self, name, "is negative")
        if not (math.isfinite(self.radius_beta) and self.radius_beta > 0):
            raise invalid_setting(self, "radius_beta", "is not a positive number")


def _at_least_float32(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def refocal_point_loss(logits: Tensor, labels: Tensor, config: LossConfig) -> Tensor:
    """Per-point re-focal loss (eq. 16-17) before mining: 0 at ignored points.

    Args:
        logits: ``(...)`` center logits.
        labels: ``(...)`` 1 positive, 0 negative, -1 ignored.
        config: alpha, gamma, refocal threshold and weight.

    Returns:
        ``(...)`` loss, ``w * alpha * (1-p)^gamma * -log p`` at positives,
        ``(1-alpha) * p^gamma * -log(1-p)`` at negatives.
    """
    probability = torch.sigmoid(logits)
    weight = torch.where(probability.detach() < config.refocal_threshold, config.refocal_weight, 1.0)
    positive = weight * config.alpha * (1.0 - probability).pow(config.gamma) * F.softplus(-logits)
    negative = (1.0 - config.alpha) * probability.pow(config.gamma) * F.softplus(logits)
    zero = torch.zeros((), dtype=logits.dtype, device=logits.device)
    return torch.where(labels == 1, positive, torch.where(labels == 0, negative, zero))


def hard_negative_mask(point_loss: Tensor, labels: Tensor, config: LossConfig) -> Tensor:
    """Online hard-example mining of negatives, all patches at once.

    Args:
        point_loss: ``(B, P)`` per-point loss.
        labels: ``(B, P)`` 1 positive, 0 negative, -1 ignored.
        config: ``ohem_ratio`` and ``ohem_negatives_without_positives``.

    Returns:
        ``(B, P)`` bool, True at the ``N_b`` negatives of patch ``b`` with the largest loss, where
        ``N_b = ohem_ratio * M_b`` (``ohem_negatives_without_positives`` if ``M_b = 0``), at most
        the patch's number of negatives; ties are broken by ``torch.topk``.
    """
    negative = labels == 0
    num_positive = (labels == 1).sum(dim=1)
    wanted = torch.where(
        num_positive > 0, config.ohem_ratio * num_positive, config.ohem_negatives_without_positives
    )
    wanted = torch.minimum(wanted, negative.sum(dim=1))
    largest = int(wanted.max())
    selected = torch.zeros_like(negative)
    if largest == 0:
        return selected
    candidates = torch.where(negative, point_loss.detach(), -torch.inf)
    hardest = candidates.topk(largest, dim=1).indices
    rank = torch.arange(largest, device=labels.device)
    return selected.scatter_(1, hardest, rank[None, :] < wanted[:, None])


def _level_losses(output: dict[str, Tensor], target: LevelTargets, config: LossConfig) -> dict[str, Tensor]:
    """The four unweighted terms of one level (see the module docstring)."""
    logits = _at_least_float32(output["logits"])
    batch = logits.shape[0]
    labels = target.labels.to(logits.device).reshape(batch, -1)
    logits = logits.reshape(batch, -1)
    if logits.shape != labels.shape:
        raise ValueError(
            f"logits {tuple(output['logits'].shape)} and labels {tuple(target.labels.shape)} differ"
        )

    point_loss = refocal_point_loss(logits, labels, config)
    counted = (labels == 1) | hard_negative_mask(point_loss, labels, config)
    num_positive = (labels == 1).sum(dim=1).clamp(min=1)
    classification = (torch.where(counted, point_loss, 0.0).sum(dim=1) / num_positive).mean()

    radius = _at_least_float32(output["radius"]).reshape(batch, -1)
    offset = _at_least_float32(output["offset"]).reshape(batch, 3, -1).transpose(1, 2)
    positive = labels == 1
    if not bool(positive.any()):
        zero = (radius.sum() + offset.sum()) * 0.0
        return {"classification": classification, "radius": zero, "offset": zero, "siou": zero}
    radius, offset = radius[positive], offset[positive]
    radius_target = target.radius.to(radius).reshape(batch, -1)[positive]
    offset_target = target.offset.to(offset).reshape(batch, 3, -1).transpose(1, 2)[positive]
    return {
        "classification": classification,
        "radius": F.smooth_l1_loss(radius, radius_target, beta=config.radius_beta),
        "offset": (offset - offset_target).pow(2).sum(dim=-1).mean(),
        "siou": siou_pp_loss(offset, radius, offset_target, radius_target, mode=config.siou_mode).mean(),
    }


class SCPMLoss(nn.Module):
    """The total loss of eq. 20 over all head levels.

    ``forward(outputs, targets)``: ``outputs`` is the model's list of per-level dicts (finest
    first, ``logits``/``radius`` ``(B,1,d,h,w)``, ``offset`` ``(B,3,d,h,w)``), ``targets`` the
    matching's list of :class:`LevelTargets` in the same order. Returns ``(total, terms)`` with
    ``terms`` = {"classification", "radius", "offset", "siou"}, each summed over the levels and
    unweighted; ``total = classification + radius + offset + siou_weight * siou``.
    """

    def __init__(self, config: LossConfig | None = None) -> None:
        super().__init__()
        self.config = config or LossConfig()

    def forward(
        self, outputs: Sequence[dict[str, Tensor]], targets: Sequence[LevelTargets]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if len(outputs) != len(targets):
            raise ValueError(f"got {len(outputs)} output levels but {len(targets)} target levels")
        with torch.autocast(device_type=outputs[0]["logits"].device.type, enabled=False):
            per_level = [_level_losses(out, tgt, self.config) for out, tgt in zip(outputs, targets)]
            terms = {name: torch.stack([level[name] for level in per_level]).sum() for name in LOSS_TERMS}
            regression = terms["radius"] + terms["offset"] + self.config.siou_weight * terms["siou"]
            total = terms["classification"] + regression
        return total, terms
