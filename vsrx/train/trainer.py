"""EDVR training: the model, its data and its losses, run by the shared loop (vsrx.train.loop)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vsrx.errors import UsageError
from vsrx.models import EDVR, build_model, convert_alignment, load_model
from vsrx.models.align import record_offsets
from vsrx.models.edvr import EDVRConfig
from vsrx.models.spynet import FRAME_MIN_SIZE
from vsrx.models.weights import CONFIG_KEY, read_metadata
from vsrx.train.data import WindowPatches, load_clips, lr_from_hr
from vsrx.train.loop import LoopConfig, Run, checkpoints, fit
from vsrx.train.losses import charbonnier, offset_fidelity

OVERFLOW_WARNING = 50.0  # mean |offset| in pixels above which BasicSR warns of offset overflow


@dataclass
class TrainConfig(LoopConfig):
    """Everything an EDVR training run depends on (paper recipe defaults for EDVR-M), with the loop's shared settings."""

    task: str = "sr"
    dataset: str = "synthetic"
    root: str | None = None
    synthetic_fraction: float = 0.0
    exclude: tuple[str, ...] = ()
    out: str = "runs/vsrx"
    preset: str = "edvr-m"
    align: str = "dcn"
    offsets: int | None = None
    groups: int | None = None
    frames: int = 7
    with_tsa: bool | None = None
    reconstruct_blocks: int | None = None
    flow_guided: bool = False
    init_from: str | None = None
    freeze_except: str | None = None
    freeze_iters: int = 0
    iters: int = 600_000
    batch: int = 32
    patch: int = 64
    lr: float = 4e-4
    betas: tuple[float, float] = (0.9, 0.99)
    eta_min: float = 1e-7
    restarts: int = 4
    warmup: int = 0
    precision: str = "auto"
    offset_fidelity: float = 0.0
    fidelity_threshold: float = 10.0
    flow: str = "auto"
    spynet: str | None = None
    temporal_reverse: bool = True
    dcn_impl: str = "auto"
    val: tuple[str, ...] = ()
    val_every: int = 1000
    val_frames: int = 30


def make_model(cfg: TrainConfig) -> EDVR:
    """The model a new run starts from: fresh, or ``init_from``'s weights where they fit (a new fusion
    module and a flow-guided model's SPyNet may be missing there). A flow-guided model whose SPyNet
    does not come from ``init_from`` gets ``--spynet``'s (default: the bundled one).

    The reconstruction trunk is ``init_from``'s depth unless ``reconstruct_blocks`` says otherwise; a
    deeper one keeps the source's blocks and appends identity blocks (second convolution zero), so
    the grown model starts out computing exactly what ``init_from`` does.
    """
    src = load_model(cfg.init_from) if cfg.init_from else None
    if src is not None and not isinstance(src, EDVR):
        raise UsageError(f"--init-from {cfg.init_from} is a {type(src).__name__}, not an EDVR model")
    blocks = cfg.reconstruct_blocks or (src.config.num_reconstruct_block if src is not None else None)
    model = build_model(cfg.preset, cfg.align, cfg.offsets, cfg.groups, cfg.frames, cfg.with_tsa, cfg.flow_guided, blocks)
    missing = list(model.state_dict())
    if src is not None:
        missing, unexpected = model.load_state_dict(
            {k: v for k, v in src.state_dict().items() if k in model.state_dict() and v.shape == model.state_dict()[k].shape},
            strict=False,
        )
        if unexpected:
            raise UsageError(f"--init-from {cfg.init_from}: unexpected keys {unexpected[:3]}")
        src_blocks = src.config.num_reconstruct_block
        if src_blocks > model.config.num_reconstruct_block:
            raise UsageError(f"--init-from {cfg.init_from} has {src_blocks} reconstruction blocks; "
                             f"--reconstruct-blocks {model.config.num_reconstruct_block} would drop some")
        grown = range(src_blocks, model.config.num_reconstruct_block)
        new_blocks = tuple(f"reconstruction.{i}." for i in grown)
        if not all(k.startswith(("fusion.", "spynet.") + new_blocks) for k in missing):
            raise UsageError(f"--init-from {cfg.init_from} does not fit: missing {missing[:3]}")
        for i in grown:
            block = model.reconstruction[i]
            nn.init.zeros_(block.conv2.weight)
            nn.init.zeros_(block.conv2.bias)
    if cfg.flow_guided and any(k.startswith("spynet.") for k in missing):
        model.spynet.load_state_dict(load_model(cfg.spynet or "spynet").state_dict())
    return model


