"""Second stage: a small 3-D CNN that re-scores the detector's candidates from fine-scale patches.

SCPM-Net decides at stride 4 (its finest head), where a 3 mm nodule and the cross-section of a
small vessel are one or two grid points. The demo network's false positives above its 8-FP/scan
threshold are mostly spheres under 10 mm that it cannot tell from small nodules (Training/README
§6). The candidate classifier looks again, at the network's full input resolution (1 mm), at a
cube of ``patch_vox`` voxels centred on each candidate, as the false-positive-reduction stage of
the LUNA16 challenge's systems did. It is not part of the SCPM-Net paper; a checkpoint may carry
one (:attr:`SCPMNetConfig.candidate_classifier <SCPMNoduleLib.model.SCPMNetConfig>`), and the
detector then re-ranks its candidates with it (:meth:`SCPMNoduleLib.inference.Detector.decode`).

The two opinions are combined in log-odds,

    logit(p) = (1 - w) * logit(p_detector) + w * logit(p_classifier),

with ``w`` the config's ``weight``: ``w = 0`` keeps the detector's ranking, ``w = 1`` uses the
classifier's alone, ``w = 0.5`` is the geometric mean of the two odds. The classifier is trained
on patches that do not depend on the detector's own score (``scpm-train classifier``:
candidates of a frozen detector on scans it was not trained on, and the annotated nodules), so
its output is a second, separate opinion.

Example:
    >>> import torch
    >>> from SCPMNoduleLib.candidate_classifier import CandidateClassifier, CandidateClassifierConfig, crop_patches
    >>> classifier = CandidateClassifier(CandidateClassifierConfig(patch_vox=16)).eval()
    >>> volume = torch.zeros(40, 50, 60)
    >>> patches = crop_patches(volume, torch.tensor([[20.0, 25.0, 30.0], [0.0, 0.0, 0.0]]), 16, pad_value=-1.0)
    >>> patches.shape
    torch.Size([2, 1, 16, 16, 16])
    >>> classifier(patches).shape
    torch.Size([2])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .config_dict import invalid_setting

__all__ = ["CandidateClassifier", "CandidateClassifierConfig", "combine_logits", "crop_patches"]


@dataclass(frozen=True)
class CandidateClassifierConfig:
    """Architecture of :class:`CandidateClassifier` and how its opinion is weighed.

    Attributes:
        patch_vox: side of the cubic patch around each candidate, in the network's input voxels
            (1 mm with the default pre-processing); a multiple of ``2 ** len(channels)``.
        channels: channels of the convolution stages, each a 3^3 convolution, BatchNorm, ReLU and
            a 2^3 max-pooling (the first one at full resolution: the fine scale is the point).
        weight: ``w`` of the log-odds combination (module docstring), in [0, 1].
    """

    patch_vox: int = 32
    channels: tuple[int, ...] = (8, 16, 32, 64)
    weight: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if not self.channels or min(self.channels) < 1:
            raise invalid_setting(self, "channels", "is not a non-empty list of positive channel counts")
        divisor = 2 ** len(self.channels)
        if self.patch_vox < divisor or self.patch_vox % divisor:
            raise invalid_setting(self, "patch_vox", f"is not a positive multiple of {divisor} "
                                  "(2 to the number of stages)")
        if not 0.0 <= self.weight <= 1.0:
            raise invalid_setting(self, "weight", "is not between 0 and 1")


class CandidateClassifier(nn.Module):
    """Patches ``(N, 1, P, P, P)`` (normalised intensities) -> nodule logits ``(N,)``.

    Stages of conv-BN-ReLU-maxpool halve the patch ``len(channels)`` times; the last feature map
    is pooled by its mean and its maximum (a small bright nodule and a vessel that crosses the
    whole patch differ in both) and a linear layer gives the logit.
    """

    def __init__(self, config: CandidateClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config = config if config is not None else CandidateClassifierConfig()
        layers: list[nn.Module] = []
        previous = 1
        for channels in config.channels:
            layers += [nn.Conv3d(previous, channels, 3, padding=1, bias=False), nn.BatchNorm3d(channels),
                       nn.ReLU(inplace=True), nn.MaxPool3d(2)]
            previous = channels
        self.features = nn.Sequential(*layers)
        self.classify = nn.Linear(2 * previous, 1)

    def forward(self, patches: Tensor) -> Tensor:
        features = self.features(patches)
        pooled = torch.cat([features.mean(dim=(2, 3, 4)), features.amax(dim=(2, 3, 4))], dim=1)
        return self.classify(pooled).squeeze(1)


def crop_patches(volume_zyx: Tensor, centers_zyx_vox: Tensor, side_vox: int, pad_value: float) -> Tensor:
    """Cubes of ``side_vox`` voxels around points of a volume, in one gather (no loop over points).

    Args:
        volume_zyx: ``(D, H, W)`` volume.
        centers_zyx_vox: ``(N, 3)`` points in its voxel indices (rounded to the nearest voxel;
            the cube spans ``round(c) - side // 2 .. round(c) - side // 2 + side - 1``).
        side_vox: the cube's side.
        pad_value: the value of voxels outside the volume (the pre-processing's padding).

    Returns:
        ``(N, 1, side, side, side)`` patches, the volume's dtype and device.
    """
    half = side_vox // 2
    padded = nn.functional.pad(volume_zyx[None, None], (half,) * 6, value=pad_value)[0, 0]
    limits = torch.tensor(volume_zyx.shape, device=volume_zyx.device) - 1
    corner = torch.minimum(centers_zyx_vox.round().long().to(volume_zyx.device).clamp(min=0), limits)
    offsets = torch.arange(side_vox, device=volume_zyx.device)
    z, y, x = (corner[:, axis, None] + offsets for axis in range(3))  # each (N, side) in padded indices
    return padded[z[:, :, None, None], y[:, None, :, None], x[:, None, None, :]][:, None]


def combine_logits(detector_logits: Tensor, classifier_logits: Tensor, weight: float) -> Tensor:
    """``(1 - w) * detector + w * classifier`` log-odds (module docstring)."""
    return (1.0 - weight) * detector_logits + weight * classifier_logits
