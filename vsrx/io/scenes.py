"""Hard scene cuts in a decoded stream, from luma histograms of consecutive frames.

The measure (`cut_score`) splits each frame into 2 x 2 cells, takes a 16-bin histogram of the
BT.601 luma of each cell, and averages over the cells the share of pixels that changed bin
(half the L1 distance of the normalised histograms): 0 for equal frames, 1 for disjoint ones.
Histograms ignore motion inside a cell; the cells keep two shots with the same overall
brightness apart. On the 29 clips of `natural/` (training footage; first 60 frames, x4 box-
downscaled) the largest score between neighbouring frames of one shot was 0.206 (motocross-jump)
and the smallest between the last frame of one clip and the first of another (812 ordered
pairs) 0.287, so `DEFAULT_THRESHOLD` is 0.25.
A frame starts a new shot when its score against the previous frame exceeds the threshold.
"""

from __future__ import annotations

import torch
from torch import Tensor

DEFAULT_THRESHOLD = 0.25
GRID, BINS = 2, 16


def luma_histograms(frame: Tensor) -> Tensor:
    """(GRID * GRID, BINS) normalised histograms of the luma of a (3, H, W) frame's cells.

    Takes uint8, uint16 or float in [0, 1]; integer arithmetic, so the bins are exact.
    """
    if frame.is_floating_point():
        top, x = 65535, frame.float().mul(65535).round().to(torch.int64)
    else:
        top, x = (255 if frame.dtype == torch.uint8 else 65535), frame.to(torch.int64)
    luma = 299 * x[0] + 587 * x[1] + 114 * x[2]  # 0 .. 1000 * top
    bins = luma * BINS // (1000 * top + 1)
    h, w = bins.shape
    rows = (torch.arange(h, device=bins.device) * GRID // h)[:, None]
    cols = (torch.arange(w, device=bins.device) * GRID // w)[None, :]
    cell = (rows * GRID + cols) * BINS
    counts = torch.bincount((bins + cell).flatten(), minlength=GRID * GRID * BINS).view(GRID * GRID, BINS)
    return counts.double() / counts.sum(1, keepdim=True)


def cut_score(a: Tensor, b: Tensor) -> float:
    """How much two frames' `luma_histograms` differ: mean over cells of half their L1 distance, in [0, 1]."""
    return float((a - b).abs().sum(1).mean() / 2)


class SceneCuts:
    """Called on each frame of a stream in order; says whether that frame starts a new shot."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD) -> None:
        self.threshold = threshold
        self._previous: Tensor | None = None

    def __call__(self, frame: Tensor) -> bool:
        current = luma_histograms(frame)
        previous, self._previous = self._previous, current
        return previous is not None and cut_score(previous, current) > self.threshold
