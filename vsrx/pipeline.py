"""`vsrx upscale`: source -> windows with cached features -> model -> sink, written atomically.

The reader streams frames, `Upscaler` keeps only the frames and features later windows need,
and the sink writes to a temporary file renamed onto the target only when everything
succeeded. Under torchrun the ranks split the frame range; each spills its frames to a raw
file beside the target and rank 0 encodes them all, in order, into one output. A source of
more than 8 bits per component is processed as 16-bit RGB end to end (uint16 in and out).
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from vsrx.errors import UsageError, VsrxError
from vsrx.inference import Upscaler, pixels_to_numpy, pixels_to_tensor, to_pixels, to_uint8
from vsrx.io.reader import Frame, FrameSource, open_source
from vsrx.io.writer import VideoSink, open_sink
from vsrx.models import EDVR, EDVRConfig, convert_alignment, load_model


@dataclass
class UpscaleOptions:
    """Everything `vsrx upscale` takes besides the paths."""

    model: str | None = None
    align: str | None = None
    offsets: int | None = None
    device: str = "auto"
    precision: str = "auto"
    batch: int = 1
    padding: str = "reflection_circle"
    tile: int | None = None
    tile_overlap: int = 32
    start: int = 0
    end: int | None = None
    frames: bool = False
    codec: str | None = None
    crf: float = 18
    preset: str = "medium"
    pix_fmt: str | None = None
    encoder_options: dict[str, str] = field(default_factory=dict)
    audio: bool = True
    subtitles: bool = True
    overwrite: bool = False
    # auto: dcn models run as their exact decomp-9 form on CPU, where it is faster; torchvision: every
    # aligner through torchvision's deform_conv2d (decomp-N and flow embedded in a k x k kernel)
    dcn_impl: str = "auto"
    channels_last: bool | None = None  # the trunk and x4 tail channels-last (EDVR.channels_last_tail); None: on CPU
    cache: bool = True  # False recomputes every window's features (the naive reference of `vsrx bench`)


@dataclass
class UpscaleResult:
    output: str
    frames: int
    seconds: float
    fps: float
    bytes: int
    model: str
    mode: str
    device: str
    precision: str
    notes: list[str]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


def pick_dtype(precision: str, device: torch.device) -> torch.dtype:
    """auto: fp16 on CUDA, fp32 on CPU. Aligners sample in fp32 whatever this is (see align.py)."""
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    if dtype is None:
        raise UsageError(f"unknown precision {precision!r}; use auto, fp16, bf16 or fp32")
    if dtype == torch.float16 and device.type == "cpu":
        raise UsageError("--precision fp16 needs a CUDA device; use fp32 or bf16 on CPU")
    return dtype


def resolve_model(opts: UpscaleOptions, device: torch.device, dtype: torch.dtype) -> tuple[EDVR, str, EDVRConfig]:
    """The model to run, its display name, and its config as asked (a dcn model may run as decomp-9)."""
    from vsrx.models import zoo

    name = opts.model or zoo.default_name()
    if opts.model is None and (opts.align or opts.offsets):  # pick the asked variant of the default model's family
        name = zoo.manifest()["models"][name].get("family") or name
    model = load_model(name, opts.align, opts.offsets, device=device)
    if not isinstance(model, EDVR):
        raise UsageError(f"{name} is not a super-resolution model")
    return prepare_model(model, opts, device, dtype), Path(name).name, model.config


def prepare_model(model: EDVR, opts: UpscaleOptions, device: torch.device, dtype: torch.dtype) -> EDVR:
    """How a loaded model runs: its aligners' implementation (`dcn_impl`), layout and dtype."""
    if model.config.align == "dcn" and (opts.dcn_impl == "decomp" or (opts.dcn_impl == "auto" and device.type == "cpu")):
        model = convert_alignment(model, "decomp", 9)
    elif opts.dcn_impl == "torchvision":
        for aligner in model.aligners().values():
            aligner.via_torchvision = True
    if opts.channels_last if opts.channels_last is not None else device.type == "cpu":
        model.channels_last_tail()
    return model.to(device, dtype)


