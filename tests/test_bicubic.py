"""MATLAB-compatible bicubic imresize: hand-computed weights, invariants, shapes and dtypes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vsrx.errors import UsageError
from vsrx.evaluate.bicubic import bicubic_upscale, downscale_x4_uint8, imresize, modcrop

# Keys cubic (a = -0.5) at the distances that occur for x2 and x1/2, in 1/128ths:
# cubic(0.25) = 111, cubic(0.75) = 29, cubic(1.25) = -9, cubic(1.75) = -3.


def test_downscale_half_of_four_pixel_row_matches_hand_weights():
    # x1/2: kernel widened to 8, taps scale*cubic(scale*d) at d = +-0.5 .. +-3.5 around u = 1.5 and 3.5,
    # padded symmetrically (c b a | a b c d | d c b a); row sums are 256/128, so divide by 256.
    a, b, c, d = 3.0, -1.0, 7.5, 2.0
    out = imresize(torch.tensor([[a, b, c, d]], dtype=torch.float64), 0.5)
    expected = [(140 * a + 102 * b + 26 * c - 12 * d) / 256, (140 * d + 102 * c + 26 * b - 12 * a) / 256]
    assert out.shape == (1, 2)
    torch.testing.assert_close(out[0], torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)


def test_upscale_two_of_four_pixel_row_matches_hand_weights():
    # x2: u = x/2 + 0.25, taps cubic(u - i); the row is mirrored at both ends.
    a, b, c, d = 3.0, -1.0, 7.5, 2.0
    out = imresize(torch.tensor([[a, b, c, d]], dtype=torch.float64), 2.0)
    left = [140 * a - 12 * b, 102 * a + 29 * b - 3 * c, 26 * a + 111 * b - 9 * c, -9 * a + 111 * b + 29 * c - 3 * d]
    right = [140 * d - 12 * c, 102 * d + 29 * c - 3 * b, 26 * d + 111 * c - 9 * b, -9 * d + 111 * c + 29 * b - 3 * a]
    expected = torch.tensor(left + right[::-1], dtype=torch.float64) / 128
    assert out.shape == (2, 8)
    torch.testing.assert_close(out[0], expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(out[1], expected, rtol=0, atol=1e-12)


def test_rows_and_columns_are_resized_alike():
    x = torch.rand(5, 9, dtype=torch.float64)
    torch.testing.assert_close(imresize(x.T, 0.5), imresize(x, 0.5).T)
    torch.testing.assert_close(imresize(x.T, 3.0), imresize(x, 3.0).T)


@pytest.mark.parametrize("scale", [0.25, 0.5, 2.0, 4.0])
def test_constant_image_stays_constant(scale):
    x = torch.full((3, 12, 20), 97.25, dtype=torch.float64)
    out = imresize(x, scale)
    torch.testing.assert_close(out, torch.full_like(out, 97.25), rtol=0, atol=1e-10)


def test_linear_ramp_interior_is_preserved_under_upscale():
    width, scale = 16, 4.0
    ramp = 3.0 * torch.arange(1, width + 1, dtype=torch.float64) + 7.0  # f(i) = 3 i + 7, 1-based i
    out = imresize(ramp.expand(4, width), scale)[0]
    u = torch.arange(1, width * 4 + 1, dtype=torch.float64) / scale + 0.5 * (1 - 1 / scale)
    torch.testing.assert_close(out[8:-8], 3.0 * u[8:-8] + 7.0, rtol=0, atol=1e-10)
    assert not torch.allclose(out[:2], 3.0 * u[:2] + 7.0)  # the mirrored edge bends the ramp


def test_shapes_round_up_and_leading_dims_are_kept():
    x = torch.rand(2, 3, 13, 17)
    assert imresize(x, 0.25).shape == (2, 3, 4, 5)
    assert imresize(x, 4).shape == (2, 3, 52, 68)
    assert imresize(x[0, 0], 1 / 3).shape == (5, 6)


def test_dtype_is_preserved_and_float32_agrees_with_float64():
    x = torch.rand(3, 16, 24, dtype=torch.float64) * 255
    out64 = imresize(x, 0.25)
    out32 = imresize(x.float(), 0.25)
    assert out64.dtype == torch.float64 and out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out64, rtol=0, atol=1e-3)


def test_output_is_not_clamped_but_uint8_helpers_clamp_and_round():
    step = np.zeros((8, 8, 3), np.uint8)
    step[:, 4:] = 255
    raw = imresize(torch.from_numpy(step.transpose(2, 0, 1).astype(np.float64)), 4.0)
    assert raw.max() > 255 and raw.min() < 0
    expected = np.floor(raw.clamp(0, 255).numpy() + 0.5).astype(np.uint8).transpose(1, 2, 0)
    up = bicubic_upscale(step, 4)
    assert up.dtype == np.uint8 and up.shape == (32, 32, 3)
    np.testing.assert_array_equal(up, expected)


def test_downscale_x4_uint8_matches_imresize_rounded():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    raw = imresize(torch.from_numpy(frame.transpose(2, 0, 1).astype(np.float64)), 0.25).numpy()
    lr = downscale_x4_uint8(frame)
    assert lr.dtype == np.uint8 and lr.shape == (4, 6, 3)
    np.testing.assert_array_equal(lr, np.floor(np.clip(raw, 0, 255) + 0.5).astype(np.uint8).transpose(1, 2, 0))


def test_modcrop_crops_bottom_and_right():
    img = np.arange(14 * 11 * 3).reshape(14, 11, 3)
    np.testing.assert_array_equal(modcrop(img, 4), img[:12, :8])
    assert modcrop(img[:, :, 0], 4).shape == (12, 8)


def test_bad_inputs_raise_usage_errors():
    with pytest.raises(UsageError, match="float32 or float64"):
        imresize(torch.zeros(4, 4, dtype=torch.uint8), 0.5)
    with pytest.raises(UsageError, match="scale"):
        imresize(torch.zeros(4, 4), 0.0)
    with pytest.raises(UsageError, match="uint8"):
        bicubic_upscale(np.zeros((4, 4, 3), np.float32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_imresize_equals_cpu(dtype):
    """The trainer makes LR patches on the GPU: the same taps there as on the CPU, within 1e-5 of
    full scale (uint8-valued input like a training crop)."""
    x = torch.rand(2, 7, 3, 64, 72, generator=torch.Generator().manual_seed(0), dtype=dtype).mul_(255).round_()
    for scale in (0.25, 4.0):
        cpu = imresize(x, scale)
        gpu = imresize(x.cuda(), scale)
        assert gpu.is_cuda and gpu.dtype == dtype and gpu.shape == cpu.shape
        torch.testing.assert_close(gpu.cpu() / 255, cpu / 255, rtol=0, atol=1e-5)
