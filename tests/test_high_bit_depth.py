"""High-bit-depth sources (10-bit video, 16-bit PNG) keep more than 8 bits through `vsrx upscale`."""

from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from clips import deep_pattern, make_clip, make_deep_clip, make_frame_folder, write_png16
from faults import fail_on_call
from helpers import tiny_edvr
from helpers import cli as run
from torchvision import io as tvio

import vsrx.inference as inference
from vsrx.inference import Upscaler, pixels_to_numpy, pixels_to_tensor, to_pixels, to_uint8, to_uint16
from vsrx.io.reader import format_bits, open_source
from vsrx.io.writer import VideoSink, _pick_pix_fmt, open_sink


@pytest.fixture
def fed(monkeypatch):
    """Every LR frame the Upscaler hands to its model, as the model sees it (float, padded)."""
    seen: list[torch.Tensor] = []
    prepare = Upscaler._prepare

    def spy(self, x):
        out = prepare(self, x)
        seen.append(out.detach().clone())
        return out

    monkeypatch.setattr(Upscaler, "_prepare", spy)
    return seen


@pytest.fixture
def identity(monkeypatch):
    """Replace the model by a 4x nearest-neighbour copy of each window's centre frame."""

    def run(self, wins, raw, pyramids):
        c = self.model.config.center
        return F.interpolate(torch.stack([raw[win[c]] for win in wins]), scale_factor=4, mode="nearest")

    monkeypatch.setattr(Upscaler, "_run", run)


def nearest4(rgb: np.ndarray) -> np.ndarray:
    return rgb.repeat(4, axis=0).repeat(4, axis=1)


def stream_pix_fmt(path: Path) -> str:
    with av.open(str(path)) as c:
        return c.streams.video[0].codec_context.pix_fmt


def luma(path: Path) -> list[np.ndarray]:
    """The Y plane of every frame of a 10-bit (or 16-bit) planar YUV video, as stored."""
    planes = []
    with av.open(str(path)) as c:
        for frame in c.decode(video=0):
            plane = frame.planes[0]
            rows = np.frombuffer(plane, np.uint16).reshape(frame.height, plane.line_size // 2)
            planes.append(rows[:, : frame.width].copy())
    return planes


def levels(a) -> int:
    return len(np.unique(np.asarray(a)))


# --- reading ---------------------------------------------------------------------------------


def test_format_bits():
    assert [format_bits(f) for f in ("yuv420p", "rgb24", "gray", "pal8", "yuvj420p", "nv12")] == [8] * 6
    assert [format_bits(f) for f in ("yuv420p10le", "yuv422p10le", "yuv444p12le", "p010le", "gray10le")] == [10, 10, 12, 10, 10]
    assert [format_bits(f) for f in ("gray16le", "rgb48le", "rgb48be", "rgba64be")] == [16] * 4
    assert format_bits(None) == 8 and format_bits("no-such-format") == 8


def test_ten_bit_source_decodes_to_uint16_only_when_asked(tmp_path):
    src = make_deep_clip(tmp_path / "in.mkv", frames=3)
    deep = open_source(src, keep_bit_depth=True)
    assert (deep.pix_fmt, deep.bits, deep.high_bit_depth, deep.rgb_format) == ("yuv420p10le", 10, True, "rgb48le")
    frames = list(deep)
    assert len(frames) == 3 and all(f.rgb.dtype == np.uint16 and f.rgb.shape == (24, 32, 3) and f.bits == 16 for f in frames)
    assert levels(frames[0].rgb) > 600  # a 10-bit ramp: far more than 256 levels
    assert np.abs(frames[0].rgb.astype(int) - deep_pattern(0, (32, 24))).max() < 75  # within one 10-bit step
    plain = open_source(src)  # the default (eval, training, viz) stays 8-bit
    assert (plain.bits, plain.high_bit_depth, plain.rgb_format) == (10, False, "rgb24")
    assert next(iter(plain)).rgb.dtype == np.uint8


def test_eight_bit_sources_stay_uint8(tmp_path):
    for src in (make_clip(tmp_path / "in.mp4", frames=2), make_frame_folder(tmp_path / "f", frames=2)):
        source = open_source(src, keep_bit_depth=True)
        assert source.bits == 8 and not source.high_bit_depth
        assert next(iter(source)).rgb.dtype == np.uint8


def test_sixteen_bit_png_folder_is_read_exactly(tmp_path):
    rgb = deep_pattern(0, (20, 12), gray=False)
    (tmp_path / "f").mkdir()
    write_png16(tmp_path / "f" / "a.png", rgb)
    source = open_source(tmp_path / "f", keep_bit_depth=True)
    assert source.pix_fmt == "rgb48be" and source.bits == 16 and source.high_bit_depth
    assert np.array_equal(next(iter(source)).rgb, rgb)


# --- model input and output conversions ------------------------------------------------------


def test_upscaler_scales_uint16_by_65535():
    model = tiny_edvr()
    up = Upscaler(model)
    rgb = deep_pattern(0, (8, 8), gray=False)
    x = up._prepare(pixels_to_tensor(rgb).permute(2, 0, 1))
    assert x.dtype == torch.float32
    assert torch.equal(x, torch.from_numpy(rgb.astype(np.float32) / 65535).permute(2, 0, 1))
    assert levels(x) > 64  # 8x8x3 values, all distinct: nothing collapsed to 8 bits
    small = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)  # the uint8 path is unchanged
    assert torch.equal(up._prepare(torch.from_numpy(small).permute(2, 0, 1)), torch.from_numpy(small).permute(2, 0, 1).float() / 255)


