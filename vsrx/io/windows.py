"""Temporal window indices: which frames feed the model for each centre frame."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from vsrx.errors import InputError, UsageError

PADDINGS = ("reflection_circle", "reflection", "replicate", "circle")


def frame_indices(
    center: int, num_frames: int, total: int, padding: str = "reflection", cuts: Sequence[int] = ()
) -> list[int]:
    """Indices of the `num_frames` window around `center` in a clip of `total` frames.

    Out-of-range neighbours follow BasicSR's `generate_frame_indices` rules; on clips
    shorter than the window, where those rules still point outside the clip, the index
    is folded back in (clamped for replicate, mirrored for reflection*, wrapped for circle).
    `cuts` (sorted indices of frames that start a new shot) end the clip for this rule: the
    window stays inside the shot of `center`, padded at the cuts as at the clip's ends.
    Every index lies within `num_frames - 1` of `center`.
    """
    _check_window(center, num_frames, total)
    k = bisect_right(cuts, center)
    first = cuts[k - 1] if k else 0
    last = cuts[k] if k < len(cuts) else total
    if (first, last) != (0, total):
        return [first + i for i in frame_indices(center - first, num_frames, last - first, padding)]
    if padding not in PADDINGS:
        raise UsageError(f"unknown padding {padding!r}; choose one of {', '.join(PADDINGS)}")
    half, last = num_frames // 2, total - 1
    indices = []
    for i in range(center - half, center + half + 1):
        index = i if 0 <= i <= last else _pad(i, center, half, last, num_frames, padding)
        indices.append(index if 0 <= index <= last else _fold(index, total, padding))
    return indices


def training_window(center: int, num_frames: int, total: int) -> list[int]:
    """`num_frames` consecutive indices around `center`, shifted to fit inside the clip (never padded).

    Raises InputError when the clip has fewer than `num_frames` frames.
    """
    _check_window(center, num_frames, total)
    if total < num_frames:
        raise InputError(f"clip has {total} frames, fewer than the {num_frames}-frame training window")
    start = min(max(center - num_frames // 2, 0), total - num_frames)
    return list(range(start, start + num_frames))


def _check_window(center: int, num_frames: int, total: int) -> None:
    """Reject even or non-positive window sizes and centres outside the clip."""
    if num_frames < 1 or num_frames % 2 == 0:
        raise UsageError(f"window size must be a positive odd number of frames, got {num_frames}")
    if not 0 <= center < total:
        raise ValueError(f"centre frame {center} is outside a clip of {total} frames")


def _pad(i: int, center: int, half: int, last: int, num_frames: int, padding: str) -> int:
    """BasicSR's replacement for an out-of-range neighbour `i` (may itself be out of range on short clips)."""
    if padding == "replicate":
        return 0 if i < 0 else last
    if padding == "reflection":
        return -i if i < 0 else 2 * last - i
    if padding == "reflection_circle":
        return center + half - i if i < 0 else (center - half) - (i - last)
    return num_frames + i if i < 0 else i - num_frames


def _fold(index: int, total: int, padding: str) -> int:
    """Bring an index that padding left outside [0, total) back inside."""
    if padding == "replicate":
        return min(max(index, 0), total - 1)
    if padding == "circle" or total == 1:
        return index % total
    period = 2 * (total - 1)
    index %= period
    return index if index < total else period - index
