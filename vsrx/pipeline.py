"""`vsrx upscale`: source -> windows with cached features -> model -> segments -> one output, resumable.

The reader streams frames, `Upscaler` keeps only the frames and features later windows need
(and, with scene cuts on, keeps every window inside its shot), and the frames go into a job
folder beside the target (`vsrx.io.job`): segments encoded on their own, or PNG frames, each
written atomically, so an interrupted run resumes where it stopped (`--resume`) and gives the
same output as an uninterrupted one. When all segments are done they are joined without
re-encoding, audio and subtitles muxed once, and renamed onto the target. Under torchrun the
ranks share out the unfinished segments. A source of more than 8 bits per component is
processed as 16-bit RGB end to end (uint16 in and out). `Session` loads the model once for
any number of sources (`upscale_many`, `--dry-run` estimates).
"""

from __future__ import annotations

import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import vsrx
from vsrx.device import pick_device, pick_dtype
from vsrx.errors import UsageError, VsrxError
from vsrx.inference import Engine, Upscaler, pixels_to_numpy, pixels_to_tensor, to_pixels
from vsrx.io.job import Job, SegmentWriter, fingerprint, job_folder
from vsrx.io.reader import Frame, FrameSource, open_source
from vsrx.io.scenes import DEFAULT_THRESHOLD
from vsrx.io.writer import check_target, check_video_options, is_frame_folder
from vsrx.models import load_sr_model

Progress = Callable[[int, int, int], None]
"""progress(done, total, resumed): frames done of total, of which resumed from an earlier run."""


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
    self_ensemble: bool = False  # average the outputs of all 8 rotations/reflections of each window (8x the compute)
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
    resume: bool = False  # continue the target's unfinished job, if there is one
    scene_cuts: str = "auto"  # auto: detect hard cuts and keep windows inside shots; off
    scene_threshold: float = DEFAULT_THRESHOLD
    segment_frames: int = 120  # frames per segment (rounded up to a multiple of batch)


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
    resumed: int = 0  # frames finished by an earlier, interrupted run
    computed: int = 0  # frames computed by this run (fps counts these)
    scene_cuts: list[int] | None = None  # frames that start a new shot; None with --scene-cuts off
    self_ensemble: bool = False


def frame_range(opts: UpscaleOptions, total: int) -> tuple[int, int]:
    end = total if opts.end is None else opts.end
    if not 0 <= opts.start < total:
        raise UsageError(f"--start {opts.start} is outside the clip's {total} frames")
    if not opts.start < end <= total:
        raise UsageError(f"--end {end} must be after --start {opts.start} and at most {total}")
    return opts.start, end


