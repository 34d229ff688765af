"""Running an EDVR model over a stream of frames: sliding windows with a per-frame feature cache.

Each frame's feature pyramid is computed once and reused by every window that contains it;
only frames that a later window can still need are kept, so memory is bounded by the window
and batch sizes, not by the clip length. Large frames can be processed in spatial tiles, each
with a margin of context that is cut away before the tiles are pasted together; on CUDA
out-of-memory the batch is retried with smaller tiles. With self-ensemble every window also runs
in its 7 other rotations/reflections (each view with its own feature cache) and the 8 outputs,
turned back, are averaged. Upscale, eval, training validation and
viz all run models through `Upscaler`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vsrx.errors import UsageError, VsrxError
from vsrx.io.scenes import SceneCuts
from vsrx.io.windows import frame_indices
from vsrx.models.edvr import EDVR
from vsrx.models.weights import convert_alignment
from vsrx.ops.warp import DIHEDRAL, flip_transpose, unflip_transpose

MIN_TILE = 32
DCN_IMPLS = ("auto", "decomp", "torchvision")
_UINT16 = getattr(torch, "uint16", None)
"""torch.uint16 (torch >= 2.3; "limited support", enough for copies and conversions), else None:
16-bit frames then go in as float32 and come out as int32 (see `pixels_to_tensor`, `pixels_to_numpy`)."""


def pad_to_multiple(x: Tensor, multiple: int = 4) -> Tensor:
    """Reflect-pad (N, C, H, W) at the bottom and right to multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if not (ph or pw):
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


@dataclass(frozen=True)
class Tile:
    """A core region of the (padded) LR frame and the larger context region the model sees."""

    core: tuple[int, int, int, int]  # top, left, bottom, right
    context: tuple[int, int, int, int]


def make_tiles(h: int, w: int, tile: int | None, overlap: int) -> list[Tile]:
    """Cover an h x w frame (multiples of 4) with cores of at most ``tile`` px plus ``overlap`` px of context."""
    if not tile or (tile >= h and tile >= w):
        return [Tile((0, 0, h, w), (0, 0, h, w))]
    step = max(4, tile - tile % 4)
    margin = overlap + (-overlap % 4)
    tiles = []
    for top in range(0, h, step):
        for left in range(0, w, step):
            bottom, right = min(top + step, h), min(left + step, w)
            ctx = (max(top - margin, 0), max(left - margin, 0), min(bottom + margin, h), min(right + margin, w))
            tiles.append(Tile((top, left, bottom, right), ctx))
    return tiles


@dataclass(frozen=True)
class Engine:
    """How a loaded model runs, beyond what a user chooses: `vsrx upscale` and `vsrx eval` run the
    defaults; `vsrx bench` varies them (and extends `prepare` for its naive reference). A job
    records them (`settings`): a resumed job runs the same way."""

    dcn_impl: str = "auto"  # how a dcn model runs: auto: as its exact decomp-9 form on CPU (faster there); decomp; torchvision
    channels_last: bool | None = None  # the trunk and x4 tail channels-last (EDVR.channels_last_tail); None: on CPU
    cache: bool = True  # False recomputes every window's features (`Upscaler`)

    def __post_init__(self) -> None:
        if self.dcn_impl not in DCN_IMPLS:
            raise UsageError(f"unknown dcn implementation {self.dcn_impl!r}; choose one of {', '.join(DCN_IMPLS)}")

    def prepare(self, model: EDVR, device: torch.device, dtype: torch.dtype) -> EDVR:
        """The loaded model as it runs: its aligners' form, the tail's memory layout, device and dtype."""
        if model.config.align == "dcn" and (self.dcn_impl == "decomp" or (self.dcn_impl == "auto" and device.type == "cpu")):
            model = convert_alignment(model, "decomp", 9)
        if self.tail_channels_last(device):
            model.channels_last_tail()
        return model.to(device, dtype)

    def tail_channels_last(self, device: torch.device) -> bool:
        return self.channels_last if self.channels_last is not None else device.type == "cpu"

    def settings(self, device: torch.device) -> dict:
        """What a job manifest records of the engine."""
        return {"dcn_impl": self.dcn_impl, "channels_last": self.tail_channels_last(device), "cache": self.cache}


