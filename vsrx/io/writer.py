"""Atomic streaming sinks: an encoded video (with audio/subtitles remuxed from the source) or a PNG folder.

Output goes to a hidden temporary file or folder beside the target and is renamed onto it
only by `close()`; `abort()` (or an exception inside a `with` block) deletes it instead.
Frames are HxWx3 RGB, uint8 (rgb24) or uint16 (rgb48, 16 bits per component): the latter keep
the precision of a high-bit-depth source through to a 10/12/16-bit pix_fmt or 16-bit PNGs.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from vsrx.errors import UsageError
from vsrx.io.images import write_png
from vsrx.io.reader import FrameSource, format_bits, require_av

try:  # PyAV is needed only for video files; frame folders fall back to torchvision's PNG encoder
    import av
    from av.codec.context import Flags
    from av.video.reformatter import ColorRange, Colorspace, VideoReformatter
except ImportError:
    av = None

VIDEO_FORMATS = {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov", ".webm": "webm", ".avi": "avi"}
"""Output extension -> FFmpeg muxer."""

DEFAULT_FPS = Fraction(25)
"""Frame rate used when the source has none (a frame folder) and none is given."""


class _AtomicTarget:
    """A target path written through a hidden sibling that is renamed onto it on success."""

    def __init__(self, path: str | Path, source: FrameSource, overwrite: bool, suffix: str) -> None:
        self.path = Path(path)
        if self.path.resolve() == source.path.resolve():
            raise UsageError(f"output {self.path} is the input; choose another output path")
        if self.path.exists() and not overwrite:
            raise UsageError(f"output {self.path} already exists; pass --overwrite to replace it")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.overwrite = overwrite
        self.temp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp{suffix}")

    def commit(self) -> None:
        """Move the finished temporary output onto the target, replacing an old one if allowed."""
        if not self.path.exists():
            os.replace(self.temp, self.path)
            return
        if not self.overwrite:
            raise UsageError(f"output {self.path} appeared while writing; result left in {self.temp}")
        if self.temp.is_file() and self.path.is_file():
            os.replace(self.temp, self.path)
            return
        old = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.old")
        os.replace(self.path, old)
        os.replace(self.temp, self.path)
        _remove(old)

    def discard(self) -> None:
        """Delete the temporary output, if any."""
        _remove(self.temp)


class _Sink:
    """Context-manager protocol of the sinks: close on success, abort on any exception (Ctrl-C too)."""

    def close(self) -> list[str]:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    @property
    def path(self) -> Path:
        """The final output path (file or folder)."""
        return self._target.path

    def __enter__(self):
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class VideoSink(_Sink):
    """Encodes RGB frames into a video file, carrying over timestamps, colour tags, pixel aspect ratio,
    and the source's audio/subtitle streams (remuxed unchanged; `audio`/`subtitles`=False drops them).

    Timestamps are the source's pts in its time base (VFR kept); a frame folder source, or an .avi
    target, gets a constant rate (the source's, else `fps`, else 25). `codec` defaults to libx264
    (VP9 for .webm); `crf`/`preset` go to encoders that have them; `options` are extra encoder
    options (`-e key=value`). Odd sizes with a chroma-subsampled pix_fmt (e.g. yuv420p) are padded
    to even by repeating the last row/column, so no source pixel is lost; `close()` notes it.
    """

    def __init__(
        self,
        path: str | Path,
        source: FrameSource,
        *,
        codec: str | None = None,
        crf: float = 18,
        preset: str = "medium",
        pix_fmt: str | None = None,
        options: Mapping[str, str] | None = None,
        fps: Fraction | float | None = None,
        audio: bool = True,
        subtitles: bool = True,
        overwrite: bool = False,
    ) -> None:
        require_av(f"writing {path}")
        suffix = Path(path).suffix.lower()
        if suffix not in VIDEO_FORMATS:
            raise UsageError(
                f"unknown video extension {suffix or '(none)'!r}; use one of {', '.join(VIDEO_FORMATS)}"
            )
        self.source = source
        self.notes: list[str] = []
        self._target = _AtomicTarget(path, source, overwrite, suffix)
        self._fps = source.fps or (Fraction(fps).limit_denominator(1_000_000) if fps else DEFAULT_FPS)
        self._retime = source.time_base is None or suffix == ".avi"
        if self._retime and source.time_base is not None:
            self.notes.append(
                f"{suffix} stores a constant frame rate: timestamps rewritten at {float(self._fps):g} fps"
            )
        self._time_base = 1 / self._fps if self._retime else source.time_base
        self._step = max(round(1 / (self._fps * self._time_base)), 1)
        self._copy_types = {kind for kind, keep in (("audio", audio), ("subtitle", subtitles)) if keep}
        self._stream: av.VideoStream | None = None
        self._side: av.container.InputContainer | None = None
        self._side_packets: Iterator[av.Packet] = iter(())
        self._side_streams: dict[int, av.stream.Stream] = {}
        self._held: av.Packet | None = None
        self._reformatter = VideoReformatter()
        self._pad: np.ndarray | None = None
        self._range = ColorRange.MPEG
        self._colorspace: Colorspace | None = None
        self._last_pts: int | None = None
        self._closed = False
        try:
            # AVI has no timestamps to shift: keep video at 0 rather than pad it behind primed audio.
            muxer_options = {"avoid_negative_ts": "disabled"} if suffix == ".avi" else {}
            self._out = av.open(
                str(self._target.temp), "w", format=VIDEO_FORMATS[suffix], options=muxer_options
            )
        except av.FFmpegError as error:
            raise UsageError(f"cannot write {self._target.path}: {error.strerror}") from None
        try:
            self._codec = _pick_codec(codec, self._out, suffix)
            self._pix_fmt = _pick_pix_fmt(pix_fmt, self._codec, source.pix_fmt)
            extra = dict(options or {})
            if suffix == ".avi":
                extra.setdefault("bf", "0")  # AVI has no presentation timestamps to reorder B-frames by
            self._options = _encoder_options(self._codec, crf, preset, extra)
        except BaseException:
            self.abort()
            raise

    def write(self, rgb: np.ndarray, pts: int | None = None, duration: int | None = None) -> None:
        """Encode one uint8 or uint16 HxWx3 frame at `pts` (source time base; None: one frame after the last)."""
        _check_frame(rgb)
        if self._stream is None:
            self._start(rgb.shape[1], rgb.shape[0], rgb.dtype)
        if self._pad is not None:
            rgb = self._padded(rgb)
        stream = self._stream
        if (rgb.shape[1], rgb.shape[0]) != (stream.width, stream.height):
            raise ValueError(
                f"frame is {rgb.shape[1]}x{rgb.shape[0]}, the video is {stream.width}x{stream.height}"
            )
        if self._retime or pts is None:
            pts = 0 if self._last_pts is None else self._last_pts + self._step
        elif self._last_pts is not None and pts <= self._last_pts:
            pts = self._last_pts + 1
        self._last_pts = pts
        frame = self._reformatter.reformat(
            av.VideoFrame.from_ndarray(rgb, format=_rgb_format(rgb)),
            format=self._pix_fmt,
            dst_colorspace=self._colorspace,
            src_color_range=ColorRange.JPEG,
            dst_color_range=self._range,
        )
        frame.pts, frame.time_base = pts, self._time_base
        frame.duration = self._step if self._retime or not duration else duration
        self._mux_video(stream.encode(frame))

    def close(self) -> list[str]:
        """Flush the encoder, copy the remaining audio/subtitles, move the file into place; returns notes."""
        if self._closed:
            return self.notes
        if self._stream is None:
            self.abort()
            raise ValueError(f"no frames were written to {self.path}")
        try:
            self._mux_video(self._stream.encode(None))
            self._copy_side_packets(None)
            self._out.close()
            self._close_side()
            self._target.commit()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.notes

    def abort(self) -> None:
        """Stop writing and delete the partial output; the target is left untouched."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(av.FFmpegError):
            self._out.close()
        self._close_side()
        self._target.discard()

    def _start(self, width: int, height: int, dtype: np.dtype) -> None:
        """Create the video stream for the first frame's size and the copied audio/subtitle streams."""
        fmt = av.VideoFormat(self._pix_fmt)
        even_w, even_h = fmt.chroma_width(2) == 1, fmt.chroma_height(2) == 1
        padded = (width + (even_w and width % 2), height + (even_h and height % 2))
        if padded != (width, height):
            self._pad = np.empty((padded[1], padded[0], 3), dtype)
            self.notes.append(
                f"padded {width}x{height} to {padded[0]}x{padded[1]} by repeating the edge "
                f"({self._pix_fmt} needs even sizes)"
            )
        stream = self._out.add_stream(self._codec.name, rate=self._fps)
        stream.width, stream.height = padded
        stream.pix_fmt = self._pix_fmt
        stream.time_base = self._time_base
        context = stream.codec_context
        context.time_base = self._time_base
        context.flags |= Flags.frame_duration
        if self.source.sample_aspect_ratio:
            context.sample_aspect_ratio = self.source.sample_aspect_ratio
        context.options = self._options
        color = dict(self.source.color)
        if (self.source.pix_fmt or "").startswith("yuvj"):
            color["color_range"] = int(ColorRange.JPEG)
        if not fmt.is_rgb:
            for key, value in color.items():
                setattr(context, key, value)
        self._range = ColorRange.JPEG if color.get("color_range") == ColorRange.JPEG else ColorRange.MPEG
        space = color.get("colorspace")
        self._colorspace = Colorspace(space) if space in set(Colorspace) else None
        self._stream = stream
        self._open_side()
        try:
            self._out.start_encoding()
        except av.FFmpegError as error:
            raise UsageError(
                f"cannot start writing {self.path.name} with {self._codec.name} {self._options}: "
                f"{error.strerror}"
            ) from None

    def _open_side(self) -> None:
        """Add an output stream for each source audio/subtitle stream this container can hold."""
        if not self._copy_types or not (self.source.has_audio or self.source.has_subtitles):
            return
        side = av.open(str(self.source.path), "r")
        wanted = [s for s in side.streams if s.type in self._copy_types]
        for stream in wanted:
            name = stream.codec.canonical_name
            if name in self._out.supported_codecs:
                self._side_streams[stream.index] = self._out.add_stream_from_template(stream)
            else:
                self.notes.append(
                    f"{stream.type} stream {stream.index} ({name}) dropped: {self.path.suffix} cannot hold it"
                )
        if not self._side_streams:
            side.close()
            return
        self._side = side
        self._side_packets = side.demux(*(side.streams[i] for i in self._side_streams))

    def _mux_video(self, packets: list[av.Packet]) -> None:
        """Mux encoded video packets, each preceded by the copied packets that are due before it."""
        for packet in packets:
            stamp = packet.dts if packet.dts is not None else packet.pts
            self._copy_side_packets(None if stamp is None else stamp * packet.time_base)
            self._out.mux(packet)

    def _copy_side_packets(self, until: Fraction | None) -> None:
        """Remux source audio/subtitle packets with timestamps up to `until` seconds (all when None)."""
        while True:
            if self._held is None:
                try:
                    self._held = next(self._side_packets, None)
                except av.FFmpegError as error:
                    self.notes.append(f"audio/subtitle copy stopped early: {error.strerror}")
                    self._side_packets = iter(())
                    return
                if self._held is None:
                    return
                if not self._held.size:
                    self._held = None
                    continue
            packet = self._held
            stamp = packet.dts if packet.dts is not None else packet.pts
            if until is not None and stamp is not None and stamp * packet.time_base > until:
                return
            packet.stream = self._side_streams[packet.stream.index]
            self._out.mux(packet)
            self._held = None

    def _close_side(self) -> None:
        """Close the second reader of the source used for remuxing."""
        if self._side is not None:
            self._side.close()
            self._side = None

    def _padded(self, rgb: np.ndarray) -> np.ndarray:
        """Copy `rgb` into the even-sized buffer, repeating its last row and column."""
        if self._pad.dtype != rgb.dtype:
            self._pad = np.empty(self._pad.shape, rgb.dtype)
        pad, (h, w) = self._pad, rgb.shape[:2]
        pad[:h, :w] = rgb
        pad[h:, :w] = rgb[-1:]
        pad[:, w:] = pad[:, w - 1 : w]
        return pad


class FrameFolderSink(_Sink):
    """Writes frames as PNG files 00000000.png, 00000001.png, ... (in write order) into a folder:
    8-bit RGB PNGs, or 16-bit ones (rgb48) when the first frame is uint16."""

    def __init__(self, path: str | Path, source: FrameSource, *, overwrite: bool = False) -> None:
        self._target = _AtomicTarget(path, source, overwrite, "")
        self._target.temp.mkdir()
        self._out: av.container.OutputContainer | None = None
        self._stream: av.VideoStream | None = None
        self._count = 0
        self._closed = False

    def write(self, rgb: np.ndarray, pts: int | None = None, duration: int | None = None) -> None:
        """Write one uint8 or uint16 HxWx3 frame as the next PNG; timestamps are not stored."""
        _check_frame(rgb)
        if self._stream is None:
            self._start(rgb.shape[1], rgb.shape[0], rgb.dtype)
        if (rgb.shape[1], rgb.shape[0]) != (self._stream.width, self._stream.height):
            raise ValueError(
                f"frame is {rgb.shape[1]}x{rgb.shape[0]}, "
                f"earlier frames are {self._stream.width}x{self._stream.height}"
            )
        frame = av.VideoFrame.from_ndarray(rgb, format=_rgb_format(rgb))
        if frame.format.name != self._stream.pix_fmt:
            frame = frame.reformat(format=self._stream.pix_fmt)
        frame.pts = self._count
        self._out.mux(self._stream.encode(frame))
        self._count += 1

    def close(self) -> list[str]:
        """Finish the last PNG and move the folder into place; returns notes (none for folders)."""
        if self._closed:
            return []
        if self._count == 0:
            self.abort()
            raise ValueError(f"no frames were written to {self.path}")
        try:
            self._finish_container()
            self._target.commit()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return []

    def abort(self) -> None:
        """Stop writing and delete the partial folder; the target is left untouched."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(av.FFmpegError):
            self._finish_container()
        self._target.discard()

    def _start(self, width: int, height: int, dtype: np.dtype) -> None:
        """Open the PNG image-sequence muxer for frames of the given size (16-bit PNGs for uint16)."""
        pattern = str(self._target.temp / "%08d.png")
        self._out = av.open(pattern, "w", format="image2", options={"start_number": "0"})
        self._stream = self._out.add_stream("png", rate=DEFAULT_FPS)
        pix_fmt = "rgb48be" if dtype == np.uint16 else "rgb24"  # PNG stores 16-bit samples big-endian
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, pix_fmt

    def _finish_container(self) -> None:
        """Flush and close the current PNG muxer, if open."""
        if self._out is not None:
            out, self._out = self._out, None
            if self._stream is not None and self._stream.codec_context.is_open:
                out.mux(self._stream.encode(None))
            out.close()


class PlainFrameFolderSink(FrameFolderSink):
    """8-bit PNG frames written by torchvision's libpng encoder: what `open_sink` uses for a frame
    folder when PyAV is not installed (16-bit frames need PyAV)."""

    _shape: tuple[int, ...] | None = None

    def write(self, rgb: np.ndarray, pts: int | None = None, duration: int | None = None) -> None:
        """Write one uint8 HxWx3 frame as the next PNG; timestamps are not stored."""
        _check_frame(rgb)
        if rgb.dtype != np.uint8:
            require_av("writing 16-bit PNG frames")
        self._shape = self._shape or rgb.shape
        if rgb.shape != self._shape:
            raise ValueError(f"frame is {rgb.shape[1]}x{rgb.shape[0]}, earlier frames are {self._shape[1]}x{self._shape[0]}")
        write_png(self._target.temp / f"{self._count:08d}.png", rgb)
        self._count += 1

    def abort(self) -> None:
        """Stop writing and delete the partial folder; the target is left untouched."""
        if not self._closed:
            self._closed = True
            self._target.discard()


def _check_frame(rgb: np.ndarray) -> None:
    if rgb.dtype not in (np.uint8, np.uint16) or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected a uint8 or uint16 HxWx3 frame, got {rgb.dtype} {rgb.shape}")


def _rgb_format(rgb: np.ndarray) -> str:
    """The packed RGB pix_fmt of a checked frame: rgb24 for uint8, rgb48le for uint16."""
    return "rgb48le" if rgb.dtype == np.uint16 else "rgb24"


def open_sink(
    path: str | Path, source: FrameSource, frames: bool = False, **options: Any
) -> VideoSink | FrameFolderSink:
    """A VideoSink for a video extension, a FrameFolderSink for a path without extension or when `frames`.

    `options` are VideoSink keywords; a frame folder uses only `overwrite` and ignores the rest.
    """
    suffix = Path(path).suffix.lower()
    if frames or not suffix:
        sink = FrameFolderSink if av is not None else PlainFrameFolderSink
        return sink(path, source, overwrite=bool(options.get("overwrite", False)))
    if suffix not in VIDEO_FORMATS:
        raise UsageError(
            f"unknown output extension {suffix!r}; "
            f"use one of {', '.join(VIDEO_FORMATS)} or a folder for PNG frames"
        )
    return VideoSink(path, source, **options)


def _pick_codec(codec: str | None, out: av.container.OutputContainer, suffix: str) -> av.Codec:
    """The requested encoder (default libx264, or the container's own default where H.264 cannot go)."""
    if codec is None:
        codec = "libx264" if "h264" in out.supported_codecs else out.default_video_codec
    try:
        found = av.Codec(codec, "w")
    except (av.FFmpegError, ValueError):
        raise UsageError(f"unknown video encoder {codec!r}") from None
    if found.type != "video":
        raise UsageError(f"{codec!r} is not a video encoder")
    if found.canonical_name not in out.supported_codecs:
        raise UsageError(f"{suffix} files cannot hold {codec} video")
    return found


def _pick_pix_fmt(pix_fmt: str | None, codec: av.Codec, source_fmt: str | None) -> str:
    """The requested pixel format, else the source's colour format when the encoder takes it, else
    yuv420p (yuv420p10le for a source of more than 8 bits per component, where the encoder takes it).

    A full-range yuvj* source maps to its yuv* twin (the output is then tagged full range); a
    grayscale source still gets yuv420p (or yuv420p10le), which players handle far better than 4:0:0.
    """
    supported = [f.name for f in codec.video_formats or ()]
    if pix_fmt is not None:
        if supported and pix_fmt not in supported:
            raise UsageError(f"{codec.name} cannot encode pix_fmt {pix_fmt}; it takes {', '.join(supported)}")
        return pix_fmt
    plain = source_fmt and source_fmt.replace("yuvj", "yuv")  # yuvj*: deprecated full-range aliases
    if plain in supported and len(av.VideoFormat(plain).components) >= 3:
        return plain
    if format_bits(source_fmt) > 8 and "yuv420p10le" in supported:
        return "yuv420p10le"
    return "yuv420p" if "yuv420p" in supported or not supported else supported[0]


def _encoder_options(codec: av.Codec, crf: float, preset: str, extra: Mapping[str, str]) -> dict[str, str]:
    """crf/preset where the encoder has them, overridden by `extra`; unknown option names are refused."""
    known = av.CodecContext.create(codec.name, "w").supported_options
    private = {o.name for o in known.private}
    names = private | {o.name for o in known.generic}
    for key in extra:
        if key not in names:
            raise UsageError(f"unknown option {key!r} for encoder {codec.name}")
    options = {"crf": f"{crf:g}"} if "crf" in private else {}
    if "preset" in private:
        options["preset"] = preset
    if codec.name.startswith("libvpx") and "b" not in extra:
        options["b"] = "0"
    options.update({key: str(value) for key, value in extra.items()})
    return options


def _remove(path: Path) -> None:
    """Delete a file or folder if it exists."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
