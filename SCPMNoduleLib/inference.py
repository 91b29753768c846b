"""Whole-scan detection: from a CT image to nodules in world coordinates (paper section 3.5).

Pipeline of :meth:`Detector.detect`:

1. resample to the checkpoint's spacing in the scan's own axes, window the HU, crop to the
   lungs (:func:`~SCPMNoduleLib.preprocess.prepare_scan`), pad each side to a multiple of the
   network's ``size_divisor`` ``q``;
2. cover the padded crop with tiles (:func:`plan_tiles`): along each axis the crop is cut into
   chunks ``[c_i, c_{i+1})`` whose bounds are multiples of ``q``; tile ``i`` spans
   ``[c_i - m, c_{i+1} + m)`` (clamped into the volume) with the margin ``m`` covering the
   network's useful receptive field, and contributes only its chunk. Tiles are as large as
   ``InferenceConfig.max_tile_voxels`` allows; a crop that fits is one tile, computed once;
3. each tile's outputs are written into whole-crop maps per head level (level stride ``s``
   divides ``q``, so a chunk is ``[c_i / s, c_{i+1} / s)`` in grid points); the coordinate
   maps get the tile's place in the whole resampled scan;
4. the maps are decoded (:func:`~SCPMNoduleLib.coder.decode_detections`: top-n per level,
   sphere at grid point + offset with the predicted radius, levels merged), candidates outside
   the lung mask dropped, SIoU-based NMS (:func:`~SCPMNoduleLib.geometry.sphere_nms`), at most
   ``max_detections`` kept, and centres mapped to world LPS mm, radii to diameters in mm.

Margin: the network's theoretical receptive field reaches about 230-260 voxels from an output
point, but little of it matters. The gradient receptive field (``model.gradient_receptive_field``
on a 48 x 512 x 48 input, random init) holds 99.9% of the input gradient within 91-100 voxels
of the output point for the tiny and the demo configurations and within 132-139 voxels for the
default (paper-size) one. With the tiny configuration (random, large head weights), tiles with a
64-voxel margin changed probabilities by up to 0.019 and offsets by up to 2.3 voxels against the
whole-volume pass, with a 96-voxel margin by at most 0.0015 and 0.2. The default margin is 128
voxels (a multiple of ``q = 16``); tiles are large (``max_tile_voxels``, 400^3), so a lung
crop at 1 mm is a single tile and the margin costs nothing. Cutting an axis of length ``L``
only shortens its tiles when ``L`` exceeds a chunk plus ``2 m``, so smaller tiles (to bound
memory) cost several times the compute.

Checkpoints are single files read with ``torch.load(weights_only=True)``: a dict with
``format``, ``version``, ``model_config``, ``preprocess_config``, ``state_dict``, ``metadata``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch import Tensor, nn

from .coder import decode_detections
from .detection import Detection
from .errors import UserInputError
from .geometry import sphere_nms
from .io import atomic_write, sha256_of
from .model import SCPMNet, SCPMNetConfig, fuse_batch_norm
from .preprocess import PREPROCESS_VERSION, PreparedScan, PreprocessConfig, prepare_scan

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "scpm-nodule-checkpoint"
CHECKPOINT_VERSION = 1
MANIFEST_FORMAT = "scpm-nodule-models"
PACKAGE_DIR = Path(__file__).resolve().parent
MANIFEST_CANDIDATES = (PACKAGE_DIR.parent / "Resources" / "Models.json",
                       PACKAGE_DIR / "Resources" / "Models.json")

Progress = Callable[[float, str], None]


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
            ``benchmarks/postprocess_sweep.py`` reproduces these figures).
        max_tile_voxels: largest tile, in voxels (bounds the network's memory: the demo network
            peaks at about 80 bytes per voxel in fp32 on the CPU, so about 5 GB at 400^3).
        tile_margin_vox: margin of each tile that only feeds the receptive field of its centre;
            rounded up to a multiple of the network's size divisor.
        min_side_vox: a crop shorter than this along an axis is padded to it (rounded up to the
            size divisor), so small scans get the context the network was trained with.
        pad_hu: value of the padding around the scan, in HU (windowed like the scan).
        precision: ``auto`` (bf16, else fp16 autocast on CUDA; fp32 on the CPU, see
            :func:`_autocast_dtype`), ``fp32``, ``bf16`` or ``fp16`` (CUDA only).
        channels_last: use the channels-last-3d memory format (faster 3-D convolutions).
        fuse_batch_norm: fold an SCPMNet's BatchNorms into its convolutions (inference only;
            :func:`~SCPMNoduleLib.model.fuse_batch_norm`).
        mirror_axes: test-time augmentation: any of ``z``, ``y``, ``x``. The network also runs on
            each tile mirrored along every non-empty combination of these axes (``"yx"``: 4
            passes, ``"zyx"``: 8) and the maps are averaged (:func:`average_mirrored_maps`);
            ``""`` (default) runs it once. On the 10 tuning phantoms demo 1.2.0 scored CPM 0.754
            without and 0.743 with ``"zyx"``, which took 3.6 instead of 0.7 minutes on 2 CPU cores:
            an option for models that gain from it, not a default.
    """

    score_threshold: float = 0.1
    max_detections: int = 100
    top_n: int = 2000
    nms_iou_threshold: float = 0.1
    nms_distance_ratio: float = 0.5
    max_tile_voxels: int = 400**3
    tile_margin_vox: int = 128
    min_side_vox: int = 64
    pad_hu: float = -1200.0
    precision: str = "auto"
    channels_last: bool = True
    fuse_batch_norm: bool = True
    mirror_axes: str = ""

    def __post_init__(self) -> None:
        if set(self.mirror_axes) - set("zyx") or len(set(self.mirror_axes)) != len(self.mirror_axes):
            raise UserInputError(f"mirror axes {self.mirror_axes!r}: expected distinct letters among z, y, x.")

    def mirror_dims(self) -> list[tuple[int, ...]]:
        """The tensor dims ``(B, C, z, y, x)`` of each pass: ``()`` (the tile itself) first."""
        dims = [2 + "zyx".index(axis) for axis in sorted(self.mirror_axes, key="zyx".index)]
        return [tuple(d for bit, d in enumerate(dims) if subset >> bit & 1) for subset in range(2 ** len(dims))]


