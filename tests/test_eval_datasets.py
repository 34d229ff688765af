"""Benchmark layouts built in tmp_path: clip listing, LR loading or generation, scored frames, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from clips import make_clip
from torchvision.io import write_png

from vsrx.errors import InputError, UsageError
from vsrx.evaluate.bicubic import downscale_x4_uint8, modcrop
from vsrx.evaluate.datasets import open_dataset, reds4, vid4, vimeo90k_t

RNG = np.random.default_rng(3)


def save(path: Path, img: np.ndarray) -> np.ndarray:
    """Write an HxWx3 uint8 image as PNG and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), str(path))
    return img


def image(h: int, w: int) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def make_folder(folder: Path, count: int, h: int, w: int, pattern: str = "{:08d}.png") -> list[np.ndarray]:
    return [save(folder / pattern.format(i), image(h, w)) for i in range(count)]


def test_reds4_generates_lr_from_modcropped_gt(tmp_path):
    gts = {c: make_folder(tmp_path / "train_sharp" / c, 2, 18, 22) for c in ("000", "011", "015", "020")}
    ds = open_dataset("reds4", [tmp_path])
    assert ds.name == "reds4" and ds.channel == "rgb"
    assert [c.name for c in ds.clips] == ["000", "011", "015", "020"]
    clip = ds.clips[1]
    lr = clip.lr_frames()
    assert len(lr) == 2 and lr[0].shape == (4, 5, 3)
    np.testing.assert_array_equal(lr[1], downscale_x4_uint8(modcrop(gts["011"][1], 4)))
    got = list(clip.gt_frames(lr))
    assert [i for i, _ in got] == [0, 1]
    np.testing.assert_array_equal(got[0][1], gts["011"][0][:16, :20])


@pytest.mark.parametrize("lr_dir", ["train_sharp_bicubic/X4", "train_sharp_bicubic"])
def test_reds4_reads_lr_folder_with_or_without_x4(tmp_path, lr_dir):
    for c in ("000", "011", "015", "020"):
        make_folder(tmp_path / "train_sharp" / c, 2, 16, 20)
        lrs = make_folder(tmp_path / lr_dir / c, 2, 4, 5)
    clip = reds4(tmp_path).clips[-1]
    np.testing.assert_array_equal(clip.lr_frames()[1], lrs[1])


def test_reds4_missing_clip_folder_is_named(tmp_path):
    for c in ("000", "015", "020"):
        make_folder(tmp_path / "train_sharp" / c, 1, 16, 16)
    with pytest.raises(InputError, match=r"clip 011: folder .*011 does not exist"):
        reds4(tmp_path)
    with pytest.raises(InputError, match="train_sharp"):
        reds4(tmp_path / "nowhere")


def test_count_mismatch_names_clip_and_folders(tmp_path):
    make_folder(tmp_path / "gt" / "calendar", 3, 16, 16)
    make_folder(tmp_path / "lr" / "calendar", 2, 4, 4)
    with pytest.raises(InputError, match=r"clip calendar: 3 GT frames in .*calendar but 2 LR frames"):
        vid4(tmp_path / "gt", tmp_path / "lr")


def test_size_mismatch_names_clip_and_file(tmp_path):
    make_folder(tmp_path / "gt" / "city", 2, 16, 20)
    make_folder(tmp_path / "lr" / "city", 2, 4, 4)
    clip = vid4(tmp_path / "gt", tmp_path / "lr").clips[0]
    with pytest.raises(InputError, match=r"clip city: .*00000000\.png is 20x16 .* its LR frame is 16x16"):
        list(clip.gt_frames(clip.lr_frames()))


def test_lr_frames_of_different_sizes_are_named(tmp_path):
    make_folder(tmp_path / "gt", 2, 16, 16)
    save(tmp_path / "lr" / "a.png", image(4, 4))
    save(tmp_path / "lr" / "b.png", image(4, 5))
    with pytest.raises(InputError, match=r"b\.png is 5x4 but the first LR frame is 4x4"):
        open_dataset("frames", [tmp_path / "gt"], tmp_path / "lr").clips[0].lr_frames()