def test_to_uint16_rounds_and_clamps():
    x = torch.tensor([-0.5, 0.0, 0.5 / 65535, 1.4 / 65535, 0.5, 1.0, 2.0]).view(1, 1, 7).expand(3, 1, 7)
    out = to_uint16(x)
    assert out.dtype == torch.uint16 and out.shape == (1, 7, 3)
    assert pixels_to_numpy(out)[0, :, 0].tolist() == [0, 0, 0, 1, 32768, 65535, 65535]  # round half to even at 0.5
    assert torch.equal(to_pixels(x, 8), to_uint8(x)) and torch.equal(to_pixels(x, 10), out)


def test_without_torch_uint16_the_same_values_come_out(monkeypatch):
    rgb = deep_pattern(1, (8, 4), gray=False)
    sr = torch.rand(3, 4, 5)
    up = Upscaler(tiny_edvr())
    prepared, pixels = up._prepare(pixels_to_tensor(rgb).permute(2, 0, 1)), pixels_to_numpy(to_uint16(sr))
    monkeypatch.setattr(inference, "_UINT16", None)  # torch < 2.3
    fallback = pixels_to_tensor(rgb)
    assert fallback.dtype == torch.float32 and torch.equal(up._prepare(fallback.permute(2, 0, 1)), prepared)
    assert to_uint16(sr).dtype == torch.int32
    out = pixels_to_numpy(to_uint16(sr))
    assert out.dtype == np.uint16 and np.array_equal(out, pixels)


# --- writing ---------------------------------------------------------------------------------


def test_high_bit_depth_sources_get_a_high_bit_depth_pix_fmt():
    x264 = av.Codec("libx264", "w")
    assert _pick_pix_fmt(None, x264, "yuv420p10le") == "yuv420p10le"
    assert _pick_pix_fmt(None, x264, "yuv444p10le") == "yuv444p10le"
    assert _pick_pix_fmt(None, x264, "rgb48be") == "yuv420p10le"  # a 16-bit PNG folder
    assert _pick_pix_fmt(None, x264, "gray10le") == "yuv420p10le"
    assert _pick_pix_fmt(None, x264, "yuv444p12le") == "yuv420p10le"  # x264 stops at 10 bits
    assert _pick_pix_fmt(None, x264, "gray") == "yuv420p" and _pick_pix_fmt(None, x264, "rgb24") == "yuv420p"
    assert _pick_pix_fmt("yuv420p", x264, "yuv420p10le") == "yuv420p"


