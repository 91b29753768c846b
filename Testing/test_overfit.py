"""Matching, losses and decoding agree: a tiny SCPM-Net overfits one synthetic patch.

One 64^3 patch with two bright spheres (radii 3 and 7 voxels) on a noisy background; the targets
come from the matching, the network is trained on SCPMLoss, and the result is read back with
decode_detections and sphere_nms. If any of the three disagreed on the grid convention, the
offsets or the radius units, the decoded spheres would not land on the phantom's spheres.

Every point the matching calls negative must end below probability 0.5. Points the matching
ignores (the shell around each nodule's K points and the nodule's body) get no training signal,
by the paper's design, so some of them do fire with untrained spheres here; they are not
asserted on.
"""

import dataclasses

import pytest
import torch

from SCPMNoduleLib.coder import decode_detections
from SCPMNoduleLib.geometry import sphere_nms
from SCPMNoduleLib.losses import SCPMLoss
from SCPMNoduleLib.matching import match_center_points
from SCPMNoduleLib.model import SCPMNet, SCPMNetConfig

PATCH = (64, 64, 64)
CENTERS_ZYX_VOX = torch.tensor([[20.3, 22.6, 40.2], [42.5, 40.1, 20.7]])
RADII_VOX = torch.tensor([3.0, 7.0])
STEPS = 150
LEARNING_RATE = 0.01


def _phantom(noise_std=0.2, seed=0):
    """Spheres of intensity 1 (linear partial-volume edge one voxel wide) plus Gaussian noise."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(PATCH, generator=generator) * noise_std
    axes = [torch.arange(n, dtype=torch.float32) for n in PATCH]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    for center, radius in zip(CENTERS_ZYX_VOX, RADII_VOX):
        image += (radius - (grid - center).norm(dim=-1) + 0.5).clamp(0.0, 1.0)
    return image[None, None]


@pytest.fixture(scope="module")
def trained():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a network this small spends more time syncing threads than computing
    try:
        yield _train()
    finally:
        torch.set_num_threads(threads)


def _train():
    torch.manual_seed(0)
    image = _phantom()
    # se_context=0 (global squeeze): the cheapest squeeze, which keeps this CPU test short
    model = SCPMNet(dataclasses.replace(SCPMNetConfig.tiny(), se_context=0))
    targets = match_center_points([CENTERS_ZYX_VOX], [RADII_VOX], PATCH, model.strides)
    loss = SCPMLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LEARNING_RATE, total_steps=STEPS)
    for _ in range(STEPS):
        total, _ = loss(model(image), targets)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        outputs = model(image)
        _, terms = loss(outputs, targets)
    return model, outputs, targets, {name: value.item() for name, value in terms.items()}


@pytest.mark.slow
def test_losses_reach_near_zero(trained):
    *_, terms = trained
    assert terms["classification"] < 0.05, terms  # 13.5 at the start
    assert terms["radius"] < 0.01 and terms["offset"] < 0.01 and terms["siou"] < 0.1, terms


@pytest.mark.slow
def test_probability_maps_follow_the_matching_labels(trained):
    _, outputs, targets, _ = trained
    for output, target in zip(outputs, targets):
        probability = torch.sigmoid(output["logits"][:, 0])
        assert (probability[target.labels == 1] > 0.5).all()
        assert (probability[target.labels == 0] < 0.5).all()


@pytest.mark.slow
def test_decoded_and_suppressed_detections_are_the_two_spheres(trained):
    model, outputs, _, _ = trained
    found = decode_detections(outputs, model.strides, top_n=100, score_threshold=0.05)[0]
    keep = sphere_nms(found.centers_zyx_vox, found.radii_vox, found.scores)
    best = keep[:2]
    assert (found.scores[best] > 0.5).all()
    order = torch.cdist(found.centers_zyx_vox[best], CENTERS_ZYX_VOX).argmin(dim=0)
    assert sorted(order.tolist()) == [0, 1]
    centers, radii = found.centers_zyx_vox[best][order], found.radii_vox[best][order]
    assert ((centers - CENTERS_ZYX_VOX).norm(dim=1) < 1.0).all(), centers
    assert ((radii - RADII_VOX).abs() < 0.15 * RADII_VOX).all(), radii
