"""Starting points for the alignment-mode study of BENCHMARKS.md (the paper's finding at our scale).

    python benchmarks/alignment_study.py edvr-s-decomp5 runs/study --mode decomp-5 --mode flow --flow-guided \
        --spynet runs/spynet-natural.safetensors

For each mode, one weights file `<out>/init-<mode>.safetensors`: everything but the aligners copied
from SOURCE (feature extraction, the PCD offset convolutions, fusion, reconstruction, the x4 tail),
every aligner fresh (BasicSR's init: zero offsets, masks 0.5, seeded mixing weights). The modes then
differ only in their aligners, and `vsrx train --init-from <out>/init-<mode>.safetensors --align ...`
gives each the same steps from the same start.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vsrx.models import Alignment, EDVRConfig, load_model, save_model
from vsrx.models.align import Aligner
from vsrx.models.edvr import EDVR


def fresh_aligners(source: EDVR, alignment: Alignment, flow_guided: bool, spynet: str, seed: int) -> EDVR:
    """SOURCE's weights with every aligner replaced by a freshly initialised one of ``alignment``."""
    config = EDVRConfig(**{**source.config.__dict__, "flow_guided": flow_guided}).with_alignment(alignment)
    torch.manual_seed(seed)
    model = EDVR(config)
    aligner_keys = {f"{name}.{k}" for name, a in model.aligners().items() for k in a.state_dict()}
    kept = {k: v for k, v in source.state_dict().items() if k not in aligner_keys and not k.startswith("spynet.")}
    missing, unexpected = model.load_state_dict(kept, strict=False)
    left = [k for k in missing if k not in aligner_keys and not k.startswith("spynet.")]
    if left or unexpected:
        raise SystemExit(f"{source.config} does not fit {config}: missing {left[:3]}, unexpected {unexpected[:3]}")
    if flow_guided:
        model.spynet.load_state_dict(load_model(spynet).state_dict())
    assert all(isinstance(a, Aligner) and not a.conv_offset.weight.any() for a in model.aligners().values())
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="zoo name or weights file whose non-aligner weights every start shares")
    p.add_argument("out", type=Path)
    p.add_argument("--mode", action="append", required=True, help="dcn, flow, decomp or decomp-N (repeatable)")
    p.add_argument("--flow-guided", action="store_true", help="offsets start from SPyNet's flow (the model carries --spynet)")
    p.add_argument("--spynet", default="spynet", help="SPyNet weights for --flow-guided (default: the bundled ones)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    source = load_model(args.source)
    args.out.mkdir(parents=True, exist_ok=True)
    for mode in args.mode:
        alignment = Alignment.parse(mode)
        if alignment.mode != "flow":
            alignment = Alignment(alignment.mode, alignment.offsets, source.config.groups)
        model = fresh_aligners(source, alignment, args.flow_guided, args.spynet, args.seed)
        path = save_model(model, args.out / f"init-{alignment.name}.safetensors")
        print(f"{path}: {model.config.mode_name}, {sum(p.numel() for p in model.parameters()):,} params")


if __name__ == "__main__":
    main()
