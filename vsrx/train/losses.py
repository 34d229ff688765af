"""Training objectives: Charbonnier reconstruction loss and the offset-fidelity loss (paper Eq. 4-5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def charbonnier(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """mean(sqrt((pred - target)^2 + eps)): EDVR's eps=1e-6 under the root, mean instead of sum
    so the loss scale does not depend on batch or patch size."""
    return torch.sqrt((pred - target) ** 2 + eps).mean()


def flow_at_level(flow: Tensor, size: tuple[int, int]) -> Tensor:
    """Flow (N, 2, H, W) in LR pixels resampled to a pyramid level of ``size``, magnitudes scaled with it."""
    h, w = flow.shape[-2:]
    if (h, w) == tuple(size):
        return flow
    scaled = F.interpolate(flow, size=size, mode="bilinear", align_corners=False)
    return scaled * torch.tensor([size[0] / h, size[1] / w], dtype=flow.dtype, device=flow.device).view(1, 2, 1, 1)


def offset_fidelity(offsets: list[Tensor], flow: Tensor, threshold: float = 10.0, valid: Tensor | None = None) -> Tensor:
    """Eq. 5 summed over aligners and offsets: sum_n H(|x_n - y| - t) * |x_n - y|.

    offsets: absolute (dy, dx) offsets (B, G, N, 2, h, w) of each aligner (any pyramid level);
    flow: (B, 2, H, W) optical flow centre -> neighbour at the finest level, in pixels, (dy, dx).
    The flow is resized and rescaled to each level and repeated over groups. Each L_n is a mean
    over batch, pixels, groups and both components (a sum would tie lambda to the patch size);
    L_n are summed over n and over aligners, as in the paper. ``valid`` (B,) of 0/1 drops
    samples that have no flow from the mean.
    """
    total = flow.new_zeros(())
    weight = None if valid is None else valid.to(flow.dtype).view(-1, 1, 1, 1, 1, 1) / valid.sum().clamp(min=1)
    for x in offsets:
        y = flow_at_level(flow, tuple(x.shape[-2:])).to(x.dtype)
        diff = (x - y[:, None, None]).abs()
        penalty = diff * (diff > threshold)
        if weight is None:
            per_offset = penalty.mean(dim=(0, 1, 3, 4, 5))
        else:
            per_offset = (penalty * weight).sum(dim=0).mean(dim=(0, 2, 3, 4))
        total = total + per_offset.sum()
    return total
