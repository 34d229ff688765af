"""Upscale speed and memory: fps and peak RSS per alignment mode, with and without the feature cache,
and peak RSS against clip length (memory must not grow with the video).

    python benchmarks/bench_upscale.py --preset edvr-s --size 180x320 --frames 8 --threads 2
    python benchmarks/bench_upscale.py --memory --frames 60,600

Each measurement runs in its own process so that peak RSS is its own. Weights are random:
speed does not depend on them. Prints a table and writes --json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time


def child(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from vsrx.inference import Upscaler
    from vsrx.models import build_model

    align, _, n = args.mode.partition("-")
    torch.manual_seed(0)
    model = build_model(args.preset, align, int(n) if n else None, num_frame=args.num_frame).eval()
    h, w = (int(v) for v in args.size.split("x"))
    frames = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for _ in range(min(args.frames, 16))]
    stream = (frames[i % len(frames)] for i in range(args.frames))
    up = Upscaler(model, batch=args.batch, cache=not args.no_cache)
    it = up.stream(stream, args.frames)
    next(it)  # warm-up frame (first window extracts T frames' features)
    t0 = time.perf_counter()
    count = sum(1 for _ in it)
    seconds = time.perf_counter() - t0
    return {"mode": args.mode, "cache": not args.no_cache, "frames": args.frames, "fps": count / seconds,
            "ms_per_frame": 1000 * seconds / count, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def memory_child(args: argparse.Namespace) -> dict:
    """End to end on a generated clip: decode, upscale, encode; peak RSS of the whole process."""
    import tempfile
    from pathlib import Path

    import av
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from vsrx.models import EDVR, EDVRConfig, save_model
    from vsrx.pipeline import UpscaleOptions, upscale

    tmp = Path(tempfile.mkdtemp())
    h, w = (int(v) for v in args.size.split("x"))
    with av.open(str(tmp / "in.mp4"), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(args.frames):
            img = np.zeros((h, w, 3), np.uint8)
            img[:, :, 0] = (np.arange(w)[None, :] + 3 * i) % 256
            img[:, :, 1] = (np.arange(h)[:, None] * 2 + i) % 256
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode(None))
    model = EDVR(EDVRConfig(num_feat=16, num_frame=7, groups=2, num_extract_block=1, num_reconstruct_block=2,
                            with_tsa=False, align="decomp", offsets=5))
    save_model(model, tmp / "m.safetensors")
    t0 = time.perf_counter()
    result = upscale(str(tmp / "in.mp4"), str(tmp / "out.mp4"), UpscaleOptions(model=str(tmp / "m.safetensors")))
    return {"frames": result.frames, "seconds": time.perf_counter() - t0,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_child(argv: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": argv[argv.index("--threads") + 1]}
    out = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="edvr-s")
    p.add_argument("--size", default="180x320", help="LR size HxW")
    p.add_argument("--frames", default="8", help="frames per run (comma list with --memory)")
    p.add_argument("--modes", default="dcn,decomp-5,decomp-9,flow")
    p.add_argument("--num-frame", type=int, default=7)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--memory", action="store_true", help="peak RSS end to end against clip length")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--no-cache", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.frames = int(args.frames)
        print(json.dumps(memory_child(args) if args.memory else child(args)))
        return
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": args.threads,
               "python": platform.python_version()}
    common = ["--preset", args.preset, "--size", args.size, "--num-frame", str(args.num_frame), "--batch", str(args.batch),
              "--threads", str(args.threads)]
    results = []
    if args.memory:
        size = args.size if args.size != "180x320" else "48x64"
        for n in args.frames.split(","):
            r = run_child(["--memory", "--frames", n, "--size", size, "--threads", str(args.threads)])
            results.append(r)
            print(f"{r['frames']:5d} frames at {size}: peak RSS {r['peak_rss_mb']:.0f} MB, {r['seconds']:.1f} s", flush=True)
    else:
        for mode in args.modes.split(","):
            for cache in (True, False):
                r = run_child(common + ["--mode", mode, "--frames", args.frames] + ([] if cache else ["--no-cache"]))
                results.append(r)
                print(f"{mode:9s} cache {'on ' if cache else 'off'} {r['ms_per_frame']:9.1f} ms/frame "
                      f"{r['fps']:7.3f} fps  peak RSS {r['peak_rss_mb']:6.0f} MB", flush=True)
    report = {"machine": machine, "command": " ".join(sys.argv), "results": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
