"""Re-focal loss with OHEM, regression terms and the total, checked against hand computations."""

import math

import numpy as np
import pytest
import torch

from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.losses import LossConfig, SCPMLoss, hard_negative_mask, refocal_point_loss
from SCPMNoduleLib.matching import LevelTargets


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _focal_positive(x, alpha=0.375, gamma=2.0, t=0.9, w=4.0):
    p = _sigmoid(x)
    return (w if p < t else 1.0) * alpha * (1 - p) ** gamma * -math.log(p)


def _focal_negative(x, alpha=0.375, gamma=2.0):
    p = _sigmoid(x)
    return (1 - alpha) * p**gamma * -math.log(1 - p)


def _targets(labels, radius=None, offset=None):
    labels = torch.as_tensor(labels, dtype=torch.int8)
    batch, *grid = labels.shape
    return LevelTargets(
        labels=labels,
        radius=torch.zeros(batch, *grid) if radius is None else radius,
        offset=torch.zeros(batch, 3, *grid) if offset is None else offset,
        nodule_index=torch.where(labels == 1, 0, -1).long(),
    )


def _outputs(logits, radius=None, offset=None):
    batch, *grid = logits.shape
    return {
        "logits": logits.reshape(batch, 1, *grid),
        "radius": torch.ones(batch, 1, *grid, dtype=logits.dtype) if radius is None else radius,
        "offset": torch.zeros(batch, 3, *grid, dtype=logits.dtype) if offset is None else offset,
    }


def test_point_losses_match_the_focal_formulas():
    logits = torch.tensor([2.0, -1.0, 3.0, 0.5, -3.0, 1.7], dtype=torch.float64)
    labels = torch.tensor([1, 1, 1, 0, 0, -1])
    loss = refocal_point_loss(logits, labels, LossConfig())
    expected = [
        _focal_positive(2.0),  # p = 0.881 < 0.9: weight 4
        _focal_positive(-1.0),
        _focal_positive(3.0),  # p = 0.953 > 0.9: weight 1
        _focal_negative(0.5),
        _focal_negative(-3.0),
        0.0,
    ]
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-12)
    by_hand = 4 * 0.375 * (1 - _sigmoid(2.0)) ** 2 * math.log(1 + math.exp(-2.0))
    assert _focal_positive(2.0) == pytest.approx(by_hand)


def test_refocal_weight_applies_only_below_the_threshold():
    config = LossConfig()
    just_below, just_above = math.log(0.899 / 0.101), math.log(0.901 / 0.099)
    logits = torch.tensor([just_below, just_above], dtype=torch.float64)
    loss = refocal_point_loss(logits, torch.tensor([1, 1]), config)
    for value, x, weight in zip(loss.tolist(), (just_below, just_above), (4.0, 1.0)):
        p = _sigmoid(x)
        assert value == pytest.approx(weight * 0.375 * (1 - p) ** 2 * -math.log(p), rel=1e-12)


def test_extreme_logits_give_finite_losses_and_gradients():
    logits = torch.tensor([-80.0, 80.0, -80.0, 80.0], dtype=torch.float32, requires_grad=True)
    loss = refocal_point_loss(logits, torch.tensor([1, 1, 0, 0]), LossConfig())
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logits.grad).all()
    assert loss[0].item() == pytest.approx(4 * 0.375 * 80.0, rel=1e-6)  # -log(sigmoid(-80)) = 80
    assert loss[3].item() == pytest.approx(0.625 * 80.0, rel=1e-6)


def test_ohem_keeps_exactly_the_hardest_negatives_per_patch():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 4, 4, generator=generator, dtype=torch.float64) * 3
    labels = torch.zeros(2, 4, 4, 4, dtype=torch.int8)
    labels[0, 1, 1, 1] = 1
    labels[0, 2, 2, 2] = 1
    labels[0, 0, :, :2] = -1
    config = LossConfig(ohem_ratio=5, ohem_negatives_without_positives=7)
    flat_logits, flat_labels = logits.reshape(2, -1), labels.reshape(2, -1)
    mask = hard_negative_mask(refocal_point_loss(flat_logits, flat_labels, config), flat_labels, config)

    total = 0.0
    for b, wanted in [(0, 10), (1, 7)]:
        x, lab = flat_logits[b].numpy(), flat_labels[b].numpy()
        negatives = np.flatnonzero(lab == 0)
        losses = np.array([_focal_negative(v) for v in x[negatives]])
        hardest = negatives[np.argsort(-losses)[:wanted]]
        np.testing.assert_array_equal(np.flatnonzero(mask[b].numpy()), np.sort(hardest))
        positives = [_focal_positive(v) for v in x[lab == 1]]
        total += (sum(positives) + losses[np.argsort(-losses)[:wanted]].sum()) / max(len(positives), 1)

    _, terms = SCPMLoss(config)([_outputs(logits)], [_targets(labels)])
    assert terms["classification"].item() == pytest.approx(total / 2, rel=1e-12)


