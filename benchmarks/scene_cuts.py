"""Scene cuts in `vsrx upscale`: Y-PSNR next to a hard cut with `--scene-cuts auto` against `off`.

Each spliced clip is the last N frames of one held-out DAVIS clip followed by the first N of
another (an HR centre crop; LR = MATLAB bicubic x1/4 rounded to 8 bits, as `vsrx eval` makes it),
upscaled by `vsrx.pipeline.upscale` (what `vsrx upscale` runs) with the bundled default model,
once with scene cuts on and once off. Scored against the HR frames on Y (MATLAB rgb2ycbcr, peak
255): the T//2 frames each side of the cut, and all frames. Every source clip alone (no cut) runs
both ways too, and its outputs must be byte-identical. Also prints the cut measure at each join
and its largest value between neighbouring frames inside the clips.

    OMP_NUM_THREADS=1 python benchmarks/scene_cuts.py --root ../shared/data/heldout/davis \
        --json benchmarks/results/scene_cuts.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vsrx.evaluate.bicubic import bicubic_upscale, downscale_x4_uint8
from vsrx.evaluate.metrics import psnr, rgb_to_y
from vsrx.io.images import list_images, read_image, write_png
from vsrx.io.scenes import cut_score, luma_histograms
from vsrx.pipeline import UpscaleOptions, upscale

SPLICES = [("cows", "dog"), ("dog", "scooter-black"), ("scooter-black", "car-roundabout"), ("car-roundabout", "cows")]


def hr_frames(folder: Path, first: bool, n: int, crop: tuple[int, int]) -> list[np.ndarray]:
    """The first (or last) n frames of a clip, centre-cropped to crop = (H, W)."""
    files = list_images(folder)
    files = files[:n] if first else files[-n:]
    h, w = crop
    out = []
    for f in files:
        img = read_image(f)
        top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
        out.append(np.ascontiguousarray(img[top : top + h, left : left + w]))
    return out


def sr_frames(hr: list[np.ndarray], work: Path, name: str, scene_cuts: str, model: str | None) -> tuple[list[np.ndarray], dict]:
    """Upscale the LR of `hr` with `vsrx upscale`'s pipeline; (SR frames, summary)."""
    lr_dir = work / f"{name}-lr"
    if not lr_dir.exists():
        lr_dir.mkdir()
        for i, frame in enumerate(hr):
            write_png(lr_dir / f"{i:05d}.png", downscale_x4_uint8(frame))
    out = work / f"{name}-{scene_cuts}"
    result = upscale(str(lr_dir), str(out), UpscaleOptions(model=model, scene_cuts=scene_cuts))
    return [read_image(p) for p in list_images(out)], {"scene_cuts": result.scene_cuts, "seconds": result.seconds}


def y_psnr(sr: list[np.ndarray], hr: list[np.ndarray], idx) -> float:
    return float(np.mean([psnr(rgb_to_y(sr[i]), rgb_to_y(hr[i])) for i in idx]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="../shared/data/heldout/davis")
    p.add_argument("--frames", type=int, default=8, help="frames taken from each side of a splice")
    p.add_argument("--crop", default="192x320", help="HR centre crop HxW (multiples of 4)")
    p.add_argument("--model", help="zoo name or weights file (default: the bundled default model)")
    p.add_argument("--json")
    args = p.parse_args()
    root = Path(args.root)
    crop = tuple(int(v) for v in args.crop.split("x"))
    n = args.frames
    from vsrx.models import load_model, zoo

    model = args.model or zoo.default_name()
    half = load_model(model).config.num_frame // 2
    rows, alone = [], []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for a, b in SPLICES:
            hr = hr_frames(root / a, False, n, crop) + hr_frames(root / b, True, n, crop)
            got = {mode: sr_frames(hr, work, f"{a}+{b}", mode, model) for mode in ("auto", "off")}
            near = range(n - half, n + half)
            lr = [torch.from_numpy(downscale_x4_uint8(f)).permute(2, 0, 1) for f in hr]
            hists = [luma_histograms(x) for x in lr]
            scores = [cut_score(x, y) for x, y in zip(hists, hists[1:])]
            bicubic = [bicubic_upscale(downscale_x4_uint8(f)) for f in hr]
            row = {"splice": f"{a} | {b}", "cut_at": n, "found": got["auto"][1]["scene_cuts"],
                   "score_at_cut": scores[n - 1], "max_score_within": max(scores[: n - 1] + scores[n:]),
                   **{f"psnr_near_{m}": y_psnr(got[m][0], hr, near) for m in got},
                   "psnr_near_bicubic": y_psnr(bicubic, hr, near),
                   **{f"psnr_all_{m}": y_psnr(got[m][0], hr, range(2 * n)) for m in got},
                   "per_frame_near": {i: {m: y_psnr(got[m][0], hr, [i]) for m in got} for i in near},
                   "mean_abs_diff_near": float(np.mean([np.abs(got["auto"][0][i].astype(int) - got["off"][0][i]).mean()
                                                        for i in near]))}
            rows.append(row)
            print(f"{row['splice']:32s} cut at {n}, found {row['found']} (score {row['score_at_cut']:.2f}, within "
                  f"<= {row['max_score_within']:.2f}): near the cut off {row['psnr_near_off']:.2f}, auto "
                  f"{row['psnr_near_auto']:.2f} (bicubic {row['psnr_near_bicubic']:.2f}) dB Y; all frames "
                  f"{row['psnr_all_off']:.2f} -> {row['psnr_all_auto']:.2f}; mean |auto - off| {row['mean_abs_diff_near']:.2f}",
                  flush=True)
        for name in sorted({c for pair in SPLICES for c in pair}):
            hr = hr_frames(root / name, True, 2 * n, crop)
            got = {mode: sr_frames(hr, work, name, mode, model) for mode in ("auto", "off")}
            same = all(np.array_equal(x, y) for x, y in zip(got["auto"][0], got["off"][0]))
            alone.append({"clip": name, "frames": 2 * n, "found": got["auto"][1]["scene_cuts"], "identical_to_off": same})
            print(f"{name:32s} alone: cuts found {alone[-1]['found']}, output identical to off: {same}", flush=True)
    summary = {f"mean_psnr_near_{m}": float(np.mean([r[f"psnr_near_{m}"] for r in rows])) for m in ("auto", "off", "bicubic")}
    print(f"mean over splices, the {2 * half} frames next to the cut: off {summary['mean_psnr_near_off']:.3f} dB, "
          f"auto {summary['mean_psnr_near_auto']:.3f} dB, bicubic {summary['mean_psnr_near_bicubic']:.3f} dB "
          f"({time.perf_counter() - t0:.0f} s)")
    if args.json:
        machine = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                   "torch": torch.__version__}
        Path(args.json).write_text(json.dumps({"machine": machine, "command": "python benchmarks/scene_cuts.py "
                                               + " ".join(f"--{k} {v}" for k, v in vars(args).items() if v),
                                               "model": model, "crop": args.crop, "frames_each_side": n,
                                               "splices": rows, "alone": alone, **summary}, indent=2))


if __name__ == "__main__":
    main()
