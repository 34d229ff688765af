"""The one training loop, shared by EDVR (trainer.py) and SPyNet (flow.py) training.

A task brings the model, the data, the loss and the validation; the loop brings everything
else: the learning-rate schedule, AMP, an EMA of the weights, logging, atomic checkpoints,
validation, DDP under torchrun and a wall-clock limit. Run directory (``--out``)::

    config.json          the resolved config (``vsrx train --resume DIR`` needs nothing else)
    model.safetensors    latest weights in deploy form (the EMA weights when --ema is on)
    metrics.jsonl        one JSON object per log / validation event
    ckpt/step_XXXXXXXX/  weights in training form (+ ema.safetensors) and state.pt: optimizer, step, RNG

A checkpoint directory is written under a temporary name and renamed when complete, so a kill
at any moment leaves the previous checkpoint intact; a resume picks the newest complete one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset

from vsrx.device import pick_device
from vsrx.errors import InputError, UsageError
from vsrx.io.atomic import atomic_write, remove_path, replace_path
from vsrx.models import save_model
from vsrx.models.weights import load_state

# Settings that `vsrx train --resume DIR` accepts next to the saved config: how long and how
# verbosely the run goes on, where its data now lies and what it runs on, never what it learns.
RESUME_OVERRIDES = ("iters", "time_limit", "root", "frame_cache", "device", "workers", "log_every", "save_every", "val_every", "keep")


@dataclass
class LoopConfig:
    """The settings every task's config shares, with one default. `fit` also reads the task's out,
    iters, batch, lr, betas, eta_min, restarts, warmup, precision and val_every (their defaults differ
    by task) and, where a task has them, freeze_except and freeze_iters."""

    task: str
    grad_clip: float | None = None
    ema: float = 0.0  # decay of an exponential moving average of the weights (0: off); deploy weights are the EMA
    time_limit: float | None = None  # seconds of training after which the run checkpoints and ends
    log_every: int = 50
    save_every: int = 500
    keep: int = 2
    seed: int = 0
    workers: int | None = None
    device: str = "auto"
    frame_cache: str | None = None  # folder where decoded training clips are kept, memory-mapped (data.cached_frames)


class Task(Protocol):
    """What the loop trains. ``model`` is in training form; ``loss`` runs inside autocast."""

    model: nn.Module
    data: Dataset

    def describe(self, run: Run, start: int, iters: int) -> str: ...

    def loss(self, net: nn.Module, batch: dict[str, Tensor], device: torch.device, watch: bool) -> tuple[Tensor, dict[str, Any]]:
        """(loss, extras to log); ``watch`` is True on logging steps (extras may then cost a sync)."""

    def deploy(self, model: nn.Module) -> nn.Module:
        """The model as users load it (e.g. dcn from its decomp-9 training form)."""

    def validate(self, model: nn.Module, step: int) -> dict | None:
        """Scores of the deploy-form model, or None when the run has nothing to validate on."""

    def report(self, step: int, scores: dict) -> str: ...


class Run:
    """Process-group and device setup for one rank (single process when not under torchrun)."""

    def __init__(self, device: str) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = pick_device(device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on any rank (so ranks stop at the same step)."""
        if self.world == 1:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t)
        return bool(t.item())

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def learning_rate(step: int, cfg) -> float:
    """Cosine annealing with ``cfg.restarts`` equal periods from cfg.lr to cfg.eta_min, after a linear
    warm-up of ``cfg.warmup`` steps; ``step`` counts from 1."""
    period = max(1, math.ceil(cfg.iters / max(cfg.restarts, 1)))
    t = ((step - 1) % period) / period
    lr = cfg.eta_min + 0.5 * (cfg.lr - cfg.eta_min) * (1 + math.cos(math.pi * t))
    return lr * min(1.0, step / cfg.warmup) if cfg.warmup > 0 else lr


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else None
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


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


def default_workers() -> int:
    return 0 if not torch.cuda.is_available() else min(8, os.cpu_count() or 1)


def step_loader(dataset: Dataset, cfg, run: Run, start: int) -> DataLoader:
    """This rank's batches for steps start..cfg.iters."""
    workers = default_workers() if cfg.workers is None else cfg.workers
    return DataLoader(
        dataset,
        batch_size=cfg.batch // run.world,
        sampler=StepSampler(start, cfg.iters, cfg.batch, run.rank, run.world),
        num_workers=workers,
        pin_memory=run.device.type == "cuda",
        persistent_workers=workers > 0,
    )


