"""Atomic streaming sinks: an encoded video (with audio/subtitles remuxed from the source) or a PNG folder.

Output goes to a hidden temporary file or folder beside the target and is renamed onto it
only by `close()`; `abort()` (or an exception inside a `with` block) deletes it instead.
Frames are HxWx3 RGB, uint8 (rgb24) or uint16 (rgb48, 16 bits per component): the latter keep
the precision of a high-bit-depth source through to a 10/12/16-bit pix_fmt or 16-bit PNGs.
For resumable jobs (`vsrx.io.job`): `join_videos` concatenates separately encoded parts without re-encoding.
"""

from __future__ import annotations

import contextlib
import io
import secrets
from collections.abc import Iterator, Mapping
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from vsrx.errors import UsageError, VsrxError
from vsrx.io.atomic import remove_path, replace_path
from vsrx.io.images import check_frame, require_av, rgb_format, write_png
from vsrx.io.reader import FrameSource, format_bits

try:  # PyAV is needed only for video files (vsrx.io.images writes PNG frames without it)
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

    def __init__(
        self, path: str | Path, source: FrameSource, overwrite: bool, suffix: str, temp: Path | None = None
    ) -> None:
        self.path = Path(path)
        check_target(self.path, source, overwrite)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.overwrite = overwrite
        self.temp = temp or self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp{suffix}")

    def commit(self) -> None:
        """Move the finished temporary output onto the target, replacing an old one if allowed."""
        if self.path.exists() and not self.overwrite:
            raise UsageError(f"output {self.path} appeared while writing; result left in {self.temp}")
        replace_path(self.temp, self.path)

    def discard(self) -> None:
        """Delete the temporary output, if any."""
        remove_path(self.temp)


def check_target(path: Path, source: FrameSource, overwrite: bool) -> None:
    """Refuse an output path that is the input, or that exists without `overwrite`."""
    if path.resolve() == source.path.resolve():
        raise UsageError(f"output {path} is the input; choose another output path")
    if path.exists() and not overwrite:
        raise UsageError(f"output {path} already exists; pass --overwrite to replace it")


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


class _Muxer(_Sink):
    """A video file written through a hidden temporary file: one video stream (added by `_begin`)
    and the source's audio/subtitle streams, remuxed unchanged in time order (`audio`/`subtitles`
    =False drops them). `bitexact`: no random ids or version tags, so equal packets give equal bytes."""

    def __init__(
        self, path: str | Path, source: FrameSource, *, audio: bool, subtitles: bool, overwrite: bool,
        bitexact: bool = False,
    ) -> None:
        suffix = _video_suffix(path)
        self.source = source
        self.notes: list[str] = []
        self._target = _AtomicTarget(path, source, overwrite, suffix)
        self._copy_types = {kind for kind, keep in (("audio", audio), ("subtitle", subtitles)) if keep}
        self._stream: av.VideoStream | None = None
        self._side: av.container.InputContainer | None = None
        self._side_packets: Iterator[av.Packet] = iter(())
        self._side_streams: dict[int, av.stream.Stream] = {}
        self._held: av.Packet | None = None
        self._closed = False
        # AVI has no timestamps to shift: keep video at 0 rather than pad it behind primed audio.
        muxer_options = {"avoid_negative_ts": "disabled"} if suffix == ".avi" else {}
        if bitexact:
            muxer_options["fflags"] = "+bitexact"
        try:
            self._out = av.open(
                str(self._target.temp), "w", format=VIDEO_FORMATS[suffix], options=muxer_options
            )
        except av.FFmpegError as error:
            raise UsageError(f"cannot write {self._target.path}: {error.strerror}") from None

    def close(self) -> list[str]:
        """Flush, copy the remaining audio/subtitles, move the file into place; returns notes."""
        if self._closed:
            return self.notes
        if self._stream is None:
            self.abort()
            raise ValueError(f"no frames were written to {self.path}")
        try:
            self._flush()
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

    def _flush(self) -> None:
        """Mux what the video stream still holds (an encoder's delayed packets)."""

    def _begin(self, stream: av.VideoStream, what: str) -> None:
        """Take `stream` as the video, add the copied audio/subtitle streams and write the header."""
        self._stream = stream
        self._open_side()
        try:
            self._out.start_encoding()
        except av.FFmpegError as error:
            raise UsageError(f"cannot start writing {self.path.name} with {what}: {error.strerror}") from None

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


