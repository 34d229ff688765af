"""Check vsrx against BasicSR's own EDVR: same checkpoint, same input, same output.

BasicSR is not a dependency; install it in a separate environment (basicsr 1.4.2 also needs a
one-line shim, torchvision/transforms/functional_tensor.py: `from torchvision.transforms.functional
import rgb_to_grayscale`). Then:

    /path/to/basicsr-env/bin/python benchmarks/compare_basicsr.py make --out /tmp/cmp --preset m
    python benchmarks/compare_basicsr.py check --out /tmp/cmp

`make` builds BasicSR's EDVR, gives every weight (offset predictors included) random values so
offsets are large, saves it as a BasicSR checkpoint ({'params': state_dict}) with a random input
and BasicSR's float64 output. `check` converts the checkpoint with `vsrx convert`, runs it in dcn
and in decomp-9 mode, and reports the largest differences.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

PRESETS = {"m": dict(num_feat=64, num_reconstruct_block=10), "l": dict(num_feat=128, num_reconstruct_block=40)}


def make(out: Path, preset: str, frames: int, size: int) -> None:
    from basicsr.archs.edvr_arch import EDVR

    torch.manual_seed(0)
    model = EDVR(num_frame=frames, **PRESETS[preset]).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "conv_offset" in name:
                p.normal_(0, 0.05)  # offsets of a few pixels, reaching outside the frame at the borders
    x = torch.rand(1, frames, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        y = model(x)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"params": {k: v.float() for k, v in model.state_dict().items()}}, out / "EDVR_basicsr.pth")
    # Reference output from the float32 weights, as vsrx will see them, in float64 arithmetic.
    model.load_state_dict({k: v.double() for k, v in torch.load(out / "EDVR_basicsr.pth")["params"].items()})
    with torch.no_grad():
        y = model(x)
    torch.save({"input": x, "output": y}, out / "io.pt")
    print(f"BasicSR EDVR-{preset.upper()} ({sum(p.numel() for p in model.parameters()):,} params) -> {out}")


def check(out: Path) -> None:
    import vsrx

    subprocess.run([sys.executable, "-m", "vsrx", "convert", str(out / "EDVR_basicsr.pth"), str(out / "edvr.safetensors"),
                    "--overwrite"], check=True)
    io = torch.load(out / "io.pt")
    for align in ("dcn", "decomp"):
        model = vsrx.load_model(out / "edvr.safetensors", align=align, offsets=9 if align == "decomp" else None).double()
        with torch.no_grad():
            y = model(io["input"])
        diff = (y - io["output"]).abs().max().item()
        rel = ((y - io["output"]).norm() / io["output"].norm()).item()
        print(f"vsrx {model.config.mode_name:9s} vs BasicSR: max |diff| {diff:.3e}, relative {rel:.3e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=["make", "check"])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--preset", choices=sorted(PRESETS), default="m")
    p.add_argument("--frames", type=int, default=5)
    p.add_argument("--size", type=int, default=32)
    args = p.parse_args()
    make(args.out, args.preset, args.frames, args.size) if args.step == "make" else check(args.out)


if __name__ == "__main__":
    main()