def frame_range(opts: UpscaleOptions, total: int) -> tuple[int, int]:
    end = total if opts.end is None else opts.end
    if not 0 <= opts.start < total:
        raise UsageError(f"--start {opts.start} is outside the clip's {total} frames")
    if not opts.start < end <= total:
        raise UsageError(f"--end {end} must be after --start {opts.start} and at most {total}")
    return opts.start, end


def upscale(src: str, dst: str, opts: UpscaleOptions, progress: Callable[[int, int], None] | None = None,
            note: Callable[[str], None] | None = None) -> UpscaleResult | None:
    """Upscale src into dst; returns the summary (None on ranks other than 0 under torchrun)."""
    progress = progress or (lambda done, total: None)
    note = note or (lambda msg: None)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    source = open_source(src, keep_bit_depth=True)
    device = pick_device(opts.device)
    dtype = pick_dtype(opts.precision, device)
    model, model_name, asked = resolve_model(opts, device, dtype)
    start, end = frame_range(opts, source.num_frames)
    upscaler = Upscaler(model, padding=opts.padding, batch=opts.batch, device=device, dtype=dtype,
                        tile=opts.tile, tile_overlap=opts.tile_overlap, cache=opts.cache, on_retry=note)
    t0 = time.perf_counter()
    if world > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        bounds = np.linspace(start, end, world + 1).round().astype(int)
        lo, hi = int(bounds[rank]), int(bounds[rank + 1])
    else:
        lo, hi = start, end
    sink = None
    notes: list[str] = []
    try:
        if rank == 0:
            sink = open_sink(dst, source, frames=opts.frames, codec=opts.codec, crf=opts.crf, preset=opts.preset,
                             pix_fmt=opts.pix_fmt, options=opts.encoder_options,
                             audio=opts.audio and (start, end) == (0, source.num_frames),
                             subtitles=opts.subtitles and (start, end) == (0, source.num_frames), overwrite=opts.overwrite)
            if isinstance(sink, VideoSink) and (start, end) != (0, source.num_frames) and (source.has_audio or source.has_subtitles):
                notes.append("audio/subtitles not copied for a --start/--end range")
        frames = run_range(upscaler, source, lo, hi)
        if world > 1:
            done = spill_and_gather(frames, dst, rank, world, lambda k: progress(k, end - start), sink)
        else:
            done = 0
            for frame, rgb in frames:
                sink.write(rgb, frame.pts, frame.duration)
                done += 1
                progress(done, end - start)
        if rank == 0:
            if source.truncated or done < end - start:
                notes.append(source.warning or f"decoded {done} of {end - start} expected frames")
            notes += sink.close()
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    if rank != 0:
        return None
    seconds = time.perf_counter() - t0
    out = Path(dst)
    size = sum(p.stat().st_size for p in out.rglob("*")) if out.is_dir() else out.stat().st_size
    return UpscaleResult(str(out), done, seconds, done / max(seconds, 1e-9), size, model_name,
                         asked.mode_name, str(device), str(dtype).removeprefix("torch."), notes)


