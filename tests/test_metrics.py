"""PSNR / SSIM / Y conversion against plain float64 reference implementations written here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vsrx.errors import UsageError
from vsrx.evaluate.metrics import frame_metrics, psnr, rgb_to_y, ssim


def ref_y(img: np.ndarray) -> np.ndarray:
    """Y per pixel, written out channel by channel."""
    r, g, b = (img[..., c].astype(np.float64) / 255.0 for c in range(3))
    return 16.0 + 65.481 * r + 128.553 * g + 24.966 * b


def ref_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR from the sum of squared errors."""
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = float((diff * diff).sum()) / diff.size
    return 20.0 * math.log10(255.0 / math.sqrt(mse))


def ref_ssim_plane(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM by looping over every valid 11x11 window with an explicit 2-D Gaussian."""
    k = np.arange(11) - 5.0
    g = np.exp(-(k[:, None] ** 2 + k[None, :] ** 2) / (2 * 1.5**2))
    w = g / g.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cov = (w * (px - mx) * (py - my)).sum()
            values.append(((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def ref_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Reference SSIM, averaged over channels for 3-D images."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    if a.ndim == 2:
        return ref_ssim_plane(a, b)
    return float(np.mean([ref_ssim_plane(a[..., c], b[..., c]) for c in range(a.shape[2])]))


@pytest.fixture
def pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    gt = rng.integers(0, 256, (19, 23, 3), dtype=np.uint8)
    noise = rng.integers(-20, 21, gt.shape)
    return np.clip(gt.astype(int) + noise, 0, 255).astype(np.uint8), gt


def test_rgb_to_y_known_colours_and_reference(pair):
    img = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0]]], np.uint8)
    np.testing.assert_allclose(rgb_to_y(img), [[16.0, 235.0, 16.0 + 65.481]], rtol=0, atol=1e-12)
    y = rgb_to_y(pair[0])
    assert y.dtype == np.float64 and y.shape == pair[0].shape[:2]
    np.testing.assert_allclose(y, ref_y(pair[0]), rtol=0, atol=1e-12)


def test_psnr_matches_reference_and_known_mse(pair):
    sr, gt = pair
    assert psnr(sr, gt) == pytest.approx(ref_psnr(sr, gt), abs=1e-10)
    flat = np.full((8, 8, 3), 100, np.uint8)
    assert psnr(flat + 5, flat) == pytest.approx(10 * math.log10(255**2 / 25), abs=1e-12)


def test_ssim_matches_looped_reference(pair):
    sr, gt = pair
    assert ssim(sr, gt) == pytest.approx(ref_ssim(sr, gt), abs=1e-12)
    sr_y, gt_y = rgb_to_y(sr), rgb_to_y(gt)
    assert ssim(sr_y, gt_y) == pytest.approx(ref_ssim(sr_y, gt_y), abs=1e-12)


def test_identical_images_give_inf_psnr_and_unit_ssim(pair):
    gt = pair[1]
    assert psnr(gt, gt.copy()) == math.inf
    assert ssim(gt, gt.copy()) == pytest.approx(1.0, abs=1e-12)


def test_crop_border_ignores_the_border(pair):
    sr, gt = pair
    spoiled = sr.copy()
    spoiled[:2] = 0
    spoiled[:, -2:] = 255
    assert psnr(spoiled, sr, crop_border=2) == math.inf
    assert psnr(spoiled, sr) < 30
    assert psnr(sr, gt, crop_border=3) == pytest.approx(ref_psnr(sr[3:-3, 3:-3], gt[3:-3, 3:-3]), abs=1e-10)
    assert ssim(sr, gt, crop_border=3) == pytest.approx(ref_ssim(sr[3:-3, 3:-3], gt[3:-3, 3:-3]), abs=1e-12)


def test_frame_metrics_keys_and_values(pair):
    sr, gt = pair
    scores = frame_metrics(sr, gt)
    assert set(scores) == {"psnr_y", "psnr_rgb", "ssim_y", "ssim_rgb"}
    assert scores["psnr_y"] == pytest.approx(ref_psnr(ref_y(sr), ref_y(gt)), abs=1e-10)
    assert scores["psnr_rgb"] == pytest.approx(ref_psnr(sr, gt), abs=1e-10)
    assert scores["ssim_y"] == pytest.approx(ref_ssim(ref_y(sr), ref_y(gt)), abs=1e-12)
    assert scores["ssim_rgb"] == pytest.approx(ref_ssim(sr, gt), abs=1e-12)


def test_bad_inputs_raise_usage_errors(pair):
    sr, gt = pair
    with pytest.raises(UsageError, match="shapes"):
        psnr(sr[:-1], gt)
    with pytest.raises(UsageError, match="crop_border"):
        psnr(sr, gt, crop_border=10)
    with pytest.raises(UsageError, match="at least 11x11"):
        ssim(sr[:10], gt[:10])
    with pytest.raises(UsageError, match="uint8"):
        rgb_to_y(sr.astype(np.float64))
