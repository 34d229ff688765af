"""Running an EDVR model over a stream of frames: sliding windows with a per-frame feature cache.

Each frame's feature pyramid is computed once and reused by every window that contains it;
only the frames that a later window can still need are kept, so memory is bounded by the
window and batch sizes, not by the clip length. Upscale, eval, training validation and viz
all run models through `upscale_stream`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from vsrx.io.windows import frame_indices
from vsrx.models.edvr import EDVR, Pyramid


def pad_to_multiple(x: Tensor, multiple: int = 4) -> Tensor:
    """Reflect-pad (N, C, H, W) at the bottom and right to multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if not (ph or pw):
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class FeatureCache:
    """Feature pyramids of decoded frames by index, evicted once no later window needs them."""

    def __init__(self) -> None:
        self.pyramids: dict[int, Pyramid] = {}
        self.frames: dict[int, Tensor] = {}

    def add(self, indices: list[int], frames: Tensor, pyramid: Pyramid) -> None:
        for k, i in enumerate(indices):
            self.frames[i] = frames[k]
            self.pyramids[i] = tuple(level[k] for level in pyramid)

    def window(self, indices: list[int]) -> tuple[Pyramid, Tensor]:
        levels = tuple(torch.stack([self.pyramids[i][lv] for i in indices]) for lv in range(3))
        return levels, self.frames[indices[len(indices) // 2]]

    def evict(self, keep: set[int], below: int) -> None:
        for i in [i for i in self.pyramids if i < below and i not in keep]:
            del self.pyramids[i], self.frames[i]


@torch.inference_mode()
def upscale_stream(
    model: EDVR,
    frames: Iterable[Tensor],
    total: int,
    *,
    padding: str = "reflection_circle",
    batch: int = 1,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    cache: bool = True,
) -> Iterator[Tensor]:
    """Yield the x4 output (3, 4H, 4W) float in [0, 1] (not clamped) for each of ``total`` frames.

    ``frames`` yields (3, H, W) tensors (uint8 or float in [0, 1]) in order; any H, W works
    (reflect-padded to multiples of 4 for the model, output cropped to exactly 4H x 4W).
    ``cache=False`` recomputes every window's features (the naive reference).
    """
    device = torch.device(device)
    num_frame = model.config.num_frame
    windows = lambda c: frame_indices(c, num_frame, total, padding)  # noqa: E731
    it = iter(frames)
    store = FeatureCache()
    raw: dict[int, Tensor] = {}  # decoded, not yet extracted
    decoded = 0
    size = None

    def prepare(x: Tensor) -> Tensor:
        x = x.to(device, non_blocking=True)
        x = x.to(dtype) / 255 if x.dtype == torch.uint8 else x.to(dtype)
        return pad_to_multiple(x.unsqueeze(0))[0]

    def ensure(needed: set[int]) -> None:
        nonlocal decoded, size
        while decoded <= max(needed):
            frame = next(it, None)
            if frame is None:
                raise ValueError(f"frame stream ended after {decoded} of {total} frames")
            size = size or tuple(frame.shape[-2:])
            raw[decoded] = prepare(frame)
            decoded += 1
        todo = sorted(i for i in needed if i not in store.pyramids)
        for start in range(0, len(todo), max(batch, 1) * num_frame):
            chunk = todo[start : start + max(batch, 1) * num_frame]
            x = torch.stack([raw[i] for i in chunk])
            store.add(chunk, x, model.extract(x))

    for start in range(0, total, batch):
        centres = list(range(start, min(start + batch, total)))
        wins = [windows(c) for c in centres]
        if not cache:
            store = FeatureCache()
        ensure({i for w in wins for i in w})
        parts = [store.window(w) for w in wins]
        pyramid = tuple(torch.stack([p[0][lv] for p in parts]) for lv in range(3))
        out = model.reconstruct_window(pyramid, torch.stack([p[1] for p in parts]))
        h, w = size
        for k in range(len(centres)):
            yield out[k, :, : 4 * h, : 4 * w]
        last = centres[-1]
        keep = {i for c in range(last + 1, min(last + 1 + num_frame, total)) for i in windows(c)}
        store.evict(keep, below=last + 1)
        for i in [i for i in raw if i < last + 1 and i not in keep]:
            del raw[i]


def to_uint8(x: Tensor) -> Tensor:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8, clamped and rounded."""
    return x.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0)
