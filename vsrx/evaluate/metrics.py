"""PSNR and SSIM on uint8 frames, in float64 with peak 255 (MATLAB / BasicSR conventions).

PSNR of identical images is ``math.inf``; the result writers in ``runner`` store it as the string "inf".
"""

from __future__ import annotations

import math

import numpy as np

from vsrx.errors import UsageError

PEAK = 255.0
_Y_WEIGHTS = np.array([65.481, 128.553, 24.966], dtype=np.float64)
_C1 = (0.01 * PEAK) ** 2
_C2 = (0.03 * PEAK) ** 2
_WINDOW = 11
_SIGMA = 1.5
_STRIP = 8


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """Luma of an HxWx3 uint8 RGB image as float64 in [16, 235] (MATLAB ``rgb2ycbcr``), not rounded."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise UsageError(f"rgb_to_y needs an HxWx3 uint8 image, got {img.dtype} of shape {img.shape}")
    return (img.astype(np.float64) / PEAK) @ _Y_WEIGHTS + 16.0


def _pair(a: np.ndarray, b: np.ndarray, crop_border: int) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float64 with `crop_border` pixels removed from each side."""
    if a.shape != b.shape:
        raise UsageError(f"cannot compare images of shapes {a.shape} and {b.shape}")
    if a.ndim not in (2, 3):
        raise UsageError(f"expected an HxW or HxWxC image, got shape {a.shape}")
    if crop_border < 0 or 2 * crop_border >= min(a.shape[0], a.shape[1]):
        raise UsageError(f"crop_border {crop_border} does not fit a {a.shape[1]}x{a.shape[0]} image")
    if crop_border:
        a = a[crop_border:-crop_border, crop_border:-crop_border]
        b = b[crop_border:-crop_border, crop_border:-crop_border]
    return a.astype(np.float64), b.astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray, crop_border: int = 0) -> float:
    """PSNR in dB with peak 255 over all pixels and channels; ``math.inf`` when the images are identical."""
    x, y = _pair(a, b, crop_border)
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(PEAK * PEAK / mse)


def _gaussian() -> np.ndarray:
    """Normalised 1-D Gaussian taps (11, sigma 1.5); their outer product is the SSIM window."""
    k = np.arange(_WINDOW, dtype=np.float64) - (_WINDOW - 1) / 2
    g = np.exp(-(k * k) / (2 * _SIGMA * _SIGMA))
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of the last two axes of `x` with taps `g`, in cache-sized row strips."""
    n = len(g)
    h, w = x.shape[-2] - n + 1, x.shape[-1] - n + 1
    out = np.empty(x.shape[:-2] + (h, w))
    for top in range(0, h, _STRIP):
        bottom = min(top + _STRIP, h)
        rows = g[0] * x[..., top:bottom, :]
        tmp = np.empty_like(rows)
        for k in range(1, n):
            rows += np.multiply(g[k], x[..., top + k : bottom + k, :], out=tmp)
        strip = out[..., top:bottom, :]
        np.multiply(g[0], rows[..., :w], out=strip)
        cols = tmp[..., :w]
        for k in range(1, n):
            strip += np.multiply(g[k], rows[..., k : k + w], out=cols)
    return out


def _ssim_plane(x: np.ndarray, y: np.ndarray) -> float:
    """Mean SSIM of two float64 HxW planes over the valid region of the Gaussian window."""
    mu_x, mu_y, xx, yy, xy = _filter_valid(np.stack([x, y, x * x, y * y, x * y]), _gaussian())
    var_x, var_y, cov = xx - mu_x * mu_x, yy - mu_y * mu_y, xy - mu_x * mu_y
    num = (2 * mu_x * mu_y + _C1) * (2 * cov + _C2)
    den = (mu_x * mu_x + mu_y * mu_y + _C1) * (var_x + var_y + _C2)
    return float(np.mean(num / den))


def ssim(a: np.ndarray, b: np.ndarray, crop_border: int = 0) -> float:
    """SSIM (11x11 Gaussian window, sigma 1.5, valid region, peak 255), averaged over channels."""
    x, y = _pair(a, b, crop_border)
    if min(x.shape[0], x.shape[1]) < _WINDOW:
        raise UsageError(f"SSIM needs images of at least {_WINDOW}x{_WINDOW}, got {x.shape[1]}x{x.shape[0]}")
    if x.ndim == 2:
        return _ssim_plane(x, y)
    return float(np.mean([_ssim_plane(x[..., c], y[..., c]) for c in range(x.shape[2])]))


def frame_metrics(sr: np.ndarray, gt: np.ndarray, crop_border: int = 0) -> dict[str, float]:
    """PSNR and SSIM of an SR frame against its GT, both HxWx3 uint8, on Y and on RGB."""
    sr_y, gt_y = rgb_to_y(sr), rgb_to_y(gt)
    return {
        "psnr_y": psnr(sr_y, gt_y, crop_border),
        "psnr_rgb": psnr(sr, gt, crop_border),
        "ssim_y": ssim(sr_y, gt_y, crop_border),
        "ssim_rgb": ssim(sr, gt, crop_border),
    }
