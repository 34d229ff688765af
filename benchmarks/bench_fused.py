"""Decomposed deformable alignment (Eq. 3): fused Triton kernel vs unfused vs torchvision.

    python benchmarks/bench_fused.py                       # CUDA: 64 ch, 180x320, G=8, batch 7
    python benchmarks/bench_fused.py --sweep               # also try the kernel's tile configs
    python benchmarks/bench_fused.py --size 45x80 --batch 1 --reps 3   # CPU smoke run

Methods, per N and dtype (one 7-frame window by default):

- ``unfused``: ``Aligner.decomposed`` on tensors of that dtype, offsets included (grid_sample,
  (B, C*N, H, W) stacked tensor, 1x1 conv);
- ``unfused-f32``: what ``Aligner.forward`` does for half inputs today: upcast, unfused in
  float32, cast back (only for fp16/bf16);
- ``torchvision``: ``deform_conv2d`` with the equivalent 3x3 weight (N = 9 only);
- ``fused``: ``vsrx.ops.fused.fused_decomp`` (CUDA only; also ``fused-cl`` on a channels_last
  input, conversion not timed; ``fused-tf32`` for float32; with ``--sweep`` every
  block_p x num_warps config). The fused kernel always reads float32 offsets and masks.

Reported: median ms, extra peak memory over the inputs (CUDA: measured; CPU: n/a), the size of
the stacked tensor that the fused kernel does not allocate, and the max error relative to max
|y| against the float32 unfused result. Weights and offsets are random: speed does not depend
on them. On CPU only the unfused and torchvision paths run (the interpreter is not a benchmark).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torchvision.ops import deform_conv2d

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vsrx.models.align import Aligner, decomp_to_dcn  # noqa: E402
from vsrx.models.config import Alignment  # noqa: E402
from vsrx.ops import fused  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def timed(fn, reps: int, warmup: int, cuda: bool) -> tuple[float, float | None]:
    """(median ms, extra peak MiB over what was allocated before) of ``fn()``."""
    for _ in range(warmup):
        fn()
    extra = None
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        extra = (torch.cuda.max_memory_allocated() - base) / 2**20
        del out
    times = []
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times), extra


def run(args: argparse.Namespace) -> list[dict]:
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    h, w = (int(v) for v in args.size.split("x"))
    b, c, g = args.batch, args.channels, args.groups
    rows = []
    for n in (int(v) for v in args.offsets.split(",")):
        torch.manual_seed(0)
        aligner = Aligner(c, c, c, Alignment("decomp", offsets=n, groups=g)).to(dev).eval()
        with torch.no_grad():
            aligner.bias.uniform_(-0.1, 0.1)
        x32 = torch.randn(b, c, h, w, device=dev)
        conv_out = torch.randn(b, 3 * g * n, h, w, device=dev) * args.offset_scale
        off32, mask32 = conv_out[:, : 2 * g * n], torch.sigmoid(conv_out[:, 2 * g * n :])
        with torch.no_grad():
            ref = aligner.decomposed(x32, off32, mask32).float()
        scale = ref.abs().max().item()
        for dname in args.dtypes.split(","):
            dt = DTYPES[dname]
            x, off, mask = x32.to(dt), off32.to(dt), mask32.to(dt)
            stacked_mb = b * c * n * h * w * x.element_size() / 2**20
            methods = {}

            methods["unfused"] = lambda x=x, off=off, mask=mask: aligner.decomposed(x, off, mask)
            if dt != torch.float32:
                methods["unfused-f32"] = lambda x=x: aligner.decomposed(x.float(), off32, mask32).to(dt)
            if n == 9:
                w3 = decomp_to_dcn(aligner.weight)
                methods["torchvision"] = lambda x=x, off=off, mask=mask: deform_conv2d(
                    x, off, w3.to(dt), aligner.bias.to(dt), padding=1, mask=mask)
            if fused.available(x) and not fused.interpreting():
                args_f = (off32, mask32, aligner.weight, aligner.bias, aligner.grid, g, n)
                methods["fused"] = lambda x=x: fused.fused_decomp(x, *args_f)
                x_cl = x.contiguous(memory_format=torch.channels_last)
                methods["fused-cl"] = lambda x_cl=x_cl: fused.fused_decomp(x_cl, *args_f)
                if dt == torch.float32:
                    methods["fused-tf32"] = lambda x=x: fused.fused_decomp(x, *args_f, precision="tf32")
                if args.sweep:
                    for bp in (32, 64, 128):
                        for nw in (2, 4, 8):
                            methods[f"fused[p{bp},w{nw}]"] = lambda x=x, bp=bp, nw=nw: fused.fused_decomp(
                                x, *args_f, block_p=bp, num_warps=nw)
            for name, fn in methods.items():
                try:
                    with torch.no_grad():
                        y = fn()
                        err = ((y.float() - ref).abs().max() / scale).item()
                        del y
                        ms, extra = timed(fn, args.reps, args.warmup, cuda)
                except Exception as exc:  # e.g. an op without a kernel for this dtype/device
                    rows.append({"N": n, "dtype": dname, "method": name, "error": f"{type(exc).__name__}: {exc}"[:120]})
                    continue
                rows.append({"N": n, "dtype": dname, "method": name, "ms": ms, "extra_mb": extra,
                             "stacked_mb": stacked_mb, "rel_err": err})
    return rows


def report(rows: list[dict], args: argparse.Namespace) -> None:
    print(f"# Eq. 3 alignment, {args.channels} ch, {args.size}, G={args.groups}, batch {args.batch}, "
          f"device {args.device}" + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""))
    print(f"{'N':>3} {'dtype':>5} {'method':<18} {'ms':>9} {'extra MiB':>10} {'saved MiB':>10} {'rel err':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['N']:>3} {r['dtype']:>5} {r['method']:<18} n/a ({r['error']})")
            continue
        base = next((u for u in rows if u["N"] == r["N"] and u["dtype"] == r["dtype"] and u["method"] == "unfused"
                     and "error" not in u), None)
        saved = "n/a"
        if r["extra_mb"] is not None and base is not None and base["extra_mb"] is not None:
            saved = f"{base['extra_mb'] - r['extra_mb']:.0f}"
        extra = "n/a" if r["extra_mb"] is None else f"{r['extra_mb']:.0f}"
        print(f"{r['N']:>3} {r['dtype']:>5} {r['method']:<18} {r['ms']:>9.3f} {extra:>10} {saved:>10} {r['rel_err']:>9.2e}")
    stacked = {(r["N"], r["dtype"]): r["stacked_mb"] for r in rows if "stacked_mb" in r}
    for (n, d), mb in stacked.items():
        print(f"N={n} {d}: the unfused path materialises a {mb:.0f} MiB stacked (B, C*N, H, W) tensor; fused does not")


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", default="180x320", help="HxW of the feature maps")
    p.add_argument("--batch", type=int, default=7, help="7 = one 7-frame window")
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--offsets", default="5,9", help="comma-separated N values")
    p.add_argument("--dtypes", default="fp16,fp32")
    p.add_argument("--offset-scale", type=float, default=2.0, help="std of the learned offsets (pixels)")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--sweep", action="store_true", help="also time block_p x num_warps configs")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args)
    report(rows, args)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
