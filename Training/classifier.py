"""Training the candidate classifier (:mod:`SCPMNoduleLib.candidate_classifier`) on a frozen detector.

``scpm-train classifier --checkpoint DET.pt --data DIR [DIR ...] --out TWO_STAGE.pt``:

1. :func:`collect_candidate_patches`: the detector runs on every scan of the LUNA16-layout
   folders, from the original files, as users run it (:meth:`~SCPMNoduleLib.inference.Detector.first_stage`:
   its top ``max_detections`` candidates after NMS); each candidate is a nodule when it hits an
   annotated one by LUNA16's rule, background when it hits nothing, and is left out when it
   hits only an excluded finding (neither). Every annotated nodule's own center is added as a
   positive too, so that the nodules the detector ranks low or misses are seen. A cube of
   ``patch_vox + 2 * jitter_vox`` voxels of the prepared crop is kept per point (float16).
   The folders should be scans the detector was not trained on: on its own training scans its
   mistakes are not the ones it makes on new scans.
2. :func:`train_candidate_classifier`: batches with a fixed share of positives, each patch
   shifted by up to ``jitter_vox`` voxels, mirrored along any axis and its two in-plane axes
   swapped at random (all seeded), binary cross-entropy, AdamW; a fixed number of steps (a few
   minutes on two CPU cores: it is not resumable, it is rerun).
3. The detector's checkpoint is written again with the classifier in its network
   (``model_config.candidate_classifier``), its metadata recording how the classifier was made.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from SCPMNoduleLib.candidate_classifier import CandidateClassifier, CandidateClassifierConfig
from SCPMNoduleLib.checkpoint import save_checkpoint
from SCPMNoduleLib.config_dict import invalid_setting
from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.evaluation import luna16_hit, squared_distance_mm2
from SCPMNoduleLib.inference import Detector, InferenceConfig
from SCPMNoduleLib.io import Findings, read_annotations, read_scan
from SCPMNoduleLib.model import with_candidate_classifier
from SCPMNoduleLib.temp_files import check_output_file

from .cache import find_luna16_scans
from .heldout import read_excluded
from .state import load_deployable

__all__ = ["CandidatePatches", "ClassifierTrainConfig", "collect_candidate_patches", "train_candidate_classifier",
           "train_classifier_checkpoint"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassifierTrainConfig:
    """How the candidate classifier is trained.

    Attributes:
        steps: optimiser steps.
        batch_size: patches per step.
        positive_fraction: share of each batch drawn (with replacement) from the positives.
        learning_rate: AdamW's rate, constant for the first half of the steps, then decaying
            linearly towards zero.
        weight_decay: AdamW's decoupled weight decay.
        jitter_vox: largest shift of a patch from its point, per axis, in voxels.
        seed: seeds sampling, augmentation and the initial weights.
    """

    steps: int = 3000
    batch_size: int = 32
    positive_fraction: float = 0.3
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    jitter_vox: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise invalid_setting(self, name, "is not at least 1")
        if not 0.0 < self.positive_fraction < 1.0:
            raise invalid_setting(self, "positive_fraction", "is not strictly between 0 and 1")
        if not self.learning_rate > 0.0:
            raise invalid_setting(self, "learning_rate", "is not positive")
        if not self.weight_decay >= 0.0:
            raise invalid_setting(self, "weight_decay", "is negative")
        if self.jitter_vox < 0:
            raise invalid_setting(self, "jitter_vox", "is negative")


@dataclass(frozen=True)
class CandidatePatches:
    """Patches around candidates and nodules, and whether each is a nodule.

    Attributes:
        patches: ``(N, S, S, S)`` float16 normalised intensities, each centred on its point.
        labels: ``(N,)`` float32, 1 for a nodule, 0 for background.
        from_candidates: ``(N,)`` bool, a candidate of the detector (``False``: an annotated
            nodule's own center, added as a positive).
        seriesuids: ``(N,)`` the scan of each.
    """

    patches: Tensor
    labels: Tensor
    from_candidates: np.ndarray
    seriesuids: np.ndarray

    @property
    def n_positive(self) -> int:
        return int(self.labels.sum())

    @property
    def n_candidate_nodules(self) -> int:
        """The detector's candidates that hit a nodule (the rest of the positives are annotated centers)."""
        return int(self.labels.numpy()[self.from_candidates].sum())


def _hits(points_xyz_mm: np.ndarray, findings: Findings, seriesuid: str) -> np.ndarray:
    """``(N,)`` bool: each point hits one of the scan's findings by LUNA16's rule."""
    rows = findings.seriesuids == seriesuid
    if not rows.any() or not len(points_xyz_mm):
        return np.zeros(len(points_xyz_mm), bool)
    distance = squared_distance_mm2(points_xyz_mm[:, None], findings.centers_xyz_mm[rows][None])
    return np.asarray(luna16_hit(distance, findings.diameters_mm[rows][None]).any(axis=1))


def collect_candidate_patches(detector: Detector, data_dirs: Sequence[str | os.PathLike], side_vox: int,
                              progress: bool = True) -> CandidatePatches:
    """The detector's candidates and the annotated nodules of every scan of ``data_dirs``, as patches
    of ``side_vox`` voxels with their labels (module docstring, step 1). Every folder's scans and
    tables are read before the first scan is detected.

    Raises:
        UserInputError: a folder without scans or without a readable ``annotations.csv``.
    """
    parts: list[tuple[Tensor, Tensor, np.ndarray, np.ndarray]] = []
    folders = [(find_luna16_scans(d), read_annotations(Path(d) / "annotations.csv"), read_excluded(d))
               for d in data_dirs]
    bar = tqdm(total=sum(len(scans) for scans, _, _ in folders), desc="candidates", unit="scan",
               disable=not progress)
    for scans, nodules, excluded in folders:
        for scan in scans:
            maps, prepared = detector.predict_maps(read_scan(scan.source))
            candidates = detector.first_stage(maps, prepared)
            world = prepared.geometry.index_to_world(candidates.centers_zyx_vox)
            nodule = _hits(world, nodules, scan.seriesuid)
            kept = nodule | ~_hits(world, excluded, scan.seriesuid)
            own = nodules.centers_xyz_mm[nodules.seriesuids == scan.seriesuid]
            own_vox = prepared.geometry.world_to_index(own)
            own_vox = own_vox[prepared.keep(own_vox)]
            points = np.concatenate([candidates.centers_zyx_vox[kept], own_vox])
            labels = np.concatenate([nodule[kept], np.ones(len(own_vox), bool)])
            from_candidates = np.arange(len(points)) < int(kept.sum())
            patches = detector.candidate_patches(prepared, points, side_vox)[:, 0].half()
            parts.append((patches, torch.from_numpy(labels).float(), from_candidates,
                          np.full(len(points), scan.seriesuid)))
            bar.update()
    bar.close()
    return CandidatePatches(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
                            np.concatenate([p[2] for p in parts]), np.concatenate([p[3] for p in parts]))


def _augmented_batch(patches: Tensor, index: Tensor, side_vox: int, generator: torch.Generator) -> Tensor:
    """``(B, 1, side, side, side)`` float32: the patches ``index``, each cropped at a random shift
    from its center, mirrored along random axes and with y and x swapped at random."""
    n, full = len(index), patches.shape[-1]
    shift = torch.randint(0, full - side_vox + 1, (n, 3), generator=generator)
    offsets = torch.arange(side_vox)
    z, y, x = (shift[:, axis, None] + offsets for axis in range(3))
    batch = patches[index[:, None, None, None], z[:, :, None, None], y[:, None, :, None], x[:, None, None, :]].float()
    for dim in (1, 2, 3):
        flip = torch.rand(n, generator=generator) < 0.5
        batch = torch.where(flip[:, None, None, None], batch.flip(dim), batch)
    swap = torch.rand(n, generator=generator) < 0.5
    batch = torch.where(swap[:, None, None, None], batch.transpose(2, 3), batch)
    return batch[:, None]


def train_candidate_classifier(data: CandidatePatches, config: CandidateClassifierConfig,
                               training: ClassifierTrainConfig, progress: bool = True) -> CandidateClassifier:
    """A classifier trained on ``data`` (module docstring, step 2), in eval mode, on the CPU."""
    positives = torch.nonzero(data.labels > 0.5).flatten()
    negatives = torch.nonzero(data.labels < 0.5).flatten()
    if not len(positives) or not len(negatives):
        raise ValueError(f"training the candidate classifier needs nodules and background; got "
                         f"{len(positives)} and {len(negatives)} patches")
    if data.patches.shape[-1] != config.patch_vox + 2 * training.jitter_vox:
        raise ValueError(f"patches of {data.patches.shape[-1]} voxels for a {config.patch_vox}-voxel classifier "
                         f"with a jitter of {training.jitter_vox}")
    torch.manual_seed(training.seed)
    generator = torch.Generator().manual_seed(training.seed)
    classifier = CandidateClassifier(config)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=training.learning_rate,
                                  weight_decay=training.weight_decay)
    half = training.steps // 2
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 1.0 if step < half else max(0.0, (training.steps - step) / (training.steps - half)))
    n_positive = max(1, round(training.batch_size * training.positive_fraction))
    loss_function = nn.BCEWithLogitsLoss()
    classifier.train()
    bar = tqdm(range(training.steps), desc="classifier", unit="step", disable=not progress)
    for _ in bar:
        index = torch.cat([positives[torch.randint(len(positives), (n_positive,), generator=generator)],
                           negatives[torch.randint(len(negatives), (training.batch_size - n_positive,),
                                                   generator=generator)]])
        batch = _augmented_batch(data.patches, index, config.patch_vox, generator)
        loss = loss_function(classifier(batch), data.labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return classifier.eval()


def train_classifier_checkpoint(checkpoint: str | os.PathLike, data_dirs: Sequence[str | os.PathLike],
                                out_path: str | os.PathLike, config: CandidateClassifierConfig,
                                training: ClassifierTrainConfig, device: str = "auto",
                                progress: bool = True) -> dict:
    """Collect, train and write the detector's checkpoint with the classifier in it (module docstring).

    Returns what the checkpoint's metadata records of the classifier (``metadata["candidate_classifier"]``).
    """
    if Path(out_path).resolve() == Path(checkpoint).resolve():
        raise UserInputError(f"--out {out_path}: the same file as --checkpoint; write the two-stage detector "
                             "beside it.")
    check_output_file(out_path, "--out")
    loaded = load_deployable(checkpoint)
    detector = Detector(loaded.model, loaded.preprocess, InferenceConfig(score_threshold=0.01), device)
    data = collect_candidate_patches(detector, data_dirs, config.patch_vox + 2 * training.jitter_vox, progress)
    log.info("%d patches from %d scans: %d nodules, %d of them among the detector's candidates", len(data.labels),
             len(set(data.seriesuids)), data.n_positive, data.n_candidate_nodules)
    if data.n_positive == 0 or data.n_positive == len(data.labels):
        raise UserInputError(f"--data {' '.join(map(str, data_dirs))}: the classifier needs nodules and background; "
                             f"the detector's candidates and the annotations gave {data.n_positive} nodule and "
                             f"{len(data.labels) - data.n_positive} background patches.")
    classifier = train_candidate_classifier(data, config, training, progress)
    model = with_candidate_classifier(loaded.model, classifier)
    record = {"data": [str(Path(d).resolve()) for d in data_dirs], "scans": len(set(data.seriesuids)),
              "patches": len(data.labels), "nodule_patches": data.n_positive,
              "candidate_nodule_patches": data.n_candidate_nodules, "training": asdict(training),
              "detector": str(Path(checkpoint).resolve())}
    # the bf16 record describes the network without this stage: it must be measured again
    metadata = {k: v for k, v in loaded.metadata.items() if k != "precision_check"}
    if loaded.training is not None and "training" not in metadata:
        metadata["training"] = loaded.training
    metadata["candidate_classifier"] = record
    save_checkpoint(out_path, model, loaded.preprocess, metadata)
    return record
