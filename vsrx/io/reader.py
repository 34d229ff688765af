"""Streaming frame sources: a video file (anything FFmpeg decodes) or a folder of images."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import numpy as np

from vsrx.errors import InputError
from vsrx.io.images import IMAGE_EXTENSIONS, list_images, read_image, require_av

try:  # PyAV is needed only for video files; frame folders fall back to torchvision's codecs
    import av
    from av.video.reformatter import ColorRange, VideoReformatter
except ImportError:
    av = None


UNSPECIFIED_COLOR = {"color_range": 0, "color_primaries": 2, "color_trc": 2, "colorspace": 2}
"""FFmpeg's 'unspecified' value for each colour property; such values are left out of `color`."""

FrameCountSource = Literal["header", "packets", "files"]


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame: RGB pixels (HxWx3 uint8, or uint16 from a high-bit-depth source opened
    with `keep_bit_depth`) plus its timestamp in the source's time base."""

    index: int
    rgb: np.ndarray
    pts: int | None
    time: float | None
    duration: int | None = None

    @property
    def bits(self) -> int:
        """Bits per component of `rgb`: 8 (uint8) or 16 (uint16)."""
        return self.rgb.dtype.itemsize * 8


def format_bits(pix_fmt: str | None) -> int:
    """Largest bits per colour component of an FFmpeg pixel format (8 when unknown)."""
    if av is None:  # without PyAV only 8-bit frames are read
        return 8
    try:
        return max((c.bits for c in av.VideoFormat(pix_fmt).components), default=8) if pix_fmt else 8
    except (ValueError, av.FFmpegError):
        return 8


class FrameSource(ABC):
    """A sequence of same-sized RGB frames, iterated lazily (each pass re-reads the input).

    Frames are rgb24 (uint8) unless the source was opened with `keep_bit_depth` and its first
    frame's pixel format has more than 8 bits per component (yuv420p10le, gray16, rgb48, a 16-bit
    PNG...): then every frame is decoded to rgb48le (uint16) and `high_bit_depth` is True.
    """

    path: Path
    width: int
    height: int
    num_frames: int
    frame_count_source: FrameCountSource
    fps: Fraction | None
    time_base: Fraction | None
    pix_fmt: str | None
    color: dict[str, int]
    sample_aspect_ratio: Fraction | None = None
    has_audio: bool = False
    has_subtitles: bool = False
    decoded: int = 0
    decode_errors: int = 0
    truncated: bool = False
    keep_bit_depth: bool = False

    @property
    def bits(self) -> int:
        """Bits per component of the source's pixel format (e.g. 8, 10, 16)."""
        return format_bits(self.pix_fmt)

    @property
    def high_bit_depth(self) -> bool:
        """Whether frames are decoded to uint16 rgb48le (`keep_bit_depth` and a source of more than 8 bits)."""
        return self.keep_bit_depth and self.bits > 8

    @property
    def rgb_format(self) -> str:
        """The pixel format frames are decoded to: rgb48le for a high-bit-depth source, else rgb24."""
        return "rgb48le" if self.high_bit_depth else "rgb24"

    @abstractmethod
    def __iter__(self) -> Iterator[Frame]:
        """Yield every frame in order, from the start."""

    @property
    def warning(self) -> str | None:
        """A one-line note when the last pass decoded fewer frames than expected, else None."""
        if not self.truncated:
            return None
        return (
            f"decoded {self.decoded} of {self.num_frames} expected frames from {self.path.name} "
            f"({self.decode_errors} read errors; file truncated or damaged?)"
        )


