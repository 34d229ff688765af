"""Throughput against the peer: BasicSR's own EDVR run window by window, against `vsrx upscale`
with the same (converted) weights, on the same frame folder, whole processes timed.

    python benchmarks/peer_basicsr.py --basicsr-python /path/to/basicsr-env/bin/python \
        --frames 10 --size 180x320 --threads 2 --json peer.json

Steps: BasicSR's EDVR-M (5 frames) with random weights saved as a BasicSR checkpoint; a folder of
test frames; `vsrx convert` of the checkpoint; then, each timed as a whole process (start-up,
imports, reading, model, PNG writing): BasicSR window by window with reflection_circle padding
(its EDVR test protocol), and `vsrx upscale --align decomp --offsets 9 --precision P` on the folder
for each P of --precision. Reports the wall times, the ratios, and the largest per-pixel difference
of the 8-bit outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

BASICSR_RUN = r"""
import sys, os, torch, numpy as np
from pathlib import Path
from torchvision.io import read_image, write_png
from basicsr.archs.edvr_arch import EDVR
from basicsr.data.data_util import generate_frame_indices
src, dst, ckpt = map(Path, sys.argv[1:4])
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
model = EDVR(num_frame=5)
model.load_state_dict(torch.load(ckpt)["params"], strict=True)
model.eval()
files = sorted(src.iterdir())
frames = [read_image(str(f)).float() / 255 for f in files]
dst.mkdir()
with torch.no_grad():
    for c in range(len(frames)):
        idx = generate_frame_indices(c, len(frames), 5, padding="reflection_circle")
        out = model(torch.stack([frames[i] for i in idx]).unsqueeze(0))[0]
        write_png(out.clamp(0, 1).mul(255).round().byte(), str(dst / f"{c:08d}.png"))
"""


def timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--basicsr-python", required=True, help="a Python with basicsr installed")
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--size", default="180x320", help="LR HxW")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--precision", default="auto", help="vsrx upscale --precision; a comma list times each")
    p.add_argument("--json")
    args = p.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    tmp = Path(tempfile.mkdtemp())
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    here = Path(__file__).parent
    subprocess.run([args.basicsr_python, str(here / "compare_basicsr.py"), "make", "--out", str(tmp), "--size", "8"], check=True, env=env)
    subprocess.run([sys.executable, "-m", "vsrx", "convert", str(tmp / "EDVR_basicsr.pth"), str(tmp / "edvr_m.safetensors")],
                   check=True, env=env, capture_output=True)
    from vsrx.bench import make_clip
    from vsrx.io.images import write_png
    from vsrx.io.reader import open_source

    make_clip(tmp / "clip.mp4", args.frames, h, w)
    (tmp / "frames").mkdir()
    for frame in open_source(tmp / "clip.mp4"):
        write_png(tmp / "frames" / f"{frame.index:08d}.png", frame.rgb)
    (tmp / "run_basicsr.py").write_text(BASICSR_RUN)
    t_peer = timed([args.basicsr_python, str(tmp / "run_basicsr.py"), str(tmp / "frames"), str(tmp / "peer"),
                    str(tmp / "EDVR_basicsr.pth")], env)
    from vsrx.device import cpu_has_fast_bf16
    from vsrx.io.images import read_image

    result = {"frames": args.frames, "lr_size": [h, w], "threads": args.threads, "basicsr_s": t_peer,
              "fast_bf16": cpu_has_fast_bf16(), "torch": torch.__version__, "vsrx": {}}
    for precision in args.precision.split(","):
        ours = tmp / f"ours-{precision}"
        t_vsrx = timed([sys.executable, "-m", "vsrx", "upscale", str(tmp / "frames"), str(ours), "--model",
                        str(tmp / "edvr_m.safetensors"), "--align", "decomp", "--offsets", "9", "--precision", precision,
                        "--quiet"], env)
        diff = max(int(np.abs(read_image(a).astype(int) - read_image(b).astype(int)).max())
                   for a, b in zip(sorted((tmp / "peer").iterdir()), sorted(ours.iterdir())))
        result["vsrx"][precision] = {"vsrx_s": t_vsrx, "speedup": t_peer / t_vsrx, "max_grey_level_difference": diff}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
