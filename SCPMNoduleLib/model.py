"""The SCPM-Net detection network (Luo et al. 2022, section 3.1).

An encoder-decoder of residual blocks of 3x3x3 convolutions with BatchNorm and ReLU:

* stem: one 3^3 convolution at full resolution, then 2x2x2 max-pooling;
* encoder stage ``k`` (k = 1..S, stride 2^k; 48^3, 24^3, 12^3, 6^3 for a 96^3 patch): the
  3-channel normalised coordinate map of that resolution is concatenated to the features, then
  residual blocks and squeeze-and-excitation (SE) attention; 2x2x2 max-pooling between stages;
* a dilated fusion block ends the encoder: three 3^3 convolutions with dilations 1, 2, 3 whose
  outputs are mixed with learned softmax weights, as a residual branch;
* decoder levels from stride 2^(S-1) up to the finest head stride: a 2x2x2 transposed
  convolution, concatenation with the encoder's skip features and the coordinate map, residual
  blocks and SE;
* a head on each of the last ``head_levels`` decoder levels giving the center logits (1 channel),
  the radius (1 channel, softplus so >= 0) and the offset (3 channels, z y x), all in that
  level's grid voxels (the grid convention is ``coder.py``'s: output point j stands for the input
  voxel coordinate p(j) = j*s + (s-1)/2).

Where the paper is silent the design follows the authors' reference network (ResNet-style basic
blocks, softmax-weighted dilated fusion, SE attention after the residual stages) with one
deliberate difference: by default SE squeezes over a local window (``se_context`` input voxels)
instead of the whole patch. A global squeeze makes every output depend on the whole input, so a
model run on tiles of another size than its training patches would see other attention gates;
with the local squeeze the network is equivariant to shifts by multiples of ``size_divisor`` and
has a finite receptive field, so the center of a tile whose origin is a multiple of
``size_divisor`` and whose margin is wide enough gives the numbers of a whole-volume pass
(``benchmarks/model_cost.py`` measures how wide). ``se_context=0`` restores the paper's global
squeeze.

The coordinate maps are computed analytically from the patch's place in the whole scan
(:func:`coordinate_map`), never by resampling a stored volume, so any tile of any size gets the
exact numbers a training patch at the same place got.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .candidate_classifier import CandidateClassifier, CandidateClassifierConfig
from .coder import grid_positions_vox
from .config_dict import dataclass_from_dict, invalid_setting

__all__ = [
    "DetectionHead",
    "DilatedFusion",
    "ResidualBlock",
    "SCPMNet",
    "SCPMNetConfig",
    "SqueezeExcitation",
    "coordinate_map",
    "fast_bfloat16_available",
    "fuse_batch_norm",
    "network_only",
    "with_candidate_classifier",
]

_TUPLE_FIELDS = ("encoder_channels", "encoder_blocks", "decoder_blocks")


@dataclass(frozen=True)
class SCPMNetConfig:
    """Architecture of :class:`SCPMNet`; JSON-serialisable (ints, floats, bools, tuples).

    ``SCPMNetConfig(**dataclasses.asdict(cfg)) == cfg``; tuples given as lists (from JSON) are
    turned back into tuples.

    Attributes:
        in_channels: image channels (1 for CT).
        stem_channels: channels of the full-resolution stem convolution.
        encoder_channels: channels of encoder stages at strides 2, 4, ..., 2^S (finest first).
        encoder_blocks: residual blocks per encoder stage (finest first).
        decoder_blocks: residual blocks per decoder level, finest first; the decoder has
            ``len(decoder_blocks)`` levels at strides 2^(S-D) .. 2^(S-1) (D = its length), each
            with the encoder's channel count at that stride.
        head_channels: channels of the 3^3 convolution inside each head.
        head_levels: number of decoder levels (the finest ones) that carry a head (1 or 2 in
            the paper).
        use_se: squeeze-and-excitation attention at the end of every encoder stage and decoder
            level (after its residual blocks, as in the authors' network).
        se_reduction: SE bottleneck ratio (channels / hidden units).
        se_context: side, in input voxels, of the cubic window SE averages over (the pooling
            kernel at stride s is the odd number 2*floor(se_context / (2 s)) + 1); 0 = the whole
            input (the paper's global squeeze).
        use_coordinate_maps: concatenate the 3-channel coordinate map at every encoder stage and
            decoder level.
        use_dilated_fusion: end the encoder with the dilated fusion block.
        dilations: dilation rates of the fusion block's convolutions.
        prior_probability: initial center probability everywhere; the classification bias is
            initialised to log(p / (1 - p)) (RetinaNet's prior initialisation).
        head_init_std: standard deviation of the normal init of the heads' output convolutions.
        candidate_classifier: the second stage that re-scores the decoded candidates from
            fine-scale patches (:mod:`~SCPMNoduleLib.candidate_classifier`; not in the paper);
            ``None`` (default): none. It is trained on its own (``scpm-train classifier``), with
            the network frozen, and takes no part in :meth:`SCPMNet.forward`.
    """

    in_channels: int = 1
    stem_channels: int = 16
    encoder_channels: tuple[int, ...] = (32, 64, 64, 64)
    encoder_blocks: tuple[int, ...] = (2, 2, 3, 3)
    decoder_blocks: tuple[int, ...] = (1, 1)
    head_channels: int = 64
    head_levels: int = 2
    use_se: bool = True
    se_reduction: int = 4
    se_context: int = 32
    use_coordinate_maps: bool = True
    use_dilated_fusion: bool = True
    dilations: tuple[int, ...] = (1, 2, 3)
    prior_probability: float = 0.01
    head_init_std: float = 0.01
    candidate_classifier: CandidateClassifierConfig | None = None

    def __post_init__(self) -> None:
        """Tuples from lists, the classifier's config from its dict; refuse a topology the network
        cannot build (:func:`~SCPMNoduleLib.config_dict.invalid_setting`)."""
        if isinstance(self.candidate_classifier, dict):  # from JSON or dataclasses.asdict
            object.__setattr__(self, "candidate_classifier", dataclass_from_dict(
                CandidateClassifierConfig, self.candidate_classifier, "SCPMNetConfig.candidate_classifier"))
        for name in (*_TUPLE_FIELDS, "dilations"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        stages, levels = len(self.encoder_channels), len(self.decoder_blocks)
        if len(self.encoder_blocks) != stages:
            raise invalid_setting(self, "encoder_blocks", f"does not have one entry per encoder stage ({stages})")
        if not 1 <= levels < stages:
            raise invalid_setting(self, "decoder_blocks", f"does not have between 1 and {stages - 1} entries "
                                  "(fewer than the encoder's stages)")
        if not 1 <= self.head_levels <= levels:
            raise invalid_setting(self, "head_levels", f"is not between 1 and {levels} (the decoder's levels)")
        for name in ("encoder_blocks", "decoder_blocks"):
            if min(getattr(self, name)) < 1:
                raise invalid_setting(self, name, "gives a stage or level no residual block")
        if not 0.0 < self.prior_probability < 1.0:
            raise invalid_setting(self, "prior_probability", "is not strictly between 0 and 1")
        if self.se_context < 0:
            raise invalid_setting(self, "se_context", "is negative (0 is the global squeeze)")

    @classmethod
    def tiny(cls) -> SCPMNetConfig:
        """A few channels per stage, same topology as the default: for tests."""
        return cls(
            stem_channels=4,
            encoder_channels=(4, 8, 8, 8),
            encoder_blocks=(1, 1, 1, 1),
            decoder_blocks=(1, 1),
            head_channels=8,
            se_reduction=2,
        )

    @property
    def num_stages(self) -> int:
        return len(self.encoder_channels)

    @property
    def size_divisor(self) -> int:
        """Input sides must be multiples of this (2^S: S max-poolings)."""
        return 2**self.num_stages

    @property
    def strides(self) -> tuple[int, ...]:
        """Strides of the head levels, finest first."""
        finest = self.num_stages - len(self.decoder_blocks)
        return tuple(2 ** (finest + i) for i in range(self.head_levels))


def coordinate_map(
    patch_origin_zyx: Tensor,
    scan_shape_zyx: Tensor,
    grid_shape_zyx: Sequence[int],
    stride: int,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Normalised position in the whole scan of every point of a stride-``stride`` grid.

    Point j (per axis) of the grid stands for the patch voxel coordinate p(j) = j*s + (s-1)/2,
    and its map value on that axis is ``(origin + p(j)) / (scan_len - 1)`` (``scan_len - 1``
    clamped to >= 1), so the values lie in [0, 1] over the scan and are identical for any tile
    that covers the same point: the computation is done in float32, where these half-integer
    numerators are exact, and only then cast to ``dtype``.

    Args:
        patch_origin_zyx: (B, 3) voxel index of the patch's first voxel in the whole scan.
        scan_shape_zyx: (B, 3) shape of the whole scan.
        grid_shape_zyx: (d, h, w) of the grid.
        stride: input voxels per grid point.
        dtype: dtype of the result.

    Returns:
        (B, 3, d, h, w) tensor, channels (z, y, x).
    """
    origin = patch_origin_zyx.to(torch.float32)
    denominator = (scan_shape_zyx.to(torch.float32) - 1.0).clamp_min(1.0)
    batch = origin.shape[0]
    grid_shape = tuple(int(n) for n in grid_shape_zyx)
    channels = []
    for axis, length in enumerate(grid_shape):
        position = grid_positions_vox(length, stride, dtype=torch.float32, device=origin.device)
        value = (origin[:, axis, None] + position) / denominator[:, axis, None]  # (B, n)
        view = [batch, 1, 1, 1]
        view[1 + axis] = length
        channels.append(value.view(view).expand(batch, *grid_shape))
    return torch.stack(channels, dim=1).to(dtype)


def _box_mean(x: Tensor, kernel_size: int, dim: int) -> Tensor:
    """Mean of x over a centered window of odd ``kernel_size`` along ``dim``, inside the tensor.

    y_i = (S_{min(i+r+1, n)} - S_{max(i-r, 0)}) / (min(i+r+1, n) - max(i-r, 0)), r = kernel_size//2,
    with S_k = x_0 + ... + x_{k-1} the running sum: two reads per output whatever the window, where
    a pooling kernel reads ``kernel_size`` (forward and backward of the demo network's windows, 17
    at stride 2 down to 5 at stride 8, take 1.5 to 6 times less time). The sums are taken in
    float32 at least, so fp16/bf16 activations do not lose the small differences.
    """
    radius, length = kernel_size // 2, x.shape[dim]
    running = x.to(torch.promote_types(x.dtype, torch.float32)).cumsum(dim)
    before = list(x.shape)
    before[dim] = radius + 1
    after = [radius if axis == dim else -1 for axis in range(x.dim())]
    padded = torch.cat([running.new_zeros(before), running, running.narrow(dim, length - 1, 1).expand(after)], dim)
    window_sum = padded.narrow(dim, 2 * radius + 1, length) - padded.narrow(dim, 0, length)
    index = torch.arange(length, device=x.device)
    count = (index + radius).clamp_max(length - 1) - (index - radius).clamp_min(0) + 1
    view = [1] * x.dim()
    view[dim] = length
    return (window_sum / count.view(view)).to(x.dtype)


class SqueezeExcitation(nn.Module):
    """Channel attention: x * sigmoid(W2 relu(W1 mean(x) + b1) + b2) (Hu et al. 2018).

    The mean is over the whole input (``kernel_size=0``) or, translation-equivariantly, over a
    ``kernel_size``^3 window around each voxel (voxels outside the input excluded from the mean),
    computed as three separable 1-D box means. W1, W2 are 1x1x1 convolutions (C -> C/r -> C).
    A window mean has weights summing to 1, so W1 mean(x) + b1 = mean(W1 x + b1): the local
    variant averages the C/r reduced channels instead of the C input channels (r times cheaper).
    """

    def __init__(self, channels: int, reduction: int, kernel_size: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.kernel_size = kernel_size
        self.reduce = nn.Conv3d(channels, hidden, kernel_size=1)
        self.expand = nn.Conv3d(hidden, channels, kernel_size=1)

    def squeeze(self, x: Tensor) -> Tensor:
        """Mean of x over the whole input (B, C, 1, 1, 1) or over each voxel's window."""
        if self.kernel_size == 0:
            return F.adaptive_avg_pool3d(x, 1)
        for axis in range(3):
            x = _box_mean(x, self.kernel_size, dim=2 + axis)
        return x

    def forward(self, x: Tensor) -> Tensor:
        if self.kernel_size == 0:
            hidden = self.reduce(self.squeeze(x))
        else:
            hidden = self.squeeze(self.reduce(x))
        gate = torch.sigmoid(self.expand(F.relu(hidden)))
        return x * gate


def _conv_bn(in_channels: int, out_channels: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm3d(out_channels),
    )


class ResidualBlock(nn.Module):
    """relu(x' + bn(conv(relu(bn(conv(x)))))), x' = x or bn(conv1x1(x)) if channels change."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(in_channels, out_channels)
        self.conv2 = _conv_bn(out_channels, out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, bias=False), nn.BatchNorm3d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(F.relu(self.conv1(x)))
        return F.relu(self.shortcut(x) + out)


class DilatedFusion(nn.Module):
    """relu(x + bn(sum_i softmax(w)_i conv_{d_i}(x))): 3^3 convolutions with dilations d_i."""

    def __init__(self, channels: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv3d(channels, channels, 3, padding=d, dilation=d, bias=False) for d in dilations
        )
        self.branch_logits = nn.Parameter(torch.zeros(len(dilations)))
        self.norm = nn.BatchNorm3d(channels)

    def forward(self, x: Tensor) -> Tensor:
        weights = torch.softmax(self.branch_logits, dim=0)
        fused = sum(w * branch(x) for w, branch in zip(weights, self.branches))
        return F.relu(x + self.norm(fused))


class DetectionHead(nn.Module):
    """conv3^3-BN-ReLU, then 1x1x1 projections to center logits (1), radius (1), offset (3).

    The projections run in float32 (outside autocast) so that low-precision features still give
    finely ordered probabilities; every output is float32.
    """

    def __init__(self, in_channels: int, head_channels: int) -> None:
        super().__init__()
        self.features = nn.Sequential(_conv_bn(in_channels, head_channels), nn.ReLU(inplace=True))
        self.logits = nn.Conv3d(head_channels, 1, 1)
        self.radius = nn.Conv3d(head_channels, 1, 1)
        self.offset = nn.Conv3d(head_channels, 3, 1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.features(x)
        full_precision = (
            contextlib.nullcontext()  # autocast has no meta device (count_flops runs there)
            if x.device.type == "meta"
            else torch.autocast(device_type=x.device.type, enabled=False)
        )
        with full_precision:
            x = x.float()
            return {
                "logits": self.logits(x),
                "radius": F.softplus(self.radius(x)),
                "offset": self.offset(x),
            }


class SCPMNet(nn.Module):
    """SCPM-Net: encoder-decoder with coordinate maps, SE attention and sphere heads.

    ``forward(image (B, C, D, H, W), patch_origin_zyx (B, 3) | None, scan_shape_zyx (B, 3) | None)``
    returns one dict per head level, finest first, with ``logits`` (B, 1, d, h, w), ``radius``
    (B, 1, d, h, w, >= 0, grid voxels) and ``offset`` (B, 3, d, h, w, grid voxels, z y x), where
    (d, h, w) = (D, H, W) / stride. The defaults treat the patch as the whole scan.
    """

    def __init__(self, config: SCPMNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config if config is not None else SCPMNetConfig()
        coord = 3 if config.use_coordinate_maps else 0
        self.stem = nn.Sequential(
            _conv_bn(config.in_channels, config.stem_channels), nn.ReLU(inplace=True)
        )
        self.encoder = nn.ModuleList()
        previous = config.stem_channels
        for stage, (channels, blocks) in enumerate(
            zip(config.encoder_channels, config.encoder_blocks), start=1
        ):
            self.encoder.append(self._stage(previous + coord, channels, blocks, 2**stage))
            previous = channels
        self.fusion: nn.Module = (
            DilatedFusion(previous, config.dilations) if config.use_dilated_fusion else nn.Identity()
        )
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        finest = config.num_stages - len(config.decoder_blocks)
        for level in reversed(range(len(config.decoder_blocks))):  # coarsest first
            stage = finest + level  # encoder stage index (1-based) of this level's stride
            channels = config.encoder_channels[stage - 1]
            self.upsample.append(
                nn.Sequential(
                    nn.ConvTranspose3d(previous, channels, 2, stride=2, bias=False),
                    nn.BatchNorm3d(channels),
                    nn.ReLU(inplace=True),
                )
            )
            self.decoder.append(
                self._stage(2 * channels + coord, channels, config.decoder_blocks[level], 2**stage)
            )
            previous = channels
        decoder_channels = [config.encoder_channels[finest + i - 1] for i in range(config.head_levels)]
        self.heads = nn.ModuleList(DetectionHead(c, config.head_channels) for c in decoder_channels)
        self._initialise()
        self.candidate_classifier = (CandidateClassifier(config.candidate_classifier)
                                     if config.candidate_classifier is not None else None)

    def _stage(self, in_channels: int, channels: int, blocks: int, stride: int) -> nn.Sequential:
        config = self.config
        layers: list[nn.Module] = [ResidualBlock(in_channels, channels)]
        layers += [ResidualBlock(channels, channels) for _ in range(blocks - 1)]
        if config.use_se:
            kernel = 0 if config.se_context == 0 else 2 * (config.se_context // (2 * stride)) + 1
            layers.append(SqueezeExcitation(channels, config.se_reduction, kernel))
        return nn.Sequential(*layers)

    def _initialise(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm3d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        prior = self.config.prior_probability
        for head in self.heads:
            assert isinstance(head, DetectionHead) and head.logits.bias is not None
            for projection in (head.logits, head.radius, head.offset):
                nn.init.normal_(projection.weight, std=self.config.head_init_std)
                nn.init.zeros_(projection.bias)  # type: ignore[arg-type]  # the heads' 1x1x1 projections have biases
            nn.init.constant_(head.logits.bias, math.log(prior / (1.0 - prior)))

    @property
    def strides(self) -> tuple[int, ...]:
        """Input voxels per output point of each head level, finest first."""
        return self.config.strides

    @property
    def size_divisor(self) -> int:
        """Input sides must be multiples of this."""
        return self.config.size_divisor

    def _check_input(self, image: Tensor) -> None:
        if image.dim() != 5 or image.shape[1] != self.config.in_channels:
            raise ValueError(
                f"SCPMNet expects an image of shape (B, {self.config.in_channels}, D, H, W), "
                f"got {tuple(image.shape)}."
            )
        sides = tuple(image.shape[2:])
        if any(side == 0 or side % self.size_divisor for side in sides):
            raise ValueError(
                f"SCPMNet input sides {sides} must be positive multiples of {self.size_divisor} "
                f"(the network pools {self.config.num_stages} times); pad or crop the volume."
            )

    def forward(
        self,
        image: Tensor,
        patch_origin_zyx: Tensor | None = None,
        scan_shape_zyx: Tensor | None = None,
    ) -> list[dict[str, Tensor]]:
        """Sphere maps of every head level, finest first (see the class docstring).

        Args:
            image: (B, C, D, H, W), sides multiples of ``size_divisor``; any memory format.
            patch_origin_zyx: (B, 3) voxel index of the patch's first voxel in the whole scan
                (default 0).
            scan_shape_zyx: (B, 3) shape of the whole scan (default the image's own shape).

        Raises:
            ValueError: a wrong image rank, channel count or side, or wrongly shaped origins.
        """
        self._check_input(image)
        batch = image.shape[0]
        if patch_origin_zyx is None:
            patch_origin_zyx = torch.zeros(batch, 3, device=image.device)
        if scan_shape_zyx is None:
            scan_shape_zyx = torch.tensor(image.shape[2:], device=image.device).expand(batch, 3)
        for name, value in (("patch_origin_zyx", patch_origin_zyx), ("scan_shape_zyx", scan_shape_zyx)):
            if tuple(value.shape) != (batch, 3):
                raise ValueError(f"SCPMNet {name} must have shape ({batch}, 3), got {tuple(value.shape)}.")

        def concatenate(parts: list[Tensor], stride: int) -> Tensor:
            """Concatenate feature maps and, if configured, the stride's coordinate map."""
            features = parts[0]
            if self.config.use_coordinate_maps:
                coords = coordinate_map(
                    patch_origin_zyx.to(features.device),
                    scan_shape_zyx.to(features.device),
                    features.shape[2:],
                    stride,
                    dtype=features.dtype,
                )
                if features.is_contiguous(memory_format=torch.channels_last_3d):
                    coords = coords.contiguous(memory_format=torch.channels_last_3d)
                parts = [*parts, coords]
            return torch.cat(parts, dim=1) if len(parts) > 1 else features

        x = self.stem(image)
        skips = []
        for stage, block in enumerate(self.encoder, start=1):
            x = block(concatenate([F.max_pool3d(x, 2)], 2**stage))
            skips.append(x)
        x = self.fusion(x)
        decoded = []
        stride = self.size_divisor
        for upsample, block in zip(self.upsample, self.decoder):
            stride //= 2
            skip = skips[int(math.log2(stride)) - 1]
            x = block(concatenate([upsample(x), skip], stride))
            decoded.append(x)
        finest_first = decoded[::-1]
        return [head(features) for head, features in zip(self.heads, finest_first)]


_CLASSIFIER_PREFIX = "candidate_classifier."


def network_only(model: SCPMNet) -> SCPMNet:
    """A copy of ``model`` without its candidate classifier (the same weights otherwise), in eval
    mode: what fine-tuning starts from, since a classifier trained on this network's candidates
    would not fit a changed network."""
    network = SCPMNet(dataclasses.replace(model.config, candidate_classifier=None))
    network.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith(_CLASSIFIER_PREFIX)})
    return network.eval()


def with_candidate_classifier(model: SCPMNet, classifier: CandidateClassifier) -> SCPMNet:
    """A copy of ``model``'s network (without any classifier it had) that carries ``classifier``, in eval mode."""
    two_stage = SCPMNet(dataclasses.replace(model.config, candidate_classifier=classifier.config))
    weights = network_only(model).state_dict()
    weights.update({_CLASSIFIER_PREFIX + k: v for k, v in classifier.state_dict().items()})
    two_stage.load_state_dict(weights)
    return two_stage.eval()


def fuse_batch_norm(model: SCPMNet) -> SCPMNet:
    """An eval-mode copy of ``model`` with every BatchNorm that follows a convolution folded into it.

    In eval mode BN(conv(x)) = gamma (W*x + b - mu) / sqrt(var + eps) + beta is itself a
    convolution with weights W gamma / sqrt(var + eps) and bias (b - mu) gamma / sqrt(var + eps) + beta;
    folding saves the normalisation pass over every feature map (inference only: the copy must
    not be trained).
    """
    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for index in range(len(module) - 1):
            conv, norm = module[index], module[index + 1]
            if isinstance(conv, (nn.Conv3d, nn.ConvTranspose3d)) and isinstance(norm, nn.BatchNorm3d):
                module[index] = fuse_conv_bn_eval(
                    conv, norm, transpose=isinstance(conv, nn.ConvTranspose3d)
                )
                module[index + 1] = nn.Identity()
    return fused


def fast_bfloat16_available(device: torch.device | str) -> bool:
    """Whether bfloat16 autocast speeds the network up on ``device``.

    On a CPU, oneDNN must have native bfloat16 convolutions (AVX512-BF16 or AMX); without them
    PyTorch falls back to a reference 3-D convolution that is tens of times slower than float32.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    is_supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(is_supported()) if is_supported is not None else False
