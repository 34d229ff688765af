"""What an EDVR model's aligners do on one window: offsets, masks, the features they warp,
their outputs, the PCD-aligned frames and the fused features.

Only the window of the requested centre frame is decoded and run (reading stops after its last
frame), and only the requested window slots are kept from each aligner, so memory does not
grow with the clip. The model runs up to its fusion module and stops: no x4 reconstruction.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from vsrx.errors import InputError, ModelError, UsageError
from vsrx.inference import pad_to_multiple
from vsrx.io.reader import FrameSource
from vsrx.io.windows import frame_indices
from vsrx.models.align import Aligner, record_offsets
from vsrx.models.edvr import EDVR
from vsrx.models.hooks import record_forward
from vsrx.ops.warp import sample_offsets

LEVELS = ("l3", "l2", "l1", "cascade")
ALIGNER_NAMES = {
    "l3": "pcd_align.dcn_pack.l3",
    "l2": "pcd_align.dcn_pack.l2",
    "l1": "pcd_align.dcn_pack.l1",
    "cascade": "pcd_align.cas_dcnpack",
}
LEVEL_SCALE = {"l3": 4, "l2": 2, "l1": 1, "cascade": 1}
"""Input (LR) pixels per pixel of each level: offsets times this are in input pixels."""


def check_model(model: nn.Module, name: str = "the model") -> EDVR:
    """The model as an EDVR with aligners, or a ModelError saying why it has no offsets to show."""
    if not isinstance(model, EDVR):
        raise ModelError(f"{name} is a {type(model).__name__}, not an EDVR model: it has no alignment offsets to visualise")
    missing = [n for n in ALIGNER_NAMES.values() if not isinstance(model.get_submodule(n), Aligner)]
    if missing:
        raise ModelError(f"{name} has no offset-predicting aligner at {', '.join(missing)}")
    return model


def read_window(source: FrameSource, indices: list[int]) -> Tensor:
    """The frames ``indices`` (repeats allowed) of a source as (T, 3, H, W) floats in [0, 1].

    Decoding stops after the last needed frame; other frames are dropped as they pass.
    """
    wanted, last, got = set(indices), max(indices), {}
    for frame in source:
        if frame.index in wanted:
            got[frame.index] = torch.from_numpy(np.ascontiguousarray(frame.rgb)).permute(2, 0, 1)
        if frame.index >= last:
            break
    missing = sorted(wanted - set(got))
    if missing:
        raise InputError(f"{source.path}: frame {missing[0]} could not be read (the clip ended after {source.decoded} frames)")
    return torch.stack([got[i] for i in indices]).float() / 255


def window_for(total: int, frame: int | None, num_frame: int, padding: str) -> tuple[int, list[int]]:
    """(centre frame, clip indices of its window); the default centre is the middle frame."""
    if total < 1:
        raise InputError("the clip has no frames")
    frame = total // 2 if frame is None else frame
    if not 0 <= frame < total:
        raise UsageError(f"--frame {frame} is out of range: the clip has {total} frames (0..{total - 1})")
    return frame, frame_indices(frame, num_frame, total, padding)


@dataclass
class LevelCapture:
    """One aligner on the kept window slots (in level pixels, on the padded frame).

    offsets: (S, G, N, 2, h, w) absolute (dy, dx) sampling displacements (kernel position plus
    learned offset); masks: (S, G, N, h, w) or None (flow mode); inputs: (S, C, h, w) the features
    it warps; outputs: (S, C, h, w) what it returns; grid: (N, 2) kernel positions.
    """

    offsets: Tensor
    masks: Tensor | None
    inputs: Tensor
    outputs: Tensor
    grid: Tensor
    scale: int


@dataclass
class WindowCapture:
    """Everything captured from one window run; ``slots`` are the window positions kept."""

    slots: list[int]
    center: int
    size: tuple[int, int]  # unpadded input (H, W)
    levels: dict[str, LevelCapture]
    aligned: Tensor  # (T, C, Hp, Wp) PCD output of every slot
    fused: Tensor  # (C, Hp, Wp) fusion output

    def row(self, slot: int) -> int:
        return self.slots.index(slot)


class _Stop(Exception):
    """Raised once fusion has run, to skip the reconstruction."""


@torch.inference_mode()
def capture_window(model: EDVR, frames: Tensor, slots: list[int], levels: tuple[str, ...] = LEVELS) -> WindowCapture:
    """Run one window (T, 3, H, W) in [0, 1] through ``model`` up to fusion, recording ``levels``
    for the window positions ``slots`` (the centre slot is always kept too)."""
    check_model(model)
    t = model.config.num_frame
    if frames.dim() != 4 or frames.shape[:2] != (t, 3):
        raise InputError(f"expected a window of {t} RGB frames (T, 3, H, W), got {tuple(frames.shape)}")
    center = model.config.center
    slots = sorted(set(slots) | {center})
    if not all(0 <= s < t for s in slots):
        raise UsageError(f"window slots {slots} are outside a {t}-frame window")
    unknown = [lv for lv in levels if lv not in ALIGNER_NAMES]
    if unknown:
        raise UsageError(f"unknown level {unknown[0]!r}; choose from {', '.join(LEVELS)}")
    param = next(model.parameters())
    x = pad_to_multiple(frames.to(param.device, param.dtype))
    rows = torch.tensor(slots, device=param.device)

    def kept(tensor: Tensor) -> Tensor:
        return tensor[rows].float().cpu()

    def stop(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        raise _Stop  # fusion has run: skip the reconstruction

    aligners = {lv: model.get_submodule(ALIGNER_NAMES[lv]) for lv in levels}
    with contextlib.ExitStack() as stack:
        io = {lv: stack.enter_context(record_forward([a], lambda m, args, out: (kept(args[0]), kept(out))))
              for lv, a in aligners.items()}
        displacements = stack.enter_context(record_offsets(aligners, keep=kept))
        aligned = stack.enter_context(record_forward([model.pcd_align], lambda m, args, out: out.float().cpu()))
        fused = stack.enter_context(record_forward([model.fusion], lambda m, args, out: out.float().cpu()))
        stack.enter_context(record_forward([model.fusion], stop))
        pyramid = tuple(level.unsqueeze(0) for level in model.extract(x))
        flows = model.window_flows(x.unsqueeze(0)) if model.config.flow_guided else None
        try:
            model.reconstruct_window(pyramid, x[center : center + 1], flows)
        except _Stop:
            pass
    result = {}
    for lv, aligner in aligners.items():
        if len(displacements[lv]) != 1:
            raise ModelError(f"{ALIGNER_NAMES[lv]} ran {len(displacements[lv])} times for one window (expected once)")
        (offsets, masks), (inputs, outputs) = displacements[lv][0], io[lv][0]
        result[lv] = LevelCapture(offsets, masks, inputs, outputs, aligner.grid.view(-1, 2).float().cpu(), LEVEL_SCALE[lv])
    fused_map = fused[0][0] if fused[0].dim() == 4 else fused[0]
    return WindowCapture(slots, center, tuple(frames.shape[-2:]), result, aligned[0], fused_map)


def valid_size(size: tuple[int, int], scale: int) -> tuple[int, int]:
    """Pixels of a level that cover the unpadded input."""
    return -(-size[0] // scale), -(-size[1] // scale)


def offsets_px(cap: WindowCapture, level: str, slot: int) -> Tensor:
    """(G, N, 2, h, w) absolute displacements of ``slot`` in input pixels, cropped to the input."""
    lc = cap.levels[level]
    h, w = valid_size(cap.size, lc.scale)
    return lc.offsets[cap.row(slot), ..., :h, :w] * lc.scale


def masks_of(cap: WindowCapture, level: str, slot: int) -> Tensor | None:
    """(G, N, h, w) modulation masks of ``slot`` cropped to the input, or None in flow mode."""
    lc = cap.levels[level]
    if lc.masks is None:
        return None
    h, w = valid_size(cap.size, lc.scale)
    return lc.masks[cap.row(slot), ..., :h, :w]


def learned_absmean(cap: WindowCapture, level: str, slot: int) -> float:
    """BasicSR's DCN health statistic: mean |learned offset| (kernel position removed), level pixels."""
    lc = cap.levels[level]
    learned = lc.offsets[cap.row(slot)] - lc.grid.view(1, -1, 2, 1, 1)
    return float(learned.abs().mean())