def test_video_sink_writes_uint16_frames_padding_odd_sizes(tmp_path):
    source = open_source(make_deep_clip(tmp_path / "in.mkv", frames=2, size=(31, 23), pix_fmt="yuv444p10le"),
                         keep_bit_depth=True)
    frames = list(source)
    with open_sink(tmp_path / "out.mkv", source, codec="ffv1", pix_fmt="yuv420p10le") as sink:
        for frame in frames:
            sink.write(frame.rgb, frame.pts, frame.duration)
    notes = sink.close()
    assert any("padded 31x23 to 32x24" in n for n in notes)
    out = open_source(tmp_path / "out.mkv", keep_bit_depth=True)
    assert (out.pix_fmt, out.width, out.height) == ("yuv420p10le", 32, 24)
    written = list(out)
    assert len(written) == len(frames) == 2
    for a, b in zip(frames, written):
        assert np.abs(b.rgb[:23, :31].astype(int) - a.rgb).max() < 75
        assert np.abs(b.rgb[:23, 31].astype(int) - b.rgb[:23, 30]).max() < 75  # the repeated edge column
        assert levels(b.rgb) > 256


def test_sinks_refuse_other_dtypes(tmp_path):
    source = open_source(make_clip(tmp_path / "in.mp4", frames=1))
    with pytest.raises(ValueError, match="uint8 or uint16"):
        with VideoSink(tmp_path / "out.mp4", source) as sink:
            sink.write(np.zeros((4, 4, 3), np.float32))
    assert not (tmp_path / "out.mp4").exists()


# --- vsrx upscale end to end -----------------------------------------------------------------


def test_ten_bit_video_keeps_ten_bits_lossless(tmp_path, model_path, identity, fed):
    """With a copy-the-centre model and a lossless encoder, the output is the input, to 10 bits."""
    src = make_deep_clip(tmp_path / "in.mkv", frames=4)
    out = tmp_path / "out.mkv"
    result = run("upscale", src, out, "--model", model_path, "--codec", "ffv1", "--quiet")
    assert result.exit_code == 0, result.output
    assert stream_pix_fmt(out) == "yuv420p10le"
    assert len(fed) == 4 and all(levels(x) > 256 for x in fed)  # the model saw the 10-bit levels, not 256 of them
    source = list(open_source(src, keep_bit_depth=True))
    upscaled = list(open_source(out, keep_bit_depth=True))
    assert len(upscaled) == 4
    for a, b in zip(source, upscaled):
        assert b.rgb.shape == (96, 128, 3)
        assert levels(b.rgb) > 256  # 8-bit processing leaves at most 256 levels per channel
        assert np.abs(b.rgb.astype(int) - nearest4(a.rgb)).max() < 40  # within half a 10-bit step
    for y in luma(out):
        assert (y % 4 != 0).any() and levels(y) > 256


def test_ten_bit_video_through_the_model_to_libx264(tmp_path, model_path, fed):
    src = make_deep_clip(tmp_path / "in.mp4", frames=4)
    out = tmp_path / "out.mp4"
    result = run("upscale", src, out, "--model", model_path, "--quiet")
    assert result.exit_code == 0, result.output
    assert stream_pix_fmt(out) == "yuv420p10le"
    assert len(fed) == 4 and all(x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 for x in fed)
    assert all(levels(x) > 256 for x in fed)
    planes = luma(out)
    assert len(planes) == 4 and planes[0].shape == (96, 128)
    assert any((y % 4 != 0).any() for y in planes)