@pytest.mark.parametrize("positives, kept", [(0, 100), (2, 200)])
def test_ohem_default_keeps_n_times_m_or_100(positives, kept):
    labels = torch.zeros(1, 512, dtype=torch.int8)
    labels[0, :positives] = 1
    loss = torch.rand(1, 512)
    mask = hard_negative_mask(loss, labels, LossConfig())
    assert mask.sum().item() == kept
    threshold = loss[0, positives:].sort(descending=True).values[kept - 1]
    assert (loss[mask] >= threshold).all() and not mask[0, :positives].any()


def test_ohem_never_asks_for_more_negatives_than_exist():
    labels = torch.tensor([[1, 0, 0, -1, -1]], dtype=torch.int8)
    mask = hard_negative_mask(torch.rand(1, 5), labels, LossConfig())
    assert mask.tolist() == [[False, True, True, False, False]]


def test_regression_terms_on_positives_by_hand():
    labels = torch.full((1, 2, 2, 2), -1, dtype=torch.int8)
    labels[0, 0, 0, 0] = 1
    labels[0, 1, 1, 1] = 1
    radius_target = torch.ones(1, 2, 2, 2)
    offset_target = torch.zeros(1, 3, 2, 2, 2)
    radius = torch.ones(1, 1, 2, 2, 2) * 7.0  # ignored points: must not count
    radius[0, 0, 0, 0, 0] = 1.5  # |error| 0.5 >= beta: 0.5 - beta / 2
    radius[0, 0, 1, 1, 1] = 1.05  # |error| 0.05 < beta: 0.5 * 0.05^2 / beta
    offset = torch.full((1, 3, 2, 2, 2), 9.0)
    offset[0, :, 0, 0, 0] = torch.tensor([0.1, -0.2, 0.3])  # squared norm 0.14
    offset[0, :, 1, 1, 1] = torch.tensor([0.0, 0.0, 0.0])
    logits = torch.zeros(1, 2, 2, 2)
    targets = [_targets(labels, radius_target, offset_target)]
    _, terms = SCPMLoss()([_outputs(logits, radius, offset)], targets)
    beta = 1 / 9
    assert terms["radius"].item() == pytest.approx((0.5 - beta / 2 + 0.5 * 0.05**2 / beta) / 2, rel=1e-5)
    assert terms["offset"].item() == pytest.approx(0.14 / 2, rel=1e-5)
    assert terms["siou"].item() > 0


def test_siou_term_is_zero_for_a_perfect_sphere_and_two_plus_rdr_when_far():
    labels = torch.tensor([[[[1, 1]]]], dtype=torch.int8)  # (1, 1, 1, 2)
    offset_target = torch.zeros(1, 3, 1, 1, 2)
    radius_target = torch.ones(1, 1, 1, 2)
    offset = torch.zeros(1, 3, 1, 1, 2)
    offset[0, 2, 0, 0, 1] = 10.0  # second point: center 10 grid voxels away, radii 1 and 1
    outputs = _outputs(torch.zeros(1, 1, 1, 2), torch.ones(1, 1, 1, 1, 2), offset)
    targets = [_targets(labels, radius_target, offset_target)]
    _, terms = SCPMLoss(LossConfig(siou_mode="continuous"))([outputs], targets)
    assert terms["siou"].item() == pytest.approx((0.0 + 2.0 + 10 / 12) / 2, rel=1e-6)
    _, terms = SCPMLoss(LossConfig(siou_mode="paper"))([outputs], targets)
    assert terms["siou"].item() == pytest.approx((10 / 12) / 2, rel=1e-6)


def test_no_positives_gives_zero_regression_and_finite_gradients_everywhere():
    logits = torch.randn(2, 1, 4, 4, 4, requires_grad=True)
    radius = torch.rand(2, 1, 4, 4, 4, requires_grad=True)
    offset = torch.randn(2, 3, 4, 4, 4, requires_grad=True)
    labels = torch.zeros(2, 4, 4, 4, dtype=torch.int8)
    total, terms = SCPMLoss()([{"logits": logits, "radius": radius, "offset": offset}], [_targets(labels)])
    assert terms["radius"].item() == terms["offset"].item() == terms["siou"].item() == 0.0
    assert terms["classification"].item() > 0
    total.backward()
    for tensor in (logits, radius, offset):
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all()
    assert (radius.grad == 0).all() and (offset.grad == 0).all()
    assert (logits.grad != 0).sum().item() == 2 * 64  # 100 negatives wanted, all 64 per patch kept


