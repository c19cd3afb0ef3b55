"""Backbones: output shapes, ``feature_dim``, DropBlock's train/eval behaviour and schedule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metasparse.backbones import available_backbones, build_backbone
from metasparse.backbones.dropblock import DropBlock

# (channels, image side, expected d for conv4, expected d for resnet12 without pooling)
SHAPES = [(1, 28, 64, 640), (3, 32, 256, 2560), (3, 84, 1600, 16000)]


def test_both_backbones_are_registered():
    assert {"conv4", "resnet12"} <= set(available_backbones())


@pytest.mark.parametrize("name", ["conv4", "resnet12"])
@pytest.mark.parametrize(("channels", "side", "d_conv4", "d_resnet12"), SHAPES)
def test_output_shape_matches_feature_dim(name, channels, side, d_conv4, d_resnet12):
    net = build_backbone(name, in_channels=channels).eval()
    x = torch.randn(2, channels, side, side)
    with torch.no_grad():
        out = net(x)
    expected = d_conv4 if name == "conv4" else d_resnet12
    assert out.shape == (2, expected)
    assert net.feature_dim(side, channels) == expected
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("channels", "side"), [(1, 28), (3, 32)])
def test_resnet12_avg_pool_gives_last_width(channels, side):
    net = build_backbone("resnet12", in_channels=channels, avg_pool=True).eval()
    with torch.no_grad():
        out = net(torch.randn(2, channels, side, side))
    assert out.shape == (2, 640) and net.feature_dim(side, channels) == 640


def test_resnet12_custom_widths():
    net = build_backbone("resnet12", in_channels=3, widths=(8, 16, 24, 32)).eval()
    with torch.no_grad():
        out = net(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, net.feature_dim(32, 3)) == (3, 32 * 2 * 2)


@pytest.mark.parametrize("name", ["conv4", "resnet12"])
def test_bad_inputs_raise_value_error(name):
    net = build_backbone(name, in_channels=3)
    with pytest.raises(ValueError, match="in_channels"):
        net.feature_dim(84, 1)
    with pytest.raises(ValueError, match="at least"):
        net.feature_dim(8, 3)
    with pytest.raises(ValueError, match="expects images"):
        net(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="expects images"):
        net(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="at least"):
        net(torch.randn(2, 3, 8, 8))


def test_bad_constructor_arguments_raise_value_error():
    with pytest.raises(ValueError, match="widths"):
        build_backbone("resnet12", widths=(64,))
    with pytest.raises(ValueError, match="dropout"):
        build_backbone("resnet12", dropout=1.5)
    with pytest.raises(ValueError, match="drop_rate"):
        build_backbone("resnet12", drop_rate=-0.1)
    with pytest.raises(ValueError, match="hidden"):
        build_backbone("conv4", hidden=0)
    with pytest.raises(ValueError, match="block_size"):
        DropBlock(block_size=0)


@pytest.mark.parametrize("name", ["conv4", "resnet12"])
def test_gradients_reach_every_parameter_and_the_input(name):
    net = build_backbone(name, in_channels=3).train()
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    out = net(x)
    (out * torch.randn_like(out)).sum().backward()
    for pname, param in net.named_parameters():
        assert param.grad is not None, pname
        assert torch.isfinite(param.grad).all(), pname
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_dropblock_is_identity_in_eval_mode_and_does_not_count():
    block = DropBlock(block_size=3, drop_rate=0.5).eval()
    x = torch.randn(2, 4, 9, 9)
    assert torch.equal(block(x), x)
    assert int(block.steps) == 0


def test_dropblock_drops_whole_squares_and_preserves_the_sum():
    block = DropBlock(block_size=3, drop_rate=0.3).train()
    x = torch.ones(1, 8, 12, 12)
    out = block(x)
    dropped = out == 0
    assert dropped.any() and (~dropped).any()
    # Every dropped pixel lies in a fully dropped 3×3 square inside the map.
    full = -F.max_pool2d(-dropped.float(), 3, stride=1)  # 1 where a 3×3 window is all dropped
    squares = F.max_pool2d(F.pad(full, (2, 2, 2, 2)), 3, stride=1)  # pixels such windows cover
    assert torch.equal(squares.bool() | ~dropped, torch.ones_like(dropped))
    # Kept activations are rescaled by numel / kept, so the sum of an all-ones map is unchanged.
    assert torch.isclose(out.sum(), torch.tensor(float(x.numel())))


def test_dropblock_drop_fraction_is_close_to_the_rate():
    block = DropBlock(block_size=3, drop_rate=0.1).train()
    out = block(torch.ones(2, 64, 20, 20))
    frac = float((out == 0).float().mean())
    assert 0.07 < frac < 0.13, frac


def test_dropblock_rate_ramps_linearly_in_training_calls_only():
    block = DropBlock(block_size=2, drop_rate=0.2, ramp_steps=4).train()
    x = torch.randn(1, 2, 6, 6)
    rates = []
    for _ in range(6):
        rates.append(block.current_rate())
        block(x)
    assert rates == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.2, 0.2])
    block.eval()
    block(x)
    assert int(block.steps) == 6
    assert "steps" in block.state_dict()


def test_dropblock_block_size_is_clamped_to_small_maps():
    block = DropBlock(block_size=5, drop_rate=0.5).train()
    out = block(torch.ones(64, 1, 2, 2))
    assert torch.isfinite(out).all()
    # With the block clamped to 2×2 each map is either fully kept or fully dropped.
    per_map = (out == 0).flatten(1).float().mean(1)
    assert set(per_map.tolist()) <= {0.0, 1.0}


def test_resnet12_regularisation_is_active_only_in_train_mode():
    net = build_backbone("resnet12", in_channels=3, widths=(8, 16, 16, 32), drop_rate=0.3)
    net.blocks[2].dropblock.ramp_steps = 0  # full rate from the first call
    net.blocks[3].dropblock.ramp_steps = 0
    x = torch.randn(4, 3, 64, 64)
    net.train()
    assert not torch.equal(net(x), net(x))
    assert int(net.blocks[3].dropblock.steps) == 2
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
    assert int(net.blocks[3].dropblock.steps) == 2
    quiet = build_backbone("resnet12", in_channels=3, widths=(8, 16, 16, 32), drop_rate=0.0)
    quiet.train()
    assert torch.equal(quiet(x), quiet(x))


def test_resnet12_uses_dropblock_in_the_last_two_blocks_only():
    net = build_backbone("resnet12", in_channels=3, dropblock_size=2)
    kinds = [block.dropblock is not None for block in net.blocks]
    assert kinds == [False, False, True, True]
    assert net.blocks[2].dropblock.block_size == 2
    assert [block.dropout for block in net.blocks[:2]] == [0.1, 0.1]


@pytest.mark.parametrize("name", ["conv4", "resnet12"])
def test_channels_last_model_matches_the_contiguous_one(name):
    # model.channels_last changes memory layout only: the same weights give the same features
    # and gradients up to float32 round-off of the convolutions' sums
    from metasparse.config import ModelConfig
    from metasparse.model import FewShotModel

    # (dropout draws its mask in memory order, so ResNet-12 is compared without it)
    small = {"widths": [8, 8, 8, 8], "drop_rate": 0.0}
    options = {"hidden": 8, "out_channels": 8} if name == "conv4" else small
    models = [
        FewShotModel.from_config(
            ModelConfig(backbone=name, backbone_options=options, channels_last=cl), 3
        )
        for cl in (False, True)
    ]
    models[1].load_state_dict(models[0].state_dict())
    support, query = torch.randn(2, 5, 3, 32, 32), torch.randn(2, 4, 3, 32, 32)
    outs = []
    for model in models:
        f_s, f_q = model.embed(support, query)
        (f_s.square().sum() + f_q.sum()).backward()
        grad = torch.cat([p.grad.flatten() for p in model.backbone.parameters()])
        outs.append((f_s, f_q, grad))
    conv = next(m for m in models[1].backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(outs[0], outs[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max()))