def test_ten_bit_video_to_an_eight_bit_pix_fmt(tmp_path, model_path, identity):
    src = make_deep_clip(tmp_path / "in.mkv", frames=3)
    out = tmp_path / "out.mkv"
    result = run("upscale", src, out, "--model", model_path, "--codec", "ffv1", "--pix-fmt", "yuv420p", "--quiet")
    assert result.exit_code == 0, result.output
    assert stream_pix_fmt(out) == "yuv420p"
    source, upscaled = list(open_source(src, keep_bit_depth=True)), list(open_source(out, keep_bit_depth=True))
    assert len(source) == len(upscaled) == 3
    for a, b in zip(source, upscaled):
        assert b.rgb.dtype == np.uint8
        error = np.abs(b.rgb.astype(int) * 257 - nearest4(a.rgb)) / 257  # in 8-bit levels
        assert error.mean() < 1.5 and error.max() < 6  # swscale dithers 16-bit RGB down to 8-bit YUV


def test_sixteen_bit_png_folder_to_sixteen_bit_pngs(tmp_path, model_path, identity, fed):
    folder = tmp_path / "frames"
    folder.mkdir()
    inputs = [deep_pattern(i, (20, 12), gray=False) for i in range(4)]
    for i, rgb in enumerate(inputs):
        write_png16(folder / f"f{i + 1}.png", rgb)
    result = run("upscale", folder, tmp_path / "sr", "--model", model_path, "--quiet")
    assert result.exit_code == 0, result.output
    assert len(fed) == 4 and all(levels(x) > 256 for x in fed)
    files = sorted((tmp_path / "sr").iterdir())
    assert [p.name for p in files] == [f"{i:08d}.png" for i in range(4)]
    for file, rgb in zip(files, inputs):
        with av.open(str(file)) as c:
            assert next(c.decode(video=0)).format.name == "rgb48be"
        png = tvio.decode_png(tvio.read_file(str(file)), mode=tvio.ImageReadMode.UNCHANGED)
        assert png.dtype == torch.uint16
        assert np.array_equal(png.permute(1, 2, 0).numpy(), nearest4(rgb))  # exact: 16 bits in, 16 bits out


def test_eight_bit_png_folder_still_gives_eight_bit_pngs(tmp_path, model_path, identity, fed):
    src = make_frame_folder(tmp_path / "frames", frames=3, size=(20, 12))
    result = run("upscale", src, tmp_path / "sr", "--model", model_path, "--quiet")
    assert result.exit_code == 0, result.output
    assert len(fed) == 3 and all(levels(x) <= 256 for x in fed)
    files = sorted((tmp_path / "sr").iterdir())
    with av.open(str(files[0])) as c:
        assert next(c.decode(video=0)).format.name == "rgb24"


def test_ten_bit_video_resumed_from_segments_equals_one_run(tmp_path, model_path, monkeypatch):
    src = make_deep_clip(tmp_path / "in.mkv", frames=6)
    args = ["--model", model_path, "--quiet", "--segment-frames", "2", "--codec", "ffv1"]
    assert run("upscale", src, tmp_path / "ref.mkv", *args).exit_code == 0
    fail_on_call(monkeypatch, Upscaler, "_run", at=4)
    assert run("upscale", src, tmp_path / "out.mkv", *args).exit_code != 0
    monkeypatch.undo()
    result = run("upscale", src, tmp_path / "out.mkv", *args, "--resume")
    assert result.exit_code == 0, result.output
    assert stream_pix_fmt(tmp_path / "out.mkv") == stream_pix_fmt(tmp_path / "ref.mkv") == "yuv420p10le"
    ref, out = (list(open_source(tmp_path / name, keep_bit_depth=True)) for name in ("ref.mkv", "out.mkv"))
    assert len(ref) == len(out) == 6 and all(x.rgb.dtype == np.uint16 and np.array_equal(x.rgb, y.rgb) for x, y in zip(ref, out))