class Upscaler:
    """Streams x4 super-resolution of a clip through an EDVR model.

    ``stream(frames, total)`` takes (3, H, W) tensors (uint8, uint16 or float in [0, 1]) in order and
    yields (3, 4H, 4W) outputs in float32 (or the model dtype if wider), not clamped. Any H, W works (reflect-padded
    to multiples of 4 for the model, outputs cropped to exactly 4H x 4W). ``cache=False``
    recomputes every window's features (the naive reference). ``scene_threshold``: detect hard
    cuts (`vsrx.io.scenes`) and keep every window inside its shot; None: off. ``self_ensemble``: run
    each window in all 8 rotations/reflections and average the outputs turned back (8x the compute; a
    flow-guided model's flows are computed once and turned with each view).
    """

    def __init__(
        self,
        model: EDVR,
        *,
        padding: str = "reflection_circle",
        batch: int = 1,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        tile: int | None = None,
        tile_overlap: int = 32,
        cache: bool = True,
        scene_threshold: float | None = None,
        self_ensemble: bool = False,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self.model, self.padding, self.batch = model, padding, max(batch, 1)
        self.device, self.dtype = torch.device(device), dtype
        self.tile, self.tile_overlap, self.cache = tile, tile_overlap, cache
        self.scene_threshold = scene_threshold
        self.views = DIHEDRAL if self_ensemble else DIHEDRAL[:1]
        self.on_retry = on_retry or (lambda msg: None)
        self.num_frame = model.config.num_frame
        self.total_seen: int | None = None
        self.size: tuple[int, int] | None = None
        self.cuts: list[int] = []  # frames found to start a new shot, in the frames decoded so far
        self._anchor = 0

    def windows(self, centre: int, total: int) -> list[int]:
        return frame_indices(centre, self.num_frame, total, self.padding, self.cuts)

    def _group_end(self, centre: int) -> int:
        """End of the group of ``batch`` centres that ``centre`` belongs to (a grid from the anchor)."""
        return self._anchor + ((centre - self._anchor) // self.batch + 1) * self.batch

    def _chunk_start(self, index: int) -> int:
        """First frame of the group of ``batch`` frames whose features are extracted together with ``index``.

        The grid is offset by T//2 so that each step of a run extracts exactly one whole group.
        Without the cache, each window's frames are extracted on their own (the naive reference).
        """
        if not self.cache:
            return index
        offset = self._anchor + self.num_frame // 2
        return offset + (index - offset) // self.batch * self.batch

    @torch.inference_mode()
    def stream(self, frames: Iterable[Tensor], total: int, start: int = 0, end: int | None = None, *,
               ranges: Iterable[tuple[int, int]] | None = None, anchor: int | None = None) -> Iterator[Tensor]:
        """Outputs for centres start..end-1 of a ``total``-frame clip, or for each [lo, hi) of ``ranges``
        in turn; ``frames`` yields from frame 0.

        Windows are reconstructed in groups of ``batch`` centres and features extracted in groups
        of ``batch`` frames, both on a grid fixed from ``anchor`` (default: the first centre): so
        every output is the same whichever group boundary a run starts at, which is what makes a
        resumed or split run equal to a whole one. Frames that no window of the ranges needs are
        decoded (and watched for scene cuts) but not processed. If the stream ends early (a
        truncated file), the clip is taken to end there: ``total_seen`` records the count (and
        without ``ranges``, ending before the first centre is an error).
        """
        spans = [(start, total if end is None else end)] if ranges is None else [r for r in ranges if r[0] < r[1]]
        self.total_seen, self.cuts = None, []
        if not spans:
            return
        self._anchor = spans[0][0] if anchor is None else anchor
        detect = SceneCuts(self.scene_threshold) if self.scene_threshold is not None else None
        it = iter(frames)
        raw: dict[int, Tensor] = {}  # padded LR frames still needed
        pyramids: dict[tuple[int, tuple[int, int]], tuple[Tensor, ...]] = {}  # (frame, (tile, view)) -> features
        decoded, yielded = 0, False
        for lo, hi in spans:
            centre = lo
            while centre < min(hi, total):
                centres = list(range(centre, min(self._group_end(centre), hi, total)))
                # A window reaches at most T-1 frames back from its centre; drop what lies before that.
                keep_from = self._chunk_start(centre - self.num_frame + 1)
                for i in [i for i in raw if i < keep_from]:
                    del raw[i]
                for key in [key for key in pyramids if key[0] not in raw]:
                    del pyramids[key]
                while True:  # decode until the windows (which depend on the cuts found so far) are all in
                    wins = [self.windows(c, total) for c in centres]
                    need = max(min(self._chunk_start(i) + self.batch, total) if self.cache else i + 1
                               for w in wins for i in w)
                    if need <= decoded:
                        break
                    frame = next(it, None)
                    if frame is None:  # shorter than announced: the clip ends here
                        if decoded <= centres[0]:
                            if not yielded and ranges is None:
                                raise VsrxError(f"the video ended after {decoded} frames, before frame {centres[0]}")
                            self.total_seen = decoded
                            return
                        total = self.total_seen = decoded
                        centres = [c for c in centres if c < total]
                        continue
                    if detect is not None and detect(frame):
                        self.cuts.append(decoded)
                    if decoded >= keep_from:
                        raw[decoded] = self._prepare(frame)
                        self.size = tuple(frame.shape[-2:])
                    decoded += 1
                if not self.cache:
                    pyramids.clear()
                out = self._run_with_retry(wins, raw, pyramids)
                h, w = self.size
                for k in range(len(centres)):
                    yield out[k, :, : 4 * h, : 4 * w]
                yielded = True
                centre = centres[-1] + 1

    def _prepare(self, x: Tensor) -> Tensor:
        """A frame in [0, 1], padded, in float32 or wider: a reduced-precision model casts frames itself
        and keeps the bilinear base of its output exact (`EDVR.extract`)."""
        x = x.to(self.device, non_blocking=True)
        dtype = torch.promote_types(self.dtype, torch.float32)
        if x.dtype == torch.uint8:
            x = x.to(dtype) / 255
        elif _UINT16 is not None and x.dtype == _UINT16:
            x = x.to(dtype) / 65535
        else:
            x = x.to(dtype)
        return pad_to_multiple(x.unsqueeze(0))[0]

    def _run_with_retry(self, wins: list[list[int]], raw: dict[int, Tensor], pyramids: dict) -> Tensor:
        while True:
            try:
                return self._run(wins, raw, pyramids)
            except torch.OutOfMemoryError:
                if self.device.type != "cuda":
                    raise
                h, w = next(iter(raw.values())).shape[-2:]
                current = self.tile or max(h, w)
                if current // 2 < MIN_TILE:
                    raise VsrxError(f"out of GPU memory even with {current}px tiles; try --batch 1 or --device cpu") from None
                self.tile = current // 2
                pyramids.clear()
                torch.cuda.empty_cache()
                self.on_retry(f"out of GPU memory: retrying with --tile {self.tile}")

    def _extraction_groups(self, wins: list[list[int]], raw: dict[int, Tensor], pyramids: dict, key: tuple[int, int]) -> list[list[int]]:
        """The frames whose features (for ``key``: tile, view) are missing for these windows, in the groups
        they are extracted in: with the cache, each missing frame's whole `_chunk_start` group; without,
        batch * T at a time."""
        todo = sorted({i for win in wins for i in win if (i, key) not in pyramids})
        if not self.cache:
            chunk = self.batch * self.num_frame
            return [todo[s : s + chunk] for s in range(0, len(todo), chunk)]
        starts = sorted({self._chunk_start(i) for i in todo})
        return [[i for i in range(s, s + self.batch) if i in raw and (i, key) not in pyramids] for s in starts]

    def _run(self, wins: list[list[int]], raw: dict[int, Tensor], pyramids: dict) -> Tensor:
        h, w = next(iter(raw.values())).shape[-2:]
        tiles = make_tiles(h, w, self.tile, self.tile_overlap)
        flows = None
        if self.model.config.flow_guided:
            # On whole frames, so that tiles see the motion their crops would miss; each (centre, neighbour)
            # pair belongs to one window only, so there is nothing to cache.
            flows = self.model.window_flows(torch.stack([torch.stack([raw[i] for i in win]) for win in wins]))
        out = None
        for t, tile in enumerate(tiles):
            top, left = tile.context[:2]
            sr = None
            for v, flags in enumerate(self.views):
                y = self._run_view(wins, raw, pyramids, (t, v), tile.context, flags, flows)
                sr = y if sr is None else sr.add_(y)
            if len(self.views) > 1:
                sr = sr.div_(len(self.views))
            if len(tiles) == 1:
                return sr
            if out is None:
                out = sr.new_empty(len(wins), 3, 4 * h, 4 * w)
            ct, cl, cb, cr = tile.core
            out[:, :, 4 * ct : 4 * cb, 4 * cl : 4 * cr] = sr[:, :, 4 * (ct - top) : 4 * (cb - top), 4 * (cl - left) : 4 * (cr - left)]
        return out

    def _run_view(self, wins: list[list[int]], raw: dict[int, Tensor], pyramids: dict, key: tuple[int, int],
                  context: tuple[int, int, int, int], flags: tuple[bool, bool, bool], flows: Tensor | None) -> Tensor:
        """The windows' outputs for one tile's context region seen in one view (`flip_transpose` flags),
        turned back to the frame's orientation."""
        top, left, bottom, right = context

        def view(frames: list[Tensor]) -> Tensor:
            return flip_transpose([torch.stack([x[:, top:bottom, left:right] for x in frames])], None, *flags)[0][0]

        for ids in self._extraction_groups(wins, raw, pyramids, key):
            feats = self.model.extract(view([raw[i] for i in ids]), with_terms=True)
            for k, i in enumerate(ids):
                pyramids[(i, key)] = tuple(level[k] for level in feats)
        parts = len(pyramids[(wins[0][0], key)])
        pyramid = tuple(torch.stack([torch.stack([pyramids[(i, key)][lv] for i in win]) for win in wins]) for lv in range(parts))
        c = self.model.config.center
        centre = view([raw[win[c]] for win in wins])
        if flows is not None:
            flows = flip_transpose([], flows[..., top:bottom, left:right], *flags)[1]
        return unflip_transpose(self.model.reconstruct_window(pyramid, centre, flows), *flags)


def upscale_stream(model: EDVR, frames: Iterable[Tensor], total: int, **options) -> Iterator[Tensor]:
    """Shorthand for ``Upscaler(model, **options).stream(frames, total)``."""
    return Upscaler(model, **options).stream(frames, total)


def to_uint8(x: Tensor) -> Tensor:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8, clamped and rounded."""
    return x.float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0)


def to_uint16(x: Tensor) -> Tensor:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint16 (0..65535), clamped and rounded.

    Without torch.uint16 (torch < 2.3) the values come as int32; `pixels_to_numpy` makes them uint16.
    """
    return x.float().clamp(0, 1).mul(65535).round().to(torch.int32 if _UINT16 is None else _UINT16).permute(1, 2, 0)


def to_pixels(x: Tensor, bits: int = 8) -> Tensor:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8 for ``bits`` <= 8, else uint16."""
    return to_uint8(x) if bits <= 8 else to_uint16(x)


def pixels_to_tensor(rgb: np.ndarray) -> Tensor:
    """An (H, W, 3) uint8 or uint16 frame as a tensor that ``Upscaler.stream`` takes after
    ``permute(2, 0, 1)``: the same memory, or float32 in [0, 1] for uint16 without torch.uint16."""
    if rgb.dtype == np.uint16 and _UINT16 is None:
        return torch.from_numpy(rgb.astype(np.float32) / 65535)
    if rgb.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected uint8 or uint16 pixels, got {rgb.dtype}")
    return torch.from_numpy(rgb)


def pixels_to_numpy(x: Tensor) -> np.ndarray:
    """A CPU output of `to_uint8`/`to_uint16` as a numpy array (uint8 or uint16)."""
    pixels = x.numpy()
    return pixels.astype(np.uint16) if pixels.dtype == np.int32 else pixels
