"""Numbers about one aligner on one neighbour: offset magnitude, diversity, agreement with
optical flow, the |offset - flow| histogram and the mask mean per distance bin.

All distances are in input (LR) pixels: offsets of level l2 and l3 are multiplied by 2 and 4,
and the flow is area-averaged down to the level's size. The distance of an offset to the flow
is the length of the vector difference; offsets are ordered by the mean l1 distance
(|dy - fy| + |dx - fx|, averaged over pixels), as the paper's Fig. 6 orders them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

OVERFLOW_ABSMEAN = 50.0
"""BasicSR warns when a DCN's mean |learned offset| exceeds 50 (level pixels): offset overflow."""


@dataclass
class Entry:
    """One offset field shown in the grid: group (None for a group mean), offset index, kernel position."""

    group: int | None
    offset: int
    kernel: tuple[int, int]
    l1_distance: float | None  # mean |d offset - d flow|_1 in input pixels, None without flow

    def label(self) -> str:
        who = f"n{self.offset}" if self.group is None else f"g{self.group} n{self.offset}"
        return who + f" ({self.kernel[0]:+d},{self.kernel[1]:+d})"


@dataclass
class Analysis:
    fields: Tensor  # (K, 2, h, w) the offset fields shown (all G*N, or N group means), input pixels
    entries: list[Entry]  # per shown field, in display order (fields are in that order too)
    offset_order: list[int]  # offset indices n ordered by the l1 distance of their group mean to the flow
    diversity_map: Tensor  # (h, w) pixelwise std across all G*N offsets
    distances: Tensor | None  # (G*N, h, w) |offset - flow| per offset, or None without flow
    masks: Tensor | None  # (G*N, h, w)
    stats: dict = field(default_factory=dict)


def distance_bins(max_distance: float) -> np.ndarray:
    """Bin edges from 0 with 1 px on an edge: 0.25 px wide up to 8 px, 0.5 up to 16, else 1 px,
    at most 64 px; the last bin collects everything beyond (upper edge inf)."""
    cap = min(max(2.0, math.ceil(max_distance)), 64.0)
    width = 0.25 if cap <= 8 else 0.5 if cap <= 16 else 1.0
    edges = np.arange(0.0, cap + width / 2, width)
    return np.append(edges, np.inf)


def analyse(offsets: Tensor, masks: Tensor | None, flow: Tensor | None, grid: Tensor,
            learned_absmean: float, groups_mean: bool = False) -> Analysis:
    """Statistics of (G, N, 2, h, w) offsets in input pixels against a (2, h, w) flow (or None)."""
    g, n = offsets.shape[:2]
    h, w = offsets.shape[-2:]
    flat = offsets.reshape(g * n, 2, h, w).double()
    magnitude = flat.norm(dim=1)
    diversity_map = flat.var(dim=0, unbiased=False).sum(0).sqrt() if g * n > 1 else torch.zeros(h, w, dtype=torch.float64)
    stats: dict = {
        "size": [h, w],
        "num_offsets": g * n,
        "mean_abs_offset": float(magnitude.mean()),
        "max_abs_offset": float(magnitude.max()),
        "offset_absmean": learned_absmean,
        "overflow": bool(learned_absmean > OVERFLOW_ABSMEAN or not math.isfinite(learned_absmean)),
        "diversity": float(diversity_map.mean()),
    }
    mask_flat = None if masks is None else masks.reshape(g * n, h, w).double()
    stats["mask"] = None if mask_flat is None else {
        "mean": float(mask_flat.mean()), "std": float(mask_flat.std(unbiased=False)),
        "min": float(mask_flat.min()), "max": float(mask_flat.max()),
    }
    if groups_mean:
        shown = offsets.double().mean(0)  # (N, 2, h, w)
        ids = [(None, k) for k in range(n)]
    else:
        shown = flat
        ids = [(gi, k) for gi in range(g) for k in range(n)]
    distances = None
    if flow is not None:
        f = flow.double().view(1, 2, h, w)
        distances = (flat - f).norm(dim=1)
        l1 = (shown - f).abs().sum(1).mean(dim=(1, 2))
        order = sorted(range(len(ids)), key=lambda k: (float(l1[k]), k))
        l1_n = (offsets.double().mean(0) - f).abs().sum(1).mean(dim=(1, 2))
        offset_order = sorted(range(n), key=lambda k: (float(l1_n[k]), k))
        stats.update(
            flow_mean=float(f.norm(dim=1).mean()),
            within_1px=float((distances < 1).double().mean()),
            mean_distance=float(distances.mean()),
            median_distance=float(distances.flatten().median()),
        )
    else:
        l1, order, offset_order = None, list(range(len(ids))), list(range(n))
        stats.update(flow_mean=None, within_1px=None, mean_distance=None, median_distance=None)
    entries = [Entry(ids[k][0], ids[k][1], tuple(int(v) for v in grid[ids[k][1]].tolist()),
                     None if l1 is None else float(l1[k])) for k in order]
    stats["order"] = [{"group": e.group, "offset": e.offset, "kernel": list(e.kernel), "l1_distance": e.l1_distance}
                      for e in entries]
    return Analysis(shown[order].float(), entries, offset_order, diversity_map.float(), distances, mask_flat, stats)


def distance_table(analysis: Analysis) -> list[dict]:
    """Histogram rows of |offset - flow| over all offsets and pixels, with the mean mask per bin."""
    d = analysis.distances.flatten().numpy()
    edges = distance_bins(float(np.quantile(d, 0.99)) if d.size else 0.0)
    index = np.clip(np.searchsorted(edges, d, side="right") - 1, 0, len(edges) - 2)
    counts = np.bincount(index, minlength=len(edges) - 1)
    masks = None if analysis.masks is None else analysis.masks.flatten().numpy()
    mask_sum = None if masks is None else np.bincount(index, weights=masks, minlength=len(edges) - 1)
    rows = []
    for k in range(len(edges) - 1):
        mean = None if mask_sum is None or counts[k] == 0 else float(mask_sum[k] / counts[k])
        rows.append({"lo": float(edges[k]), "hi": float(edges[k + 1]), "count": int(counts[k]),
                     "fraction": float(counts[k] / max(d.size, 1)), "mask_mean": mean})
    return rows