def test_undecodable_frame_is_named(tmp_path):
    make_folder(tmp_path / "clip", 1, 16, 16)
    (tmp_path / "clip" / "00000001.png").write_bytes(b"not a png")
    clip = open_dataset("frames", [tmp_path / "clip"]).clips[0]
    with pytest.raises(InputError, match=r"clip clip: cannot decode .*00000001\.png"):
        clip.lr_frames()


def test_vid4_clips_and_frames_are_sorted_naturally(tmp_path):
    frames = make_folder(tmp_path / "GT" / "walk", 3, 16, 16, "f{}.png")
    save(tmp_path / "GT" / "walk" / "f10.png", frames[0])
    make_folder(tmp_path / "GT" / "calendar", 1, 16, 16)
    ds = vid4(tmp_path)
    assert ds.channel == "y" and [c.name for c in ds.clips] == ["calendar", "walk"]
    assert [p.name for p in ds.clips[1].frames] == ["f0.png", "f1.png", "f2.png", "f10.png"]


def test_vid4_uses_bix4_next_to_gt(tmp_path):
    make_folder(tmp_path / "GT" / "foliage", 2, 16, 16)
    lrs = make_folder(tmp_path / "BIx4" / "foliage", 2, 4, 4)
    clip = vid4(tmp_path).clips[0]
    np.testing.assert_array_equal(clip.lr_frames()[0], lrs[0])


def make_vimeo(root: Path, names: list[str], frames: int = 7) -> None:
    for name in names:
        make_folder(root / "sequences" / name, frames, 16, 16, "im{}.png")


def test_vimeo_scores_only_the_centre_frame(tmp_path):
    make_vimeo(tmp_path, ["00001/0001", "00001/0002", "00002/0001"])
    assert [c.name for c in vimeo90k_t(tmp_path).clips] == ["00001/0001", "00001/0002", "00002/0001"]
    (tmp_path / "sep_testlist.txt").write_text("00002/0001\n00001/0002\n\n")
    ds = open_dataset("vimeo90k-t", [tmp_path])
    assert ds.channel == "y" and [c.name for c in ds.clips] == ["00002/0001", "00001/0002"]
    clip = ds.clips[0]
    lr = clip.lr_frames()
    assert len(lr) == 7 and clip.scored_indices(len(lr)) == [3]
    (index, gt), *rest = list(clip.gt_frames(lr))
    assert index == 3 and not rest
    np.testing.assert_array_equal(downscale_x4_uint8(gt), lr[3])


def test_vimeo_septuplet_with_wrong_count_is_named(tmp_path):
    make_vimeo(tmp_path, ["00003/0007"], frames=6)
    with pytest.raises(InputError, match=r"clip 00003/0007: .* holds 6 frames, not 7"):
        vimeo90k_t(tmp_path)


def test_video_layout_decodes_and_generates_lr(tmp_path):
    path = make_clip(tmp_path / "tiny.mp4", frames=3, size=(32, 24))
    ds = open_dataset("video", [path])
    assert ds.name == "video" and [c.name for c in ds.clips] == ["tiny"]
    lr = ds.clips[0].lr_frames()
    assert len(lr) == 3 and lr[0].shape == (6, 8, 3)
    gts = list(ds.clips[0].gt_frames(lr))
    assert [i for i, _ in gts] == [0, 1, 2] and gts[2][1].shape == (24, 32, 3)
    np.testing.assert_array_equal(downscale_x4_uint8(gts[1][1]), lr[1])


def test_video_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match=r"clip gone: video file .*gone\.mp4 does not exist"):
        open_dataset("video", [tmp_path / "gone.mp4"])
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 64)
    clip = open_dataset("video", [tmp_path / "junk.mp4"]).clips[0]
    with pytest.raises(InputError, match=r"clip junk: .*junk\.mp4"):
        clip.lr_frames()


def test_open_dataset_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="unknown dataset layout"):
        open_dataset("set5", [tmp_path])
    with pytest.raises(UsageError, match="exactly one root"):
        open_dataset("vid4", [tmp_path, tmp_path])
