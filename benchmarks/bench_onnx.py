"""onnxruntime against vsrx's PyTorch pipeline on the CPU, side by side, for the zoo's models.

    OMP_NUM_THREADS=2 python benchmarks/bench_onnx.py --frames 3 --threads 2 --json benchmarks/results/onnx_cpu.json

PyTorch: `vsrx bench`'s optimised case for the model's mode (per-frame feature cache, the
decomposition, channels-last tail, the allocator setting of the `vsrx` command), ms per output
frame after one warm-up window. onnxruntime: the model exported by `vsrx export` (the whole
window: no feature cache is possible inside one graph), one `session.run` per output frame after
one warm-up run, intra-op threads = --threads. Both at --size (LR), fp32, batch 1, each in its
own process, alternating per model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from vsrx.bench import Case, machine

ORT_CHILD = """
import json, sys, time
import numpy as np, onnxruntime as ort
path, threads, frames, t, h, w = sys.argv[1], *map(int, sys.argv[2:])
options = ort.SessionOptions()
options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
x = np.random.default_rng(1).random((1, t, 3, h, w), dtype=np.float32)
session.run(None, {"input": x})
t0 = time.perf_counter()
for _ in range(frames):
    session.run(None, {"input": x})
print(json.dumps({"ms_per_frame": 1000 * (time.perf_counter() - t0) / frames, "version": ort.__version__}))
"""


def run(cmd: list[str], threads: int) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(cmd[:4])}\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="edvr-s-decomp5,edvr-s-flow,edvr-s-dcn")
    p.add_argument("--frames", type=int, default=3, help="timed output frames per side")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", default="180x320")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    from vsrx.models import load_model, zoo

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            entry = zoo.manifest().models[name]
            mode = entry.alignment.name
            onnx_path = Path(tmp) / f"{name}.onnx"
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "vsrx", "export", name, str(onnx_path)], check=True, capture_output=True)
            export_s = time.perf_counter() - t0
            spec = {"case": asdict(Case(mode=mode)), "preset": entry.family, "size": [h, w], "frames": args.frames,
                    "device": "cpu", "num_frame": entry.frames, "dump": None}
            torch_r = run([sys.executable, "-m", "vsrx.bench", json.dumps(spec)], args.threads)
            ort_r = run([sys.executable, "-c", ORT_CHILD, str(onnx_path), str(args.threads), str(args.frames),
                         str(entry.frames), str(h), str(w)], args.threads)
            row = {"model": name, "mode": mode, "pytorch_ms_per_frame": torch_r["ms_per_frame"],
                   "onnxruntime_ms_per_frame": ort_r["ms_per_frame"], "onnxruntime": ort_r["version"],
                   "export_s": export_s, "params": sum(p.numel() for p in load_model(name).parameters())}
            row["onnxruntime_x_pytorch"] = row["pytorch_ms_per_frame"] / row["onnxruntime_ms_per_frame"]
            print(f"{name} ({mode}): PyTorch {row['pytorch_ms_per_frame']:.0f} ms/frame, onnxruntime "
                  f"{row['onnxruntime_ms_per_frame']:.0f} ms/frame ({row['onnxruntime_x_pytorch']:.2f}x)", flush=True)
            rows.append(row)
    result = {"machine": machine("cpu", args.threads), "command": " ".join(["python", *sys.argv]), "lr_size": [h, w],
              "frames": args.frames, "results": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