@dataclass(frozen=True)
class Tile:
    """One tile of the padded crop, all in crop voxels (z, y, x).

    ``origin``/``size``: the tile's input box; ``own_start``/``own_stop``: the chunk it contributes.
    """

    origin: tuple[int, int, int]
    size: tuple[int, int, int]
    own_start: tuple[int, int, int]
    own_stop: tuple[int, int, int]


def _chunk_bounds(length: int, pieces: int, divisor: int) -> list[int]:
    """``pieces + 1`` bounds from 0 to ``length`` (multiples of ``divisor``), near-equal chunks."""
    units = length // divisor
    return [round(units * i / pieces) * divisor for i in range(pieces + 1)]


def _axis_tiles(length: int, pieces: int, margin: int, divisor: int) -> tuple[int, list[tuple[int, int, int]]]:
    """Tile side and ``(origin, own_start, own_stop)`` per tile along one axis."""
    bounds = _chunk_bounds(length, pieces, divisor)
    side = min(length, max(b - a for a, b in zip(bounds, bounds[1:])) + 2 * margin)
    if pieces == 1:
        side = length
    tiles = [(min(max(a - margin, 0), length - side), a, b) for a, b in zip(bounds, bounds[1:])]
    return side, tiles


def plan_tiles(shape_zyx: tuple[int, int, int], divisor: int, margin: int, max_voxels: int) -> list[Tile]:
    """Cover a volume (sides multiples of ``divisor``) with tiles of at most ``max_voxels`` voxels.

    Each axis of length ``L`` is cut into ``k`` near-equal chunks (bounds multiples of
    ``divisor``); its tiles are ``min(L, max chunk + 2 m)`` long (``L`` when ``k = 1``). Of all
    cuts ``(k_z, k_y, k_x)`` whose tiles fit ``max_voxels``, the one computing the fewest voxels
    in all (``k_z k_y k_x`` times the tile's voxels) is taken, then the one with fewer tiles;
    when none fits (``max_voxels`` below the smallest useful tile), the one with the smallest
    tile. Tile origins are multiples of ``divisor``; every tile contains its chunk plus
    ``margin`` voxels on each side that lies inside the volume, so its chunk's outputs see all
    of their receptive field that the volume has.
    """
    margin = math.ceil(margin / divisor) * divisor
    options = [[_axis_tiles(n, k, margin, divisor) for k in range(1, n // divisor + 1)] for n in shape_zyx]
    sides = [np.array([side for side, _ in axis]) for axis in options]
    pieces = [np.arange(1, len(axis) + 1) for axis in options]
    tile_voxels = sides[0][:, None, None] * sides[1][None, :, None] * sides[2][None, None, :]
    count = pieces[0][:, None, None] * pieces[1][None, :, None] * pieces[2][None, None, :]
    fits = tile_voxels <= max_voxels
    if fits.any():
        key = np.where(fits, tile_voxels * count, np.iinfo(np.int64).max)
        best = np.lexsort((count.ravel(), key.ravel()))[0]
    else:
        best = np.lexsort(((tile_voxels * count).ravel(), tile_voxels.ravel()))[0]
    chosen = [options[axis][k] for axis, k in enumerate(np.unravel_index(best, tile_voxels.shape))]
    size = tuple(int(side) for side, _ in chosen)
    return [Tile((z[0], y[0], x[0]), size, (z[1], y[1], x[1]), (z[2], y[2], x[2]))
            for z in chosen[0][1] for y in chosen[1][1] for x in chosen[2][1]]


MirroredMaps = tuple[tuple[int, ...], list[dict[str, Tensor]]]


def average_mirrored_maps(passes: Sequence[MirroredMaps]) -> list[dict[str, Tensor]]:
    """Average a network's maps over mirrored copies of its input.

    Each pass is ``(dims, maps)``: the maps of the input flipped along tensor ``dims`` (of
    ``(B, C, z, y, x)``). A tile's side is a multiple of each stride ``s``, so flipping it maps
    grid point ``p = j s + (s - 1) / 2`` to ``L - 1 - p``, another grid point, and a sphere
    centred at ``c`` to ``L - 1 - c``: the maps are flipped back along ``dims`` and the offset
    ``(c - p) / s`` changes sign along those axes; the radius is unchanged. The result holds
    the mean probability (as ``logits = logit(mean sigmoid)``), mean radius and mean offset.
    """
    device = passes[0][1][0]["offset"].device
    signs = [torch.tensor([-1.0 if d in dims else 1.0 for d in (2, 3, 4)], device=device).view(1, 3, 1, 1, 1)
             for dims, _ in passes]
    levels = []
    for level in range(len(passes[0][1])):
        probability = radius = offset = 0.0
        for (dims, maps), sign in zip(passes, signs):
            out = maps[level]
            probability = probability + torch.sigmoid(out["logits"].float()).flip(dims)
            radius = radius + out["radius"].float().flip(dims)
            offset = offset + out["offset"].float().flip(dims) * sign
        count = len(passes)
        levels.append({"logits": torch.logit(probability / count, eps=1e-7), "radius": radius / count,
                       "offset": offset / count})
    return levels


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is bad input."""
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise UserInputError(f"device {device!r}: expected auto, cpu or cuda.")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserInputError(f"device {device!r}: no CUDA GPU is available to this program.")
    return torch.device(device)


def _out_of_memory(error: BaseException) -> bool:
    """A CUDA out-of-memory error, or the CPU allocator's failure."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or "can't allocate memory" in str(error)


def _autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast type of a precision setting, ``None`` for fp32.

    ``auto`` is fp32 on the CPU: bf16 autocast there moved detections of a tiny random network
    by up to 0.26 voxel and changed probabilities by up to 0.28 against fp32 (and one detection
    was lost), beyond the 0.1 voxel / 0.01 the tiling is held to; ``bf16`` is available to
    ask for it explicitly on CPUs with native bf16.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16 if device.type == "cuda" else None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def _manifest_path() -> Path | None:
    return next((p for p in MANIFEST_CANDIDATES if p.is_file()), None)


def read_manifest(path: str | os.PathLike | None = None) -> dict:
    """The model manifest ``Resources/Models.json``: ``{"format", "version", "models": [...]}``."""
    path = Path(path) if path is not None else _manifest_path()
    if path is None:
        return {"format": MANIFEST_FORMAT, "version": 1, "models": [], "path": None}
    try:
        manifest = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise UserInputError(f"{path}: the model manifest is missing or not valid JSON.") from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise UserInputError(f"{path}: not a {MANIFEST_FORMAT} manifest.")
    manifest["path"] = str(path)
    return manifest


def save_checkpoint(path: str | os.PathLike, model: SCPMNet, preprocess: PreprocessConfig,
                    metadata: dict | None = None) -> None:
    """Write a checkpoint readable with ``torch.load(weights_only=True)``, atomically.

    ``metadata`` (JSON types only) holds what a reader should know: training data, epochs,
    metrics, whether the weights are trained.
    """
    checkpoint = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
        "model_config": asdict(model.config), "preprocess_config": preprocess.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "metadata": dict(metadata or {}),
    }
    with atomic_write(path, "wb") as handle:
        torch.save(checkpoint, handle)


def load_checkpoint(path: str | os.PathLike) -> tuple[SCPMNet, PreprocessConfig, dict]:
    """Read a checkpoint without unpickling code; refuse anything that is not ours, with one sentence.

    Returns the model (eval mode, CPU), its pre-processing and its metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: checkpoint file not found.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises many types for a damaged or foreign file
        raise UserInputError(f"{path}: the file is not a readable checkpoint (damaged, or not saved by torch).") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise UserInputError(f"{path}: the file is not an SCPM-Net checkpoint of this program.")
    if checkpoint.get("version") != CHECKPOINT_VERSION:
        raise UserInputError(f"{path}: checkpoint version {checkpoint.get('version')} is not the "
                             f"version {CHECKPOINT_VERSION} this program reads.")
    try:
        config = SCPMNetConfig(**checkpoint["model_config"])
    except (KeyError, TypeError, ValueError):
        raise UserInputError(f"{path}: the checkpoint's architecture is not one this program's SCPM-Net can build.") from None
    preprocess_values = checkpoint.get("preprocess_config", {})
    if not isinstance(preprocess_values, dict) or preprocess_values.get("version") != PREPROCESS_VERSION:
        raise UserInputError(f"{path}: the checkpoint's pre-processing version is not {PREPROCESS_VERSION}.")
    preprocess = PreprocessConfig.from_dict(preprocess_values)
    model = SCPMNet(config)
    try:
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except (KeyError, RuntimeError):
        raise UserInputError(f"{path}: the checkpoint's weights do not match its architecture.") from None
    return model.eval(), preprocess, dict(checkpoint.get("metadata", {}))


def resolve_model(path_or_name: str | os.PathLike) -> tuple[Path, dict]:
    """A checkpoint path and its manifest entry (``{}`` if none) from a path or a manifest name.

    A named model's file is checked against the manifest's sha256.
    """
    manifest = read_manifest()
    entries = {entry["name"]: entry for entry in manifest["models"]}
    path = Path(path_or_name)
    if str(path_or_name) in entries and not path.is_file():
        entry = entries[str(path_or_name)]
        path = Path(manifest["path"]).parent / entry["file"]
        if not path.is_file():
            raise UserInputError(f"{path}: the file of model {entry['name']!r} is missing.")
        digest = sha256_of(path)
        if digest != entry["sha256"]:
            raise UserInputError(f"{path}: sha256 {digest[:12]}... does not match the manifest's "
                                 f"{entry['sha256'][:12]}... for model {entry['name']!r}.")
        return path, entry
    if not path.is_file():
        known = ", ".join(entries) or "none"
        raise UserInputError(f"{path_or_name}: neither a checkpoint file nor a model name in the "
                             f"manifest (known: {known}).")
    return path, {}


@dataclass(eq=False)
class Detector:
    """A network with its pre-processing, ready to find nodules in whole scans.

    Attributes:
        model: the network (eval mode); any module with ``strides``, ``size_divisor`` and
            SCPMNet's ``forward(image, patch_origin_zyx, scan_shape_zyx)`` works.
        preprocess: the checkpoint's pre-processing.
        config: tiling, decoding and filtering.
        device: where the network runs.
        info: name, version and metadata of the checkpoint (for reports).
        timings_s: seconds per stage of the last :meth:`detect`.
    """

    model: nn.Module
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    config: InferenceConfig = field(default_factory=InferenceConfig)
    device: torch.device | str = "cpu"
    info: dict = field(default_factory=dict)
    timings_s: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.device = resolve_device(str(self.device))
        if self.config.fuse_batch_norm and isinstance(self.model, SCPMNet):
            self.model = fuse_batch_norm(self.model)
        self.model = self.model.eval().to(self.device)
        if self.config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last_3d)

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

    def detect(self, image: sitk.Image, progress: Progress | None = None,
               cancel: threading.Event | None = None) -> list[Detection]:
        """Nodules in a CT (HU, any spacing and direction), most probable first.

        ``progress(fraction, stage)`` is called with stages ``resample``, ``forward``,
        ``decode``; setting ``cancel`` stops at the next tile with :class:`DetectionCancelled`.
        Equivalent to :meth:`decode` of :meth:`predict_maps`.
        """
        report = progress or (lambda fraction, stage: None)
        maps, prepared = self.predict_maps(image, report, cancel)
        start = time.perf_counter()
        report(0.95, "decode")
        detections = self.decode(maps, prepared)
        self.timings_s["decode"] = time.perf_counter() - start
        report(1.0, "decode")
        return detections

    def predict_maps(self, image: sitk.Image, progress: Progress | None = None,
                     cancel: threading.Event | None = None) -> tuple[list[dict[str, Tensor]], PreparedScan]:
        """The network's whole-crop output maps of a CT and the prepared scan they refer to.

        Returns one dict per head level (the network's ``logits``, ``radius`` and ``offset``
        maps, shape ``(1, C, d, h, w)`` over the padded lung crop) and the :class:`PreparedScan` (crop
        origin, lung mask, geometry) that :meth:`decode` needs; decoding the same maps with
        several :class:`InferenceConfig` s tunes the post-processing without re-running the network.
        """
        report = progress or (lambda fraction, stage: None)
        self.timings_s = {}
        start = time.perf_counter()
        report(0.0, "resample")
        prepared = prepare_scan(image, self.preprocess, align=self.model.size_divisor)
        self.timings_s["resample"] = time.perf_counter() - start
        start = time.perf_counter()
        maps = self._forward_tiled(prepared, report, cancel)
        self.timings_s["forward"] = time.perf_counter() - start
        return maps, prepared

    def _pad(self, prepared: PreparedScan) -> Tensor:
        q = self.model.size_divisor
        volume = torch.from_numpy(prepared.image)
        smallest = math.ceil(self.config.min_side_vox / q) * q
        pad = [max(n + (-n) % q, smallest) - n for n in volume.shape]
        pad_value = float(self.preprocess.normalize(np.float32(self.config.pad_hu)))
        volume = torch.nn.functional.pad(volume, (0, pad[2], 0, pad[1], 0, pad[0]), value=pad_value)
        return volume[None, None]

    def _forward_tiled(self, prepared: PreparedScan, report: Progress,
                       cancel: threading.Event | None) -> list[dict[str, Tensor]]:
        """Run the tiles; when memory runs out, halve the tiles, then (from a GPU) go to the CPU."""
        volume = self._pad(prepared)
        shape, q, margin = tuple(volume.shape[2:]), self.model.size_divisor, self.config.tile_margin_vox
        max_voxels = self.config.max_tile_voxels
        while True:
            try:
                return self._run_tiles(volume, prepared, max_voxels, report, cancel)
            except (torch.cuda.OutOfMemoryError, RuntimeError) as error:
                if not _out_of_memory(error):
                    raise
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                used = math.prod(plan_tiles(shape, q, margin, max_voxels)[0].size)
                if math.prod(plan_tiles(shape, q, margin, used // 2)[0].size) < used:
                    max_voxels = used // 2
                    log.warning("out of memory on %s with tiles of %d voxels; retrying with smaller tiles",
                                self.device, used)
                elif self.device.type != "cpu":
                    log.warning("out of memory on %s even with the smallest tiles; continuing on the CPU",
                                self.device)
                    self.device = torch.device("cpu")
                    self.model = self.model.to(self.device)
                    max_voxels = self.config.max_tile_voxels
                else:
                    raise

    @torch.inference_mode()
    def _run_tiles(self, volume: Tensor, prepared: PreparedScan, max_voxels: int, report: Progress,
                   cancel: threading.Event | None) -> list[dict[str, Tensor]]:
        q = self.model.size_divisor
        shape = tuple(volume.shape[2:])
        tiles = plan_tiles(shape, q, self.config.tile_margin_vox, max_voxels)
        log.debug("%d tile(s) of %s over %s", len(tiles), tiles[0].size, shape)
        dtype = _autocast_dtype(self.device, self.config.precision)
        memory_format = torch.channels_last_3d if self.config.channels_last else torch.contiguous_format
        scan_shape = torch.tensor([prepared.geometry.shape_zyx], device=self.device)
        maps: list[dict[str, Tensor]] | None = None
        for number, tile in enumerate(tiles):
            if cancel is not None and cancel.is_set():
                raise DetectionCancelled("detection cancelled")
            report(0.05 + 0.9 * number / len(tiles), "forward")
            box = tuple(slice(o, o + n) for o, n in zip(tile.origin, tile.size))
            patch = volume[(slice(None), slice(None), *box)].to(self.device)
            patch = patch.contiguous(memory_format=memory_format)
            origin = torch.tensor([[o + c for o, c in zip(tile.origin, prepared.crop_start_zyx)]],
                                  device=self.device)
            with torch.autocast(self.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                passes = [(dims, self.model(patch.flip(dims) if dims else patch, patch_origin_zyx=origin,
                                            scan_shape_zyx=scan_shape)) for dims in self.config.mirror_dims()]
            outputs = passes[0][1] if len(passes) == 1 else average_mirrored_maps(passes)
            if maps is None:
                maps = [{key: torch.zeros((1, value.shape[1], *(n // s for n in shape)), device=self.device)
                         for key, value in level.items()} for level, s in zip(outputs, self.model.strides)]
            for level_outputs, level_maps, stride in zip(outputs, maps, self.model.strides):
                own = tuple(slice(a // stride, b // stride) for a, b in zip(tile.own_start, tile.own_stop))
                local = tuple(slice((a - o) // stride, (b - o) // stride)
                              for a, b, o in zip(tile.own_start, tile.own_stop, tile.origin))
                for key, value in level_outputs.items():
                    level_maps[key][(..., *own)] = value[(..., *local)].float()
        report(0.95, "forward")
        return maps

    def decode(self, maps: list[dict[str, Tensor]], prepared: PreparedScan,
               config: InferenceConfig | None = None) -> list[Detection]:
        """Detections from :meth:`predict_maps`'s output, post-processed with ``config``
        (default: the detector's): top-n per level above the score threshold, lung mask, SIoU
        NMS, the ``max_detections`` cap; centres in world LPS mm, most probable first."""
        config = config or self.config
        decoded = decode_detections(maps, self.model.strides, top_n=config.top_n,
                                    score_threshold=config.score_threshold)[0]
        centers = decoded.centers_zyx_vox.double().cpu().numpy() + prepared.crop_start_zyx
        keep = np.ones(len(centers), dtype=bool)
        if prepared.mask is not None:
            keep = prepared.mask.contains(centers)
        spacing_zyx = prepared.geometry.spacing_xyz_mm[::-1]
        voxel_mm = float(np.prod(spacing_zyx) ** (1.0 / 3.0))
        centers_mm = torch.from_numpy(centers[keep] * spacing_zyx)
        radii_mm = decoded.radii_vox.double().cpu()[torch.from_numpy(keep)] * voxel_mm
        scores = decoded.scores.double().cpu()[torch.from_numpy(keep)]
        levels = decoded.levels.cpu()[torch.from_numpy(keep)]
        kept = sphere_nms(centers_mm, radii_mm, scores, iou_threshold=config.nms_iou_threshold,
                          distance_ratio_threshold=config.nms_distance_ratio)[: config.max_detections]
        world = prepared.geometry.index_to_world(centers[keep][kept.numpy()])
        return [Detection(tuple(float(v) for v in w), float(2.0 * r), float(p), int(lv))
                for w, r, p, lv in zip(world, radii_mm[kept].tolist(), scores[kept].tolist(),
                                       levels[kept].tolist())]
