"""bf16 against fp32 inference on a CPU, on real frames: speed, grey-level differences, Y-PSNR.

    OMP_NUM_THREADS=2 python benchmarks/precision_cpu.py --root ../shared/data/heldout/davis \
        --models edvr-s-decomp5,edvr-s-flow --frames 8 --json benchmarks/results/precision_cpu.json

For each clip folder under --root (HR frames), the first --frames frames are reduced x4 by MATLAB
bicubic; each model streams them through `Upscaler` as `vsrx upscale` runs it, once in fp32 and
once in bf16 (`auto` on a CPU with AMX or AVX512-BF16: frames, the bilinear base and the output
float32, the network bf16), the two alternating in one process. Reported per model: seconds per
output frame (after each run's first window), the largest difference of the 8-bit outputs, how many pixels
differ by more than 1 grey level, the mean difference, and the Y-PSNR of each against the HR frames.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from vsrx.evaluate.bicubic import downscale_x4_uint8, modcrop
from vsrx.evaluate.metrics import psnr, rgb_to_y
from vsrx.inference import Engine, Upscaler, to_uint8
from vsrx.io.images import read_image
from vsrx.models import load_model


def upscale(model, frames: list[torch.Tensor], dtype: torch.dtype) -> tuple[float, list[np.ndarray]]:
    """Seconds per frame after the first, and the 8-bit outputs."""
    ticks, outs = [time.perf_counter()], []
    for sr in Upscaler(model, dtype=dtype).stream(iter(frames), len(frames)):
        outs.append(to_uint8(sr).numpy())
        ticks.append(time.perf_counter())
    return (ticks[-1] - ticks[1]) / max(len(frames) - 1, 1), outs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, required=True, help="a folder of clip folders of HR frames")
    p.add_argument("--models", default="edvr-s-decomp5", help="comma list of zoo names or .safetensors paths")
    p.add_argument("--align", help="as vsrx upscale --align (for every model)")
    p.add_argument("--offsets", type=int)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--repeat", type=int, default=2, help="timed runs of each precision, alternating")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    clips = {}
    for folder in sorted(d for d in args.root.iterdir() if d.is_dir()):
        gt = [modcrop(read_image(f), 4) for f in sorted(folder.iterdir())[: args.frames]]
        clips[folder.name] = (gt, [torch.from_numpy(downscale_x4_uint8(g)).permute(2, 0, 1).contiguous() for g in gt])
    rows = []
    for name in args.models.split(","):
        models = {dtype: Engine().prepare(load_model(name, args.align, args.offsets), torch.device("cpu"), dtype)
                  for dtype in (torch.float32, torch.bfloat16)}
        for clip, (gt, lr) in clips.items():
            times: dict[str, list[float]] = {"fp32": [], "bf16": []}
            outs = {}
            for _ in range(args.repeat):
                for dtype, model in models.items():
                    key = "bf16" if dtype == torch.bfloat16 else "fp32"
                    seconds, outs[key] = upscale(model, lr, dtype)
                    times[key].append(seconds)
            diff = np.abs(np.stack(outs["bf16"]).astype(np.int16) - np.stack(outs["fp32"]))
            row = {"model": name, "clip": clip, "frames": len(lr), "lr_size": list(lr[0].shape[-2:]),
                   "fp32_s_per_frame": min(times["fp32"]), "bf16_s_per_frame": min(times["bf16"]),
                   "max_grey_level_difference": int(diff.max()), "pixels_over_1": int((diff > 1).sum()),
                   "pixels": int(diff.size), "mean_difference": float(diff.mean()),
                   **{f"{k}_y_psnr": float(np.mean([psnr(rgb_to_y(o), rgb_to_y(g)) for o, g in zip(outs[k], gt)]))
                      for k in ("fp32", "bf16")}}
            row["bf16_x_fp32"] = row["fp32_s_per_frame"] / row["bf16_s_per_frame"]
            rows.append(row)
            print(f"{name} {clip}: fp32 {row['fp32_s_per_frame']:.2f} s/frame, bf16 {row['bf16_s_per_frame']:.2f} "
                  f"({row['bf16_x_fp32']:.2f}x); max diff {row['max_grey_level_difference']}, >1: {row['pixels_over_1']}"
                  f" of {row['pixels']}, mean {row['mean_difference']:.3f}; Y-PSNR {row['fp32_y_psnr']:.3f} / "
                  f"{row['bf16_y_psnr']:.3f}", flush=True)
    result = {"threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
