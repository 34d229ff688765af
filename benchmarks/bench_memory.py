"""Peak RSS of `vsrx upscale` against clip length: memory must not grow with the video.

    python benchmarks/bench_memory.py --frames 60,600 --size 48x64 --threads 1

Each length runs end to end (decode, upscale, encode) in its own process with a small random
decomp-5 model; prints the peak RSS per length and writes --json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(frames: int, h: int, w: int) -> dict:
    from vsrx.bench import make_clip
    from vsrx.models import EDVR, EDVRConfig, save_model
    from vsrx.pipeline import UpscaleOptions, upscale
    from vsrx.runtime import keep_freed_memory

    keep_freed_memory()  # as the command line does: freed memory stays in the heap, so growth would show
    tmp = Path(tempfile.mkdtemp())
    make_clip(tmp / "in.mp4", frames, h, w)
    model = EDVR(EDVRConfig(num_feat=16, num_frame=7, groups=2, num_extract_block=1, num_reconstruct_block=2,
                            with_tsa=False, align="decomp", offsets=5))
    save_model(model, tmp / "m.safetensors")
    t0 = time.perf_counter()
    result = upscale(str(tmp / "in.mp4"), str(tmp / "out.mp4"), UpscaleOptions(model=str(tmp / "m.safetensors")))
    return {"frames": result.frames, "seconds": time.perf_counter() - t0,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", default="60,600")
    p.add_argument("--size", default="48x64", help="LR size HxW")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    if args.child:
        print(json.dumps(child(args.child, h, w)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    results = []
    for n in args.frames.split(","):
        out = subprocess.run([sys.executable, __file__, "--child", n, "--size", args.size], capture_output=True, text=True, env=env)
        if out.returncode:
            raise SystemExit(out.stderr)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"{r['frames']:6d} frames at {args.size}: peak RSS {r['peak_rss_mb']:.0f} MB ({r['seconds']:.1f} s)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "results": results}, indent=2))


if __name__ == "__main__":
    main()
