"""Weight averaging: an exponential moving average of the network, updated after every step.

A short run on a small batch ends with weights that still jump from step to step; their average
over the last few thousand steps generalises better and is what validation, ``best.pt`` selection
and export use when ``optim.ema_decay > 0``.
"""

from __future__ import annotations

import copy
from typing import Any, Generic, TypeVar

import torch
from torch import nn

__all__ = ["WeightAverage"]

ModelT = TypeVar("ModelT", bound=nn.Module)


class WeightAverage(Generic[ModelT]):
    """Exponential moving average of a network's weights and BatchNorm statistics.

    After optimiser step ``t`` (1-based), every floating-point entry ``θ`` of the network's state
    dict (parameters, BatchNorm running means and variances) moves its average ``θ̄`` to

        θ̄_t = d_t · θ̄_{t-1} + (1 - d_t) · θ_t,    d_t = min(decay, (1 + t) / (10 + t)),

    with ``θ̄_0`` the weights the average was made from. The warm-up of ``d_t`` keeps the
    random initialisation from dominating the early averages; from ``t = (10 decay - 1) /
    (1 - decay)`` on the decay is constant and the average spans about ``1 / (1 - decay)`` steps.
    Integer entries (BatchNorm's ``num_batches_tracked``) are copied, not averaged.

    Args:
        model: the network being trained (not a DDP wrapper); copied, in its memory format
            (:attr:`model`, of the same type).
        decay: ``decay`` above, in ``[0, 1)``.
    """

    def __init__(self, model: ModelT, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.model: ModelT = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, update: int) -> float:
        """``d_t`` for update ``t`` (1-based)."""
        return min(self.decay, (1.0 + update) / (10.0 + update))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s current state into the average (call after each optimiser step)."""
        self.updates += 1
        weight = 1.0 - self.decay_at(self.updates)
        current = model.state_dict()
        for name, average in self.model.state_dict().items():
            if average.is_floating_point():
                average.lerp_(current[name], weight)
            else:
                average.copy_(current[name])

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "weights": self.model.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        self.model.load_state_dict(state["weights"])
