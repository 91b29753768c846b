"""SCPM-Net network: shapes, grid convention, coordinate maps, init, precision, cost, receptive field."""

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.model import (
    SCPMNet,
    SCPMNetConfig,
    SqueezeExcitation,
    _box_mean,
    coordinate_map,
    fuse_batch_norm,
)
from SCPMNoduleLib.model_analysis import count_flops, gradient_receptive_field


def tiny(**changes) -> SCPMNetConfig:
    return dataclasses.replace(SCPMNetConfig.tiny(), **changes)


def assert_level_shapes(outputs, batch, input_shape, strides):
    assert len(outputs) == len(strides)
    for level, stride in zip(outputs, strides):
        grid = tuple(n // stride for n in input_shape)
        assert set(level) == {"logits", "radius", "offset"}
        assert level["logits"].shape == (batch, 1, *grid)
        assert level["radius"].shape == (batch, 1, *grid)
        assert level["offset"].shape == (batch, 3, *grid)
        assert all(t.dtype == torch.float32 for t in level.values())
        assert bool((level["radius"] >= 0).all())


@pytest.mark.parametrize(
    "input_shape",
    [
        (32, 64, 48),
        pytest.param((96, 96, 96), marks=pytest.mark.slow),
        pytest.param((64, 128, 96), marks=pytest.mark.slow),
    ],
)
def test_forward_backward_shapes_and_gradients(input_shape):
    model = SCPMNet(SCPMNetConfig.tiny())
    outputs = model(torch.randn(1, 1, *input_shape))
    assert_level_shapes(outputs, 1, input_shape, (4, 8))
    loss = sum(t.square().mean() for level in outputs for t in level.values())
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert bool(torch.isfinite(parameter.grad).all()), name
    assert sum(float(p.grad.abs().sum()) > 0 for p in model.parameters()) == len(
        list(model.parameters())
    )


@pytest.mark.parametrize(
    "changes, strides, divisor",
    [
        ({}, (4, 8), 16),
        ({"head_levels": 1}, (4,), 16),
        ({"decoder_blocks": (1, 1, 1)}, (2, 4), 16),
        ({"encoder_channels": (4, 8, 8), "encoder_blocks": (1, 1, 1), "decoder_blocks": (1,),
          "head_levels": 1}, (4,), 8),
    ],
)
def test_strides_and_size_divisor_match_output_grids(changes, strides, divisor):
    model = SCPMNet(tiny(**changes))
    assert model.strides == strides
    assert model.size_divisor == divisor
    shape = (2 * divisor, divisor, 3 * divisor)
    assert_level_shapes(model(torch.randn(1, 1, *shape)), 1, shape, strides)


def test_default_config_strides_and_size():
    config = SCPMNetConfig()
    assert config.strides == (4, 8)
    assert config.size_divisor == 16
    parameters = sum(p.numel() for p in SCPMNet(config).parameters())
    assert 2.8e6 < parameters < 3.5e6  # the authors' network has about 3.1 M


@pytest.mark.slow
def test_default_config_forward_96():
    model = SCPMNet().eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 1, 96, 96, 96))
    assert_level_shapes(outputs, 1, (96, 96, 96), (4, 8))


def test_coordinate_map_values_follow_the_grid_convention():
    origin = torch.tensor([[8, 0, 16]])
    scan = torch.tensor([[101, 50, 33]])
    coords = coordinate_map(origin, scan, (3, 2, 4), stride=4)
    assert coords.shape == (1, 3, 3, 2, 4)
    # p(j) = 4 j + 1.5; value = (origin + p) / (scan - 1)
    assert coords[0, 0, 2, 0, 0].item() == pytest.approx((8 + 9.5) / 100)
    assert coords[0, 1, 0, 1, 0].item() == pytest.approx((0 + 5.5) / 49)
    assert coords[0, 2, 0, 0, 3].item() == pytest.approx((16 + 13.5) / 32)
    # constant along the other axes
    assert torch.equal(coords[0, 0, :, :1, :1].expand(3, 2, 4), coords[0, 0])
    # at stride 1 the first and last voxel of the scan are 0 and 1
    full = coordinate_map(torch.zeros(1, 3), torch.tensor([[5, 7, 9]]), (5, 7, 9), stride=1)
    assert full[0, :, 0, 0, 0].tolist() == [0.0, 0.0, 0.0]
    assert full[0, :, -1, -1, -1].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("stride", [2, 4, 8, 16])
