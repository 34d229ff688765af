"""Training: dataset layouts, patches, the offset-fidelity loss, exact resume, atomic checkpoints, DDP."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torchvision.io import write_png

from clips import make_clip
from helpers import child_env, cli
from vsrx.errors import InputError, UsageError
from vsrx.evaluate.bicubic import downscale_x4_uint8
from vsrx.models import load_model
from vsrx.ops.warp import flow_warp
from vsrx.train.data import WindowPatches, load_clips
from vsrx.train.losses import charbonnier, offset_fidelity
from vsrx.train.trainer import TrainConfig, checkpoints, make_model, train


def smooth_frames(n, h, w, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    frames = []
    for t in range(n):
        img = np.stack([128 + 100 * np.sin((xx + 2 * t) / (5 + c) + rng.uniform()) * np.cos(yy / (7 + c)) for c in range(3)], -1)
        frames.append(img.clip(0, 255).astype(np.uint8))
    return frames


def write_frames(folder: Path, frames, name=lambda i: f"{i:08d}.png"):
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        write_png(torch.from_numpy(f).permute(2, 0, 1).contiguous(), str(folder / name(i)))


@pytest.fixture
def reds_root(tmp_path):
    for clip in ("000", "001", "002"):
        hr = smooth_frames(5, 48, 64, seed=int(clip))
        write_frames(tmp_path / "train_sharp" / clip, hr)
        write_frames(tmp_path / "train_sharp_bicubic" / "X4" / clip, [downscale_x4_uint8(f) for f in hr])
    return tmp_path


def test_reds_layout_holds_out_reds4_and_pairs_lr(reds_root):
    clips = load_clips("reds", reds_root)
    assert [c.name for c in clips] == ["001", "002"]  # 000 is a REDS4 clip
    ds = WindowPatches(clips, 3, 8)
    s = ds[0]
    assert s["lr"].shape == (3, 3, 8, 8) and s["gt"].shape == (3, 32, 32) and s["has_flow"] == 0


def test_vimeo_layout_with_and_without_lr_folder(tmp_path):
    for seq in ("00001/0001", "00001/0002", "00002/0001"):
        frames = smooth_frames(7, 32, 48)
        write_frames(tmp_path / "sequences" / seq, frames, name=lambda i: f"im{i + 1}.png")
    (tmp_path / "sep_trainlist.txt").write_text("00001/0001\n00001/0002\n00002/0001\n")
    clips = load_clips("vimeo90k", tmp_path, exclude=("00002",))
    assert [c.name for c in clips] == ["00001/0001", "00001/0002"] and clips[0].lr is None
    assert WindowPatches(clips, 7, 8)[3]["lr"].shape == (7, 3, 8, 8)
    for seq in ("00001/0001", "00001/0002", "00002/0001"):
        write_frames(tmp_path / "vimeo_septuplet_matlabLRx4" / "sequences" / seq,
                     [downscale_x4_uint8(f) for f in smooth_frames(7, 32, 48)], name=lambda i: f"im{i + 1}.png")
    assert load_clips("vimeo90k", tmp_path)[0].lr is not None


def test_videos_layout_walks_files_and_frame_folders(tmp_path):
    make_clip(tmp_path / "a.mp4", frames=8, size=(64, 48))
    make_clip(tmp_path / "held_out.mp4", frames=8, size=(64, 48))
    write_frames(tmp_path / "sub" / "shot1", smooth_frames(6, 48, 64))
    clips = load_clips("videos", tmp_path, exclude=("held_out.mp4",))
    assert sorted(c.name for c in clips) == ["a.mp4", "sub/shot1"]
    assert len(WindowPatches(clips, 5, 8)[1]["lr"]) == 5


def test_frame_cache_decodes_once_and_memory_maps_the_same_frames(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    data.mkdir()
    make_clip(data / "a.mp4", frames=8, size=(64, 48))
    write_frames(data / "shot", smooth_frames(6, 48, 64))
    plain = load_clips("videos", data)
    first = load_clips("videos", data, cache=cache)
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) == 2 and all(e.endswith(".npy") for e in entries)  # one per clip, no temporary left
    again = load_clips("videos", data, cache=cache)
    for a, b, c in zip(plain, first, again):
        assert isinstance(c.frames, np.memmap) and np.array_equal(a.frames, c.frames) and np.array_equal(a.frames, b.frames)
    assert WindowPatches(again, 5, 8)[3]["gt"].equal(WindowPatches(plain, 5, 8)[3]["gt"])
    write_frames(data / "shot", smooth_frames(6, 48, 64, seed=1))  # changed frames: a new entry, not the stale one
    changed = {c.name: c for c in load_clips("videos", data, cache=cache)}["shot"]
    assert len(list(cache.iterdir())) == 3 and not np.array_equal(changed.frames, plain[1].frames)


def test_real_patch_lr_equals_crop_of_full_frame_lr(tmp_path):
    hr = smooth_frames(3, 64, 96)
    write_frames(tmp_path / "clip", hr)
    ds = WindowPatches(load_clips("videos", tmp_path), 3, 8, augment=False)
    for index in range(6):
        s = ds[index]
        full = downscale_x4_uint8(hr[1])
        gt = (s["gt"] * 255).round().byte().permute(1, 2, 0).numpy()
        # Locate the patch by its GT crop, then compare the LR centre frame with the full-frame LR.
        for top in range(0, 64 - 32 + 1, 4):
            for left in range(0, 96 - 32 + 1, 4):
                if np.array_equal(hr[1][top : top + 32, left : left + 32], gt):
                    lr = (s["lr"][1] * 255).round().byte().permute(1, 2, 0).numpy()
                    assert np.abs(lr.astype(int) - full[top // 4 : top // 4 + 8, left // 4 : left // 4 + 8]).max() <= 1
                    break
            else:
                continue
            break
        else:
            pytest.fail("GT patch not found in the HR frame")


@pytest.mark.parametrize("index", range(4))
def test_synthetic_flow_stays_consistent_under_augmentation(index):
    ds = WindowPatches([], 3, 24, synthetic=1.0)
    s = ds[index]
    assert s["has_flow"] == 1 and s["flow"].shape == (3, 2, 24, 24)
    warped = flow_warp(s["lr"][[0]], s["flow"][[0]], padding_mode="border")
    inner = (slice(None), slice(None), slice(6, -6), slice(6, -6))
    err = (warped - s["lr"][[1]])[inner].abs().mean().item()
    base = (s["lr"][[0]] - s["lr"][[1]])[inner].abs().mean().item()
    assert err < 0.5 * base + 0.01


def test_offset_fidelity_loss_values_and_gradient():
    flow = torch.zeros(1, 2, 4, 4)
    flow[:, 1] = 20.0  # dx = 20 px at the finest level
    offsets = torch.zeros(1, 1, 2, 2, 4, 4, requires_grad=True)  # G=1, N=2
    with torch.no_grad():
        offsets[:, :, 0, 1] = 15.0  # |15 - 20| = 5 < t: no penalty
    loss = offset_fidelity([offsets], flow, threshold=10.0)
    # offset 0: dy 0 (ok), dx 15 (ok); offset 1: dy 0 (ok), dx 0 -> |0 - 20| = 20 > 10 on half its entries.
    assert loss.item() == pytest.approx(20.0 / 2)
    loss.backward()
    assert offsets.grad[:, :, 1, 1].abs().sum() > 0 and offsets.grad[:, :, 0].abs().sum() == 0
    assert offset_fidelity([offsets.detach()], flow, threshold=25.0).item() == 0
    # At a coarser level (2x2) the flow is halved: 10 px, not above t = 10.
    coarse = torch.zeros(1, 1, 1, 2, 2, 2)
    assert offset_fidelity([coarse], flow, threshold=10.0).item() == 0
    assert offset_fidelity([coarse], flow, threshold=9.0).item() == pytest.approx(10.0 / 2)
    # Samples without flow are left out.
    assert offset_fidelity([offsets.detach()], flow, 10.0, valid=torch.zeros(1)).item() == 0


def test_charbonnier():
    a = torch.zeros(2, 3)
    assert charbonnier(a, a).item() == pytest.approx(1e-3)
    assert charbonnier(a, a + 1).item() == pytest.approx(np.sqrt(1 + 1e-6))


def tiny_cfg(out, **kw):
    base = dict(dataset="synthetic", out=str(out), preset="edvr-s", align="decomp", offsets=3, groups=2, frames=3,
                batch=2, patch=8, log_every=1, save_every=2, seed=3, workers=0, device="cpu", offset_fidelity=0.5)
    base.update(kw)
    return TrainConfig(**base)


def test_resume_continues_exactly(tmp_path):
    straight = train(tiny_cfg(tmp_path / "a", iters=4), log=lambda *a: None)
    train(tiny_cfg(tmp_path / "b", iters=2), log=lambda *a: None)
    resumed = train(tiny_cfg(tmp_path / "b", iters=4), resume=True, log=lambda *a: None)
    a, b = load_file(str(straight)), load_file(str(resumed))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    lines = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4]
    assert all("fidelity" in x and "offset_mean" in x for x in lines)


def test_bf16_on_cpu_trains_channels_last_and_resumes_exactly(tmp_path):
    straight = train(tiny_cfg(tmp_path / "a", iters=4, precision="bf16", ema=0.9), log=lambda *a: None)
    train(tiny_cfg(tmp_path / "b", iters=2, precision="bf16", ema=0.9), log=lambda *a: None)
    resumed = train(tiny_cfg(tmp_path / "b", iters=4, precision="bf16", ema=0.9), resume=True, log=lambda *a: None)
    a, b = load_file(str(straight)), load_file(str(resumed))
    assert all(v.is_contiguous() for v in a.values())
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    losses = [json.loads(x)["loss"] for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(0 < x < 1 for x in losses)
    state = torch.load(sorted((tmp_path / "b" / "ckpt").iterdir())[-1] / "state.pt", weights_only=True)
    moments = [s["exp_avg"] for s in state["optimizer"]["state"].values() if s["exp_avg"].dim() == 4]
    assert moments and all(m.is_contiguous(memory_format=torch.channels_last) for m in moments)


def test_checkpoints_are_atomic_and_dcn_is_saved_in_dcn_layout(tmp_path):
    cfg = tiny_cfg(tmp_path, align="dcn", offsets=None, iters=4, save_every=1, keep=2)
    weights = train(cfg, log=lambda *a: None)
    assert [p.name for p in checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]
    assert load_file(str(tmp_path / "ckpt" / "step_00000004" / "model.safetensors"))["pcd_align.cas_dcnpack.weight"].shape[-1] == 1
    model = load_model(weights)
    assert model.config.align == "dcn" and model.pcd_align.cas_dcnpack.weight.shape[-2:] == (3, 3)
    # A checkpoint being written when the process died is ignored on resume.
    (tmp_path / "ckpt" / ".tmp_step_00000005").mkdir()
    (tmp_path / "ckpt" / ".tmp_step_00000005" / "model.safetensors").write_bytes(b"partial")
    train(tiny_cfg(tmp_path, align="dcn", offsets=None, iters=5, save_every=1), resume=True, log=lambda *a: None)
    assert checkpoints(tmp_path)[-1].name == "step_00000005"


def test_cli_train_errors_are_one_line(tmp_path):
    result = cli("train", "--dataset", "reds", "--root", tmp_path / "nope")
    assert result.exit_code == 1 and "REDS layout expected" in result.output and "Traceback" not in result.output
    result = cli("train", "--dataset", "videos")
    assert result.exit_code == 2 and "--root is required" in result.output
    result = cli("train", "--resume", tmp_path / "empty")
    assert result.exit_code == 1 and "no config.json" in result.output and "Traceback" not in result.output


def test_unreadable_image_names_the_file(tmp_path):
    write_frames(tmp_path / "clip", smooth_frames(3, 32, 32))
    (tmp_path / "clip" / "00000001.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="00000001.png"):
        load_clips("videos", tmp_path)  # frame folders are decoded when loaded


@pytest.mark.slow
def test_ddp_step_matches_single_process(tmp_path):
    """torchrun with 2 CPU processes (gloo), global batch 4 == one process with batch 4."""
    args = ["train", "--dataset", "synthetic", "--preset", "edvr-s", "--align", "decomp", "--offsets", "2", "--groups", "2",
            "--frames", "3", "--batch", "4", "--patch", "8", "--iters", "1", "--lr", "1e-3", "--seed", "5", "--device", "cpu"]
    env = child_env()
    single = subprocess.run([sys.executable, "-m", "vsrx", *args, "--out", str(tmp_path / "one")], env=env, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
                          "-m", "vsrx", *args, "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True)
    assert ddp.returncode == 0, ddp.stderr
    a, b = load_file(str(tmp_path / "one" / "model.safetensors")), load_file(str(tmp_path / "two" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


def test_init_from_and_freeze_except_fusion(tmp_path):
    """The TSA recipe: start from a no-TSA model, train only the new fusion module for K iterations."""
    base = train(tiny_cfg(tmp_path / "notsa", iters=1, with_tsa=False), log=lambda *a: None)
    cfg = tiny_cfg(tmp_path / "tsa", iters=2, with_tsa=True, init_from=str(base), freeze_except="fusion", freeze_iters=2)
    tsa = load_file(str(train(cfg, log=lambda *a: None)))
    start = load_file(str(base))
    for k, v in tsa.items():
        if k.startswith("fusion."):
            continue
        torch.testing.assert_close(v, start[k], rtol=0, atol=0, msg=f"{k} changed while frozen")
    assert "fusion.temporal_attn1.weight" in tsa and "fusion.weight" in start


def test_init_from_a_shallower_trunk_appends_identity_blocks(tmp_path):
    """--reconstruct-blocks deeper than --init-from's: the grown model computes exactly what the source
    does (float64), then trains every block; a shallower trunk than the source's is refused."""
    base = train(tiny_cfg(tmp_path / "base", iters=1, reconstruct_blocks=1), log=lambda *a: None)
    deep = make_model(tiny_cfg(tmp_path / "deep", init_from=str(base), reconstruct_blocks=3))
    assert deep.config.num_reconstruct_block == 3
    window = torch.rand(2, 3, 3, 12, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(deep.double().eval()(window), load_model(base).double()(window), rtol=0, atol=1e-12)
    grown = train(tiny_cfg(tmp_path / "deep", iters=2, init_from=str(base), reconstruct_blocks=3), log=lambda *a: None)
    trained = load_file(str(grown))
    assert trained["reconstruction.2.conv2.weight"].abs().sum() > 0  # started at zero
    assert make_model(tiny_cfg(tmp_path / "same", init_from=str(grown))).config.num_reconstruct_block == 3
    with pytest.raises(UsageError, match="3 reconstruction blocks"):
        make_model(tiny_cfg(tmp_path / "shallow", init_from=str(grown), reconstruct_blocks=2))


def test_resume_keeps_the_checkpoint_form(tmp_path):
    """A dcn run checkpointed in its decomp-9 training form resumes in that form whatever --dcn-impl says."""
    train(tiny_cfg(tmp_path, align="dcn", offsets=None, iters=2, dcn_impl="decomp"), log=lambda *a: None)
    weights = train(tiny_cfg(tmp_path, align="dcn", offsets=None, iters=3, dcn_impl="torchvision"), resume=True, log=lambda *a: None)
    assert load_model(weights).config.align == "dcn"


TINY_ARGS = ["--dataset", "synthetic", "--preset", "edvr-s", "--align", "decomp", "--offsets", "2", "--groups", "2",
             "--frames", "3", "--batch", "2", "--patch", "8", "--seed", "4", "--device", "cpu", "--log-every", "1",
             "--save-every", "1", "--ema", "0.5"]


def test_cli_resume_takes_the_recipe_from_the_run_directory(tmp_path):
    """`--resume DIR` alone continues a run exactly (EMA included); recipe flags are refused with it."""
    straight = cli("train", *TINY_ARGS, "--iters", "3", "--out", tmp_path / "a")
    assert straight.exit_code == 0, straight.output
    first = cli("train", *TINY_ARGS, "--iters", "3", "--time-limit", "1e-9", "--out", tmp_path / "b")
    assert first.exit_code == 0, first.output
    assert [p.name for p in checkpoints(tmp_path / "b")] == ["step_00000001"]  # stopped by the clock after step 1
    refused = cli("train", "--resume", tmp_path / "b", "--lr", "1")
    assert refused.exit_code == 2 and "--lr cannot change" in refused.output
    resumed = cli("train", "--resume", tmp_path / "b", "--save-every", "5")
    assert resumed.exit_code == 0, resumed.output
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    saved = json.loads((tmp_path / "b" / "config.json").read_text())
    assert saved["save_every"] == 5 and saved["lr"] == 4e-4 and saved["time_limit"] is None


def test_ema_weights_are_the_average_of_the_steps(tmp_path):
    """With --ema d the deploy weights are the running average: w1 after step 1, d*w1 + (1-d)*w2 after step 2."""
    train(tiny_cfg(tmp_path, iters=2, save_every=1, ema=0.25), log=lambda *a: None)
    w1, w2 = (load_file(str(tmp_path / "ckpt" / f"step_0000000{i}" / "model.safetensors")) for i in (1, 2))
    deployed = load_file(str(tmp_path / "model.safetensors"))
    changed = [k for k in w1 if not torch.equal(w1[k], w2[k])]
    assert changed
    for k in changed:
        torch.testing.assert_close(deployed[k], 0.25 * w1[k] + 0.75 * w2[k])


@pytest.mark.parametrize("synthetic", [0.0, 1.0])
def test_lr_made_on_the_device_equals_lr_made_by_the_dataset(tmp_path, synthetic):
    """The GPU path (uint8 HR crops, LR by lr_from_hr on the device) gives the dataset's own LR patches."""
    from vsrx.train.data import lr_from_hr

    write_frames(tmp_path / "clip", smooth_frames(5, 64, 96))
    clips = load_clips("videos", tmp_path)
    on_cpu = WindowPatches(clips, 3, 8, synthetic=synthetic)
    on_device = WindowPatches(clips, 3, 8, synthetic=synthetic, lr_on_device=True)
    for index in range(6):
        a, b = on_cpu[index], on_device[index]
        assert "lr" not in b and b["hr"].dtype == torch.uint8 and b["hr"].shape == (3, 3, 48, 48)
        torch.testing.assert_close(lr_from_hr(b["hr"][None])[0], a["lr"], rtol=0, atol=1e-6)
        torch.testing.assert_close(a["gt"], b["gt"], rtol=0, atol=0)


def test_training_validation_scores_the_first_frames_as_vsrx_eval_does(tmp_path):
    """The --val scores of the first 3 frames of a 5-frame clip are evaluate()'s scores of a 3-frame clip."""
    from vsrx.evaluate.datasets import open_dataset
    from vsrx.evaluate.runner import RowSpec, evaluate
    from vsrx.inference import to_uint8, upscale_stream
    from vsrx.models import build_model
    from vsrx.train.trainer import validate

    frames = smooth_frames(5, 32, 48)
    write_frames(tmp_path / "clip", frames)
    write_frames(tmp_path / "first3" / "clip", frames[:3])
    torch.manual_seed(0)
    model = build_model("edvr-s", "decomp", 2, 2, 3).eval()
    scores = validate(model, (str(tmp_path / "clip"),), 3, torch.device("cpu"))

    def sr(lr):
        return [to_uint8(x).numpy() for x in upscale_stream(model, (torch.from_numpy(f).permute(2, 0, 1) for f in lr), len(lr))]

    bicubic, ours = (row["clips"]["clip"] for row in evaluate(open_dataset("frames", [tmp_path / "first3" / "clip"]), [(RowSpec("m"), sr)])["rows"])
    assert scores == {"clip": {"psnr_y": ours["psnr_y"], "psnr_rgb": ours["psnr_rgb"], "bicubic_psnr_y": bicubic["psnr_y"],
                               "bicubic_psnr_rgb": bicubic["psnr_rgb"], "frames": 3}}
