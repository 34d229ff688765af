"""How well a SPyNet aligns real video frames: the photometric error of warping neighbours onto a frame.

    python benchmarks/flow_check.py --weights spynet --root ../shared/data/natural/davis --min-size 0 32 64

For each clip (a frame folder), frames ``start .. start+3`` are made x4 MATLAB-bicubic LR (as the
models see them); the flow from frame ``start`` to each of the next three is estimated and the
neighbour warped back (border padding). Reported: the mean absolute difference in grey levels
(0-255) against the reference frame, for no flow and for SPyNet at each ``min_size`` (pyramid
levels with a shorter side are skipped), per distance j = 1, 2, 3. Lower is better; an estimate
worse than no flow is broken.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from vsrx.evaluate.bicubic import downscale_x4_uint8
from vsrx.io.images import list_images, read_image
from vsrx.models import load_model
from vsrx.ops.warp import flow_warp


def lr_frames(folder: Path, start: int) -> list[torch.Tensor]:
    frames = []
    for path in list_images(folder)[start : start + 4]:
        rgb = read_image(path)
        rgb = rgb[: rgb.shape[0] // 4 * 4, : rgb.shape[1] // 4 * 4]
        frames.append(torch.from_numpy(downscale_x4_uint8(rgb)).permute(2, 0, 1).float().unsqueeze(0) / 255)
    return frames


def errors(frames: list[torch.Tensor], spynet: torch.nn.Module | None) -> list[float]:
    """Mean |ref - warp(neighbour j)| in grey levels for j = 1, 2, 3 (no flow when spynet is None)."""
    ref, out = frames[0], []
    for supp in frames[1:]:
        if spynet is not None:
            with torch.no_grad():
                supp = flow_warp(supp, spynet.flow_dy_dx(ref, supp), "border")
        out.append((ref - supp).abs().mean().item() * 255)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="spynet", help="SPyNet weights file or zoo name")
    p.add_argument("--root", required=True, type=Path, help="folder of frame folders (one per clip)")
    p.add_argument("--min-size", type=int, nargs="+", default=[0, 32])
    p.add_argument("--start", type=int, default=20, help="first frame of each clip")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)
    spynet = load_model(args.weights)
    clips = {d.name: lr_frames(d, args.start) for d in sorted(args.root.iterdir()) if d.is_dir()}
    rows = {"no flow": np.array([errors(f, None) for f in clips.values()])}
    for size in args.min_size:
        spynet.min_size = size
        rows[f"min_size {size}"] = np.array([errors(f, spynet) for f in clips.values()])
    print(f"{len(clips)} clips from {args.root}, frames {args.start}..{args.start + 3}, weights {args.weights}")
    print(f"{'':14s} {'j=1':>6s} {'j=2':>6s} {'j=3':>6s}   worse than no flow (j=1)")
    for name, e in rows.items():
        worse = int((e[:, 0] > rows["no flow"][:, 0]).sum())
        print(f"{name:14s} " + " ".join(f"{x:6.2f}" for x in e.mean(0)) + f"   {worse}/{len(clips)}")
    if args.json:
        args.json.write_text(json.dumps({"clips": list(clips), **{k: v.tolist() for k, v in rows.items()}}, indent=1))


if __name__ == "__main__":
    main()
