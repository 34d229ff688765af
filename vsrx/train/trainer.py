"""The training loop: one screen of logic, plain resumable checkpoints, DDP under torchrun.

Run directory (``--out``)::

    config.json          the resolved TrainConfig
    model.safetensors    latest weights in deploy form (vsrx.load_model / vsrx upscale --model)
    metrics.jsonl        one JSON object per log / validation event
    ckpt/step_XXXXXXXX/  weights in training form + optimizer, step and RNG states

A checkpoint directory is written under a temporary name and renamed when complete, so a kill
at any moment leaves the previous checkpoint intact; ``--resume`` picks the newest complete one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from vsrx.errors import InputError, UsageError
from vsrx.models import EDVR, build_model, convert_alignment, load_model, save_model
from vsrx.models.edvr import EDVRConfig
from vsrx.models.weights import CONFIG_KEY, _load_strict, atomic_write, read_metadata
from vsrx.train.data import WindowPatches, default_workers, load_clips
from vsrx.train.losses import charbonnier, offset_fidelity

OVERFLOW_WARNING = 50.0  # mean |offset| in pixels above which BasicSR warns of offset overflow


@dataclass
class TrainConfig:
    """Everything a training run depends on (paper recipe defaults for EDVR-M)."""

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
    grad_clip: float | None = None
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
    log_every: int = 50
    save_every: int = 500
    keep: int = 2
    seed: int = 0
    workers: int | None = None
    device: str = "auto"


def cosine_restart_lr(step: int, cfg: TrainConfig) -> float:
    """Cosine annealing with ``restarts`` equal periods over the run, from cfg.lr to cfg.eta_min."""
    period = max(1, math.ceil(cfg.iters / max(cfg.restarts, 1)))
    t = (step % period) / period
    return cfg.eta_min + 0.5 * (cfg.lr - cfg.eta_min) * (1 + math.cos(math.pi * t))


class Run:
    """Process-group and device setup for one rank (single process when not under torchrun)."""

    def __init__(self, device: str) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "auto":
            device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def make_model(cfg: TrainConfig) -> EDVR:
    model = build_model(cfg.preset, cfg.align, cfg.offsets, cfg.groups, cfg.frames, cfg.with_tsa)
    if cfg.init_from:
        src = load_model(cfg.init_from)
        missing, unexpected = model.load_state_dict(
            {k: v for k, v in src.state_dict().items() if k in model.state_dict() and v.shape == model.state_dict()[k].shape},
            strict=False,
        )
        if unexpected:
            raise UsageError(f"--init-from {cfg.init_from}: unexpected keys {unexpected[:3]}")
        if missing and not all(k.startswith("fusion.") for k in missing):
            raise UsageError(f"--init-from {cfg.init_from} does not fit: missing {missing[:3]}")
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


def checkpoints(out: Path) -> list[Path]:
    return sorted(p for p in (out / "ckpt").glob("step_*") if p.is_dir() and (p / "state.pt").is_file())


def save_checkpoint(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int, deploy: nn.Module, keep: int = 2) -> None:
    """Write ckpt/step_N atomically (training-form weights, optimizer, step, RNG) and the deploy weights."""
    final = out / "ckpt" / f"step_{step:08d}"
    tmp = out / "ckpt" / f".tmp_step_{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, tmp / "model.safetensors")
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    atomic_write(tmp / "state.pt", lambda p: torch.save({"step": step, "optimizer": optimizer.state_dict(), "rng": rng}, p))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    save_model(deploy, out / "model.safetensors", {"vsrx.step": str(step)})
    for old in checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Restore the newest complete checkpoint into model and optimizer; returns its step."""
    found = checkpoints(out)
    if not found:
        raise InputError(f"--resume: no complete checkpoint under {out / 'ckpt'}")
    from safetensors.torch import load_file

    _load_strict(model, load_file(str(found[-1] / "model.safetensors")), found[-1])
    state = torch.load(found[-1] / "state.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return int(state["step"])


class StepSampler(torch.utils.data.Sampler):
    """This rank's sample indices for steps start..iters: global sample j of step s is s*B + j."""

    def __init__(self, start: int, iters: int, global_batch: int, rank: int, world: int) -> None:
        self.start, self.iters, self.global_batch, self.rank, self.world = start, iters, global_batch, rank, world

    def __iter__(self):
        local = self.global_batch // self.world
        for step in range(self.start, self.iters):
            base = step * self.global_batch + self.rank * local
            yield from range(base, base + local)

    def __len__(self) -> int:
        return (self.iters - self.start) * (self.global_batch // self.world)


def step_loader(dataset: torch.utils.data.Dataset, cfg, run: Run, start: int) -> DataLoader:
    """This rank's batches for steps start..cfg.iters (cfg: any config with batch, iters, workers)."""
    workers = default_workers() if cfg.workers is None else cfg.workers
    return DataLoader(
        dataset,
        batch_size=cfg.batch // run.world,
        sampler=StepSampler(start, cfg.iters, cfg.batch, run.rank, run.world),
        num_workers=workers,
        pin_memory=run.device.type == "cuda",
        persistent_workers=workers > 0,
    )


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else None
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def train(cfg: TrainConfig, resume: bool = False, log=print) -> Path:
    """Train per cfg (continuing from cfg.out when resume); returns the deploy weights path."""
    run = Run(cfg.device)
    out = Path(cfg.out)
    try:
        return _train(cfg, run, out, resume, log if run.main else (lambda *a, **k: None))
    finally:
        run.close()


def _train(cfg: TrainConfig, run: Run, out: Path, resume: bool, log) -> Path:
    if cfg.batch % run.world:
        raise UsageError(f"--batch {cfg.batch} is not divisible by {run.world} processes")
    torch.manual_seed(cfg.seed)
    clips = load_clips(cfg.dataset, Path(cfg.root) if cfg.root else None, cfg.exclude)
    synthetic = 1.0 if cfg.dataset == "synthetic" else cfg.synthetic_fraction
    flow_source = cfg.flow if cfg.flow != "auto" else ("gt" if synthetic else "spynet")
    if cfg.offset_fidelity and flow_source == "gt" and not synthetic:
        raise UsageError("ground-truth flow exists only for synthetic motion; use --synthetic-fraction or --flow spynet")
    dataset = WindowPatches(clips, cfg.frames, cfg.patch, synthetic=synthetic, temporal_reverse=cfg.temporal_reverse, seed=cfg.seed)
    found = checkpoints(out) if resume else []
    if resume and not found:
        raise InputError(f"--resume: no complete checkpoint under {out / 'ckpt'}")
    model = train_form(make_model(cfg), cfg, run.device, found[-1] if found else None).to(run.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)
    start = load_checkpoint(out, model, optimizer) if resume else 0
    if run.main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "config.json", lambda p: Path(p).write_text(json.dumps(dataclasses.asdict(cfg), indent=2)))
    spynet = None
    if cfg.offset_fidelity and flow_source == "spynet":
        spynet = load_model(cfg.spynet or "spynet", device=run.device).requires_grad_(False)
    net: nn.Module = DistributedDataParallel(model) if run.world > 1 else model
    loader = step_loader(dataset, cfg, run, start)
    amp = autocast_dtype(cfg.precision, run.device)
    scaler = torch.amp.GradScaler(run.device.type, enabled=amp == torch.float16)
    aligners = model.aligners()
    frozen = [p for n, p in model.named_parameters() if cfg.freeze_except and not n.startswith(cfg.freeze_except)]
    form = "" if model.config.align == cfg.align else f" (as its exact {model.config.mode_name} form)"
    log(f"training {'dcn' if cfg.align == 'dcn' else model.config.mode_name}{form} {cfg.preset} ({sum(p.numel() for p in model.parameters()):,} params) "
        f"on {len(clips) or 'procedural'} {cfg.dataset} clips, {run.world} process(es) on {run.device}, steps {start}..{cfg.iters}")
    board = tensorboard(out) if run.main else None
    t0, seen = time.perf_counter(), 0
    step = start
    for step, batch in enumerate(loader, start=start + 1):
        lr_now = cosine_restart_lr(step - 1, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr_now
        lr_frames = batch["lr"].to(run.device, non_blocking=True)
        gt = batch["gt"].to(run.device, non_blocking=True)
        watch = cfg.offset_fidelity > 0 or step % cfg.log_every == 0
        for a in aligners.values():
            a.record = [] if watch else None
        with torch.autocast(run.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            sr = net(lr_frames)
            loss = charbonnier(sr.float(), gt)
            fidelity = None
            if cfg.offset_fidelity:
                if flow_source == "gt":  # exact flow for synthetic samples; real ones are left out
                    flow, valid = batch["flow"].to(run.device), batch["has_flow"].to(run.device)
                else:
                    flow, valid = estimate_flow(spynet, lr_frames, cfg.frames // 2), None
                offsets = [a.record[0][0].float() for a in aligners.values()]
                valid = None if valid is None else valid.repeat_interleave(cfg.frames)
                fidelity = offset_fidelity(offsets, flow.flatten(0, 1).float(), cfg.fidelity_threshold, valid)
                loss = loss + cfg.offset_fidelity * fidelity
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if step <= cfg.freeze_iters:
            for p in frozen:
                p.grad = None
        if cfg.grad_clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        seen += 1
        if step % cfg.log_every == 0:
            mags = {n: a.record[0][0].detach().abs().mean() for n, a in aligners.items()}
            rate = seen / (time.perf_counter() - t0)
            entry = {"step": step, "loss": loss.item(), "lr": lr_now, "it_per_s": rate,
                     "offset_mean": {n: round(v.item(), 3) for n, v in mags.items()}}
            if fidelity is not None:
                entry["fidelity"] = fidelity.item()
            worst = max(entry["offset_mean"].values())
            eta = (cfg.iters - step) / max(rate, 1e-9)
            log(f"step {step}/{cfg.iters} loss {entry['loss']:.5f} lr {lr_now:.2e} {rate:.2f} it/s "
                f"ETA {eta / 60:.0f} min |offset| max {worst:.2f}" + (f" fidelity {entry['fidelity']:.4f}" if fidelity is not None else ""))
            if worst > OVERFLOW_WARNING:
                log(f"warning: offsets overflowing (mean |offset| {worst:.1f} > {OVERFLOW_WARNING:.0f}); consider --offset-fidelity")
            if run.main:
                append_jsonl(out / "metrics.jsonl", entry)
            if board:
                for key in ("loss", "lr", "it_per_s", "fidelity"):
                    if key in entry:
                        board.add_scalar(f"train/{key}", entry[key], step)
                for name, value in entry["offset_mean"].items():
                    board.add_scalar(f"offset_mean/{name}", value, step)
        if run.main and (step % cfg.save_every == 0 or step == cfg.iters):
            save_checkpoint(out, model, optimizer, step, deploy_form(model, cfg), cfg.keep)
        if run.main and cfg.val and (step % cfg.val_every == 0 or step == cfg.iters):
            scores = validate(deploy_form(model, cfg).eval(), cfg.val, cfg.val_frames, run.device)
            model.train()
            append_jsonl(out / "metrics.jsonl", {"step": step, "val": scores})
            for clip, v in scores.items() if board else ():
                board.add_scalar(f"val/{clip}/psnr_y", v["psnr_y"], step)
                board.add_scalar(f"val/{clip}/psnr_rgb", v["psnr_rgb"], step)
            log(f"step {step} validation: " + ", ".join(f"{k} Y {v['psnr_y']:.2f} dB (bicubic {v['bicubic_psnr_y']:.2f})" for k, v in scores.items()))
    for a in aligners.values():
        a.record = None
    if board:
        board.close()
    if run.main and not checkpoints(out) and step == start:
        save_checkpoint(out, model, optimizer, step, deploy_form(model, cfg), cfg.keep)
    return out / "model.safetensors"


def tensorboard(out: Path):
    """A TensorBoard writer under out/tb when the tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tb"))


def estimate_flow(spynet: nn.Module, lr_frames: torch.Tensor, center: int) -> torch.Tensor:
    """SPyNet flow centre -> each frame, (B, T, 2, H, W) in (dy, dx) pixels."""
    b, t = lr_frames.shape[:2]
    ref = lr_frames[:, center : center + 1].expand_as(lr_frames).flatten(0, 1)
    with torch.no_grad(), torch.autocast(lr_frames.device.type, enabled=False):
        flow = spynet.flow_dy_dx(ref.float(), lr_frames.flatten(0, 1).float())
    return flow.view(b, t, 2, *flow.shape[-2:])


def append_jsonl(path: Path, entry: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")


def validate(model: EDVR, sources: tuple[str, ...], max_frames: int, device: torch.device) -> dict[str, dict[str, float]]:
    """Y/RGB PSNR of the model and of bicubic on the first frames of each held-out clip (x4, MATLAB-bicubic LR)."""
    from vsrx.evaluate.bicubic import bicubic_upscale, downscale_x4_uint8, modcrop
    from vsrx.evaluate.metrics import frame_metrics
    from vsrx.inference import to_uint8, upscale_stream
    from vsrx.io.reader import open_source

    scores = {}
    for src in sources:
        gts, lrs = [], []
        for frame in open_source(src):
            if frame.index >= max_frames:
                break
            gts.append(modcrop(frame.rgb, 4))
            lrs.append(downscale_x4_uint8(gts[-1]))
        sr_frames = upscale_stream(model, (torch.from_numpy(f).permute(2, 0, 1) for f in lrs), len(lrs), device=device)
        model_m = [frame_metrics(to_uint8(sr).cpu().numpy(), gt) for sr, gt in zip(sr_frames, gts)]
        bic_m = [frame_metrics(bicubic_upscale(lr), gt) for lr, gt in zip(lrs, gts)]
        scores[Path(src).name] = {
            "psnr_y": float(np.mean([m["psnr_y"] for m in model_m])),
            "psnr_rgb": float(np.mean([m["psnr_rgb"] for m in model_m])),
            "bicubic_psnr_y": float(np.mean([m["psnr_y"] for m in bic_m])),
            "bicubic_psnr_rgb": float(np.mean([m["psnr_rgb"] for m in bic_m])),
            "frames": len(gts),
        }
    return scores