def train_form(model: EDVR, cfg: TrainConfig, device: torch.device, resume_from: Path | None = None) -> EDVR:
    """dcn models train through the exact decomp-9 form where that is faster (CPU), and are saved as dcn.

    A resumed run keeps the form its checkpoint was written in (its optimizer state has those shapes).
    """
    impl = cfg.dcn_impl if cfg.dcn_impl != "auto" else ("decomp" if device.type == "cpu" else "torchvision")
    if resume_from is not None:
        saved = EDVRConfig.from_json(read_metadata(resume_from / "model.safetensors")[CONFIG_KEY])
        impl = "decomp" if saved.align == "decomp" else "torchvision"
    if model.config.align == "dcn" and impl == "decomp":
        return convert_alignment(model, "decomp", 9)
    return model


def deploy_form(model: EDVR, cfg: TrainConfig) -> EDVR:
    return convert_alignment(model, "dcn", 9) if cfg.align == "dcn" and model.config.align != "dcn" else model


class EDVRTask:
    """EDVR on LR-window / HR-centre patches: Charbonnier loss plus the offset-fidelity loss (Eq. 4-5)."""

    def __init__(self, cfg: TrainConfig, run: Run, resume: bool, log=print) -> None:
        if cfg.frames % 2 == 0:
            raise UsageError(f"--frames must be odd, got {cfg.frames}")
        self.cfg, self.log = cfg, log
        torch.manual_seed(cfg.seed)
        self.clips = load_clips(cfg.dataset, Path(cfg.root) if cfg.root else None, cfg.exclude,
                                Path(cfg.frame_cache) if cfg.frame_cache else None)
        synthetic = 1.0 if cfg.dataset == "synthetic" else cfg.synthetic_fraction
        self.flow_source = cfg.flow if cfg.flow != "auto" else ("gt" if synthetic else "spynet")
        if cfg.offset_fidelity and self.flow_source == "gt" and not synthetic:
            raise UsageError("ground-truth flow exists only for synthetic motion; use --synthetic-fraction or --flow spynet")
        # On a GPU the LR patches are made there from HR crops, with the same MATLAB-bicubic code.
        lr_on_device = run.device.type == "cuda" and all(c.lr is None for c in self.clips)
        self.data = WindowPatches(self.clips, cfg.frames, cfg.patch, synthetic=synthetic, temporal_reverse=cfg.temporal_reverse,
                                  seed=cfg.seed, lr_on_device=lr_on_device)
        found = checkpoints(Path(cfg.out)) if resume else []
        self.model = train_form(make_model(cfg), cfg, run.device, found[-1] if found else None)
        self.aligners = self.model.aligners()
        self.spynet = None
        if cfg.offset_fidelity and self.flow_source == "spynet":
            self.spynet = load_model(cfg.spynet or "spynet", device=run.device).requires_grad_(False)
            self.spynet.min_size = FRAME_MIN_SIZE

    def describe(self, run: Run, start: int, iters: int) -> str:
        cfg, model = self.cfg, self.model
        form = "" if model.config.align == cfg.align else f" (as its exact {model.config.mode_name} form)"
        return (f"training {'dcn' if cfg.align == 'dcn' else model.config.mode_name}{form} {cfg.preset} "
                f"({sum(p.numel() for p in model.parameters()):,} params) on {len(self.clips) or 'procedural'} {cfg.dataset} clips, "
                f"{run.world} process(es) on {run.device}, steps {start}..{iters}")

    def loss(self, net: nn.Module, batch: dict[str, Tensor], device: torch.device, watch: bool) -> tuple[Tensor, dict[str, Any]]:
        cfg = self.cfg
        gt = batch["gt"].to(device, non_blocking=True)
        lr_frames = batch["lr"].to(device, non_blocking=True) if "lr" in batch else lr_from_hr(batch["hr"].to(device, non_blocking=True))
        with record_offsets(self.aligners) if cfg.offset_fidelity or watch else contextlib.nullcontext() as records:
            sr = net(lr_frames)
        loss = charbonnier(sr.float(), gt)
        extras: dict[str, Any] = {}
        if cfg.offset_fidelity:
            if self.flow_source == "gt":  # exact flow for synthetic samples; real ones are left out
                flow, valid = batch["flow"].to(device), batch["has_flow"].to(device).repeat_interleave(cfg.frames)
            else:
                flow, valid = estimate_flow(self.spynet, lr_frames, cfg.frames // 2), None
            offsets = [records[name][0][0].float() for name in self.aligners]
            fidelity = offset_fidelity(offsets, flow.flatten(0, 1).float(), cfg.fidelity_threshold, valid)
            loss = loss + cfg.offset_fidelity * fidelity
            if watch:
                extras["fidelity"] = fidelity.item()
        if watch:
            extras["offset_mean"] = {n: round(records[n][0][0].detach().abs().mean().item(), 3) for n in self.aligners}
            worst = max(extras["offset_mean"].values())
            extras["offset_max"] = float(worst)
            if worst > OVERFLOW_WARNING:
                self.log(f"warning: offsets overflowing (mean |offset| {worst:.1f} > {OVERFLOW_WARNING:.0f}); consider --offset-fidelity")
        return loss, extras

    def deploy(self, model: nn.Module) -> nn.Module:
        return deploy_form(model, self.cfg)

    def validate(self, model: nn.Module, step: int) -> dict | None:
        if not self.cfg.val:
            return None
        return validate(model, self.cfg.val, self.cfg.val_frames, next(model.parameters()).device)

    def report(self, step: int, scores: dict) -> str:
        return f"step {step} validation: " + ", ".join(
            f"{k} Y {v['psnr_y']:.2f} dB (bicubic {v['bicubic_psnr_y']:.2f})" for k, v in scores.items())


def train(cfg: TrainConfig, resume: bool = False, log=print) -> Path:
    """Train per cfg (continuing from cfg.out when resume); returns the deploy weights path."""
    run = Run(cfg.device)
    log = log if run.main else (lambda *a, **k: None)
    try:
        return fit(EDVRTask(cfg, run, resume, log), cfg, run, resume, log)
    finally:
        run.close()


def estimate_flow(spynet: nn.Module, lr_frames: torch.Tensor, center: int) -> torch.Tensor:
    """SPyNet flow centre -> each frame, (B, T, 2, H, W) in (dy, dx) pixels, in fp32 whatever the autocast."""
    with torch.autocast(lr_frames.device.type, enabled=False):
        return spynet.centre_flows(lr_frames.float(), center)


def validate(model: EDVR, sources: tuple[str, ...], max_frames: int, device: torch.device) -> dict[str, dict[str, float]]:
    """Y/RGB PSNR of the model and of bicubic on the first frames of each held-out clip (x4, MATLAB-bicubic LR),
    scored by `vsrx.evaluate` as `vsrx eval` scores a clip."""
    from vsrx.evaluate.datasets import Clip, Dataset
    from vsrx.evaluate.runner import RowSpec, evaluate
    from vsrx.inference import to_uint8, upscale_stream
    from vsrx.io.reader import open_source

    def sr(lr: list[np.ndarray]) -> Iterator[np.ndarray]:
        frames = (torch.from_numpy(f).permute(2, 0, 1) for f in lr)
        return (to_uint8(x).cpu().numpy() for x in upscale_stream(model, frames, len(lr), device=device))

    # the first max_frames frames of each clip, decoded as `vsrx upscale` decodes it
    clips = tuple(Clip(Path(src).name, np.stack([f.rgb for f in islice(open_source(src), max_frames)])) for src in sources)
    result = evaluate(Dataset("validation", clips, "y"), [(RowSpec("model"), sr)])
    bicubic, ours = (row["clips"] for row in result["rows"])
    psnr = ("psnr_y", "psnr_rgb")
    return {name: {**{k: ours[name][k] for k in psnr}, **{f"bicubic_{k}": bicubic[name][k] for k in psnr},
                   "frames": len(ours[name]["frames"])} for name in ours}
