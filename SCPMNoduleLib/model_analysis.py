"""Analysis of a network that benchmarks and tests use: its cost and its useful receptive field.

Neither is needed to train or run the detector; they answer "how much compute is one pass" and
"how wide must a tile's margin be" (``benchmarks/model_cost.py`` prints both).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .coder import grid_points_zyx_vox

__all__ = ["ModelCost", "ReceptiveField", "count_flops", "gradient_receptive_field"]


@dataclass(frozen=True)
class ModelCost:
    """Parameters and multiply-accumulates of one forward pass over a given input shape."""

    parameters: int
    macs: int

    @property
    def gflops(self) -> float:
        """Giga floating-point operations, counting a multiply-accumulate as 2."""
        return 2.0 * self.macs / 1e9


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> ModelCost:
    """Analytic cost of ``model(torch.empty(input_shape))``.

    Counts the multiply-accumulates of every ``Conv3d`` (output elements x C_in/groups x k^3) and
    ``ConvTranspose3d`` (input elements x C_out/groups x k^3) with forward hooks on a copy of the
    model on the ``meta`` device, so nothing is computed; normalisation, pooling, activations and
    attention gates (each O(1) per element) are not counted. ``input_shape`` includes the batch.
    """
    parameters = sum(p.numel() for p in model.parameters())
    meta_model = copy.deepcopy(model).to("meta").eval()
    macs = 0

    def conv_hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal macs
        assert isinstance(module, (nn.Conv3d, nn.ConvTranspose3d))
        kernel = math.prod(module.kernel_size)
        if isinstance(module, nn.ConvTranspose3d):
            macs += inputs[0].numel() * (module.out_channels // module.groups) * kernel
        else:
            macs += output.numel() * (module.in_channels // module.groups) * kernel

    handles = [
        m.register_forward_hook(conv_hook)
        for m in meta_model.modules()
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))
    ]
    try:
        with torch.no_grad():
            meta_model(torch.empty(tuple(input_shape), device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return ModelCost(parameters=parameters, macs=macs)


@dataclass(frozen=True)
class ReceptiveField:
    """Chebyshev radii (input voxels) around an output point holding given shares of |grad|.

    ``radii[q]`` is the smallest r such that the input voxels within max-norm distance r of the
    output point's input coordinate p(j) carry at least the share q of the total gradient
    magnitude of that point's output w.r.t. the input. ``support`` is the radius holding all of
    it (the part of the theoretical receptive field that the input shape contains).
    """

    radii: dict[float, float]
    support: float


def gradient_receptive_field(
    logit_map: Callable[[Tensor], Tensor],
    input_shape: Sequence[int],
    stride: int,
    quantiles: Sequence[float] = (0.99, 0.999),
    generator: torch.Generator | None = None,
) -> ReceptiveField:
    """Useful receptive field of the center output point, measured by its input gradient.

    A standard-normal input x of ``input_shape`` (B=1, C, D, H, W) is drawn, y = logit_map(x)
    (shape (1, 1, d, h, w) on a stride-``stride`` grid) is evaluated and the gradient
    g = d y[j_c] / d x of the center point j_c = (d // 2, h // 2, w // 2) is taken; each input
    voxel v then has weight |g_v| (summed over channels) and distance ||v - p(j_c)||_inf with
    p(j) = j*s + (s-1)/2. The radius for share q is the smallest distance whose ball holds q of
    the total weight. For a tile margin, use the radius of the share one trusts (0.999 is safe).
    """
    x = torch.randn(tuple(input_shape), generator=generator).requires_grad_(True)
    y = logit_map(x)
    center = [n // 2 for n in y.shape[2:]]
    y[tuple([0, 0, *center])].backward()
    assert x.grad is not None
    weight = x.grad.abs().sum(dim=(0, 1)).flatten().double()
    point = grid_points_zyx_vox(y.shape[2:], stride, dtype=torch.float64)[tuple(center)]
    index = grid_points_zyx_vox(x.shape[2:], 1, dtype=torch.float64).reshape(-1, 3)  # stride 1: the voxels
    distance = (index - point).abs().amax(dim=1)
    order = torch.argsort(distance)
    distance, cumulative = distance[order], torch.cumsum(weight[order], dim=0)
    total = cumulative[-1]
    radii = {}
    for q in quantiles:
        first = int(torch.searchsorted(cumulative, q * total))
        radii[float(q)] = float(distance[min(first, distance.numel() - 1)])
    support = float(distance[weight[order] > 0].max()) if bool(total > 0) else 0.0
    return ReceptiveField(radii=radii, support=support)
