import math

import pytest
import torch
from torchvision.ops import deform_conv2d

from vsrx.errors import InputError
from vsrx.ops.warp import flow_warp, pixel_grid, sample_bilinear

DT = torch.float64


def constant_flow(b: int, h: int, w: int, dy: float, dx: float) -> torch.Tensor:
    flow = torch.empty(b, 2, h, w, dtype=DT)
    flow[:, 0] = dy
    flow[:, 1] = dx
    return flow


def loop_warp(x: torch.Tensor, flow: torch.Tensor, border: bool = False) -> torch.Tensor:
    """Plain bilinear sampling at p + flow(p); corners outside the image count as zero."""
    b, c, h, w = x.shape
    out = torch.zeros_like(x)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                y = i + flow[n, 0, i, j].item()
                xx = j + flow[n, 1, i, j].item()
                if border:
                    y = min(max(y, 0.0), h - 1.0)
                    xx = min(max(xx, 0.0), w - 1.0)
                y0, x0 = math.floor(y), math.floor(xx)
                for yc, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                    for xc, wx in ((x0, 1 - (xx - x0)), (x0 + 1, xx - x0)):
                        if 0 <= yc < h and 0 <= xc < w:
                            out[n, :, i, j] += wy * wx * x[n, :, yc, xc]
    return out


@pytest.mark.parametrize("dy,dx", [(0, 0), (2, -1), (-3, 4), (1, 0), (0, -5), (6, 0), (-2, -7)])
def test_integer_shift_is_roll_with_zero_fill(dy: int, dx: int) -> None:
    h, w = 6, 7
    x = torch.rand(2, 3, h, w, dtype=DT)
    out = flow_warp(x, constant_flow(2, h, w, dy, dx))
    expected = torch.roll(x, shifts=(-dy, -dx), dims=(2, 3))
    rows = torch.arange(h) + dy
    cols = torch.arange(w) + dx
    inside = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
    expected = expected * inside
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_half_pixel_shift_averages_neighbours() -> None:
    x = torch.rand(1, 2, 4, 5, dtype=DT)
    out = flow_warp(x, constant_flow(1, 4, 5, 0.0, 0.5))
    torch.testing.assert_close(out[..., :-1], 0.5 * (x[..., :-1] + x[..., 1:]), rtol=0, atol=1e-12)
    torch.testing.assert_close(out[..., -1], 0.5 * x[..., -1], rtol=0, atol=1e-12)
    out = flow_warp(x, constant_flow(1, 4, 5, -0.5, 0.0))
    torch.testing.assert_close(out[..., 1:, :], 0.5 * (x[..., 1:, :] + x[..., :-1, :]), rtol=0, atol=1e-12)
    torch.testing.assert_close(out[..., 0, :], 0.5 * x[..., 0, :], rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 3, 5, 6), (1, 2, 1, 5), (1, 1, 4, 1)])
def test_matches_loop_reference(shape: tuple[int, int, int, int]) -> None:
    g = torch.Generator().manual_seed(0)
    b, c, h, w = shape
    x = torch.rand(shape, generator=g, dtype=DT)
    flow = (torch.rand(b, 2, h, w, generator=g, dtype=DT) - 0.5) * 16.0  # many points outside
    torch.testing.assert_close(flow_warp(x, flow), loop_warp(x, flow), rtol=0, atol=1e-12)
    torch.testing.assert_close(
        flow_warp(x, flow, padding_mode="border"), loop_warp(x, flow, border=True), rtol=0, atol=1e-12
    )


def test_matches_deform_conv2d_sampling() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 5, 6, generator=g, dtype=DT)
    flow = (torch.rand(1, 2, 5, 6, generator=g, dtype=DT) - 0.5) * 12.0
    identity = torch.eye(3, dtype=DT).view(3, 3, 1, 1)
    expected = deform_conv2d(x, flow, identity)  # 1x1 kernel: offset channels are (dy, dx)
    torch.testing.assert_close(flow_warp(x, flow), expected, rtol=0, atol=1e-12)


def test_sample_bilinear_at_other_size() -> None:
    x = torch.rand(1, 2, 6, 7, dtype=DT)
    coords = pixel_grid(3, 4, dtype=DT, device=x.device) + torch.tensor([2.0, 1.0], dtype=DT).view(1, 2, 1, 1)
    torch.testing.assert_close(sample_bilinear(x, coords), x[:, :, 2:5, 1:5], rtol=0, atol=1e-12)


def test_flow_gradient() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, 2, 3, 4, generator=g, dtype=DT)
    flow = (torch.rand(1, 2, 3, 4, generator=g, dtype=DT) - 0.5) * 3.0
    flow.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: flow_warp(x, f), (flow,))


def test_shape_errors() -> None:
    x = torch.rand(1, 3, 4, 5)
    with pytest.raises(InputError):
        flow_warp(x, torch.zeros(1, 2, 4, 6))
    with pytest.raises(InputError):
        flow_warp(x, torch.zeros(1, 3, 4, 5))
    with pytest.raises(InputError):
        flow_warp(x, torch.zeros(1, 2, 4, 5), padding_mode="reflection")  # type: ignore[arg-type]


def test_the_eight_views_are_distinct_undo_exactly_and_keep_flows_the_motion_of_the_images():
    """`flip_transpose` gives all 8 rotations/reflections, `unflip_transpose` undoes each, and a flow
    turned with its images still warps them as before (self-ensemble and training augmentation rely on it)."""
    from vsrx.ops.warp import DIHEDRAL, flip_transpose, unflip_transpose

    torch.manual_seed(0)
    x = torch.randn(1, 3, 6, 9, dtype=DT)
    flow = torch.randn(1, 2, 6, 9, dtype=DT)
    assert DIHEDRAL[0] == (False, False, False) and len(set(DIHEDRAL)) == 8
    views = []
    for flags in DIHEDRAL:
        (xv,), fv = flip_transpose([x], flow, *flags)
        assert torch.equal(unflip_transpose(xv, *flags), x)
        torch.testing.assert_close(flow_warp(xv, fv), flip_transpose([flow_warp(x, flow)], None, *flags)[0][0], rtol=0, atol=1e-12)
        views.append(xv)
    assert all(not (a.shape == b.shape and torch.equal(a, b)) for i, a in enumerate(views) for b in views[:i])