def test_coordinate_map_of_a_crop_equals_the_whole_volume_region(stride):
    scan = torch.tensor([[160, 192, 176]])
    origin = torch.tensor([[48, 16, 96]])
    crop_shape = (64, 96, 80)
    whole = coordinate_map(torch.zeros(1, 3), scan, [n // stride for n in scan[0].tolist()], stride)
    crop = coordinate_map(origin, scan, [n // stride for n in crop_shape], stride)
    start = [o // stride for o in origin[0].tolist()]
    region = whole[
        :, :, start[0] : start[0] + crop.shape[2], start[1] : start[1] + crop.shape[3],
        start[2] : start[2] + crop.shape[4],
    ]
    assert torch.equal(crop, region)


def _capture_coordinate_inputs(model):
    """Forward pre-hooks on the first block of every stage: the last 3 input channels."""
    captured = {}

    def hook(name):
        def record(module, inputs):
            captured[name] = inputs[0][:, -3:].detach().clone()

        return record

    stages = [*model.encoder, *model.decoder]
    handles = [stage[0].register_forward_pre_hook(hook(i)) for i, stage in enumerate(stages)]
    return captured, handles


def test_network_on_a_crop_sees_the_coordinates_of_the_whole_volume_region():
    model = SCPMNet(SCPMNetConfig.tiny()).eval()
    volume = torch.randn(1, 1, 64, 96, 80)
    origin_zyx, crop_shape = (16, 32, 16), (32, 48, 64)
    crop = volume[
        :, :, origin_zyx[0] : origin_zyx[0] + crop_shape[0],
        origin_zyx[1] : origin_zyx[1] + crop_shape[1], origin_zyx[2] : origin_zyx[2] + crop_shape[2],
    ]
    captured, handles = _capture_coordinate_inputs(model)
    with torch.no_grad():
        model(volume)
        whole = dict(captured)
        model(crop, torch.tensor([origin_zyx]), torch.tensor([volume.shape[2:]]))
        tile = dict(captured)
        model(crop)
        standalone = dict(captured)
    for handle in handles:
        handle.remove()
    stage_strides = [2, 4, 8, 16, 8, 4]  # encoder stages, then decoder levels coarsest first
    assert len(whole) == len(stage_strides)
    for index, stride in enumerate(stage_strides):
        z, y, x = (o // stride for o in origin_zyx)
        d, h, w = (n // stride for n in crop_shape)
        assert torch.equal(tile[index], whole[index][:, :, z : z + d, y : y + h, x : x + w])
        assert not torch.equal(standalone[index], tile[index])  # the origin is really used
    assert whole[0].min() > 0 and whole[0].max() < 1


@pytest.mark.parametrize("config", [SCPMNetConfig(), SCPMNetConfig.tiny(), tiny(use_se=False, dilations=[1, 3])])
def test_config_json_round_trip(config):
    restored = SCPMNetConfig(**json.loads(json.dumps(dataclasses.asdict(config))))
    assert restored == config
    assert SCPMNetConfig(**dataclasses.asdict(config)) == config
    assert isinstance(restored.encoder_channels, tuple)


@pytest.mark.parametrize("changes, sentence", [
    ({"head_levels": 3}, "SCPMNetConfig.head_levels: 3 is not between 1 and 2 (the decoder's levels)."),
    ({"encoder_blocks": (1, 1)},
     "SCPMNetConfig.encoder_blocks: (1, 1) does not have one entry per encoder stage (4)."),
    ({"prior_probability": 1.0}, "SCPMNetConfig.prior_probability: 1.0 is not strictly between 0 and 1."),
    ({"decoder_blocks": (1, 1, 1, 1)}, "SCPMNetConfig.decoder_blocks: (1, 1, 1, 1) does not have between 1 and 3 "
                                       "entries (fewer than the encoder's stages)."),
    ({"decoder_blocks": (1, 0)}, "SCPMNetConfig.decoder_blocks: (1, 0) gives a stage or level no residual block."),
    ({"se_context": -1}, "SCPMNetConfig.se_context: -1 is negative (0 is the global squeeze)."),
])
def test_invalid_config_is_refused_with_one_sentence(changes, sentence):
    with pytest.raises(UserInputError) as caught:
        tiny(**changes)
    assert str(caught.value) == sentence


@pytest.mark.parametrize("prior", [0.01, 0.1])
def test_initial_probability_is_the_prior(prior):
    model = SCPMNet(tiny(prior_probability=prior))
    assert model.heads[0].logits.bias.item() == pytest.approx(math.log(prior / (1 - prior)))
    with torch.no_grad():
        outputs = model(torch.randn(2, 1, 32, 48, 32))
    for level in outputs:
        probability = torch.sigmoid(level["logits"])
        assert probability.mean().item() == pytest.approx(prior, rel=0.1)
        assert probability.std().item() < 0.1 * prior


def _model_with_informative_heads():
    """Tiny eval model whose outputs vary strongly with the features (not just the init prior)."""
    model = SCPMNet(SCPMNetConfig.tiny()).eval()
    for head in model.heads:
        for projection in (head.logits, head.radius, head.offset):
            nn.init.normal_(projection.weight, std=0.5)
    return model


def test_channels_last_and_bfloat16_autocast_agree_with_float32():
    model = _model_with_informative_heads()
    image = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        reference = model(image)
        model_cl = model.to(memory_format=torch.channels_last_3d)
        channels_last = model_cl(image.to(memory_format=torch.channels_last_3d))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model_cl(image.to(memory_format=torch.channels_last_3d))
    for ref, cl, low in zip(reference, channels_last, bf16):
        for key in ref:
            assert cl[key].dtype == low[key].dtype == torch.float32
            torch.testing.assert_close(cl[key], ref[key], rtol=1e-4, atol=1e-4)
            spread = ref[key].std().item()
            assert spread > 0.05, key  # outputs really depend on the features
            error = (low[key] - ref[key]).abs()
            assert error.max().item() < 0.25 * spread + 0.02, key
            assert error.mean().item() < 0.05 * spread + 0.005, key


@pytest.mark.parametrize(
    "shape, message",
    [
        ((1, 1, 60, 64, 64), "multiples of 16"),
        ((1, 1, 0, 64, 64), "multiples of 16"),
        ((1, 64, 64, 64), r"shape \(B, 1, D, H, W\)"),
        ((1, 2, 32, 32, 32), r"shape \(B, 1, D, H, W\)"),
    ],
)
def test_bad_input_shape_raises(shape, message):
    with pytest.raises(ValueError, match=message):
        SCPMNet(SCPMNetConfig.tiny())(torch.zeros(shape))


def test_bad_origin_shape_raises():
    with pytest.raises(ValueError, match="patch_origin_zyx must have shape"):
        SCPMNet(SCPMNetConfig.tiny())(torch.zeros(2, 1, 32, 32, 32), torch.zeros(3))


def test_count_flops_matches_hand_count():
    model = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.ConvTranspose3d(4, 3, 2, stride=2))
    cost = count_flops(model, (1, 2, 8, 8, 8))
    conv = 8**3 * 4 * 2 * 27  # output voxels x C_out x C_in x k^3
    transposed = 8**3 * 4 * 3 * 8  # input voxels x C_in x C_out x k^3
    assert cost.macs == conv + transposed
    assert cost.parameters == (2 * 4 * 27 + 4) + (4 * 3 * 8 + 3)
    assert cost.gflops == pytest.approx(2 * (conv + transposed) / 1e9)


def test_count_flops_of_the_network_scales_with_voxels_and_batch():
    model = SCPMNet(SCPMNetConfig.tiny())
    small = count_flops(model, (1, 1, 32, 32, 32)).macs
    assert count_flops(model, (1, 1, 64, 64, 64)).macs == 8 * small
    assert count_flops(model, (2, 1, 32, 32, 32)).macs == 2 * small
    assert next(model.parameters()).device.type == "cpu"  # the model itself is untouched


def test_gradient_receptive_field_of_a_known_convolution():
    conv = nn.Conv3d(1, 1, 5, padding=2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    field = gradient_receptive_field(conv, (1, 1, 15, 15, 15), stride=1, quantiles=(0.005, 0.2, 0.99))
    # uniform 5^3 kernel: 1/125 of the weight at r=0, 27/125 within r=1, all within r=2
    assert field.radii == {0.005: 0.0, 0.2: 1.0, 0.99: 2.0}
    assert field.support == 2.0
    with torch.no_grad():
        conv.weight.fill_(1e-5)
        conv.weight[0, 0, 2, 2, 2] = 1.0
    field = gradient_receptive_field(conv, (1, 1, 15, 15, 15), stride=1, quantiles=(0.99,))
    assert field.radii == {0.99: 0.0} and field.support == 2.0


def test_gradient_receptive_field_uses_the_grid_convention():
    pool = nn.Conv3d(1, 1, 2, stride=2, bias=False)  # output j covers inputs 2j, 2j+1
    field = gradient_receptive_field(pool, (1, 1, 8, 8, 8), stride=2, quantiles=(1.0,))
    assert field.support == 0.5 and field.radii == {1.0: 0.5}


@pytest.mark.parametrize("kernel, support", [(5, 2.0), (0, 8.0)])
def test_local_squeeze_excitation_has_a_finite_receptive_field(kernel, support):
    se = SqueezeExcitation(channels=1, reduction=1, kernel_size=kernel)
    with torch.no_grad():
        se.reduce.weight.fill_(1.0)
        se.expand.weight.fill_(1.0)
    field = gradient_receptive_field(se, (1, 1, 17, 17, 17), stride=1, quantiles=(1.0,))
    assert field.support == support  # local: the 5^3 window; global: the whole 17^3 input


@pytest.mark.parametrize("kernel", [1, 3, 9, 17])
def test_local_squeeze_is_the_mean_over_the_window_inside_the_input(kernel):
    x = torch.randn(1, 2, 5, 7, 4, dtype=torch.float64)
    squeezed = SqueezeExcitation(channels=2, reduction=1, kernel_size=kernel).squeeze(x)
    r = kernel // 2
    expected = torch.empty_like(x)
    for z in range(5):
        for y in range(7):
            for w in range(4):
                window = x[:, :, max(0, z - r) : z + r + 1, max(0, y - r) : y + r + 1, max(0, w - r) : w + r + 1]
                expected[:, :, z, y, w] = window.mean(dim=(2, 3, 4))
    torch.testing.assert_close(squeezed, expected)


def test_window_mean_of_low_precision_activations_keeps_their_dtype_and_precision():
    x = torch.randn(1, 3, 40, 6, 6).to(torch.bfloat16)
    low = _box_mean(x, kernel_size=17, dim=2)
    assert low.dtype == torch.bfloat16
    # running sums kept in bf16 would be off by ~1e-2 here; in float32 only the final rounding remains
    torch.testing.assert_close(low.double(), _box_mean(x.double(), kernel_size=17, dim=2), atol=1e-6, rtol=2**-8)


@pytest.mark.parametrize("kernel", [0, 3, 9])
def test_squeeze_excitation_is_the_textbook_formula(kernel):
    se = SqueezeExcitation(channels=6, reduction=2, kernel_size=kernel).double()
    for parameter in se.parameters():
        nn.init.normal_(parameter)
    x = torch.randn(2, 6, 5, 7, 4, dtype=torch.float64)
    expected = x * torch.sigmoid(se.expand(torch.relu(se.reduce(se.squeeze(x)))))
    torch.testing.assert_close(se(x), expected)


def test_fused_batch_norm_gives_the_same_outputs_with_fewer_norms():
    model = SCPMNet(SCPMNetConfig.tiny())
    for module in model.modules():
        if isinstance(module, nn.BatchNorm3d):  # statistics far from the identity
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            nn.init.normal_(module.weight)
            nn.init.normal_(module.bias)
    model.eval()
    fused = fuse_batch_norm(model)
    norms = [m for m in fused.modules() if isinstance(m, nn.BatchNorm3d)]
    assert len(norms) == 1  # only the dilated fusion's, which follows a weighted sum
    image = torch.randn(1, 1, 32, 32, 48)
    with torch.no_grad():
        expected, actual = model(image), fused(image)
    for ref, out in zip(expected, actual):
        for key in ref:
            torch.testing.assert_close(out[key], ref[key], rtol=1e-4, atol=1e-4)
    assert sum(isinstance(m, nn.BatchNorm3d) for m in model.modules()) > 1  # original untouched
