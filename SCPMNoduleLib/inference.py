"""Whole-scan detection: from a CT image to nodules in world coordinates (paper section 3.5).

Pipeline of :meth:`Detector.detect`:

1. resample to the checkpoint's spacing in the scan's own axes, window the HU, crop to the
   lungs (:func:`~SCPMNoduleLib.preprocess.prepare_scan`), pad each side to a multiple of the
   network's ``size_divisor`` ``q``;
2. cover the padded crop with tiles (:func:`~SCPMNoduleLib.tiling.plan_tiles`): along each axis the crop is cut into
   chunks ``[c_i, c_{i+1})`` whose bounds are multiples of ``q``; tile ``i`` spans
   ``[c_i - m, c_{i+1} + m)`` (clamped into the volume) with the margin ``m`` covering the
   network's useful receptive field, and contributes only its chunk. Tiles are as large as
   ``InferenceConfig.max_tile_voxels`` allows; a crop that fits is one tile, computed once;
3. each tile's outputs are written into whole-crop maps per head level (level stride ``s``
   divides ``q``, so a chunk is ``[c_i / s, c_{i+1} / s)`` in grid points); the coordinate
   maps get the tile's place in the whole resampled scan;
4. the maps are decoded (:func:`~SCPMNoduleLib.coder.decode_detections`: top-n per level,
   sphere at grid point + offset with the predicted radius, levels merged), candidates whose
   center lies outside the scan's own voxels (the padding is not the patient) or outside the
   lungs dropped, SIoU-based NMS (:func:`~SCPMNoduleLib.geometry.sphere_nms`), at most
   ``max_detections`` kept (:meth:`Detector.first_stage`);
5. when the checkpoint's network carries a candidate classifier
   (:mod:`~SCPMNoduleLib.candidate_classifier`), each kept candidate is re-scored from a 1 mm patch
   of the crop around it and the candidates re-ranked (:meth:`Detector.rescore`); centers are mapped
   to world LPS mm, radii to diameters in mm.

Tiles, their margin and mirrored passes are :mod:`~SCPMNoduleLib.tiling`'s; devices, precision and
out-of-memory detection :mod:`~SCPMNoduleLib.runtime`'s; checkpoints :mod:`~SCPMNoduleLib.checkpoint`'s
and model names :mod:`~SCPMNoduleLib.models`'s. A detector holds no per-scan state: what happened
to a scan (timings, the device and precision it ran in) is in its :class:`DetectionResult`.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import EllipsisType
from typing import cast

import numpy as np
import SimpleITK as sitk
import torch
from torch import Tensor, nn

from .candidate_classifier import CandidateClassifier, combine_logits, crop_patches
from .checkpoint import bf16_holds, load_checkpoint
from .coder import decode_detections
from .config_dict import check_choice, invalid_setting
from .detection import Detection
from .errors import UserInputError
from .geometry import sphere_nms
from .io import check_scan
from .lungs import LungFinding
from .model import SCPMNet, fuse_batch_norm
from .models import resolve_model
from .preprocess import PreparedScan, PreprocessConfig, prepare_scan
from .runtime import PRECISIONS, autocast, detection_precision, is_out_of_memory, precision_name, resolve_device
from .tiling import Tile, average_mirrored_maps, plan_tiles
from .triples import float_triple, int_triple

__all__ = ["Candidates", "DetectionCancelled", "DetectionResult", "Detector", "InferenceConfig", "Progress"]

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]

_MapIndex = tuple[EllipsisType | slice, ...]
"""An index into a ``(B, C, z, y, x)`` map: ``...`` for ``B, C``, then one slice per spatial axis."""


class DetectionCancelled(Exception):
    """Raised by :meth:`Detector.detect` when its ``cancel`` event is set."""


@dataclass(frozen=True)
class InferenceConfig:
    """How a scan is tiled, decoded and filtered.

    Attributes:
        score_threshold: detections need a probability strictly above it.
        max_detections: cap per scan after NMS (LUNA16: 100).
        top_n: candidates per head level taken from the maps before NMS (paper's top-n).
        nms_iou_threshold: SIoU above which the lower-scoring sphere is suppressed.
        nms_distance_ratio: distance-radius ratio R_DR = d / (d + r_a + r_b) below which it is
            suppressed; 0.5 suppresses every sphere that overlaps a kept one. Points next to a
            nodule are ignored in training, so they may fire. On 10 tuning phantoms (seed 500,
            used for nothing else) with demo 1.1.0, the CPM was 0.669 at 1/3, 0.674 at 0.4 and
            0.680 at 0.5 (the SIoU threshold, 0.1 or 0.2, changed nothing;
            ``scpm-train tune`` reproduces these figures).
        max_tile_voxels: largest tile, in voxels (bounds the network's memory: the demo network
            peaks at about 80 bytes per voxel in fp32 on the CPU, so about 5 GB at 400^3).
        tile_margin_vox: margin of each tile that only feeds the receptive field of its center;
            rounded up to a multiple of the network's size divisor.
        min_side_vox: a crop shorter than this along an axis is padded to it (rounded up to the
            size divisor), so small scans get the context the network was trained with.
        precision: ``auto`` (bf16, else fp16 autocast on CUDA; on the CPU bf16 where it is native
            and the checkpoint records that its detections hold in bf16, else fp32: see
            :func:`~SCPMNoduleLib.runtime.autocast_dtype`), ``fp32``, ``bf16`` or ``fp16``
            (CUDA only; fp32 elsewhere).
        channels_last: use the channels-last-3d memory format (faster 3-D convolutions).
        fuse_batch_norm: fold an SCPMNet's BatchNorms into its convolutions (inference only;
            :func:`~SCPMNoduleLib.model.fuse_batch_norm`).
        mirror_axes: test-time augmentation: any of ``z``, ``y``, ``x``. The network also runs on
            each tile mirrored along every non-empty combination of these axes (``"yx"``: 4
            passes, ``"zyx"``: 8) and the maps are averaged (:func:`~SCPMNoduleLib.tiling.average_mirrored_maps`);
            ``""`` (default) runs it once. On the 10 tuning phantoms demo 1.2.0 scored CPM 0.754
            without and 0.743 with ``"zyx"``, which took 3.6 instead of 0.7 minutes on 2 CPU cores:
            an option for models that gain from it, not a default.
        lung_mask: look for the lungs (crop to them, drop candidates outside them, refuse a scan
            without them: :class:`~SCPMNoduleLib.preprocess.NoLungsError`), as the checkpoint's
            pre-processing says; ``False`` runs on the whole volume whatever it says (research on
            crops and non-chest scans: an explicit choice, recorded in the JSON report).
    """

    score_threshold: float = 0.1
    max_detections: int = 100
    top_n: int = 2000
    nms_iou_threshold: float = 0.1
    nms_distance_ratio: float = 0.5
    max_tile_voxels: int = 400**3
    tile_margin_vox: int = 128
    min_side_vox: int = 64
    precision: str = "auto"
    channels_last: bool = True
    fuse_batch_norm: bool = True
    mirror_axes: str = ""
    lung_mask: bool = True

    def __post_init__(self) -> None:
        if set(self.mirror_axes) - set("zyx") or len(set(self.mirror_axes)) != len(self.mirror_axes):
            raise invalid_setting(self, "mirror_axes", "is not distinct letters among z, y, x")
        check_choice(self, "precision", PRECISIONS)

    def mirror_dims(self) -> list[tuple[int, ...]]:
        """The tensor dims ``(B, C, z, y, x)`` of each pass: ``()`` (the tile itself) first."""
        dims = [2 + "zyx".index(axis) for axis in sorted(self.mirror_axes, key="zyx".index)]
        return [tuple(d for bit, d in enumerate(dims) if subset >> bit & 1) for subset in range(2 ** len(dims))]


@dataclass(frozen=True)
class DetectionResult:
    """What :meth:`Detector.detect` found in one scan, and how.

    Attributes:
        detections: nodules, most probable first.
        timings_s: seconds per stage: ``resample``, ``forward``, ``decode``.
        device: where the network ran (``cpu`` when memory ran out on the detector's GPU even
            with the smallest tiles; the next scan starts on the GPU again).
        precision: the autocast type it ran in: ``fp32``, ``bf16`` or ``fp16``.
        precision_reason: why, in a few words (``asked for``, ``auto: the CPU has no native bf16``...:
            :func:`~SCPMNoduleLib.runtime.detection_precision`).
        tile_voxels: voxels of each tile it ran on (below the plan for ``max_tile_voxels``
            when memory ran out and the tiles were halved).
        lungs: what the lung finder found (volume, box), ``None`` when it did not run.
    """

    detections: tuple[Detection, ...]
    timings_s: dict[str, float]
    device: str
    precision: str
    tile_voxels: int
    lungs: LungFinding | None = None
    precision_reason: str = ""


@dataclass(frozen=True)
class Candidates:
    """One scan's candidates, most probable first: what :meth:`Detector.first_stage` keeps.

    Attributes:
        centers_zyx_vox: ``(N, 3)`` float64 centers in voxels of the whole resampled grid
            (:attr:`PreparedScan.geometry <SCPMNoduleLib.preprocess.PreparedScan>`).
        radii_mm: ``(N,)`` float64 radii in mm.
        scores: ``(N,)`` float64 probabilities.
        levels: ``(N,)`` head level of each.
    """

    centers_zyx_vox: np.ndarray
    radii_mm: Tensor
    scores: Tensor
    levels: Tensor

    def reranked(self, scores: Tensor) -> Candidates:
        """The same candidates with new ``scores`` (one per candidate, in this order), most probable
        first (ties keep this order)."""
        order = torch.argsort(scores, descending=True, stable=True)
        return Candidates(self.centers_zyx_vox[order.numpy()], self.radii_mm[order], scores[order], self.levels[order])


@dataclass(frozen=True)
class _ForwardPass:
    """The whole-crop maps of a scan, the device they were computed on and the tile size used."""

    maps: list[dict[str, Tensor]]
    device: torch.device
    tile_voxels: int


def _no_progress(fraction: float, stage: str) -> None:
    pass


@dataclass(eq=False)
class Detector:
    """A network with its pre-processing, ready to find nodules in whole scans.

    Holds no per-scan state, so one detector serves a batch: each :meth:`detect` returns its
    own :class:`DetectionResult`.

    Attributes:
        model: the network (eval mode); any module with ``strides``, ``size_divisor`` and
            SCPMNet's ``forward(image, patch_origin_zyx, scan_shape_zyx)`` works.
        preprocess: the checkpoint's pre-processing.
        config: tiling, decoding and filtering.
        device: where the network runs (a scan that runs out of memory there, even with the
            smallest tiles, runs on the CPU; the next one starts here again).
        info: name, version and metadata of the checkpoint (for reports; its
            ``metadata["precision_check"]`` decides whether ``auto`` may run bf16 on the CPU).
    """

    model: nn.Module
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    config: InferenceConfig = field(default_factory=InferenceConfig)
    device: torch.device | str = "cpu"
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.device = resolve_device(str(self.device))
        if self.config.fuse_batch_norm and isinstance(self.model, SCPMNet):
            self.model = fuse_batch_norm(self.model)
        self.model = self.model.eval().to(self.device)
        if self.config.channels_last:
            # torch's stub of Module.to lacks the memory_format keyword that Module.to accepts
            self.model = self.model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]

    @classmethod
    def from_checkpoint(cls, path_or_name: str | os.PathLike = "demo", device: str = "auto",
                        config: InferenceConfig | None = None) -> Detector:
        """Load a checkpoint file or a model named in ``Resources/Models.json`` (checksum verified)."""
        path, entry = resolve_model(path_or_name)
        model, preprocess, metadata = load_checkpoint(path)
        info = {"name": entry.get("name", Path(path).name), "version": entry.get("version"),
                "file": str(path), "trained": bool(metadata.get("trained", entry.get("trained", True))),
                "metadata": metadata}
        return cls(model, preprocess, config or InferenceConfig(), device, info)

    @property
    def trained(self) -> bool:
        return bool(self.info.get("trained", True))

    @property
    def bf16_holds(self) -> bool:
        """Whether the checkpoint records that its detections hold in bf16
        (:func:`~SCPMNoduleLib.checkpoint.bf16_holds` of ``info["metadata"]``)."""
        return bf16_holds(self.info.get("metadata", {}))

    def precision(self, device: torch.device | None = None) -> tuple[torch.dtype | None, str]:
        """The autocast type the network runs in on ``device`` (default: the detector's; ``None``:
        float32) and why: :func:`~SCPMNoduleLib.runtime.detection_precision` of the config's
        precision and the checkpoint's bf16 record."""
        return detection_precision(torch.device(device or self.device), self.config.precision,
                                   bf16_holds=self.bf16_holds)

    @property
    def size_divisor(self) -> int:
        """The network's ``size_divisor`` ``q``: every padded crop and tile side is a multiple of it."""
        return cast(int, self.model.size_divisor)  # an attribute nn.Module's stub types as Tensor | Module

    @property
    def strides(self) -> tuple[int, ...]:
        """The network's stride (input voxels per grid step) of each output level."""
        return tuple(cast(Sequence[int], self.model.strides))  # as size_divisor

    def detect(self, image: sitk.Image, progress: Progress | None = None,
               cancel: threading.Event | None = None) -> DetectionResult:
        """Nodules in a CT (HU, any spacing and direction), most probable first, with the
        stages' timings and the device and precision the network ran in.

        ``progress(fraction, stage)`` is called with stages ``resample``, ``forward``,
        ``decode``; setting ``cancel`` stops at the next tile with :class:`DetectionCancelled`.
        Its detections are :meth:`decode` of :meth:`predict_maps`.

        Raises:
            UserInputError: ``image`` is not a SimpleITK image or not a usable CT volume (2-D,
                several components, NaN, a single slice...: :func:`~SCPMNoduleLib.io.check_scan`,
                the command line's checks and sentences).
        """
        report = progress or _no_progress
        timings_s: dict[str, float] = {}
        forward, prepared = self._predict(image, report, cancel, timings_s, "Detector.detect")
        start = time.perf_counter()
        report(0.95, "decode")
        detections = self.decode(forward.maps, prepared)
        timings_s["decode"] = time.perf_counter() - start
        report(1.0, "decode")
        dtype, reason = self.precision(forward.device)
        return DetectionResult(tuple(detections), timings_s, str(forward.device), precision_name(dtype),
                               forward.tile_voxels, prepared.lungs, reason)

    def predict_maps(self, image: sitk.Image, progress: Progress | None = None,
                     cancel: threading.Event | None = None) -> tuple[list[dict[str, Tensor]], PreparedScan]:
        """The network's whole-crop output maps of a CT and the prepared scan they refer to.

        Returns one dict per head level (the network's ``logits``, ``radius`` and ``offset``
        maps, shape ``(1, C, d, h, w)`` over the padded lung crop) and the :class:`PreparedScan` (crop
        origin, lung mask, geometry) that :meth:`decode` needs; decoding the same maps with
        several :class:`InferenceConfig` s tunes the post-processing without re-running the network.
        """
        forward, prepared = self._predict(image, progress or _no_progress, cancel, {}, "Detector.predict_maps")
        return forward.maps, prepared

    def _predict(self, image: sitk.Image, report: Progress, cancel: threading.Event | None,
                 timings_s: dict[str, float], caller: str) -> tuple[_ForwardPass, PreparedScan]:
        """Check the scan (:func:`~SCPMNoduleLib.io.check_scan`, its sentences naming ``caller``), then
        prepare and run the network on it, adding the ``resample`` and ``forward`` seconds to ``timings_s``."""
        if not isinstance(image, sitk.Image):
            raise UserInputError(f"{caller}: expected a SimpleITK image, not a {type(image).__module__}."
                                 f"{type(image).__name__}; a CT needs its spacing, origin and direction: read it "
                                 "with SCPMNoduleLib.io.read_scan, or make one with sitk.GetImageFromArray and "
                                 "SetSpacing.")
        check_scan(image, f"{caller}'s image")
        start = time.perf_counter()
        report(0.0, "resample")
        preprocess = self.preprocess if self.config.lung_mask else replace(self.preprocess, lung_mask=False)
        prepared = prepare_scan(image, preprocess, align=self.size_divisor)
        timings_s["resample"] = time.perf_counter() - start
        start = time.perf_counter()
        forward = self._forward_tiled(prepared, report, cancel)
        timings_s["forward"] = time.perf_counter() - start
        return forward, prepared

    @property
    def _pad_value(self) -> float:
        """What the network sees outside the scan: the pre-processing's ``pad_hu``, normalised."""
        return float(self.preprocess.normalize(np.float32(self.preprocess.pad_hu)))

    def _pad(self, prepared: PreparedScan) -> Tensor:
        q = self.size_divisor
        volume = torch.from_numpy(prepared.image)
        smallest = math.ceil(self.config.min_side_vox / q) * q
        pad = [max(n + (-n) % q, smallest) - n for n in volume.shape]
        volume = torch.nn.functional.pad(volume, (0, pad[2], 0, pad[1], 0, pad[0]), value=self._pad_value)
        return volume[None, None]

    def _forward_tiled(self, prepared: PreparedScan, report: Progress,
                       cancel: threading.Event | None) -> _ForwardPass:
        """Run the tiles; when memory runs out, halve the tiles, then (from a GPU) run this scan on the CPU.

        The fallback is this scan's only: the model goes back to :attr:`device` before returning.
        """
        volume = self._pad(prepared)
        shape, q, margin = int_triple(volume.shape[2:]), self.size_divisor, self.config.tile_margin_vox
        device, max_voxels = torch.device(self.device), self.config.max_tile_voxels  # a device since __post_init__
        try:
            while True:
                tiles = plan_tiles(shape, q, margin, max_voxels)
                try:
                    maps = self._run_tiles(volume, prepared, tiles, device, report, cancel)
                    return _ForwardPass(maps, device, math.prod(tiles[0].size))
                except RuntimeError as error:  # torch.OutOfMemoryError is one
                    if not is_out_of_memory(error):
                        raise
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    used = math.prod(tiles[0].size)
                    if math.prod(plan_tiles(shape, q, margin, used // 2)[0].size) < used:
                        max_voxels = used // 2
                        log.warning("out of memory on %s with tiles of %d voxels; retrying with smaller tiles",
                                    device, used)
                    elif device.type != "cpu":
                        log.warning("out of memory on %s even with the smallest tiles; continuing this scan "
                                    "on the CPU", device)
                        device = torch.device("cpu")
                        self.model.to(device)
                        max_voxels = self.config.max_tile_voxels
                    else:
                        raise
        finally:
            if device != self.device:
                self.model.to(self.device)

    @torch.inference_mode()
    def _run_tiles(self, volume: Tensor, prepared: PreparedScan, tiles: list[Tile], device: torch.device,
                   report: Progress, cancel: threading.Event | None) -> list[dict[str, Tensor]]:
        shape = tuple(volume.shape[2:])
        log.debug("%d tile(s) of %s over %s on %s", len(tiles), tiles[0].size, shape, device)
        dtype, _ = self.precision(device)
        memory_format = torch.channels_last_3d if self.config.channels_last else torch.contiguous_format
        scan_shape = torch.tensor([prepared.geometry.shape_zyx], device=device)
        maps: list[dict[str, Tensor]] | None = None
        for number, tile in enumerate(tiles):
            if cancel is not None and cancel.is_set():
                raise DetectionCancelled("detection cancelled")
            report(0.05 + 0.9 * number / len(tiles), "forward")
            box = (slice(None), slice(None), *(slice(o, o + n) for o, n in zip(tile.origin, tile.size)))
            patch = volume[box].to(device)
            patch = patch.contiguous(memory_format=memory_format)
            origin = torch.tensor([[o + c for o, c in zip(tile.origin, prepared.crop_start_zyx)]], device=device)
            with autocast(device, dtype):
                passes = [(dims, self.model(patch.flip(dims) if dims else patch, patch_origin_zyx=origin,
                                            scan_shape_zyx=scan_shape)) for dims in self.config.mirror_dims()]
            outputs = passes[0][1] if len(passes) == 1 else average_mirrored_maps(passes)
            if maps is None:
                maps = [{key: torch.zeros((1, value.shape[1], *(n // s for n in shape)), device=device)
                         for key, value in level.items()} for level, s in zip(outputs, self.strides)]
            for level_outputs, level_maps, stride in zip(outputs, maps, self.strides):
                own: _MapIndex = (..., *(slice(a // stride, b // stride)
                                         for a, b in zip(tile.own_start, tile.own_stop)))
                local: _MapIndex = (..., *(slice((a - o) // stride, (b - o) // stride)
                                           for a, b, o in zip(tile.own_start, tile.own_stop, tile.origin)))
                for key, value in level_outputs.items():
                    level_maps[key][own] = value[local].float()
        report(0.95, "forward")
        assert maps is not None, "plan_tiles gives at least one tile"
        return maps

    def decode(self, maps: list[dict[str, Tensor]], prepared: PreparedScan,
               config: InferenceConfig | None = None) -> list[Detection]:
        """Detections from :meth:`predict_maps`'s output, post-processed with ``config``
        (default: the detector's): :meth:`first_stage`'s candidates, re-scored by the model's
        candidate classifier when it has one (:meth:`rescore`); centers in world LPS mm, most
        probable first."""
        candidates = self.first_stage(maps, prepared, config)
        if self.candidate_classifier is not None and len(candidates.scores):
            candidates = candidates.reranked(self.rescore(prepared, candidates))
        world = prepared.geometry.index_to_world(candidates.centers_zyx_vox)
        return [Detection(float_triple(w), float(2.0 * r), float(p), int(lv))
                for w, r, p, lv in zip(world, candidates.radii_mm.tolist(), candidates.scores.tolist(),
                                       candidates.levels.tolist())]

    def first_stage(self, maps: list[dict[str, Tensor]], prepared: PreparedScan,
                    config: InferenceConfig | None = None) -> Candidates:
        """The network's own candidates: top-n per level above the score threshold, inside the scan
        and the lung mask, SIoU NMS, the ``max_detections`` cap; most probable first."""
        config = config or self.config
        decoded = decode_detections(maps, self.strides, top_n=config.top_n,
                                    score_threshold=config.score_threshold)[0]
        centers = decoded.centers_zyx_vox.double().cpu().numpy() + prepared.crop_start_zyx
        keep = prepared.keep(centers)
        spacing_zyx = prepared.geometry.spacing_xyz_mm[::-1]
        voxel_mm = float(np.prod(spacing_zyx) ** (1.0 / 3.0))
        centers_mm = torch.from_numpy(centers[keep] * spacing_zyx)
        radii_mm = decoded.radii_vox.double().cpu()[torch.from_numpy(keep)] * voxel_mm
        scores = decoded.scores.double().cpu()[torch.from_numpy(keep)]
        levels = decoded.levels.cpu()[torch.from_numpy(keep)]
        kept = sphere_nms(centers_mm, radii_mm, scores, iou_threshold=config.nms_iou_threshold,
                          distance_ratio_threshold=config.nms_distance_ratio)[: config.max_detections]
        return Candidates(centers[keep][kept.numpy()], radii_mm[kept], scores[kept], levels[kept])

    @property
    def candidate_classifier(self) -> CandidateClassifier | None:
        """The model's second stage (:mod:`~SCPMNoduleLib.candidate_classifier`), ``None`` without one."""
        return cast(CandidateClassifier | None, getattr(self.model, "candidate_classifier", None))

    def candidate_patches(self, prepared: PreparedScan, centers_zyx_vox: np.ndarray, side_vox: int) -> Tensor:
        """``(N, 1, side, side, side)`` cubes of the prepared crop around ``(N, 3)`` points in voxels
        of the resampled grid (as :class:`Candidates` holds them), padded as the network's input is."""
        local = torch.from_numpy(np.asarray(centers_zyx_vox, np.float64).reshape(-1, 3) - prepared.crop_start_zyx)
        return crop_patches(torch.from_numpy(prepared.image), local, side_vox, self._pad_value)

    @torch.inference_mode()
    def rescore(self, prepared: PreparedScan, candidates: Candidates) -> Tensor:
        """The candidates' probabilities combined with the candidate classifier's opinion
        (:func:`~SCPMNoduleLib.candidate_classifier.combine_logits`), ``(N,)`` float64; float32 on
        the detector's device (a hundred small patches: no need for autocast)."""
        classifier = self.candidate_classifier
        assert classifier is not None, "rescore needs a model with a candidate classifier"
        patches = self.candidate_patches(prepared, candidates.centers_zyx_vox, classifier.config.patch_vox)
        second = classifier(patches.to(torch.device(self.device))).double().cpu()
        combined = combine_logits(torch.logit(candidates.scores, eps=1e-6), second, classifier.config.weight)
        return torch.sigmoid(combined)