def warped_per_offset(cap: WindowCapture, level: str, slot: int, modulated: bool = False) -> Tensor:
    """(N, C, h, w): the input features of ``slot`` warped by each offset n (group g's channels by
    offset (g, n)); with ``modulated`` also multiplied by the masks, giving the N maps Eq. 3 mixes
    with one 1x1 convolution."""
    lc = cap.levels[level]
    r = cap.row(slot)
    x, pos = lc.inputs[r], lc.offsets[r]  # (C, h, w), (G, N, 2, h, w)
    g, n = pos.shape[:2]
    c, h, w = x.shape
    warped = sample_offsets(x.view(g, c // g, h, w), pos)  # (G, C/G, N, h, w)
    if modulated and lc.masks is not None:
        warped = warped * lc.masks[r].unsqueeze(1)
    hv, wv = valid_size(cap.size, lc.scale)
    return warped.permute(2, 0, 1, 3, 4).reshape(n, c, h, w)[..., :hv, :wv]


def level_flow(flow: Tensor, size: tuple[int, int]) -> Tensor:
    """A (2, H, W) input-pixel flow averaged down to a level's (h, w), still in input pixels."""
    if tuple(flow.shape[-2:]) == tuple(size):
        return flow.float()
    return torch.nn.functional.interpolate(flow[None].float(), size=size, mode="area")[0]
