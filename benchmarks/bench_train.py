"""Training throughput on this machine: one optimizer step of a zoo model at several batch / patch /
layout / precision settings, side by side in one process.

    python benchmarks/bench_train.py --model edvr-s-decomp5 --threads 2 \
        --cases 8x32,16x32,4x64,2x96,8x32:cl,4x64:cl,8x32:bf16 --json benchmarks/results/train_cpu.json

A case is BATCHxPATCH (LR patch), optionally :cl (model and input channels-last) and :bf16 (bf16
autocast). Reported: seconds per step (median of --steps after --warmup steps) and LR pixels per
second, the throughput that matters when every step sees fresh patches.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from vsrx.models import load_model
from vsrx.runtime import keep_freed_memory
from vsrx.train.losses import charbonnier


def step_seconds(model_name: str, batch: int, patch: int, channels_last: bool, bf16: bool, warmup: int, steps: int) -> float:
    model = load_model(model_name).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    frames = model.config.num_frame
    lr = torch.rand(batch, frames, 3, patch, patch)
    gt = torch.rand(batch, 3, 4 * patch, 4 * patch)
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = charbonnier(model(lr).float(), gt)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="edvr-s-decomp5")
    p.add_argument("--cases", default="8x32,16x32,4x64,2x96,8x32:cl,4x64:cl,8x32:bf16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    keep_freed_memory()  # as the vsrx command does
    torch.set_num_threads(args.threads)
    rows = []
    for case in args.cases.split(","):
        size, *flags = case.split(":")
        batch, patch = (int(v) for v in size.split("x"))
        s = step_seconds(args.model, batch, patch, "cl" in flags, "bf16" in flags, args.warmup, args.steps)
        rows.append({"case": case, "batch": batch, "patch": patch, "s_per_step": s, "lr_px_per_s": batch * patch * patch / s})
        print(f"{case:>12}: {s:6.2f} s/step  {rows[-1]['lr_px_per_s']:7.0f} LR px/s", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        machine = {"cpu": platform.processor() or platform.machine(), "threads": args.threads, "torch": torch.__version__}
        args.json.write_text(json.dumps({"model": args.model, "machine": machine, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
