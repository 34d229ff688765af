"""Streaming inference: the feature cache computes exactly what per-window inference computes."""

import pytest
import torch

from vsrx.inference import upscale_stream
from vsrx.io.windows import frame_indices
from vsrx.models import EDVR, EDVRConfig


def small_model(num_frame=5, align="decomp", offsets=5):
    torch.manual_seed(0)
    return EDVR(EDVRConfig(num_feat=8, num_frame=num_frame, groups=2, num_extract_block=1,
                           num_reconstruct_block=1, with_tsa=True, align=align, offsets=offsets)).eval()


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
def test_cached_stream_equals_per_window(padding, batch):
    model = small_model()
    torch.manual_seed(1)
    frames = [torch.randint(0, 256, (3, 10, 13), dtype=torch.uint8) for _ in range(9)]
    expected = naive(model, frames, padding)
    got = list(upscale_stream(model, iter(frames), len(frames), padding=padding, batch=batch))
    assert len(got) == len(frames)
    for a, b in zip(got, expected):
        assert a.shape == (3, 40, 52)
        assert (a - b).abs().max().item() < 1e-5
    uncached = list(upscale_stream(model, iter(frames), len(frames), padding=padding, batch=batch, cache=False))
    assert max((a - b).abs().max().item() for a, b in zip(uncached, expected)) < 1e-5


def test_short_clip_and_single_frame():
    model = small_model(num_frame=7)
    frames = [torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8) for _ in range(2)]
    got = list(upscale_stream(model, iter(frames), 2))
    assert len(got) == 2
    assert len(list(upscale_stream(model, iter(frames[:1]), 1))) == 1


def test_tiled_equals_untiled():
    model = small_model(num_frame=3)
    torch.manual_seed(2)
    frames = [torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8) for _ in range(4)]
    full = list(upscale_stream(model, iter(frames), 4))
    tiled = list(upscale_stream(model, iter(frames), 4, tile=24, tile_overlap=16, batch=2))
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