class Session:
    """A model loaded once, with the options that go with it, to upscale any number of sources.

    Under torchrun (WORLD_SIZE > 1) every rank makes a Session and runs the same sources in the
    same order; the ranks agree after each step that can fail (`_agree`), so a failure on any
    rank fails that source on all of them, and the next source starts in step.
    """

    def __init__(self, opts: UpscaleOptions, note: Callable[[str], None] | None = None, engine: Engine | None = None) -> None:
        from vsrx.models import zoo

        if opts.scene_cuts not in ("auto", "off"):
            raise UsageError(f"--scene-cuts takes auto or off, got {opts.scene_cuts!r}")
        if opts.segment_frames < 1:
            raise UsageError(f"--segment-frames must be at least 1, got {opts.segment_frames}")
        self.opts, self.engine, self.note = opts, engine or Engine(), note or (lambda msg: None)
        self.world, self.rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
        self.device = pick_device(opts.device)
        self.dtype = pick_dtype(opts.precision, self.device, cpu_bf16=True)
        model, self.model_name, weights = load_sr_model(opts.model, opts.align, opts.offsets, self.device)
        self.asked = model.config  # before `prepare`, which may run a dcn model as its decomp-9 form
        self.model = self.engine.prepare(model, self.device, self.dtype)
        self.model_sha256 = zoo.sha256(weights)
        self.threshold = opts.scene_threshold if opts.scene_cuts == "auto" else None
        self.upscaler = Upscaler(self.model, padding=opts.padding, batch=opts.batch, device=self.device, dtype=self.dtype,
                                 tile=opts.tile, tile_overlap=opts.tile_overlap, cache=self.engine.cache,
                                 scene_threshold=self.threshold, self_ensemble=opts.self_ensemble, on_retry=self.note)
        self.segment_frames = -(-opts.segment_frames // self.upscaler.batch) * self.upscaler.batch
        self._own_group = self.world > 1 and not dist.is_initialized()
        if self._own_group:  # only small control messages travel between ranks: gloo on any device
            dist.init_process_group("gloo")
        self._timings: dict[tuple, float] = {}

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        if self._own_group and dist.is_initialized():
            dist.destroy_process_group()

    def run(self, src: str | Path, dst: str | Path, progress: Progress | None = None) -> UpscaleResult | None:
        """Upscale src into dst (resuming its job with `resume`); the summary, None on ranks other than 0."""
        opts, progress = self.opts, progress or (lambda done, total, resumed: None)
        t0 = time.perf_counter()
        job = None  # set on rank 0 once it holds the job folder
        try:
            try:
                source, start, end, prepared, todo, resumed = self._prepare(src, Path(dst))
                job = prepared if self.rank == 0 else None
                error = None
            except BaseException as e:  # noqa: BLE001 (every rank must reach _agree)
                error = e
            todo, resumed = self._agree(error, (todo, resumed) if error is None else None)
            ranges = _merge(_share(todo, self.rank, self.world))
            writer = SegmentWriter(prepared, source, dict(codec=opts.codec, crf=opts.crf, preset=opts.preset,
                                                          pix_fmt=opts.pix_fmt, options=opts.encoder_options),
                                   lambda: self.upscaler.cuts)
            # under torchrun the bar follows rank 0's share
            total = end - start if self.world == 1 else resumed + sum(hi - lo for lo, hi in ranges)
            if resumed and self.rank == 0:
                progress(resumed, total, resumed)
            error = None
            try:
                self.upscaler.tile = opts.tile  # an out-of-memory retry on an earlier source may have shrunk it
                for frame, rgb in run_ranges(self.upscaler, source, ranges, start):
                    writer.write(frame.index, rgb, frame.pts, frame.duration)
                    if self.rank == 0:
                        progress(resumed + writer.written, total, resumed)
                writer.close(self.upscaler.total_seen, ranges)
            except BaseException as e:  # noqa: BLE001
                writer.abort()
                error = e
            self._agree(error)
            if self.rank != 0:
                return None
            full = (start, end) == (0, source.num_frames)
            frames, cuts, notes = job.finish(source, opts.audio and full, opts.subtitles and full, opts.overwrite)
        except BaseException:
            if job is not None and self.rank == 0:
                kept = job.keep_or_discard()
                if kept:
                    self.note(f"{kept} finished frames kept in {job.folder}; run again with --resume to continue")
            raise
        if not full and not job.frames and (source.has_audio or source.has_subtitles):
            notes.append("audio/subtitles not copied for a --start/--end range")
        if frames < end - start:
            notes.append(source.warning or f"decoded {frames} of {end - start} expected frames")
        seconds = time.perf_counter() - t0
        out = Path(dst)
        size = sum(p.stat().st_size for p in out.rglob("*")) if out.is_dir() else out.stat().st_size
        computed = frames - resumed
        return UpscaleResult(str(out), frames, seconds, computed / max(seconds, 1e-9), size, self.model_name,
                             self.asked.mode_name, str(self.device), str(self.dtype).removeprefix("torch."), notes,
                             resumed, computed, cuts if self.threshold is not None else None, self.opts.self_ensemble)

    def _prepare(self, src: str | Path, target: Path) -> tuple[FrameSource, int, int, Job, list, int]:
        """Open the source, check the target and settings, and (rank 0) take up the job folder:
        (source, start, end, job, ranges left to compute, frames already done)."""
        opts = self.opts
        source = open_source(src, keep_bit_depth=True)
        start, end = frame_range(opts, source.num_frames)
        frames_out = is_frame_folder(target, opts.frames)
        check_target(target, source, opts.overwrite)
        if not frames_out:
            check_video_options(target, source, opts.codec, opts.crf, opts.preset, opts.pix_fmt, opts.encoder_options)
        job = Job(target, self._manifest(source, start, end, frames_out))
        if self.rank != 0:
            return source, start, end, job, [], 0
        resumed = job.prepare(opts.resume, opts.overwrite)  # holds the job from here (released on failure)
        batch = self.upscaler.batch
        return source, start, end, job, job.todo(lambda i: start + (i - start) // batch * batch), resumed

    def _manifest(self, source: FrameSource, start: int, end: int, frames_out: bool) -> dict:
        """What a resumed job must share with the one it continues: input, model, every option that
        changes pixels or encoding, software versions."""
        from vsrx.io.reader import av  # None where PyAV is not installed (frame folders only)

        o = self.opts
        options = {"frames": frames_out, "start": start, "end": end, "segment_frames": self.segment_frames,
                   "padding": o.padding, "batch": self.upscaler.batch, "tile": o.tile, "tile_overlap": o.tile_overlap,
                   "self_ensemble": o.self_ensemble,
                   "device": self.device.type, "precision": str(self.dtype).removeprefix("torch."),
                   **self.engine.settings(self.device), "scene_cuts": o.scene_cuts, "scene_threshold": self.threshold}
        if not frames_out:
            options |= {"codec": o.codec, "crf": o.crf, "preset": o.preset, "pix_fmt": o.pix_fmt,
                        "encoder_options": dict(sorted(o.encoder_options.items()))}
        return {"input": fingerprint(source),
                "model": {"name": self.model_name, "mode": self.asked.mode_name, "sha256": self.model_sha256},
                "options": options,
                "software": {"vsrx": vsrx.__version__, "torch": torch.__version__, "av": av and av.__version__}}

    def _agree(self, error: BaseException | None, payload=None):
        """Every rank learns whether any rank failed (then all raise) and gets rank 0's payload."""
        if self.world == 1:
            if error is not None:
                raise error
            return payload
        gathered: list = [None] * self.world
        dist.all_gather_object(gathered, (None if error is None else str(error) or type(error).__name__, payload))
        if error is not None:
            raise error
        failed = next((message for message, _ in gathered if message), None)
        if failed:
            raise VsrxError(f"another process failed: {failed}")
        return gathered[0][1]

    def estimate(self, src: str | Path, dst: str | Path) -> "Estimate | None":
        """Frames, output size, what is already there, and the time to upscale the rest at the
        speed of a short timed run on this machine's first frames of the source; writes nothing."""
        if self.rank != 0:
            return None
        opts, target = self.opts, Path(dst)
        source = open_source(src, keep_bit_depth=True)
        start, end = frame_range(opts, source.num_frames)
        is_frame_folder(target, opts.frames)  # refuses an unknown extension
        job = Job.load(target)
        done = job.frames_done() if job is not None else 0
        if done:
            status = "resume" if opts.resume else "unfinished job"
        else:
            status = "exists" if target.exists() and not opts.overwrite else "new"
        per_frame = self._time_per_frame(source)
        todo = 0 if status == "exists" else end - start - (done if opts.resume else 0)
        return Estimate(str(src), str(target), end - start, todo, f"{4 * source.width}x{4 * source.height}",
                        per_frame, per_frame * todo, status)

    def _time_per_frame(self, source: FrameSource) -> float:
        """Seconds per frame of this model on the source's first frames (after a warm-up group),
        measured once per frame size and bit depth."""
        key = (source.width, source.height, source.high_bit_depth)
        if key not in self._timings:
            up, batch = self.upscaler, self.upscaler.batch
            n = min(source.num_frames, up.num_frame + 2 * batch)
            frames = [pixels_to_tensor(f.rgb).permute(2, 0, 1) for f in itertools.islice(source, n)]
            it = up.stream(iter(frames), len(frames))
            ticks = [time.perf_counter()]
            for k, sr in enumerate(it):
                if (k + 1) % batch == 0 or k + 1 == len(frames):
                    sr.float().sum().item()  # wait for the device
                    ticks.append(time.perf_counter())
            groups = np.diff(ticks)
            steady = groups[1:] if len(groups) > 1 else groups
            self._timings[key] = float(steady.sum()) / max(len(frames) - (batch if len(groups) > 1 else 0), 1)
        return self._timings[key]


@dataclass
class Estimate:
    """What `--dry-run` prints for one source."""

    source: str
    output: str
    frames: int
    todo: int  # frames this run would compute
    size: str  # output WxH
    seconds_per_frame: float
    seconds: float
    status: str  # new, resume, unfinished job, exists, or failed: why


def upscale(src: str, dst: str, opts: UpscaleOptions, progress: Progress | None = None,
            note: Callable[[str], None] | None = None, engine: Engine | None = None) -> UpscaleResult | None:
    """Upscale src into dst; returns the summary (None on ranks other than 0 under torchrun)."""
    with Session(opts, note, engine) as session:
        return session.run(src, dst, progress)


@dataclass
class FileOutcome:
    """One source of `upscale_many`: done (with its result), skipped (output exists) or failed (with the error)."""

    source: str
    output: str
    status: str
    error: str | None = None
    result: UpscaleResult | None = None


def output_path(src: str | Path, out_dir: str | Path, ext: str | None = None, frames: bool = False) -> Path:
    """Where `upscale_many` writes a source: DIR/<name>, in the source's container (a frame folder
    stays a folder), or `ext`; a folder of PNG frames for every source with `frames`."""
    src = Path(src)
    name = src.name if src.is_dir() else src.stem
    if frames:
        return Path(out_dir) / name
    suffix = ext if ext is not None else ("" if src.is_dir() else src.suffix)
    return Path(out_dir) / f"{name}{suffix}"


def upscale_many(sources: list[str], out_dir: str, opts: UpscaleOptions, ext: str | None = None,
                 progress: Callable[[str], Progress] | None = None, note: Callable[[str], None] | None = None,
                 dry_run: bool = False) -> list[FileOutcome] | list[Estimate] | None:
    """Upscale each source into `output_path(...)` with one model load: finished outputs are skipped
    (unless `overwrite`), a failing source is reported through `note` and the rest go on.
    `dry_run`: the `Estimate` of each source instead, writing nothing. None on ranks other than 0."""
    note = note or (lambda msg: None)
    if ext is not None:
        ext = "." + ext.lower().lstrip(".")
        is_frame_folder(f"x{ext}")  # refuses an unknown container
    targets = [output_path(src, out_dir, ext, opts.frames) for src in sources]
    seen: dict[Path, str] = {}
    for src, target in zip(sources, targets):
        if target in seen:
            raise UsageError(f"{seen[target]} and {src} would both be written to {target}")
        seen[target] = src
    with Session(opts, note) as session:
        if dry_run:
            estimates = []
            for src, target in zip(sources, targets):
                try:
                    estimates.append(session.estimate(src, target))
                except VsrxError as e:
                    estimates.append(Estimate(src, str(target), 0, 0, "-", 0.0, 0.0, f"failed: {_named(e, src)}"))
            return estimates if session.rank == 0 else None
        outcomes = []
        for src, target in zip(sources, targets):
            if target.exists() and not opts.overwrite and not job_folder(target).is_dir():
                outcomes.append(FileOutcome(src, str(target), "skipped"))
                continue
            try:
                result = session.run(src, target, progress(Path(src).name) if progress else None)
                outcomes.append(FileOutcome(src, str(target), "done", result=result))
            except Exception as e:  # one bad source must not stop the batch
                message = _named(e, src)
                note(message)
                outcomes.append(FileOutcome(src, str(target), "failed", error=message))
        return outcomes if session.rank == 0 else None


def _named(error: Exception, src: str) -> str:
    """An error as one line that names the source."""
    message = str(error) if isinstance(error, VsrxError) else f"{type(error).__name__}: {error}"
    return message if str(src) in message else f"{src}: {message}"


def _share(todo: list[tuple[int, int]], rank: int, world: int) -> list[tuple[int, int]]:
    """This rank's part of the unfinished ranges: contiguous runs of about equal frame counts."""
    total = sum(hi - lo for lo, hi in todo) or 1
    mine, before = [], 0
    for lo, hi in todo:
        if min((before + (hi - lo) // 2) * world // total, world - 1) == rank:
            mine.append((lo, hi))
        before += hi - lo
    return mine


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Join ranges that follow on from each other."""
    merged: list[tuple[int, int]] = []
    for lo, hi in ranges:
        if merged and merged[-1][1] == lo:
            merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    return merged


def run_ranges(upscaler: Upscaler, source: FrameSource, ranges: list[tuple[int, int]],
               anchor: int) -> Iterator[tuple[Frame, np.ndarray]]:
    """(source frame, SR HxWx3) for the centres of each [lo, hi) in `ranges`, in one pass over the
    source, decoding only as far as the windows need (`anchor`: see `Upscaler.stream`).

    Outputs are uint8, or uint16 when the source is high bit depth (its frames are uint16). On
    CUDA each output is rounded on the GPU and copied to pinned host memory without blocking; a
    frame is handed to the writer only once the next batch has been launched, so the GPU never
    waits for the encoder.
    """
    meta: dict[int, Frame] = {}

    def tensors():
        for frame in source:
            if any(lo <= frame.index < hi for lo, hi in ranges):
                meta[frame.index] = frame
            pixels = pixels_to_tensor(frame.rgb)
            yield pixels.pin_memory() if upscaler.device.type == "cuda" else pixels

    centres = (c for lo, hi in ranges for c in range(lo, hi))
    pending: deque[tuple[Frame, torch.Tensor, torch.cuda.Event | None]] = deque()
    stream = upscaler.stream((t.permute(2, 0, 1) for t in tensors()), source.num_frames, ranges=ranges, anchor=anchor)
    for centre, sr in zip(centres, stream):
        frame = meta.pop(centre)
        for i in [i for i in meta if i < centre]:
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


def _ready(item: tuple[Frame, torch.Tensor, "torch.cuda.Event | None"]) -> tuple[Frame, np.ndarray]:
    frame, host, event = item
    if event is not None:
        event.synchronize()
    return frame, pixels_to_numpy(host)
