"""Streaming inference: the feature cache computes exactly what per-window inference computes."""

import copy

import pytest
import torch
import torch.nn.functional as F
from clips import frame_at
from helpers import tiny_edvr

from vsrx.inference import upscale_stream
from vsrx.io.windows import frame_indices


def small_model(num_frame=5, flow_guided=False):
    return tiny_edvr("decomp", 5, num_frame=num_frame, with_tsa=True, flow_guided=flow_guided).eval()


def naive(model, frames, padding):
    """Per-window reference: every window's features recomputed, frames padded by hand."""
    total = len(frames)
    h, w = frames[0].shape[-2:]
    pad = lambda x: torch.nn.functional.pad(x, (0, -w % 4, 0, -h % 4), mode="reflect")  # noqa: E731
    outs = []
    with torch.no_grad():
        for c in range(total):
            idx = frame_indices(c, model.config.num_frame, total, padding)
            x = torch.stack([pad(frames[i].float().unsqueeze(0) / 255)[0] for i in idx]).unsqueeze(0)
            outs.append(model(x)[0, :, : 4 * h, : 4 * w])
    return outs


@pytest.mark.parametrize("padding", ["reflection_circle", "replicate", "circle"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("flow_guided", [False, True])
def test_cached_stream_equals_per_window(padding, batch, flow_guided):
    model = small_model(flow_guided=flow_guided)
    torch.manual_seed(1)
    frames = [torch.randint(0, 256, (3, 10, 13), dtype=torch.uint8) for _ in range(9)]
    expected = naive(model, frames, padding)
    got = list(upscale_stream(model, iter(frames), len(frames), padding=padding, batch=batch))
    assert len(got) == len(frames)
    for a, b in zip(got, expected):
        assert a.shape == (3, 40, 52)
        assert (a - b).abs().max().item() < 1e-5
    uncached = list(upscale_stream(model, iter(frames), len(frames), padding=padding, batch=batch, cache=False))
    assert len(uncached) == len(frames)
    assert max((a - b).abs().max().item() for a, b in zip(uncached, expected)) < 1e-5


def ensemble_naive(model, frames, padding):
    """Per-window self-ensemble reference: each padded window (and, flow-guided, its flows from the
    frames as they are) turned 8 ways, run whole, turned back and averaged."""
    from vsrx.ops.warp import DIHEDRAL, flip_transpose, unflip_transpose

    total, (h, w) = len(frames), frames[0].shape[-2:]
    pad = lambda x: F.pad(x, (0, -w % 4, 0, -h % 4), mode="reflect")  # noqa: E731
    c, outs = model.config.center, []
    with torch.no_grad():
        for centre in range(total):
            idx = frame_indices(centre, model.config.num_frame, total, padding)
            x = torch.stack([pad(frames[i].double().unsqueeze(0) / 255)[0] for i in idx]).unsqueeze(0)
            flows = model.window_flows(x) if model.config.flow_guided else None
            views = []
            for flags in DIHEDRAL:
                (xv,), fv = flip_transpose([x], flows, *flags)
                pyramid = tuple(level.unsqueeze(0) for level in model.extract(xv[0]))
                views.append(unflip_transpose(model.reconstruct_window(pyramid, xv[:, c], fv), *flags))
            outs.append(torch.stack(views).mean(0)[0, :, : 4 * h, : 4 * w])
    return outs


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("flow_guided", [False, True])
def test_self_ensemble_averages_the_eight_turned_views_of_every_window(batch, flow_guided):
    model = small_model(flow_guided=flow_guided).double()
    torch.manual_seed(3)
    frames = [torch.randint(0, 256, (3, 10, 13), dtype=torch.uint8) for _ in range(6)]  # not square, padded
    expected = ensemble_naive(model, frames, "reflection_circle")
    kw = dict(batch=batch, dtype=torch.float64, self_ensemble=True)
    got = list(upscale_stream(model, iter(frames), len(frames), **kw))
    uncached = list(upscale_stream(model, iter(frames), len(frames), cache=False, **kw))
    plain = list(upscale_stream(model, iter(frames), len(frames), batch=batch, dtype=torch.float64))
    assert len(got) == len(uncached) == len(frames)
    for a, b, u, p in zip(got, expected, uncached, plain):
        assert a.shape == (3, 40, 52)
        assert (a - b).abs().max().item() < 1e-12 and (u - b).abs().max().item() < 1e-12
        assert (a - p).abs().max().item() > 1e-4  # the views do differ


def test_short_clip_and_single_frame():
    model = small_model(num_frame=7)
    frames = [torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8) for _ in range(2)]
    got = list(upscale_stream(model, iter(frames), 2))
    assert len(got) == 2
    assert len(list(upscale_stream(model, iter(frames[:1]), 1))) == 1


@pytest.mark.slow
@pytest.mark.parametrize("flow_guided", [False, True])
def test_tiled_equals_untiled(flow_guided):
    model = small_model(num_frame=3, flow_guided=flow_guided)
    torch.manual_seed(2)
    frames = [torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8) for _ in range(4)]
    for ensemble in (False, True):
        full = list(upscale_stream(model, iter(frames), 4, self_ensemble=ensemble))
        tiled = list(upscale_stream(model, iter(frames), 4, tile=24, tile_overlap=16, batch=2, self_ensemble=ensemble))
        assert len(full) == len(tiled) == 4
        assert max((a - b).abs().max().item() for a, b in zip(full, tiled)) < 1e-4