class VideoSink(_Muxer):
    """Encodes RGB frames into a video file, carrying over timestamps, colour tags, pixel aspect ratio,
    and the source's audio/subtitle streams (remuxed unchanged; `audio`/`subtitles`=False drops them).

    Timestamps are the source's pts in its time base (VFR kept); a frame folder source, or an .avi
    target, gets a constant rate (the source's, else `fps`, else 25). `codec` defaults to libx264
    (VP9 for .webm); `crf`/`preset` go to encoders that have them; `options` are extra encoder
    options (`-e key=value`). Odd sizes with a chroma-subsampled pix_fmt (e.g. yuv420p) are padded
    to even by repeating the last row/column, so no source pixel is lost; `close()` notes it.
    `start_frame`: the first frame's position when timestamps are rewritten (a part of a longer
    output, see `join_videos`).
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
        start_frame: int = 0,
    ) -> None:
        super().__init__(path, source, audio=audio, subtitles=subtitles, overwrite=overwrite)
        suffix = self.path.suffix.lower()
        self._fps = source.fps or (Fraction(fps).limit_denominator(1_000_000) if fps else DEFAULT_FPS)
        self._retime = source.time_base is None or suffix == ".avi"
        if self._retime and source.time_base is not None:
            self.notes.append(
                f"{suffix} stores a constant frame rate: timestamps rewritten at {float(self._fps):g} fps"
            )
        self._time_base = 1 / self._fps if self._retime else source.time_base
        self._step = max(round(1 / (self._fps * self._time_base)), 1)
        self._reformatter = VideoReformatter()
        self._pad: np.ndarray | None = None
        self._range = ColorRange.MPEG
        self._colorspace: Colorspace | None = None
        self._last_pts: int | None = None
        self._first_pts = start_frame * self._step
        try:
            self._codec, self._pix_fmt, self._options = _encoder_settings(
                self._out, suffix, source, codec, crf, preset, pix_fmt, options
            )
        except BaseException:
            self.abort()
            raise

    def write(self, rgb: np.ndarray, pts: int | None = None, duration: int | None = None) -> None:
        """Encode one uint8 or uint16 HxWx3 frame at `pts` (source time base; None: one frame after the last)."""
        check_frame(rgb)
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
            pts = self._first_pts if self._last_pts is None else self._last_pts + self._step
        elif self._last_pts is not None and pts <= self._last_pts:
            pts = self._last_pts + 1
        self._last_pts = pts
        frame = self._reformatter.reformat(
            av.VideoFrame.from_ndarray(rgb, format=rgb_format(rgb)),
            format=self._pix_fmt,
            dst_colorspace=self._colorspace,
            src_color_range=ColorRange.JPEG,
            dst_color_range=self._range,
        )
        frame.pts, frame.time_base = pts, self._time_base
        frame.duration = self._step if self._retime or not duration else duration
        self._mux_video(stream.encode(frame))

    def _flush(self) -> None:
        self._mux_video(self._stream.encode(None))

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
        self._begin(stream, f"{self._codec.name} {self._options}")

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
        self._size: tuple[int, int] | None = None
        self._count = 0
        self._closed = False

    def write(self, rgb: np.ndarray, pts: int | None = None, duration: int | None = None) -> None:
        """Write one uint8 or uint16 HxWx3 frame as the next PNG; timestamps are not stored."""
        check_frame(rgb)
        size = (rgb.shape[1], rgb.shape[0])
        if self._size is not None and size != self._size:
            raise ValueError(f"frame is {size[0]}x{size[1]}, earlier frames are {self._size[0]}x{self._size[1]}")
        write_png(self._target.temp / f"{self._count:08d}.png", rgb)
        self._size = size
        self._count += 1

    def close(self) -> list[str]:
        """Move the folder into place; returns notes (none for folders)."""
        if self._closed:
            return []
        if self._count == 0:
            self.abort()
            raise ValueError(f"no frames were written to {self.path}")
        try:
            self._target.commit()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return []

    def abort(self) -> None:
        """Stop writing and delete the partial folder; the target is left untouched."""
        if not self._closed:
            self._closed = True
            self._target.discard()


def move_into_place(folder: Path, path: str | Path, source: FrameSource, overwrite: bool = False) -> None:
    """Rename a finished folder of frames onto `path` (replacing an old one only with `overwrite`)."""
    _AtomicTarget(path, source, overwrite, "", temp=folder).commit()


def join_videos(
    parts: list[Path], path: str | Path, source: FrameSource, *, audio: bool = True, subtitles: bool = True,
    overwrite: bool = False,
) -> list[str]:
    """Concatenate video files into `path` without re-encoding, adding the source's audio/subtitles.

    The parts must come from one encoder configuration, each starting on a keyframe and none
    referring to another (each a separate `VideoSink`), with timestamps that follow on (the source's).
    The output is bitexact (same parts, same bytes) and written atomically; returns notes.
    """
    out = _Muxer(path, source, audio=audio, subtitles=subtitles, overwrite=overwrite, bitexact=True)
    # AVI stores frames in order, not timestamps (and its demuxer's guesses do not carry from one
    # file to the next): number its frames afresh, one tick of its 1/fps time base each.
    renumber = out.path.suffix.lower() == ".avi"
    try:
        last_dts, count = None, 0
        for part in parts:
            with av.open(str(part)) as container:
                stream = container.streams.video[0]
                if out._stream is None:
                    template = stream.codec_context.extradata
                    out._begin(out._out.add_stream_from_template(stream), "a copy of the segments")
                elif stream.codec_context.extradata != template:
                    raise VsrxError(f"cannot join {part.name}: encoded with other settings than {parts[0].name}")
                for packet in container.demux(stream):
                    if not packet.size:
                        continue
                    if renumber:
                        packet.pts = packet.dts = count
                    count += 1
                    # Some containers (Matroska) store no dts, and a part's first dts may fall behind
                    # the previous part's last one: keep them increasing (the decoder orders by pts).
                    if last_dts is not None and (packet.dts is None or packet.dts <= last_dts):
                        packet.dts = last_dts + 1
                    last_dts = packet.dts if packet.dts is not None else last_dts
                    packet.stream = out._stream
                    out._mux_video([packet])
        return out.close()
    except BaseException:
        out.abort()
        raise


def open_sink(
    path: str | Path, source: FrameSource, frames: bool = False, **options: Any
) -> VideoSink | FrameFolderSink:
    """A VideoSink for a video extension, a FrameFolderSink for a path without extension or when `frames`.

    `options` are VideoSink keywords; a frame folder uses only `overwrite` and ignores the rest.
    """
    if is_frame_folder(path, frames):
        return FrameFolderSink(path, source, overwrite=bool(options.get("overwrite", False)))
    return VideoSink(path, source, **options)


def is_frame_folder(path: str | Path, frames: bool = False) -> bool:
    """Whether `path` is written as a folder of PNG frames (no extension, or `frames`); refuses an
    extension that is neither a known video container nor absent."""
    suffix = Path(path).suffix.lower()
    if frames or not suffix:
        return True
    if suffix not in VIDEO_FORMATS:
        raise UsageError(
            f"unknown output extension {suffix!r}; "
            f"use one of {', '.join(VIDEO_FORMATS)} or a folder for PNG frames"
        )
    return False


def _video_suffix(path: str | Path) -> str:
    """The extension of a video output path; UsageError when unknown, VsrxError when PyAV is missing."""
    suffix = Path(path).suffix.lower()
    if suffix not in VIDEO_FORMATS:
        raise UsageError(f"unknown video extension {suffix or '(none)'!r}; use one of {', '.join(VIDEO_FORMATS)}")
    require_av(f"writing {path}")
    return suffix


def check_video_options(
    path: str | Path, source: FrameSource, codec: str | None = None, crf: float = 18, preset: str = "medium",
    pix_fmt: str | None = None, options: Mapping[str, str] | None = None,
) -> None:
    """Raise the UsageError a `VideoSink` with these settings would, without writing anything."""
    suffix = _video_suffix(path)
    with av.open(io.BytesIO(), "w", format=VIDEO_FORMATS[suffix]) as out:
        _encoder_settings(out, suffix, source, codec, crf, preset, pix_fmt, options)


def _encoder_settings(
    out: av.container.OutputContainer, suffix: str, source: FrameSource, codec: str | None, crf: float,
    preset: str, pix_fmt: str | None, options: Mapping[str, str] | None,
) -> tuple[av.Codec, str, dict[str, str]]:
    """The encoder, pix_fmt and encoder options for a file of this container; UsageError if impossible."""
    found = _pick_codec(codec, out, suffix)
    extra = dict(options or {})
    if suffix == ".avi":
        extra.setdefault("bf", "0")  # AVI has no presentation timestamps to reorder B-frames by
    return found, _pick_pix_fmt(pix_fmt, found, source.pix_fmt), _encoder_options(found, crf, preset, extra)


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