def checkpoints(out: Path) -> list[Path]:
    return sorted(p for p in (out / "ckpt").glob("step_*") if p.is_dir() and (p / "state.pt").is_file())


def save_checkpoint(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int, deploy: nn.Module,
                    keep: int = 2, ema: AveragedModel | None = None, metadata: dict[str, str] | None = None) -> None:
    """Write ckpt/step_N atomically (training-form weights, EMA, optimizer, step, RNG) and the deploy weights."""
    final = out / "ckpt" / f"step_{step:08d}"
    tmp = out / "ckpt" / f".tmp_step_{step:08d}"
    remove_path(tmp)
    tmp.mkdir(parents=True)
    save_model(model, tmp / "model.safetensors")
    if ema is not None:
        save_model(ema.module, tmp / "ema.safetensors", {"vsrx.ema_updates": str(int(ema.n_averaged))})
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    atomic_write(tmp / "state.pt", lambda p: torch.save({"step": step, "optimizer": optimizer.state_dict(), "rng": rng}, p))
    replace_path(tmp, final)
    save_model(deploy, out / "model.safetensors", {"vsrx.step": str(step), **(metadata or {})})
    for old in checkpoints(out)[:-keep]:
        remove_path(old)


def load_checkpoint(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer, ema: AveragedModel | None = None) -> int:
    """Restore the newest complete checkpoint into model, optimizer and EMA; returns its step.

    A checkpoint without EMA weights (a run that turned --ema on later) starts the EMA there.
    """
    from safetensors import safe_open

    found = checkpoints(out)
    if not found:
        raise InputError(f"--resume: no complete checkpoint under {out / 'ckpt'}")
    load_state(model, found[-1] / "model.safetensors")
    state = torch.load(found[-1] / "state.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    ema_file = found[-1] / "ema.safetensors"
    if ema is not None and ema_file.is_file():
        load_state(ema.module, ema_file)
        with safe_open(str(ema_file), "pt") as f:
            ema.n_averaged.fill_(int(f.metadata()["vsrx.ema_updates"]))
    return int(state["step"])


def append_jsonl(path: Path, entry: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")


def save_config(out: Path, cfg) -> None:
    atomic_write(out / "config.json", lambda p: Path(p).write_text(json.dumps(dataclasses.asdict(cfg), indent=2)))


def resume_config(run_dir: Path, overrides: dict[str, Any], config_types: dict[str, type]) -> Any:
    """The config saved in ``run_dir`` with the few RESUME_OVERRIDES applied; ``out`` becomes run_dir.

    ``config_types`` maps the saved ``task`` field to its config dataclass.
    """
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise InputError(f"--resume {run_dir}: no config.json there (not a vsrx train run directory)")
    refused = sorted(set(overrides) - set(RESUME_OVERRIDES))
    if refused:
        allowed = ", ".join("--" + k.replace("_", "-") for k in RESUME_OVERRIDES)
        raise UsageError(f"--resume takes the recipe from {path}; --{refused[0].replace('_', '-')} cannot change it (allowed: {allowed})")
    saved = json.loads(path.read_text())
    kind = config_types.get(saved.get("task", "sr"))
    if kind is None:
        raise InputError(f"{path}: unknown task {saved.get('task')!r}")
    fields = {f.name: f for f in dataclasses.fields(kind)}
    unknown = sorted(set(saved) - set(fields))
    if unknown:
        raise InputError(f"{path}: unknown setting {unknown[0]!r} (written by another vsrx version?)")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}
    values["time_limit"] = None  # a time limit bounds the invocation that gives it, not the run
    return kind(**{**values, **overrides, "out": str(run_dir)})


def tensorboard(out: Path):
    """A TensorBoard writer under out/tb when the tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tb"))


def optimizer_step(loss: Tensor, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   grad_clip: float | None, frozen: list[nn.Parameter], ema: AveragedModel | None) -> None:
    """Backward, gradient clipping and the optimizer step (``frozen`` parameters left as they are), then the EMA update."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    for p in frozen:
        p.grad = None
    if grad_clip:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    if ema is not None:
        ema.update_parameters(model)


def fit(task: Task, cfg: LoopConfig, run: Run, resume: bool, log: Callable[[str], None]) -> Path:
    """Train ``task`` per ``cfg`` (continuing from cfg.out when resume); returns the deploy weights path.

    Set-up, then the step loop read top to bottom, one comment per phase (DESIGN.md's nanoGPT habit).
    """
    out = Path(cfg.out)
    if cfg.batch % run.world:
        raise UsageError(f"--batch {cfg.batch} is not divisible by {run.world} processes")
    amp = autocast_dtype(cfg.precision, run.device)
    model = task.model.to(run.device)
    if amp == torch.bfloat16 and run.device.type == "cpu":  # oneDNN's bf16 convolutions are faster on NHWC
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True) if cfg.ema else None
    start = load_checkpoint(out, model, optimizer, ema) if resume else 0
    if run.main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(out, cfg)
    net: nn.Module = DistributedDataParallel(model) if run.world > 1 else model
    loader = step_loader(task.data, cfg, run, start)
    scaler = torch.amp.GradScaler(run.device.type, enabled=amp == torch.float16)
    prefix = getattr(cfg, "freeze_except", None)
    frozen = [p for n, p in model.named_parameters() if prefix and not n.startswith(prefix)]
    deadline = time.monotonic() + cfg.time_limit if cfg.time_limit else None
    log(task.describe(run, start, cfg.iters))
    board = tensorboard(out) if run.main else None
    scores, t0, seen, step = None, time.perf_counter(), 0, start
    for step, batch in enumerate(loader, start=start + 1):
        # learning rate of this step
        lr_now = learning_rate(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr_now
        # forward and loss
        watch = step % cfg.log_every == 0
        with torch.autocast(run.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss, extras = task.loss(net, batch, run.device, watch)
        # backward and optimizer step (frozen parameters keep their values for freeze_iters steps)
        frozen_now = frozen if step <= getattr(cfg, "freeze_iters", 0) else []
        optimizer_step(loss, model, optimizer, scaler, cfg.grad_clip, frozen_now, ema)
        seen += 1
        # log
        if watch:
            rate = seen / (time.perf_counter() - t0)
            entry = {"step": step, "loss": loss.item(), "lr": lr_now, "it_per_s": rate, **extras}
            shown = " ".join(f"{k} {v:.4g}" for k, v in extras.items() if isinstance(v, float))
            log(f"step {step}/{cfg.iters} loss {entry['loss']:.5f} lr {lr_now:.2e} {rate:.2f} it/s "
                f"ETA {(cfg.iters - step) / max(rate, 1e-9) / 60:.0f} min {shown}".rstrip())
            if run.main:
                append_jsonl(out / "metrics.jsonl", entry)
            for key, value in entry.items() if board else ():
                if isinstance(value, float):
                    board.add_scalar(f"train/{key}", value, step)
        # wall-clock limit: every rank stops after the same step
        stop = deadline is not None and run.any(time.monotonic() > deadline)
        # checkpoint and validate
        validating = run.main and (step % cfg.val_every == 0 or step == cfg.iters or stop)
        saving = run.main and (step % cfg.save_every == 0 or step == cfg.iters or stop)
        deployed = task.deploy(ema.module if ema is not None else model) if validating or saving else None
        if validating:
            scores = task.validate(deployed.eval(), step)
            model.train()
            if scores is not None:
                append_jsonl(out / "metrics.jsonl", {"step": step, "val": scores})
                log(task.report(step, scores))
        if saving:
            save_checkpoint(out, model, optimizer, step, deployed, cfg.keep, ema, _val_metadata(scores))
        if stop:
            log(f"time limit of {cfg.time_limit:g} s reached at step {step}; checkpoint and weights saved")
            break
    if board:
        board.close()
    if run.main and not checkpoints(out) and step == start:
        save_checkpoint(out, model, optimizer, step, task.deploy(ema.module if ema is not None else model), cfg.keep, ema)
    return out / "model.safetensors"


def _val_metadata(scores: dict | None) -> dict[str, str]:
    """The latest validation's top-level numbers, stored with the deploy weights."""
    return {f"vsrx.val_{k}": f"{v:.4f}" for k, v in (scores or {}).items() if isinstance(v, float)}