def test_feature_cache_stays_bounded():
    """Only frames a later window needs stay cached, however long the clip."""
    from vsrx.inference import Upscaler

    model = small_model(num_frame=5)
    seen = []

    class Spy(Upscaler):
        def _run(self, wins, raw, pyramids):
            seen.append((len(raw), len(pyramids)))
            return super()._run(wins, raw, pyramids)

    frames = (torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8) for _ in range(60))
    assert len(list(Spy(model, batch=2).stream(frames, 60))) == 60
    assert max(r for r, _ in seen) <= 2 * 5 + 2 and max(p for _, p in seen) <= 2 * 5 + 2


@pytest.mark.parametrize(("batch", "tile"), [(1, None), (2, None), (3, None), (2, 8)])
def test_a_run_from_any_group_start_equals_the_whole_run_bit_for_bit(batch, tile):
    """What resuming and splitting over ranks rely on: features and windows are computed in fixed
    groups, so starting at any group boundary (or skipping ranges) changes no output bit."""
    from vsrx.inference import Upscaler

    model = small_model(num_frame=5)
    frames = [torch.from_numpy(frame_at(i, (14, 10), cut_at=6)).permute(2, 0, 1) for i in range(12)]
    up = Upscaler(model, batch=batch, tile=tile, tile_overlap=4, scene_threshold=0.25)
    whole = list(up.stream(iter(frames), 12))
    assert up.cuts == [6]
    for lo in range(batch, 12, batch):
        part = list(up.stream(iter(frames), 12, ranges=[(lo, 12)], anchor=0))
        assert len(part) == 12 - lo and all(torch.equal(a, b) for a, b in zip(whole[lo:], part)), lo
    holes = [(0, batch), (2 * batch, min(4 * batch, 12))]
    got = list(up.stream(iter(frames), 12, ranges=holes, anchor=0))
    centres = [c for lo, hi in holes for c in range(lo, hi)]
    assert len(got) == len(centres) and all(torch.equal(a, whole[c]) for a, c in zip(got, centres))


def test_ranks_share_unfinished_ranges_contiguously():
    from vsrx.pipeline import _merge, _share

    todo = [(0, 4), (4, 8), (12, 16), (16, 18), (20, 24)]
    shares = [_share(todo, r, 2) for r in range(2)]
    assert sorted(shares[0] + shares[1]) == todo and shares[0] and shares[1]
    assert max(r[1] for r in shares[0]) <= min(r[0] for r in shares[1])
    assert _merge(shares[0]) == [(0, 8)] and _merge(todo) == [(0, 8), (12, 18), (20, 24)]


@pytest.mark.parametrize("flow_guided", [False, True])
def test_reduced_precision_model_keeps_frames_base_and_output_float32(flow_guided):
    """A bf16 model computes in bf16 between float32 frames and a float32 output: with its last
    convolution zeroed the output is exactly the float32 bilinear base of the centre frame (bf16
    frames would be off by up to a grey level), and otherwise it stays close to the fp32 model."""
    model = small_model(num_frame=3, flow_guided=flow_guided)
    frames = [torch.randint(0, 256, (3, 8, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    fp32 = list(upscale_stream(model, iter(frames), len(frames)))
    half = list(upscale_stream(copy.deepcopy(model).to(torch.bfloat16), iter(frames), len(frames), dtype=torch.bfloat16))
    assert all(h.dtype == torch.float32 for h in half)
    assert max((a - b).abs().max().item() for a, b in zip(half, fp32)) < 0.02
    with torch.no_grad():
        model.conv_last.weight.zero_()
        model.conv_last.bias.zero_()
    bases = [F.interpolate(f[None].float() / 255, scale_factor=4, mode="bilinear", align_corners=False)[0] for f in frames]
    for out, base in zip(upscale_stream(model.to(torch.bfloat16), iter(frames), len(frames), dtype=torch.bfloat16), bases):
        assert torch.equal(out, base)


def test_auto_precision_takes_bf16_on_cpus_with_bf16_hardware_for_upscale_only(monkeypatch):
    from vsrx import device

    cpu = torch.device("cpu")
    for fast in (True, False):
        monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda fast=fast: fast)
        assert device.pick_dtype("auto", cpu, cpu_bf16=True) == (torch.bfloat16 if fast else torch.float32)
        assert device.pick_dtype("auto", cpu) == torch.float32  # eval and bench: fp32 on every CPU
        assert device.pick_dtype("fp32", cpu, cpu_bf16=True) == torch.float32


def test_bf16_hardware_is_amx_or_avx512_bf16_with_onednn_bf16(monkeypatch):
    from vsrx import device

    for amx, avx512_bf16, onednn, expected in [(True, False, True, True), (False, True, True, True),
                                               (False, False, True, False), (True, True, False, False)]:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda v=onednn: v)
        assert device.cpu_has_fast_bf16() is expected
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert device.cpu_has_fast_bf16() is False  # a torch without the probes: fp32, never an error
