"""Scene cuts: the luma-histogram measure, windows that stay inside shots, and `--scene-cuts` end to end."""

import itertools
import json

import numpy as np
import pytest
import torch

from clips import make_clip, make_frame_folder, pattern, second_shot
from helpers import tiny_edvr
from helpers import cli as run
from vsrx.inference import Upscaler
from vsrx.io.scenes import SceneCuts, cut_score, luma_histograms
from vsrx.io.windows import PADDINGS, frame_indices


def chw(rgb):
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)


def test_cut_score_is_zero_for_equal_frames_one_for_disjoint_and_the_same_for_any_bit_depth():
    a = chw(pattern(0, (32, 24)))
    assert cut_score(luma_histograms(a), luma_histograms(a)) == 0
    black, white = torch.zeros(3, 8, 8, dtype=torch.uint8), torch.full((3, 8, 8), 255, dtype=torch.uint8)
    assert cut_score(luma_histograms(black), luma_histograms(white)) == 1
    deep = a.to(torch.int32) * 257  # the same picture in 16 bits, and as floats in [0, 1]
    assert torch.equal(luma_histograms(a), luma_histograms(deep.float() / 65535))
    # within a shot the moving square changes little; across the cut nearly everything moves
    shot = [luma_histograms(chw(pattern(i, (32, 24)))) for i in range(12)]
    assert max(cut_score(x, y) for x, y in zip(shot, shot[1:])) < 0.25
    assert cut_score(shot[5], luma_histograms(chw(second_shot(6, (32, 24))))) > 0.5


def test_detector_flags_the_first_frame_of_the_new_shot():
    detect = SceneCuts()
    frames = [pattern(i, (32, 24)) if i < 7 else second_shot(i, (32, 24)) for i in range(12)]
    assert [i for i, f in enumerate(frames) if detect(chw(f))] == [7]


@pytest.mark.parametrize("num_frames", [3, 5, 7])
def test_windows_stay_inside_their_shot_and_near_their_centre(num_frames):
    total = 14
    for padding, cuts in itertools.product(PADDINGS, [(), (1,), (5,), (4, 6), (3, 9, 10), (13,)]):
        for centre in range(total):
            window = frame_indices(centre, num_frames, total, padding, cuts)
            first = max([0, *[c for c in cuts if c <= centre]])
            end = min([total, *[c for c in cuts if c > centre]])
            assert len(window) == num_frames and window[num_frames // 2] == centre
            assert all(first <= i < end and abs(i - centre) < num_frames for i in window), (padding, cuts, centre, window)
            # a cut is a clip boundary: the window is the one the shot alone would give
            assert window == [first + i for i in frame_indices(centre - first, num_frames, end - first, padding)]
        if not cuts:
            assert [frame_indices(c, num_frames, total, padding, ()) for c in range(total)] == \
                   [frame_indices(c, num_frames, total, padding) for c in range(total)]


def test_upscaler_never_mixes_shots_and_finds_the_cut_while_streaming():
    """The cut is found as frames arrive (no pass over the whole clip first), and no window crosses it."""
    seen, decoded = [], []

    class Spy(Upscaler):
        def _run(self, wins, raw, pyramids):
            seen.append((len(decoded), [list(w) for w in wins]))
            return super()._run(wins, raw, pyramids)

    def frames():
        for i in range(40):
            decoded.append(i)
            yield chw(pattern(i, (16, 12)) if i < 9 else second_shot(i, (16, 12)))

    up = Spy(tiny_edvr(num_frame=5).eval(), scene_threshold=0.25, batch=2)
    assert len(list(up.stream(frames(), 40))) == 40
    assert up.cuts == [9]
    assert all(all(i < 9 for i in w) or all(i >= 9 for i in w) for _, wins in seen for w in wins)
    # streaming: by the time the first windows ran, only a few frames had been decoded
    assert seen[0][0] <= 5 + 2


def png_frames(folder):
    from torchvision.io import read_image

    return [read_image(str(p)).numpy() for p in sorted(folder.iterdir())]


def test_spliced_clip_cut_detected_at_the_join_and_only_frames_near_it_change(tmp_path, model_path):
    src = make_frame_folder(tmp_path / "spliced", frames=12, size=(16, 12), cut_at=7)
    auto = run("upscale", src, tmp_path / "auto", "--model", model_path, "--json")
    off = run("upscale", src, tmp_path / "off", "--model", model_path, "--json", "--scene-cuts", "off")
    assert auto.exit_code == 0 and off.exit_code == 0, (auto.output, off.output)
    assert json.loads(auto.output)["scene_cuts"] == [7]
    assert json.loads(off.output)["scene_cuts"] is None
    a, b = png_frames(tmp_path / "auto"), png_frames(tmp_path / "off")
    changed = [i for i in range(12) if not np.array_equal(a[i], b[i])]
    assert changed == [6, 7]  # T = 3: the windows of the frames each side of the cut
    # a video carries the cut through decoding too
    clip = make_clip(tmp_path / "spliced.mp4", frames=12, size=(16, 12), cut_at=5)
    result = run("upscale", clip, tmp_path / "out.mkv", "--model", model_path, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["scene_cuts"] == [5]


def test_no_cut_means_output_identical_to_off(tmp_path, model_path):
    src = make_clip(tmp_path / "in.mp4", frames=10, size=(16, 12))
    for mode in ("auto", "off"):
        result = run("upscale", src, tmp_path / mode, "--model", model_path, "--scene-cuts", mode, "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["scene_cuts"] == ([] if mode == "auto" else None)
    assert [p.read_bytes() for p in sorted((tmp_path / "auto").iterdir())] == \
           [p.read_bytes() for p in sorted((tmp_path / "off").iterdir())]


def test_threshold_moves_the_decision(tmp_path, model_path):
    src = make_frame_folder(tmp_path / "spliced", frames=8, size=(16, 12), cut_at=4)
    result = run("upscale", src, tmp_path / "a", "--model", model_path, "--json", "--scene-threshold", "0.99")
    assert result.exit_code == 0 and json.loads(result.output)["scene_cuts"] == []
    result = run("upscale", src, tmp_path / "b", "--model", model_path, "--json", "--scene-threshold", "0")
    assert result.exit_code == 0 and json.loads(result.output)["scene_cuts"] == [1, 2, 3, 4, 5, 6, 7]
