"""MATLAB-compatible bicubic ``imresize`` and the x4 bicubic degradation used by VSR benchmarks."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from vsrx.errors import UsageError

_KERNEL_WIDTH = 4.0


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``)."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


@lru_cache(maxsize=128)
def _contributions(in_size: int, out_size: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 tap weights and 0-based input indices (symmetric padding), both (out_size, taps)."""
    width = _KERNEL_WIDTH / scale if scale < 1 else _KERNEL_WIDTH
    u = np.arange(1, out_size + 1, dtype=np.float64) / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2.0)
    taps = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
    dist = u[:, None] - idx
    weights = scale * _cubic(scale * dist) if scale < 1 else _cubic(dist)
    weights /= weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_size), np.arange(in_size - 1, -1, -1)])
    indices = mirror[np.mod(idx.astype(np.int64) - 1, 2 * in_size)]
    used = np.any(weights != 0, axis=0)
    return torch.from_numpy(weights[:, used].copy()), torch.from_numpy(indices[:, used].copy())


@lru_cache(maxsize=128)
def _contributions_on(
    in_size: int, out_size: int, scale: float, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """`_contributions` already on `device` (weights in `dtype`): on a GPU each size's taps are
    copied once, not on every call (training makes its LR patches on the training device)."""
    weights, indices = _contributions(in_size, out_size, scale)
    return weights.to(device=device, dtype=dtype), indices.to(device)


def _resize_dim(x: torch.Tensor, dim: int, scale: float) -> torch.Tensor:
    """Resize `x` along `dim` (-2 or -1) to ceil(size * scale) as a weighted sum of gathered taps."""
    in_size = x.shape[dim]
    weights, indices = _contributions_on(in_size, math.ceil(in_size * scale), scale, x.device, x.dtype)

    def tap(t: int) -> torch.Tensor:
        w = weights[:, t, None] if dim == -2 else weights[:, t]
        return x.index_select(dim, indices[:, t]) * w

    out = tap(0)
    for t in range(1, weights.shape[1]):
        out.add_(tap(t))
    return out


def imresize(x: torch.Tensor, scale: float) -> torch.Tensor:
    """MATLAB ``imresize(x, scale, 'bicubic')`` over the last two dims; same dtype, not clamped or rounded."""
    if not isinstance(x, torch.Tensor) or x.dtype not in (torch.float32, torch.float64):
        raise UsageError("imresize needs a float32 or float64 tensor")
    if x.dim() < 2 or min(x.shape[-2:]) < 1:
        raise UsageError(f"imresize needs a tensor of shape (..., H, W), got {tuple(x.shape)}")
    if not (math.isfinite(scale) and scale > 0):
        raise UsageError(f"imresize scale must be a positive number, got {scale}")
    return _resize_dim(_resize_dim(x, -2, float(scale)), -1, float(scale))


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop an HxW[xC] image at its bottom and right so both sides are multiples of `scale`."""
    h, w = img.shape[0], img.shape[1]
    return img[: h - h % scale, : w - w % scale]


def _resize_uint8(frame: np.ndarray, scale: float) -> np.ndarray:
    """Resize an HxWxC uint8 image in float64, clamp to [0, 255] and round half up to uint8."""
    if frame.dtype != np.uint8 or frame.ndim != 3:
        raise UsageError(f"expected an HxWxC uint8 image, got {frame.dtype} of shape {frame.shape}")
    x = torch.from_numpy(np.ascontiguousarray(frame.transpose(2, 0, 1), dtype=np.float64))
    y = imresize(x, scale).clamp_(0.0, 255.0).add_(0.5).floor_().to(torch.uint8)
    return np.ascontiguousarray(y.permute(1, 2, 0).numpy())


def downscale_x4_uint8(frame: np.ndarray) -> np.ndarray:
    """Bicubic x1/4 of an HxWx3 uint8 frame, rounded to uint8 as a stored LR PNG would be (no modcrop)."""
    return _resize_uint8(frame, 0.25)


def bicubic_upscale(lr: np.ndarray, scale: int = 4) -> np.ndarray:
    """Bicubic baseline: MATLAB imresize of an HxWx3 uint8 frame by `scale`, clamped and rounded to uint8."""
    return _resize_uint8(lr, float(scale))