def run_range(upscaler: Upscaler, source: FrameSource, lo: int, hi: int) -> Iterator[tuple[Frame, np.ndarray]]:
    """(source frame, SR HxWx3) for centres lo..hi-1, decoding only as far as the windows need.

    Outputs are uint8, or uint16 when the source is high bit depth (its frames are uint16). On
    CUDA each output is rounded on the GPU and copied to pinned host memory without blocking; a
    frame is handed to the writer only once the next batch has been launched, so the GPU never
    waits for the encoder.
    """
    meta: dict[int, Frame] = {}

    def tensors():
        for frame in source:
            meta[frame.index] = frame
            pixels = pixels_to_tensor(frame.rgb)
            yield pixels.pin_memory() if upscaler.device.type == "cuda" else pixels

    pending: deque[tuple[Frame, torch.Tensor, torch.cuda.Event | None]] = deque()
    for k, sr in enumerate(upscaler.stream((t.permute(2, 0, 1) for t in tensors()), source.num_frames, lo, hi)):
        frame = meta.pop(lo + k)
        for i in [i for i in meta if i < lo + k]:
            del meta[i]
        out = to_pixels(sr, frame.bits)
        if out.is_cuda:
            host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
            host.copy_(out, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            pending.append((frame, host, event))
        else:
            pending.append((frame, out, None))
        while len(pending) > (upscaler.batch if out.is_cuda else 0):
            yield _ready(pending.popleft())
    while pending:
        yield _ready(pending.popleft())
    if upscaler.total_seen is not None and upscaler.total_seen < source.num_frames:
        source.truncated = True


def _ready(item: tuple[Frame, torch.Tensor, "torch.cuda.Event | None"]) -> tuple[Frame, np.ndarray]:
    frame, host, event = item
    if event is not None:
        event.synchronize()
    return frame, pixels_to_numpy(host)


def spill_and_gather(frames, dst: str, rank: int, world: int, progress, sink) -> int:
    """Each rank writes its frames to a raw spill file; rank 0 then encodes all of them in order.

    Each record is a header of 8 int64 (height, width, channels, bytes per value, has pts, pts,
    has duration, duration) and the pixels (uint8 or uint16, native byte order).
    """
    target = Path(dst)
    spill = target.parent / f".{target.name}.rank{rank}.spill"
    count = 0
    with open(spill, "wb") as f:
        for frame, rgb in frames:
            header = np.array([*rgb.shape, rgb.dtype.itemsize, frame.pts is not None, frame.pts or 0,
                               frame.duration is not None, frame.duration or 0], dtype=np.int64)
            f.write(header.tobytes())
            f.write(rgb.tobytes())
            count += 1
    counts = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([count]))
    done = 0
    try:
        if rank == 0:
            for r in range(world):
                path = target.parent / f".{target.name}.rank{r}.spill"
                with open(path, "rb") as f:
                    for _ in range(int(counts[r])):
                        h, w, c, size, has_pts, pts, has_dur, dur = (int(v) for v in np.frombuffer(f.read(64), dtype=np.int64))
                        dtype = np.uint16 if size == 2 else np.uint8
                        rgb = np.frombuffer(f.read(h * w * c * size), dtype=dtype).reshape(h, w, c)
                        sink.write(rgb, pts if has_pts else None, dur if has_dur else None)
                        done += 1
                        progress(done)
        dist.barrier()
    finally:
        spill.unlink(missing_ok=True)
    return done


def model_rows(models: tuple[str, ...], aligns: tuple[str, ...], offsets_list: tuple[int, ...], device: str,
               precision: str, batch: int, padding: str, tile: int | None) -> list:
    """(RowSpec, sr_fn) for each model x alignment mode x N asked for, for `vsrx eval`."""
    from vsrx.evaluate.runner import RowSpec
    from vsrx.models import zoo

    dev = pick_device(device)
    dtype = pick_dtype(precision, dev)
    rows = []
    for name in models or (zoo.default_name(),):
        for align in aligns or (None,):
            for offsets in (offsets_list if align == "decomp" else ()) or (None,):
                model, label, asked = resolve_model(UpscaleOptions(model=name, align=align, offsets=offsets), dev, dtype)
                upscaler = Upscaler(model, padding=padding, batch=batch, device=dev, dtype=dtype, tile=tile)

                def sr_fn(lr_frames, upscaler=upscaler):
                    frames = (torch.from_numpy(f).permute(2, 0, 1) for f in lr_frames)
                    return (to_uint8(x).cpu().numpy() for x in upscaler.stream(frames, len(lr_frames)))

                spec = RowSpec(label, asked.align, asked.offsets, sum(p.numel() for p in model.parameters()))
                rows.append((spec, sr_fn))
    return rows
