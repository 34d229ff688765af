"""Tiny synthetic clips and frame folders for tests, generated with PyAV."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

VFR_STEPS_MS = (40, 40, 80, 20, 60, 33)
"""Frame durations (ms) that a VFR clip cycles through."""

AUDIO_RATE = 8000


def pattern(index: int, size: tuple[int, int]) -> np.ndarray:
    """Deterministic moving test pattern (uint8 HxWx3) for frame `index` of a `size`=(W, H) clip."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[..., 0] = (x * 255 // max(width - 1, 1)).astype(np.uint8)
    rgb[..., 1] = (y * 255 // max(height - 1, 1)).astype(np.uint8)
    rgb[..., 2] = 64
    side = max(min(width, height) // 3, 1)
    left, top = (index * 3) % max(width - side, 1), (index * 2) % max(height - side, 1)
    rgb[top : top + side, left : left + side] = (255, 255, 255)
    return rgb


def second_shot(index: int, size: tuple[int, int]) -> np.ndarray:
    """Frame `index` of another shot: the pattern turned around and brightened (a hard cut from `pattern`)."""
    return (pattern(index, size)[::-1, ::-1] // 3 + 150).astype(np.uint8)


def frame_at(index: int, size: tuple[int, int], cut_at: int | None = None) -> np.ndarray:
    """`pattern`, or `second_shot` from frame `cut_at` on."""
    return second_shot(index, size) if cut_at is not None and index >= cut_at else pattern(index, size)


def vfr_pts(frames: int) -> list[int]:
    """Millisecond timestamps of the frames of a VFR clip."""
    pts, now = [], 0
    for i in range(frames):
        pts.append(now)
        now += VFR_STEPS_MS[i % len(VFR_STEPS_MS)]
    return pts


def make_clip(
    path: str | Path,
    frames: int = 12,
    size: tuple[int, int] = (32, 24),
    fps: int = 25,
    audio: bool = False,
    vfr: bool = False,
    subtitles: bool = False,
    pix_fmt: str | None = None,
    faststart: bool = False,
    color: dict[str, int] | None = None,
    sar: Fraction | None = None,
    cut_at: int | None = None,
) -> Path:
    """Write a libx264 clip of `frames` moving-pattern frames; returns the path.

    Odd sizes default to yuv444p (x264 needs even sizes for 4:2:0). `vfr` uses ms
    timestamps cycling VFR_STEPS_MS; `audio` adds a mono AAC sine; `subtitles` adds a
    SubRip stream (mkv only); `faststart` moves the mp4 index to the front; `color` sets
    color_range/color_primaries/color_trc/colorspace tags (and the matrix used to make YUV);
    `sar` sets a pixel aspect ratio; `cut_at`: a hard cut to `second_shot` at that frame.
    """
    path = Path(path)
    width, height = size
    if pix_fmt is None:
        pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        video.codec_context.options = {"preset": "ultrafast", "crf": "20"}
        if sar is not None:
            video.codec_context.sample_aspect_ratio = sar
        for key, value in (color or {}).items():
            setattr(video.codec_context, key, value)
        space = (color or {}).get("colorspace")
        range_ = (color or {}).get("color_range")
        if vfr:
            video.codec_context.time_base = Fraction(1, 1000)
            stamps = vfr_pts(frames)
        else:
            video.codec_context.time_base = Fraction(1, fps)
            stamps = list(range(frames))
        last_step = VFR_STEPS_MS[(frames - 1) % len(VFR_STEPS_MS)] if vfr else 1
        seconds = float((stamps[-1] + last_step) * video.codec_context.time_base)
        sound = out.add_stream("aac", rate=AUDIO_RATE, layout="mono") if audio else None
        subs = out.add_mux_stream("subrip") if subtitles else None
        if subs is not None:
            subs.time_base = Fraction(1, 1000)
        for i, pts in enumerate(stamps):
            frame = av.VideoFrame.from_ndarray(frame_at(i, size, cut_at), format="rgb24").reformat(
                format=pix_fmt, dst_colorspace=space, src_color_range=2, dst_color_range=range_
            )
            frame.pts = pts
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if sound is not None:
            _write_audio(out, sound, seconds)
        if subs is not None:
            _write_subtitles(out, subs, seconds)
    return path


def make_audio_only(path: str | Path, seconds: float = 0.3) -> Path:
    """Write a file with one AAC stream and no video."""
    path = Path(path)
    with av.open(str(path), "w") as out:
        _write_audio(out, out.add_stream("aac", rate=AUDIO_RATE, layout="mono"), seconds)
    return path


def make_undecodable(path: str | Path, frames: int = 6) -> Path:
    """Write an mkv whose H.264 stream has valid headers but garbage in every packet."""
    path = Path(path)
    good = make_clip(path.with_name(f"good-{path.name}"), frames=frames)
    with av.open(str(good)) as src, av.open(str(path), "w") as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(video=0):
            if packet.size:
                junk = av.Packet(b"\x00\x00\x01" + bytes(packet.size))
                junk.stream, junk.time_base = stream, packet.time_base
                junk.pts, junk.dts = packet.pts, packet.dts
                out.mux(junk)
    good.unlink()
    return path


def truncate(path: str | Path, keep: float = 0.6) -> Path:
    """Cut a file to the first `keep` fraction of its bytes, in place."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _write_audio(out: av.container.OutputContainer, stream: av.AudioStream, seconds: float) -> None:
    """Encode `seconds` of a 440 Hz sine into an AAC stream."""
    total = int(seconds * AUDIO_RATE)
    chunk = 1024
    t = np.arange(total, dtype=np.float32) / AUDIO_RATE
    wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    for start in range(0, total, chunk):
        frame = av.AudioFrame.from_ndarray(wave[None, start : start + chunk], format="fltp", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = start
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def _write_subtitles(out: av.container.OutputContainer, stream: av.stream.Stream, seconds: float) -> None:
    """Mux two SubRip cues spread over the clip."""
    half = int(seconds * 500)
    for n, start in enumerate((0, half)):
        packet = av.Packet(f"cue {n}".encode())
        packet.stream = stream
        packet.pts = packet.dts = start
        packet.duration = half
        packet.time_base = stream.time_base
        out.mux(packet)


def make_frame_folder(
    directory: str | Path,
    frames: int = 12,
    size: tuple[int, int] = (32, 24),
    ext: str = "png",
    names: list[str] | None = None,
    cut_at: int | None = None,
) -> Path:
    """Write pattern images frame1.<ext>, frame2.<ext>, ... (or `names`); returns the folder.
    `cut_at`: a hard cut to `second_shot` at that frame."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = names or [f"frame{i + 1}.{ext}" for i in range(frames)]
    for i, name in enumerate(names):
        write_image(directory / name, frame_at(i, size, cut_at))
    return directory


def write_image(path: str | Path, rgb: np.ndarray) -> Path:
    """Write one RGB image; the format comes from the extension (png, jpg, bmp, webp)."""
    path = Path(path)
    codec, pix_fmt = {
        ".png": ("png", "rgb24"),
        ".jpg": ("mjpeg", "yuvj444p"),
        ".jpeg": ("mjpeg", "yuvj444p"),
        ".bmp": ("bmp", "bgr24"),
        ".webp": ("libwebp", "yuv420p"),
    }[path.suffix.lower()]
    with av.open(str(path), "w", format="image2", options={"update": "1"}) as out:
        stream = out.add_stream(codec, rate=1)
        stream.height, stream.width = rgb.shape[:2]
        stream.pix_fmt = pix_fmt
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format=pix_fmt)
        frame.pts = 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def deep_pattern(index: int, size: tuple[int, int], gray: bool = True) -> np.ndarray:
    """Fine 16-bit gradients (uint16 HxWx3) with far more than 256 levels, shifted by frame `index`.

    `gray`: one raster-order ramp in all three channels (survives YUV round trips exactly);
    else a different ramp per channel.
    """
    width, height = size
    n = width * height
    ramp = (np.arange(n, dtype=np.int64).reshape(height, width) * 60000 // n + 2000 + 97 * index) % 65536
    if gray:
        return np.repeat(ramp[..., None], 3, axis=2).astype(np.uint16)
    channels = [ramp, ramp[::-1, ::-1], (ramp * 7 + 12345) % 65536]
    return np.stack(channels, axis=2).astype(np.uint16)


def make_deep_clip(
    path: str | Path, frames: int = 6, size: tuple[int, int] = (32, 24), pix_fmt: str = "yuv420p10le"
) -> Path:
    """Write a lossless (qp 0) libx264 clip of `deep_pattern` gray ramps in a 10-bit `pix_fmt`."""
    path = Path(path)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = *size, pix_fmt
        video.codec_context.options = {"preset": "ultrafast", "qp": "0"}
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(deep_pattern(i, size), format="rgb48le").reformat(
                format=pix_fmt, src_color_range=2, dst_color_range=1
            )
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
    return path


def write_png16(path: str | Path, rgb: np.ndarray) -> Path:
    """Write a uint16 HxWx3 array as a 16-bit RGB PNG."""
    path = Path(path)
    with av.open(str(path), "w", format="image2", options={"update": "1"}) as out:
        stream = out.add_stream("png", rate=1)
        stream.height, stream.width = rgb.shape[:2]
        stream.pix_fmt = "rgb48be"
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb48le").reformat(format="rgb48be")
        frame.pts = 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path