def test_total_is_the_weighted_sum_over_levels():
    generator = torch.Generator().manual_seed(5)
    labels = torch.zeros(1, 4, 4, 4, dtype=torch.int8)
    labels[0, 1, 2, 3] = 1
    radius_target, offset_target = torch.full((1, 4, 4, 4), 1.2), torch.full((1, 3, 4, 4, 4), 0.3)
    level = _outputs(
        torch.randn(1, 4, 4, 4, generator=generator),
        torch.rand(1, 1, 4, 4, 4, generator=generator) + 0.5,
        torch.randn(1, 3, 4, 4, 4, generator=generator),
    )
    target = _targets(labels, radius_target, offset_target)
    loss = SCPMLoss()
    one_total, one = loss([level], [target])
    two_total, two = loss([level, level], [target, target])
    for name in one:
        assert two[name].item() == pytest.approx(2 * one[name].item(), rel=1e-6)
    expected = one["classification"] + one["radius"] + one["offset"] + 2.0 * one["siou"]
    assert one_total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert two_total.item() == pytest.approx(2 * one_total.item(), rel=1e-6)


def test_loss_is_float32_and_finite_under_bfloat16_autocast():
    generator = torch.Generator().manual_seed(2)
    labels = torch.zeros(2, 4, 4, 4, dtype=torch.int8)
    labels[0, 1, 1, 1] = 1
    level = _outputs(
        torch.randn(2, 4, 4, 4, generator=generator).bfloat16(),
        torch.rand(2, 1, 4, 4, 4, generator=generator).bfloat16(),
        torch.randn(2, 3, 4, 4, 4, generator=generator).bfloat16(),
    )
    targets = [_targets(labels, torch.ones(2, 4, 4, 4), torch.zeros(2, 3, 4, 4, 4))]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, terms = SCPMLoss()([level], targets)
    reference, _ = SCPMLoss()([{k: v.float() for k, v in level.items()}], targets)
    assert total.dtype == torch.float32 and all(t.dtype == torch.float32 for t in terms.values())
    assert torch.isfinite(total) and total.item() == pytest.approx(reference.item(), rel=1e-6)


def test_gradcheck_of_the_loss_with_respect_to_the_maps():
    labels = torch.tensor([[[[1, 0], [0, -1]], [[0, 0], [0, 0]]]], dtype=torch.int8)  # (1, 2, 2, 2)
    logits = torch.tensor([[[[0.3, -2.0], [1.1, 0.0]], [[-0.4, 0.7], [-1.5, 2.2]]]], dtype=torch.float64)
    radius = torch.full((1, 1, 2, 2, 2), 0.8, dtype=torch.float64)
    offset = torch.full((1, 3, 2, 2, 2), 0.2, dtype=torch.float64)
    target = _targets(labels, torch.full((1, 2, 2, 2), 1.1), torch.full((1, 3, 2, 2, 2), -0.1))
    loss = SCPMLoss(LossConfig(ohem_ratio=3))

    def total(logit_map, radius_map, offset_map):
        return loss([{"logits": logit_map[:, None], "radius": radius_map, "offset": offset_map}], [target])[0]

    inputs = tuple(t.clone().requires_grad_(True) for t in (logits, radius, offset))
    assert torch.autograd.gradcheck(total, inputs)


@pytest.mark.parametrize("settings, sentence", [
    ({"siou_mode": "exact"}, "LossConfig.siou_mode: 'exact' is not one of continuous, paper."),
    ({"alpha": 1.5}, "LossConfig.alpha: 1.5 is not in [0, 1]."),
    ({"gamma": -1.0}, "LossConfig.gamma: -1.0 is not a non-negative number."),
    ({"siou_weight": float("nan")}, "LossConfig.siou_weight: nan is not a non-negative number."),
    ({"ohem_ratio": -2}, "LossConfig.ohem_ratio: -2 is negative."),
    ({"radius_beta": 0.0}, "LossConfig.radius_beta: 0.0 is not a positive number."),
])
def test_a_bad_setting_is_refused_with_one_sentence(settings, sentence):
    with pytest.raises(UserInputError) as caught:
        LossConfig(**settings)
    assert str(caught.value) == sentence
