"""Weight averaging against its closed form, and its BatchNorm statistics."""

import numpy as np
import torch
from torch import nn

from Training.averaging import WeightAverage


def _network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 2, 3), nn.BatchNorm3d(2), nn.ReLU())


def test_average_equals_the_closed_form_over_a_sequence_of_weights():
    """After T updates, θ̄_T = (Π_t d_t) θ_0 + Σ_t (1 - d_t) (Π_{s>t} d_s) θ_t, with d_t from the
    warm-up rule, computed here from the recorded weights in float64."""
    network = _network()
    average = WeightAverage(network, decay=0.8)
    decays = [min(0.8, (1 + t) / (10 + t)) for t in range(1, 41)]
    assert decays[0] == 2 / 11 and decays[-1] == 0.8  # warm-up, then the constant decay
    history = [{k: v.double().clone() for k, v in network.state_dict().items()}]
    generator = torch.Generator().manual_seed(1)
    for _ in range(40):
        with torch.no_grad():
            for parameter in network.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator))
        network(torch.randn(2, 1, 5, 5, 5, generator=generator))  # moves BatchNorm's running statistics
        average.update(network)
        history.append({k: v.double().clone() for k, v in network.state_dict().items()})
    coefficients = np.array([np.prod(decays)] + [(1 - d) * np.prod(decays[t + 1:]) for t, d in enumerate(decays)])
    assert abs(coefficients.sum() - 1) < 1e-12
    averaged = average.model.state_dict()
    for name in ("0.weight", "0.bias", "1.weight", "1.running_mean", "1.running_var"):
        expected = sum(c * weights[name] for c, weights in zip(coefficients, history))
        torch.testing.assert_close(averaged[name].double(), expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(averaged[name], network.state_dict()[name])  # an average, not a copy
    assert averaged["1.num_batches_tracked"].item() == 40  # copied, not averaged
    assert average.updates == 40 and not any(p.requires_grad for p in average.model.parameters())


def test_state_round_trip_continues_the_same_average():
    network = _network()
    average, restored = WeightAverage(network, 0.9), WeightAverage(network, 0.9)
    for _ in range(3):
        with torch.no_grad():
            network[0].weight.mul_(1.5)
        average.update(network)
    restored.load_state_dict(average.state_dict())
    average.update(network)
    restored.update(network)
    assert restored.updates == 4
    for name, value in average.model.state_dict().items():
        assert torch.equal(value, restored.model.state_dict()[name]), name