class VideoSource(FrameSource):
    """Frames of the first video stream of a media file, decoded to rgb24 (rgb48le for a
    high-bit-depth source with `keep_bit_depth`).

    A mid-stream resolution change is scaled back to the first frame's size.
    """

    def __init__(self, path: Path, keep_bit_depth: bool = False) -> None:
        require_av(f"reading {path}")
        self.path = path
        self.keep_bit_depth = keep_bit_depth
        with _open_media(path) as container:
            stream = _video_stream(container, path)
            first = next(_decode(container, stream, self), None)
            if first is None:
                raise InputError(f"{path}: no decodable video frames")
            self.width, self.height = first.width, first.height
            self.pix_fmt = first.format.name
            self.color = {
                key: value
                for key, unspecified in UNSPECIFIED_COLOR.items()
                if (value := int(getattr(first, key))) != unspecified
            }
            self.time_base = stream.time_base
            self._end = (
                stream.start_time + stream.duration
                if stream.duration and stream.start_time is not None
                else None
            )
            self.fps = stream.average_rate or stream.guessed_rate
            self.sample_aspect_ratio = stream.sample_aspect_ratio or None
            self.has_audio = bool(container.streams.audio)
            self.has_subtitles = bool(container.streams.subtitles)
            self._stream_index = stream.index
            self.num_frames, self.frame_count_source = stream.frames, "header"
        if not self.num_frames:
            self.num_frames, self.frame_count_source = self._count_packets(), "packets"
        self.decode_errors, self.truncated = 0, False

    def _count_packets(self) -> int:
        """Count the video stream's packets by demuxing (no decoding)."""
        count = 0
        with _open_media(self.path) as container:
            try:
                for packet in container.demux(container.streams[self._stream_index]):
                    count += packet.size > 0
            except av.FFmpegError:
                pass
        return count

    def __iter__(self) -> Iterator[Frame]:
        self.decoded = self.decode_errors = 0
        self.truncated = False
        reformatter = VideoReformatter()
        guess = _PtsGuess()
        held: tuple[av.VideoFrame, int | None] | None = None
        with _open_media(self.path) as container:
            stream = container.streams[self._stream_index]
            stream.thread_type = "AUTO"
            for frame in _decode(container, stream, self):
                pts = guess(frame)
                if held is not None:
                    step = None if pts is None or held[1] is None else pts - held[1]
                    yield self._frame(reformatter, *held, step)
                held = (frame, pts)
            if held is not None:
                self.truncated = self.truncated or self.decoded + 1 < self.num_frames
                end = None if self.truncated or self._end is None or held[1] is None else self._end - held[1]
                yield self._frame(reformatter, *held, end)
        self.truncated = self.truncated or self.decoded < self.num_frames

    def _frame(
        self, reformatter: VideoReformatter, frame: av.VideoFrame, pts: int | None, duration: int | None
    ) -> Frame:
        """Convert a decoded frame to a Frame; `duration` falls back to the packet's when not positive."""
        rgb = reformatter.reformat(
            frame,
            width=self.width,
            height=self.height,
            format=self.rgb_format,
            src_color_range=frame.color_range,
            dst_color_range=ColorRange.JPEG,
        ).to_ndarray()
        index, self.decoded = self.decoded, self.decoded + 1
        time = None if pts is None else pts * self.time_base.numerator / self.time_base.denominator
        if duration is None or duration <= 0:
            duration = frame.duration or None
        return Frame(index, rgb, pts, time, duration)


class FolderSource(FrameSource):
    """Image files of a folder in natural order ('frame2' before 'frame10'); all must share one size."""

    frame_count_source: FrameCountSource = "files"
    fps = None
    time_base = None

    def __init__(self, path: Path, keep_bit_depth: bool = False) -> None:
        self.path = path
        self.keep_bit_depth = keep_bit_depth
        self.files = _frame_files(path)
        self.num_frames = len(self.files)
        first = _read_image(self.files[0])
        self.width, self.height = first.width, first.height
        self.pix_fmt = first.format.name
        self.color = {}

    def __iter__(self) -> Iterator[Frame]:
        self.decoded = 0
        reformatter = VideoReformatter()
        for index, file in enumerate(self.files):
            image = _read_image(file)
            self._check_size(file, image.width, image.height)
            rgb = reformatter.reformat(image, format=self.rgb_format, src_color_range=image.color_range).to_ndarray()
            self.decoded = index + 1
            yield Frame(index, rgb, None, None)

    def _check_size(self, file: Path, width: int, height: int) -> None:
        if (width, height) != (self.width, self.height):
            raise InputError(
                f"{file.name} is {width}x{height} but {self.files[0].name} is "
                f"{self.width}x{self.height}; all frames in a folder must share one size"
            )


