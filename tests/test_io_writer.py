"""Sinks: round trips, timestamps, remuxed audio/subtitles, atomic output and refusals."""

import itertools
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from clips import make_clip, make_frame_folder, pattern, vfr_pts

from vsrx.errors import UsageError
from vsrx.io.reader import FrameSource, open_source
from vsrx.io.writer import FrameFolderSink, VideoSink, open_sink

BT709 = {"color_range": 1, "color_primaries": 1, "color_trc": 1, "colorspace": 1}


def upscale(rgb: np.ndarray) -> np.ndarray:
    """2x nearest-neighbour stand-in for a super-resolved frame."""
    return rgb.repeat(2, axis=0).repeat(2, axis=1)


def transcode(source: FrameSource, target: Path, scale: bool = True, **options: object) -> list[str]:
    """Stream every source frame (2x upscaled by default) into `target`; returns the sink's notes."""
    with open_sink(target, source, **options) as sink:
        for frame in source:
            sink.write(upscale(frame.rgb) if scale else frame.rgb, frame.pts, frame.duration)
    return sink.close()


def packet_bytes(path: Path, kind: str) -> list[bytes]:
    """Payloads of every packet of the first stream of `kind` ('audio' or 'subtitle')."""
    with av.open(str(path)) as container:
        stream = getattr(container.streams, {"audio": "audio", "subtitle": "subtitles"}[kind])[0]
        return [bytes(p) for p in container.demux(stream) if p.size]


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary files or folders left in `folder`."""
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_round_trip_upscaled(tmp_path: Path) -> None:
    source = open_source(make_clip(tmp_path / "in.mp4", frames=12))
    assert transcode(source, tmp_path / "out.mp4") == []
    out = open_source(tmp_path / "out.mp4")
    assert (out.width, out.height, out.num_frames, out.pix_fmt) == (64, 48, 12, "yuv420p")
    frames = list(out)
    assert len(frames) == 12
    assert all(np.abs(f.rgb.astype(int) - upscale(pattern(f.index, (32, 24)))).mean() < 8 for f in frames)
    assert leftovers(tmp_path) == []


def test_vfr_timestamps_and_duration_preserved(tmp_path: Path) -> None:
    source = open_source(make_clip(tmp_path / "in.mp4", frames=14, vfr=True))
    transcode(source, tmp_path / "out.mp4")
    out = list(open_source(tmp_path / "out.mp4"))
    assert [f.time for f in out] == pytest.approx([ms / 1000 for ms in vfr_pts(14)])
    with av.open(str(tmp_path / "in.mp4")) as a, av.open(str(tmp_path / "out.mp4")) as b:
        assert a.duration == b.duration


def test_vfr_intervals_preserved_in_mkv(tmp_path: Path) -> None:
    source = open_source(make_clip(tmp_path / "in.mp4", frames=12, vfr=True, audio=True))
    transcode(source, tmp_path / "out.mkv")
    out = list(open_source(tmp_path / "out.mkv"))
    steps = [b.time - a.time for a, b in itertools.pairwise(out)]
    assert steps == pytest.approx([(b - a) / 1000 for a, b in itertools.pairwise(vfr_pts(12))])


@pytest.mark.parametrize("target", ["out.mp4", "out.mkv", "out.mov"])
def test_audio_packets_copied_bit_identical(tmp_path: Path, target: str) -> None:
    clip = make_clip(tmp_path / "in.mp4", frames=12, audio=True)
    transcode(open_source(clip), tmp_path / target)
    copied = packet_bytes(tmp_path / target, "audio")
    assert copied and copied == packet_bytes(clip, "audio")


def test_subtitles_copied_to_mkv_and_dropped_from_mp4(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "in.mkv", frames=12, audio=True, subtitles=True)
    source = open_source(clip)
    assert transcode(source, tmp_path / "out.mkv") == []
    assert (
        packet_bytes(tmp_path / "out.mkv", "subtitle")
        == packet_bytes(clip, "subtitle")
        == [b"cue 0", b"cue 1"]
    )
    notes = transcode(source, tmp_path / "out.mp4")
    assert notes == ["subtitle stream 2 (subrip) dropped: .mp4 cannot hold it"]
    assert open_source(tmp_path / "out.mp4").has_audio and not open_source(tmp_path / "out.mp4").has_subtitles


def test_audio_and_subtitles_can_be_dropped(tmp_path: Path) -> None:
    source = open_source(make_clip(tmp_path / "in.mkv", frames=6, audio=True, subtitles=True))
    transcode(source, tmp_path / "out.mkv", audio=False, subtitles=False)
    out = open_source(tmp_path / "out.mkv")
    assert not out.has_audio and not out.has_subtitles


def test_colour_tags_carried_over(tmp_path: Path) -> None:
    source = open_source(make_clip(tmp_path / "in.mp4", frames=6, color=BT709))
    transcode(source, tmp_path / "out.mp4", scale=False)
    out = open_source(tmp_path / "out.mp4")
    assert out.color == BT709
    frames = list(out)
    assert len(frames) == 6 and all(np.abs(f.rgb.astype(int) - pattern(f.index, (32, 24))).mean() < 8 for f in frames)


def test_pixel_aspect_ratio_carried_over(tmp_path: Path) -> None:
    source = open_source(make_clip(tmp_path / "in.mkv", frames=4, sar=Fraction(8, 9)))
    assert source.sample_aspect_ratio == Fraction(8, 9)
    transcode(source, tmp_path / "out.mp4")
    assert open_source(tmp_path / "out.mp4").sample_aspect_ratio == Fraction(8, 9)


def test_odd_size_padded_for_yuv420p(tmp_path: Path) -> None:
    source = open_source(make_clip(tmp_path / "in.mp4", frames=6, size=(33, 19)))
    assert transcode(source, tmp_path / "same.mp4", scale=False) == []  # yuv444p source keeps odd sizes
    assert (open_source(tmp_path / "same.mp4").width, open_source(tmp_path / "same.mp4").height) == (33, 19)
    notes = transcode(source, tmp_path / "out.mp4", scale=False, pix_fmt="yuv420p")
    assert notes == ["padded 33x19 to 34x20 by repeating the edge (yuv420p needs even sizes)"]
    out = list(open_source(tmp_path / "out.mp4"))
    assert out[0].rgb.shape == (20, 34, 3)
    assert np.abs(out[0].rgb[:19, :33].astype(int) - pattern(0, (33, 19))).mean() < 8


def test_refuses_existing_target_unless_overwrite(tmp_path: Path) -> None:
    source = open_source(make_clip(tmp_path / "in.mp4", frames=4))
    target = tmp_path / "out.mp4"
    target.write_bytes(b"precious")
    with pytest.raises(UsageError, match="already exists"):
        open_sink(target, source)
    assert target.read_bytes() == b"precious"
    transcode(source, target, overwrite=True)
    assert open_source(target).num_frames == 4
    assert leftovers(tmp_path) == []


def test_refuses_writing_over_the_input(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "in.mp4", frames=4)
    os.symlink(clip, tmp_path / "link.mp4")
    source = open_source(tmp_path / "link.mp4")
    with pytest.raises(UsageError, match="is the input"):
        open_sink(clip, source, overwrite=True)
    folder = open_source(make_frame_folder(tmp_path / "frames", frames=3))
    with pytest.raises(UsageError, match="is the input"):
        open_sink(tmp_path / "frames", folder, overwrite=True)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("target", ["out.mp4", "frames"])
def test_no_partial_output_after_interruption(
    tmp_path: Path, error: type[BaseException], target: str
) -> None:
    source = open_source(make_clip(tmp_path / "in.mp4", frames=12, audio=True))
    with pytest.raises(error), open_sink(tmp_path / target, source) as sink:
        for frame in source:
            sink.write(frame.rgb, frame.pts, frame.duration)
            if frame.index == 6:
                raise error()
    assert not (tmp_path / target).exists()
    assert leftovers(tmp_path) == []


def test_abort_keeps_the_old_target(tmp_path: Path) -> None:
    source = open_source(make_clip(tmp_path / "in.mp4", frames=4))
    target = tmp_path / "out.mp4"
    target.write_bytes(b"old")
    sink = open_sink(target, source, overwrite=True)
    sink.write(next(iter(source)).rgb)
    sink.abort()
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_frame_folder_sink(tmp_path: Path) -> None:
    source = open_source(make_clip(tmp_path / "in.mp4", frames=11))
    sink = open_sink(tmp_path / "frames", source)
    assert isinstance(sink, FrameFolderSink)
    transcode(source, tmp_path / "frames")
    names = sorted(p.name for p in (tmp_path / "frames").iterdir())
    assert names == [f"{i:08d}.png" for i in range(11)]
    back = open_source(tmp_path / "frames")
    assert (back.width, back.height, back.num_frames) == (64, 48, 11)
    for original, written in zip(source, back, strict=True):
        assert np.array_equal(upscale(original.rgb), written.rgb)


def test_folder_source_to_video_uses_given_fps(tmp_path: Path) -> None:
    folder = open_source(make_frame_folder(tmp_path / "frames", frames=5))
    transcode(folder, tmp_path / "out.mkv", fps=10)
    out = open_source(tmp_path / "out.mkv")
    assert out.fps == 10 and [f.time for f in out] == pytest.approx([0, 0.1, 0.2, 0.3, 0.4])


def test_full_range_jpeg_frames_stay_full_range(tmp_path: Path) -> None:
    folder = open_source(make_frame_folder(tmp_path / "frames", frames=4, ext="jpg"))
    assert folder.pix_fmt == "yuvj444p"
    transcode(folder, tmp_path / "out.mp4", scale=False)
    out = open_source(tmp_path / "out.mp4")
    assert out.color.get("color_range") == 2  # the H.264 decoder reports this as yuvj444p again
    for original, written in zip(folder, out, strict=True):
        assert np.abs(original.rgb.astype(int) - written.rgb).mean() < 4


def test_open_sink_dispatch_and_bad_options(tmp_path: Path) -> None:
    source = open_source(make_clip(tmp_path / "in.mp4", frames=3))
    for name, kind in [("a.MP4", VideoSink), ("b", FrameFolderSink), ("c.mkv", VideoSink)]:
        sink = open_sink(tmp_path / name, source)
        assert isinstance(sink, kind)
        sink.abort()
    frames_sink = open_sink(tmp_path / "d.mp4", source, frames=True)
    assert isinstance(frames_sink, FrameFolderSink)
    frames_sink.abort()
    with pytest.raises(UsageError, match=r"unknown output extension '\.xyz'"):
        open_sink(tmp_path / "e.xyz", source)
    with pytest.raises(UsageError, match="unknown option 'nonsense' for encoder libx264"):
        open_sink(tmp_path / "f.mp4", source, options={"nonsense": "1"})
    with pytest.raises(UsageError, match="unknown video encoder"):
        open_sink(tmp_path / "g.mp4", source, codec="nocodec")
    with pytest.raises(UsageError, match=r"\.webm files cannot hold libx264"):
        open_sink(tmp_path / "h.webm", source, codec="libx264")
    sink = open_sink(tmp_path / "i.mp4", source, options={"preset": "nonsense"})
    with pytest.raises(UsageError, match=r"cannot start writing i\.mp4 with libx264"):
        sink.write(np.zeros((24, 32, 3), np.uint8))
    sink.abort()
    assert leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


def test_encoder_options_reach_the_encoder(tmp_path: Path) -> None:
    source = open_source(make_clip(tmp_path / "in.mp4", frames=6))
    transcode(source, tmp_path / "out.mp4", options={"x264-params": "keyint=2"}, preset="ultrafast")
    with av.open(str(tmp_path / "out.mp4")) as container:
        keyframes = [p.is_keyframe for p in container.demux(video=0) if p.size]
    assert keyframes == [True, False] * 3


@pytest.mark.parametrize(("target", "codec"), [("out.webm", "vp9"), ("out.avi", "h264")])
def test_other_containers(tmp_path: Path, target: str, codec: str) -> None:
    source = open_source(make_clip(tmp_path / "in.mp4", frames=8, audio=True))
    notes = transcode(source, tmp_path / target)
    with av.open(str(tmp_path / target)) as container:
        assert container.streams.video[0].codec_context.name == codec
    assert len(list(open_source(tmp_path / target))) == 8
    if target == "out.webm":
        assert notes == ["audio stream 1 (aac) dropped: .webm cannot hold it"]
    else:
        assert notes == [".avi stores a constant frame rate: timestamps rewritten at 25 fps"]
