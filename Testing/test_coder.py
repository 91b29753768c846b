"""Sphere coder: the grid convention, encode/decode round trips, vectorised decoding of maps."""

import math

import numpy as np
import pytest
import torch

from SCPMNoduleLib.coder import decode_detections, decode_spheres, encode_spheres, grid_points_zyx_vox


@pytest.mark.parametrize("stride", [1, 2, 4, 8])
def test_grid_point_is_the_center_of_its_block_of_input_voxels(stride):
    points = grid_points_zyx_vox((3, 2, 5), stride, dtype=torch.float64)
    assert points.shape == (3, 2, 5, 3)
    for k, j, i in [(0, 0, 0), (2, 1, 4), (1, 0, 3)]:
        block = [np.arange(n * stride, (n + 1) * stride).mean() for n in (k, j, i)]
        np.testing.assert_array_equal(points[k, j, i].numpy(), block)


def test_encode_gives_offsets_and_radius_in_grid_voxels():
    point = grid_points_zyx_vox((4, 4, 4), 4, dtype=torch.float64)[2, 1, 3]  # (9.5, 5.5, 13.5)
    offset, radius = encode_spheres(torch.tensor([10.0, 4.5, 13.5], dtype=torch.float64),
                                    torch.tensor(6.0, dtype=torch.float64), point, 4)
    np.testing.assert_array_equal(offset.numpy(), [0.125, -0.25, 0.0])
    assert radius.item() == 1.5


@pytest.mark.parametrize("stride", [4, 8])
def test_encode_then_decode_returns_the_spheres(stride):
    generator = torch.Generator().manual_seed(3)
    centers = torch.rand(50, 3, generator=generator, dtype=torch.float64) * 96 - 0.5
    radii = torch.rand(50, generator=generator, dtype=torch.float64) * 15 + 1.5
    points = grid_points_zyx_vox((96 // stride,) * 3, stride, dtype=torch.float64).reshape(-1, 3)
    points = points[torch.randint(0, points.shape[0], (50,), generator=generator)]
    offsets, radii_grid = encode_spheres(centers, radii, points, stride)
    back_centers, back_radii = decode_spheres(points, offsets, radii_grid, stride)
    torch.testing.assert_close(back_centers, centers, rtol=0, atol=1e-12)
    torch.testing.assert_close(back_radii, radii, rtol=0, atol=1e-12)


def _maps(batch, grid, fill_logit=-8.0):
    return {
        "logits": torch.full((batch, 1, *grid), fill_logit),
        "radius": torch.ones(batch, 1, *grid),
        "offset": torch.zeros(batch, 3, *grid),
    }


def test_decode_detections_reads_the_peaks_of_both_levels_and_sorts_them():
    fine, coarse = _maps(2, (8, 8, 8)), _maps(2, (4, 4, 4))
    # patch 0: a peak on the fine level at (1, 2, 3) and one on the coarse level at (3, 0, 2)
    fine["logits"][0, 0, 1, 2, 3] = 2.0
    fine["offset"][0, :, 1, 2, 3] = torch.tensor([0.25, -0.5, 0.0])
    fine["radius"][0, 0, 1, 2, 3] = 1.25
    coarse["logits"][0, 0, 3, 0, 2] = 3.0
    coarse["offset"][0, :, 3, 0, 2] = torch.tensor([-0.125, 0.0, 0.5])
    coarse["radius"][0, 0, 3, 0, 2] = 0.75
    # patch 1: one coarse peak only
    coarse["logits"][1, 0, 0, 1, 1] = 1.0

    result = decode_detections([fine, coarse], (4, 8), top_n=5, score_threshold=0.5)
    assert len(result) == 2
    first, second = result
    assert first.levels.tolist() == [1, 0]
    torch.testing.assert_close(first.scores, torch.sigmoid(torch.tensor([3.0, 2.0])))
    # coarse: p = (3*8+3.5, 0*8+3.5, 2*8+3.5) + 8*offset; fine: p = (1*4+1.5, 2*4+1.5, 3*4+1.5) + 4*offset
    torch.testing.assert_close(first.centers_zyx_vox, torch.tensor([[26.5, 3.5, 23.5], [6.5, 7.5, 13.5]]))
    torch.testing.assert_close(first.radii_vox, torch.tensor([6.0, 5.0]))
    assert second.levels.tolist() == [1]
    torch.testing.assert_close(second.centers_zyx_vox, torch.tensor([[3.5, 11.5, 11.5]]))
    torch.testing.assert_close(second.scores, torch.sigmoid(torch.tensor([1.0])))


def test_decode_detections_caps_at_top_n_over_the_merged_levels():
    fine, coarse = _maps(1, (8, 8, 8)), _maps(1, (4, 4, 4))
    fine["logits"].view(-1)[:10] = torch.linspace(0.0, 0.9, 10)
    coarse["logits"].view(-1)[:10] = torch.linspace(1.0, 1.9, 10)
    result = decode_detections([fine, coarse], (4, 8), top_n=12)[0]
    expected = torch.sigmoid(torch.cat([torch.linspace(1.0, 1.9, 10), torch.linspace(0.0, 0.9, 10)]))
    expected = expected.sort(descending=True).values[:12]
    torch.testing.assert_close(result.scores, expected)
    assert result.levels.tolist() == [1] * 10 + [0] * 2
    assert result.centers_zyx_vox.shape == (12, 3)
    assert math.isclose(result.radii_vox[0].item(), 8.0)


def test_decode_detections_with_nothing_above_the_threshold_is_empty():
    result = decode_detections([_maps(1, (4, 4, 4))], (8,), top_n=10, score_threshold=0.5)[0]
    assert result.centers_zyx_vox.shape == (0, 3)
    assert result.scores.numel() == 0 and result.levels.numel() == 0