class PlainFolderSource(FolderSource):
    """A frame folder decoded by torchvision's codecs to 8-bit RGB: what `open_source` uses when
    PyAV is not installed (GPU machines without it; 16-bit frames need PyAV)."""

    def __init__(self, path: Path, keep_bit_depth: bool = False) -> None:
        self.path, self.keep_bit_depth, self.color = path, False, {}
        self.files = _frame_files(path)
        self.num_frames, self.pix_fmt = len(self.files), "rgb24"
        self.height, self.width = read_image(self.files[0]).shape[:2]

    def __iter__(self) -> Iterator[Frame]:
        self.decoded = 0
        for index, file in enumerate(self.files):
            rgb = read_image(file)
            self._check_size(file, rgb.shape[1], rgb.shape[0])
            self.decoded = index + 1
            yield Frame(index, rgb, None, None)


def open_source(path: str | Path, keep_bit_depth: bool = False) -> FrameSource:
    """Open a video file or a folder of frames for streaming; raises InputError when it cannot be read.

    `keep_bit_depth`: decode a source of more than 8 bits per component to uint16 rgb48le frames
    instead of uint8 rgb24 (`vsrx upscale` does; metrics, training and viz keep 8 bits).
    """
    path = Path(path)
    if path.is_dir():
        return (FolderSource if av is not None else PlainFolderSource)(path, keep_bit_depth)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    return VideoSource(path, keep_bit_depth)


def _frame_files(path: Path) -> list[Path]:
    """The image files of a frame folder in natural order; InputError when there are none."""
    files = list_images(path)
    if not files:
        raise InputError(f"{path}: no image frames ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) in folder")
    return files


def _open_media(path: Path) -> av.container.InputContainer:
    """Open a media file for reading, turning FFmpeg failures into an InputError."""
    try:
        return av.open(str(path), "r")
    except (av.FFmpegError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not a readable video ({_reason(error)})") from None


def _video_stream(container: av.container.InputContainer, path: Path) -> av.VideoStream:
    """The first video stream that is not cover art."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    raise InputError(f"{path}: no video stream")


def _decode(
    container: av.container.InputContainer, stream: av.VideoStream, source: FrameSource
) -> Iterator[av.VideoFrame]:
    """Decode `stream`, skipping packets that fail to decode and stopping at a demux error.

    Each failure increments `source.decode_errors`; a demux error also sets `source.truncated`.
    """
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.FFmpegError:
            source.decode_errors += 1
            source.truncated = True
            packet = None
        try:
            yield from stream.decode(packet)
        except av.FFmpegError:
            source.decode_errors += 1
        if packet is None:
            return


class _PtsGuess:
    """Best-effort frame timestamps, as FFmpeg guesses them: the frame's pts unless pts runs
    backwards more often than the packet dts does (e.g. AVI with B-frames), then the dts."""

    def __init__(self) -> None:
        self.last_pts: int | None = None
        self.last_dts: int | None = None
        self.bad_pts = self.bad_dts = 0

    def __call__(self, frame: av.VideoFrame) -> int | None:
        pts, dts = frame.pts, frame.dts
        if dts is not None:
            self.bad_dts += self.last_dts is not None and dts <= self.last_dts
            self.last_dts = dts
        elif pts is not None:
            self.last_dts = pts
        if pts is not None:
            self.bad_pts += self.last_pts is not None and pts <= self.last_pts
            self.last_pts = pts
        elif dts is not None:
            self.last_pts = dts
        if pts is not None and (dts is None or self.bad_pts <= self.bad_dts):
            return pts
        return dts


def _read_image(file: Path) -> av.VideoFrame:
    """Decode a single image file."""
    try:
        with av.open(str(file), "r") as container:
            return next(container.decode(video=0))
    except (av.FFmpegError, StopIteration, IndexError, UnicodeDecodeError) as error:
        raise InputError(f"{file}: unreadable image ({_reason(error)})") from None


def _reason(error: BaseException) -> str:
    """Short reason text for an FFmpeg (or other) error."""
    return getattr(error, "strerror", None) or type(error).__name__
