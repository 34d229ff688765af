import numpy as np
import pytest
import torch

from vsrx.errors import InputError
from vsrx.ops.warp import flow_warp
from vsrx.train.synthetic import MOTIONS, make_synthetic_clip, procedural_texture

SOURCE = procedural_texture(96, 112, np.random.default_rng(0))
SIZE = (40, 48)


def clip(seed: int, motion: str, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
    return make_synthetic_clip(SOURCE, 5, SIZE, np.random.default_rng(seed), motion, **kwargs)  # type: ignore[arg-type]


def aligned(frames: torch.Tensor, flows: torch.Tensor, margin: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Warp every frame to the centre in float64; return (warped, centre, mask of pixels whose
    sampling point and position lie at least ``margin`` pixels inside the frame)."""
    frames, flows = frames.double(), flows.double()
    h, w = frames.shape[-2:]
    warped = flow_warp(frames, flows)
    ys = torch.arange(h, dtype=torch.float64)[:, None]
    xs = torch.arange(w, dtype=torch.float64)[None, :]
    sample_y, sample_x = ys + flows[:, 0], xs + flows[:, 1]
    inside = (sample_y >= margin) & (sample_y <= h - 1 - margin) & (sample_x >= margin) & (sample_x <= w - 1 - margin)
    inside &= (ys >= margin) & (ys <= h - 1 - margin) & (xs >= margin) & (xs <= w - 1 - margin)
    centre = frames[frames.shape[0] // 2].expand_as(warped)
    return warped, centre, inside


def test_procedural_texture() -> None:
    image = procedural_texture(50, 70, np.random.default_rng(3))
    assert image.shape == (50, 70, 3) and image.dtype == np.uint8
    assert image.std() > 20
    assert np.array_equal(image, procedural_texture(50, 70, np.random.default_rng(3)))
    assert not np.array_equal(image, procedural_texture(50, 70, np.random.default_rng(4)))


@pytest.mark.parametrize("motion", MOTIONS)
@pytest.mark.parametrize("num_frames", [4, 5])
def test_shapes_and_centre(motion: str, num_frames: int) -> None:
    rng = np.random.default_rng(1)
    frames, flows = make_synthetic_clip(SOURCE, num_frames, SIZE, rng, motion, num_layers=0)  # type: ignore[arg-type]
    assert frames.shape == (num_frames, 3, *SIZE) and frames.dtype == torch.float32
    assert flows.shape == (num_frames, 2, *SIZE) and flows.dtype == torch.float32
    assert 0 <= frames.min() and frames.max() <= 1
    centre = num_frames // 2
    assert torch.count_nonzero(flows[centre]) == 0
    # The centre frame is an exact crop: every value is a uint8 level.
    levels = frames[centre].double() * 255
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-4)
    if motion != "none":
        assert flows.abs().max() > 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_integer_translation_warps_exactly(seed: int) -> None:
    frames, flows = clip(seed, "integer", num_layers=0, max_shift=3.0)
    assert torch.equal(flows, flows.round())
    assert torch.equal(flows, flows[:, :, :1, :1].expand_as(flows))  # one shift per frame
    warped, centre, inside = aligned(frames, flows, margin=0)
    assert inside.sum() > 0.3 * inside.numel()
    mask = inside.unsqueeze(1).expand_as(warped)
    torch.testing.assert_close(warped[mask], centre[mask], rtol=0, atol=1e-9)


def test_integer_layers_move_on_their_own() -> None:
    frames, flows = clip(5, "integer", num_layers=2, max_shift=3.0)
    assert torch.equal(flows, flows.round())
    background = flows[:, :, :1, :1]  # the corner shows the background in this clip
    on_layer = (flows != background).any(dim=1)
    assert on_layer[0].float().mean() > 0.05
    warped, centre, inside = aligned(frames, flows, margin=0)
    exact = ((warped - centre).abs().amax(dim=1) < 1e-9) & inside
    # Away from occlusions and the soft mask edges, the layers' flows align exactly too.
    assert exact[on_layer & inside].float().mean() > 0.7
    assert exact[inside].float().mean() > 0.85


@pytest.mark.parametrize("motion", ["pan", "zoom", "rotate", "affine"])
def test_subpixel_motion_warps_closely(motion: str) -> None:
    frames, flows = clip(7, motion, num_layers=0)
    assert not torch.equal(flows, flows.round())
    warped, centre, inside = aligned(frames, flows, margin=2)
    mask = inside.unsqueeze(1).expand_as(warped)
    error = (warped - centre).abs()[mask]
    unaligned = (frames.double() - centre).abs()[mask]
    assert error.mean() < 0.03
    assert error.mean() < 0.25 * unaligned.mean()


def test_layers_with_affine_motion() -> None:
    frames, flows = clip(9, "random", num_layers=2)
    warped, centre, inside = aligned(frames, flows, margin=2)
    mask = inside.unsqueeze(1).expand_as(warped)
    assert (warped - centre).abs()[mask].mean() < 0.05


def test_determinism_noise_and_float_input() -> None:
    frames, flows = clip(11, "random", num_layers=2)
    again, again_flows = clip(11, "random", num_layers=2)
    assert torch.equal(frames, again) and torch.equal(flows, again_flows)
    other, _ = clip(12, "random", num_layers=2)
    assert not torch.equal(frames, other)
    noisy, noisy_flows = clip(11, "random", num_layers=2, noise_std=0.05)
    assert torch.equal(flows, noisy_flows)
    assert 0.02 < (noisy - frames).abs().mean() < 0.06
    assert 0 <= noisy.min() and noisy.max() <= 1
    as_float, float_flows = make_synthetic_clip(
        SOURCE.astype(np.float32) / 255, 5, SIZE, np.random.default_rng(11), "random", num_layers=2
    )
    assert torch.equal(flows, float_flows)
    torch.testing.assert_close(as_float, frames, rtol=0, atol=1e-6)


def test_tight_image_gives_static_camera() -> None:
    image = SOURCE[: SIZE[0], : SIZE[1]]
    frames, flows = make_synthetic_clip(image, 3, SIZE, np.random.default_rng(0), "pan", max_shift=5.0)
    assert torch.count_nonzero(flows) == 0
    expected = torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32) / 255)
    torch.testing.assert_close(frames, expected.expand_as(frames), rtol=0, atol=1e-6)


def test_input_errors() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match="smaller"):
        make_synthetic_clip(SOURCE[:30], 3, SIZE, rng)
    with pytest.raises(InputError, match="motion"):
        make_synthetic_clip(SOURCE, 3, SIZE, rng, "shake")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="shape"):
        make_synthetic_clip(SOURCE[..., 0], 3, SIZE, rng)
    with pytest.raises(InputError, match="uint8 or float"):
        make_synthetic_clip(SOURCE.astype(np.int32), 3, SIZE, rng)
    with pytest.raises(InputError, match="frame"):
        make_synthetic_clip(SOURCE, 0, SIZE, rng)
