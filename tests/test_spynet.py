from pathlib import Path

import pytest
import torch

from vsrx.errors import InputError
from vsrx.models.spynet import SpyNet

# Keys of BasicSR's spynet_sintel_final-3d2a1287.pth ('params'), in order.
EXPECTED_KEYS = [
    f"basic_module.{level}.basic_module.{conv}.{kind}"
    for level in range(6)
    for conv in (0, 2, 4, 6, 8)
    for kind in ("weight", "bias")
]
CONV_SHAPES = {0: (32, 8, 7, 7), 2: (64, 32, 7, 7), 4: (32, 64, 7, 7), 6: (16, 32, 7, 7), 8: (2, 16, 7, 7)}


@pytest.fixture(scope="module")
def net() -> SpyNet:
    torch.manual_seed(0)
    return SpyNet().eval()


def zeroed() -> SpyNet:
    model = SpyNet().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model


def test_layout_matches_basicsr(net: SpyNet) -> None:
    state = net.state_dict()
    assert list(state) == EXPECTED_KEYS
    for level in range(6):
        for conv, shape in CONV_SHAPES.items():
            assert state[f"basic_module.{level}.basic_module.{conv}.weight"].shape == shape
            assert state[f"basic_module.{level}.basic_module.{conv}.bias"].shape == shape[:1]
    assert sum(p.numel() for p in net.parameters()) == 1_440_300
    torch.testing.assert_close(net.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    torch.testing.assert_close(net.std.flatten(), torch.tensor([0.229, 0.224, 0.225]))


def test_save_load_round_trip(net: SpyNet, tmp_path: Path) -> None:
    ref, supp = torch.rand(2, 1, 3, 32, 32).unbind(0)
    with torch.no_grad():
        expected = net(ref, supp)
    torch.save({"params": net.state_dict()}, tmp_path / "spynet.pth")  # the official file's layout
    other = SpyNet().eval()
    other.load_state_dict(torch.load(tmp_path / "spynet.pth", weights_only=True)["params"], strict=True)
    with torch.no_grad():
        torch.testing.assert_close(other(ref, supp), expected, rtol=0, atol=0)


def test_odd_sizes_and_channel_orders(net: SpyNet) -> None:
    ref, supp = torch.rand(2, 2, 3, 37, 21).unbind(0)
    with torch.no_grad():
        flow_xy = net(ref, supp)
        flow_yx = net.flow_dy_dx(ref, supp)
    assert flow_xy.shape == (2, 2, 37, 21)
    assert torch.isfinite(flow_xy).all()
    torch.testing.assert_close(flow_yx, flow_xy[:, [1, 0]], rtol=0, atol=0)


def test_zero_weights_give_zero_flow() -> None:
    ref, supp = torch.rand(2, 1, 3, 40, 33).unbind(0)
    with torch.no_grad():
        assert torch.count_nonzero(zeroed()(ref, supp)) == 0


def test_coarse_flow_is_doubled_per_level_and_rescaled() -> None:
    # Only the coarsest level's last bias is set: its constant (x, y) flow is doubled five
    # times and, for a 40x48 input padded to 64x64, rescaled by (48/64, 40/64).
    model = zeroed()
    with torch.no_grad():
        model.basic_module[0].basic_module[8].bias.copy_(torch.tensor([0.25, -0.5]))
        ref, supp = torch.rand(2, 1, 3, 40, 48).unbind(0)
        flow = model(ref, supp)
        flow_yx = model.flow_dy_dx(ref, supp)
    torch.testing.assert_close(flow[0, 0], torch.full((40, 48), 8.0 * 48 / 64))
    torch.testing.assert_close(flow[0, 1], torch.full((40, 48), -16.0 * 40 / 64))
    torch.testing.assert_close(flow_yx[0, 0], torch.full((40, 48), -16.0 * 40 / 64))


def test_input_errors(net: SpyNet) -> None:
    with pytest.raises(InputError):
        net(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 64))
    with pytest.raises(InputError):
        net(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))


def test_min_size_skips_the_levels_with_a_shorter_side() -> None:
    # 40x48 is padded to 64x64: with min_size 32 only the 32x32 and 64x64 levels run, the first from zero flow.
    model = zeroed()
    model.min_size = 32
    with torch.no_grad():
        model.basic_module[0].basic_module[8].bias.copy_(torch.tensor([5.0, 5.0]))  # skipped
        model.basic_module[4].basic_module[8].bias.copy_(torch.tensor([0.25, -0.5]))
        ref, supp = torch.rand(2, 1, 3, 40, 48).unbind(0)
        flow = model(ref, supp)
        model.min_size = 128  # larger than every level: the finest still runs
        finest_only = model(ref, supp)
    torch.testing.assert_close(flow[0, 0], torch.full((40, 48), 0.5 * 48 / 64))
    torch.testing.assert_close(flow[0, 1], torch.full((40, 48), -1.0 * 40 / 64))
    assert torch.count_nonzero(finest_only) == 0
