"""Frame sources: video files and image folders, their metadata, and one-line errors for bad input."""

import itertools
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from clips import (
    make_audio_only,
    make_clip,
    make_frame_folder,
    make_undecodable,
    pattern,
    truncate,
    vfr_pts,
    write_image,
)

from vsrx.errors import InputError
from vsrx.io.images import natural_key
from vsrx.io.reader import Frame, open_source

BT709 = {"color_range": 1, "color_primaries": 1, "color_trc": 1, "colorspace": 1}


def close_to_pattern(frame: Frame, size: tuple[int, int]) -> bool:
    """Lossy-coded pixels stay near the generated pattern."""
    return float(np.abs(frame.rgb.astype(int) - pattern(frame.index, size)).mean()) < 8


def test_mp4_metadata_and_frames(tmp_path: Path) -> None:
    source = open_source(make_clip(tmp_path / "a.mp4", frames=12, audio=True))
    assert (source.width, source.height, source.num_frames) == (32, 24, 12)
    assert source.frame_count_source == "header"
    assert source.fps == 25 and source.time_base is not None
    assert source.pix_fmt == "yuv420p" and source.color == {}
    assert source.has_audio and not source.has_subtitles
    frames = list(source)
    assert [f.index for f in frames] == list(range(12))
    assert all(f.rgb.shape == (24, 32, 3) and f.rgb.dtype == np.uint8 for f in frames)
    assert all(close_to_pattern(f, (32, 24)) for f in frames)
    assert [f.time for f in frames] == pytest.approx([i / 25 for i in range(12)])
    assert all(f.time == pytest.approx(f.pts * source.time_base) for f in frames)
    assert source.decoded == 12 and not source.truncated and source.warning is None
    assert len(list(source)) == 12  # a second pass re-reads from the start


def test_mkv_counts_packets_and_sees_subtitles(tmp_path: Path) -> None:
    source = open_source(make_clip(tmp_path / "s.mkv", frames=10, audio=True, subtitles=True))
    assert (source.num_frames, source.frame_count_source) == (10, "packets")
    assert source.has_audio and source.has_subtitles
    assert len(list(source)) == 10


def test_vfr_timestamps_and_durations(tmp_path: Path) -> None:
    source = open_source(make_clip(tmp_path / "v.mp4", frames=12, vfr=True))
    frames = list(source)
    expected = [ms / 1000 for ms in vfr_pts(12)]
    assert [f.time for f in frames] == pytest.approx(expected)
    steps = [b.pts - a.pts for a, b in itertools.pairwise(frames)]
    assert [f.duration for f in frames[:-1]] == steps


def test_odd_size_and_colour_tags(tmp_path: Path) -> None:
    source = open_source(make_clip(tmp_path / "o.mp4", size=(33, 19), color=BT709))
    assert (source.width, source.height, source.pix_fmt) == (33, 19, "yuv444p")
    assert source.color == BT709
    frames = list(source)
    assert len(frames) == 12 and all(f.rgb.shape == (19, 33, 3) and close_to_pattern(f, (33, 19)) for f in frames)


def test_full_range_source_converts_with_its_range(tmp_path: Path) -> None:
    source = open_source(make_clip(tmp_path / "f.mp4", color={"color_range": 2, "colorspace": 1}))
    assert source.color == {"color_range": 2, "colorspace": 1}
    frames = list(source)
    assert len(frames) == 12 and all(close_to_pattern(f, (32, 24)) for f in frames)


def test_folder_natural_order(tmp_path: Path) -> None:
    names = [f"frame{i}.png" for i in range(1, 13)]
    folder = make_frame_folder(tmp_path / "f", names=names)
    (folder / "notes.txt").write_text("not a frame")
    (folder / ".hidden.png").write_bytes(b"junk")
    source = open_source(folder)
    assert [p.name for p in source.files] == names
    assert (source.num_frames, source.frame_count_source, source.fps, source.time_base) == (
        12,
        "files",
        None,
        None,
    )
    frames = list(source)
    assert all(np.array_equal(f.rgb, pattern(f.index, (32, 24))) for f in frames)
    assert all(f.pts is None and f.time is None for f in frames)


@pytest.mark.parametrize("ext", ["jpg", "jpeg", "bmp", "webp", "PNG"])
def test_folder_image_formats(tmp_path: Path, ext: str) -> None:
    folder = make_frame_folder(tmp_path / "f", frames=3, size=(32, 24), ext=ext)
    source = open_source(folder)
    frames = list(source)
    assert source.num_frames == len(frames) == 3
    assert all(f.rgb.shape == (24, 32, 3) and close_to_pattern(f, (32, 24)) for f in frames)


def test_natural_key() -> None:
    names = ["frame10.png", "frame2.png", "Frame1.png", "frame2b.png", "a100.png", "a20.png"]
    assert sorted(names, key=lambda n: natural_key(Path(n))) == [
        "a20.png",
        "a100.png",
        "Frame1.png",
        "frame2.png",
        "frame2b.png",
        "frame10.png",
    ]


def test_truncated_mp4_decodes_what_is_there(tmp_path: Path) -> None:
    clip = truncate(make_clip(tmp_path / "t.mp4", frames=20, size=(64, 48), faststart=True), keep=0.6)
    source = open_source(clip)
    assert (source.num_frames, source.frame_count_source) == (20, "header")
    frames = list(source)
    assert 0 < len(frames) < 20 and source.decoded == len(frames)
    assert source.truncated
    assert source.warning.startswith(f"decoded {len(frames)} of 20 expected frames")


def test_truncated_mp4_without_index_is_refused(tmp_path: Path) -> None:
    clip = truncate(make_clip(tmp_path / "t.mp4", frames=20, size=(64, 48)), keep=0.5)
    with pytest.raises(InputError, match="not a readable video"):
        open_source(clip)


def one_line_error(path: Path, match: str) -> None:
    """open_source(path) raises an InputError whose message is one line containing `match`."""
    with pytest.raises(InputError, match=match) as info:
        open_source(path)
    assert "\n" not in str(info.value)


def test_errors_for_bad_files(tmp_path: Path) -> None:
    one_line_error(tmp_path / "missing.mp4", "no such file or folder")
    (tmp_path / "notes.mp4").write_text("just some text, not a video\n")
    one_line_error(tmp_path / "notes.mp4", "not a readable video")
    one_line_error(make_audio_only(tmp_path / "sound.m4a"), "no video stream")
    one_line_error(make_undecodable(tmp_path / "junk.mkv"), "no decodable video frames")


def test_errors_for_bad_folders(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    one_line_error(tmp_path / "empty", "no image frames")
    broken_first = make_frame_folder(tmp_path / "b1", frames=3)
    (broken_first / "frame1.png").write_bytes(b"not a png")
    one_line_error(broken_first, "frame1.png: unreadable image")


def test_errors_surface_while_streaming_a_folder(tmp_path: Path) -> None:
    broken = make_frame_folder(tmp_path / "b", frames=4)
    (broken / "frame3.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"frame3\.png: unreadable image"):
        list(open_source(broken))
    mixed = make_frame_folder(tmp_path / "m", frames=4)
    write_image(mixed / "frame4.png", pattern(3, (16, 12)))
    with pytest.raises(InputError, match=r"frame4\.png is 16x12 but frame1\.png is 32x24"):
        list(open_source(mixed))


def test_fps_is_a_fraction(tmp_path: Path) -> None:
    source = open_source(make_clip(tmp_path / "v.mp4", frames=6, vfr=True))
    assert isinstance(source.fps, Fraction) and 15 < source.fps < 30
