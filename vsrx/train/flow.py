"""Training SPyNet on synthetic motion with exact ground-truth flow.

Each training sample is a pair (``ref``, ``supp``) rendered by :func:`make_synthetic_clip` from a
still image (frames of the videos / folders under ``root``, or a procedural texture when there
are none) together with its exact flow in the project's (dy, dx) convention, the target of
``SpyNet.flow_dy_dx(ref, supp)``: ``ref(p) ≈ supp(p + flow(p))``. A pair is rendered at a scale
``s`` of ``scales`` and box-downscaled by ``s`` (anti-aliased frames like bicubic-LR video, flow
averaged over each block and divided by ``s``), then a random gamma (same for both frames),
Gaussian noise (each frame its own) and 8-bit quantisation are applied.

The loss is the mean end-point error (EPE) of the final flow plus ``level_weight`` times the mean
EPE of the five coarser pyramid levels (each against the block-averaged target, measured in
full-resolution pixels), as SPyNet trains every level on its own target. Every sample is a pure
function of (seed, index), so ``--resume`` continues exactly. Validation reports the mean EPE on a
fixed held-out set of pairs (procedural textures with their own seed stream, or the stills under
``val_root``) next to the zero-flow baseline, by motion speed too.

Run directory (``out``): ``config.json``, ``model.safetensors`` (deploy weights, loadable with
``vsrx.load_model``), ``metrics.jsonl`` and ``ckpt/step_XXXXXXXX/``, as for the EDVR trainer.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from vsrx.errors import InputError, ModelError, UsageError
from vsrx.evaluate.datasets import Clip
from vsrx.models import load_model
from vsrx.models.hooks import record_forward
from vsrx.models.spynet import SpyNet
from vsrx.ops.warp import flip_transpose
from vsrx.train.data import load_clips
from vsrx.train.loop import LoopConfig, Run, fit
from vsrx.train.synthetic import make_synthetic_clip, procedural_texture

VAL_KEY = 0x5F10_7FA1  # first entropy word of the validation seed stream (training uses [seed, index])
SPEED_BINS = ((0.0, 2.0), (2.0, 5.0), (5.0, math.inf))  # validation EPE by |ground-truth flow|, pixels


@dataclass
class FlowTrainConfig(LoopConfig):
    """Everything a SPyNet training run depends on, with the loop's shared settings."""

    task: str = "flow"
    dataset: str = "synthetic"  # where stills come from: load_clips(dataset, root); synthetic w/o root = procedural
    root: str | None = None
    exclude: tuple[str, ...] = ()
    out: str = "runs/spynet"
    init_from: str | None = None  # start from these SpyNet weights instead of a fresh init
    iters: int = 20_000
    batch: int = 8
    patch: int = 64  # training pair size in pixels; a multiple of 32 (SPyNet's coarsest level is 1/32)
    lr: float = 2e-4  # 1e-3 collapses to the zero-flow solution; 1e-4 learns ~2x slower at first
    betas: tuple[float, float] = (0.9, 0.999)
    eta_min: float = 1e-6
    restarts: int = 1  # cosine periods over the run (1: a single decay from lr to eta_min)
    warmup: int = 200  # linear learning-rate warm-up steps (Adam's first steps on the zero-initialised heads overshoot)
    precision: str = "fp32"  # SPyNet's warping cascade is trained in fp32
    max_motion: float = 8.0  # camera speed bound in output pixels per frame (foreground layers up to 1.5x)
    scales: tuple[int, ...] = (1, 2)  # render at s x the size and box-downscale by s
    noise: float = 0.02  # Gaussian noise std drawn uniformly in [0, noise] per frame (intensities in [0, 1])
    level_weight: float = 0.5  # weight of the mean coarse-level EPE; 0 trains on the final flow only
    val_pairs: int = 32
    val_size: tuple[int, int] = (90, 160)  # any size; not a multiple of 32 exercises SpyNet's resize path
    val_motion: float = 8.0
    val_root: str | None = None  # held-out stills (videos / frame folders) for validation instead of textures
    val_every: int = 500


class FlowPair(NamedTuple):
    """RGB frames (3, h, w) in [0, 1] and the flow (2, h, w) in (dy, dx) with ref(p) ≈ supp(p + flow(p))."""

    ref: Tensor
    supp: Tensor
    flow: Tensor


def make_flow_pair(
    still: np.ndarray | None,
    size: tuple[int, int],
    rng: np.random.Generator,
    *,
    max_motion: float = 8.0,
    scales: Sequence[int] = (1, 2),
    noise: float = 0.02,
    photometric: bool = True,
) -> FlowPair:
    """Render one pair of ``size`` from ``still`` (HxWx3) or, when None, from a procedural texture.

    The scale is drawn from ``scales`` (only those at which ``still`` covers the render size).
    """
    h, w = size
    if still is not None:  # a still too small for some scales renders at the others
        fits = [s for s in scales if still.shape[0] >= h * s and still.shape[1] >= w * s]
        if not fits:
            raise InputError(f"still image {still.shape[1]}x{still.shape[0]} is smaller than the {w}x{h} pair size")
        scales = fits
    s = int(scales[rng.integers(len(scales))])
    rh, rw = h * s, w * s
    # Camera speed bound m with density ∝ m; make_synthetic_clip draws the speed with density ∝ r
    # below m, so P(speed > x) = 1 - x²/M² (1 + 2 ln(M/x)): ~8% under M/8, ~40% over M/2.
    max_shift = s * max(0.1, max_motion * math.sqrt(rng.uniform()))
    if still is None:
        margin = 2 * math.ceil(1.6 * max_shift + 0.05 * max(rh, rw)) + 8
        still = procedural_texture(rh + margin, rw + margin, rng)
    frames, flows = make_synthetic_clip(still, 2, (rh, rw), rng, max_shift=max_shift)
    # num_frames=2: frame 1 is the centre (ref), frame 0 the neighbour; flows[0] is centre -> frame 0.
    frames, flow = frames[[1, 0]], flows[0:1]
    if s > 1:
        frames, flow = F.avg_pool2d(frames, s), F.avg_pool2d(flow, s) / s
    if photometric:
        frames = frames.clamp(0, 1) ** math.exp(rng.uniform(-0.3, 0.3))
        std = rng.uniform(0, noise, size=(2, 1, 1, 1))
        frames = frames + torch.from_numpy(rng.standard_normal(frames.shape) * std).float()
    frames = (frames.clamp(0, 1) * 255).round() / 255
    return FlowPair(frames[0].contiguous(), frames[1].contiguous(), flow[0].contiguous())


def augment_pair(pair: FlowPair, rng: np.random.Generator) -> FlowPair:
    """Random flips and transposition (all 8 rotations/reflections), the flow kept consistent."""
    hflip, vflip, transpose = (bool(b) for b in rng.integers(0, 2, size=3))
    (ref, supp), flow = flip_transpose([pair.ref, pair.supp], pair.flow, hflip, vflip, transpose)
    return FlowPair(ref, supp, flow)


class FlowPairs(Dataset):
    """Synthetic flow pairs; item i is a pure function of (key, i). Yields dicts ref, supp, flow."""

    def __init__(
        self,
        stills: list[Clip],
        size: tuple[int, int],
        *,
        key: Sequence[int] = (0,),
        max_motion: float = 8.0,
        scales: Sequence[int] = (1, 2),
        noise: float = 0.02,
        photometric: bool = True,
        augment: bool = True,
        length: int = 10**9,
    ) -> None:
        self.stills, self.size, self.key, self.length = stills, tuple(size), [int(k) for k in key], length
        self.max_motion, self.scales, self.noise = max_motion, tuple(scales), noise
        self.photometric, self.augment = photometric, augment
        weights = np.array([max(len(c), 1) for c in stills], dtype=np.float64)
        self.weights = weights / weights.sum() if len(stills) else weights

    def __len__(self) -> int:
        return self.length

    def pair(self, index: int) -> FlowPair:
        rng = np.random.default_rng([*self.key, index])
        still = None
        if self.stills:
            clip = self.stills[rng.choice(len(self.stills), p=self.weights)]
            still = clip.frame(int(rng.integers(len(clip))))
        pair = make_flow_pair(
            still, self.size, rng, max_motion=self.max_motion, scales=self.scales, noise=self.noise, photometric=self.photometric
        )
        return augment_pair(pair, rng) if self.augment else pair

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return self.pair(index)._asdict()


def validation_pairs(count: int, size: tuple[int, int], max_motion: float = 8.0, stills: list[Clip] | None = None) -> list[FlowPair]:
    """The fixed held-out pairs: their own seed stream, no noise or augmentation (scales 1 and 2)."""
    data = FlowPairs(stills or [], size, key=(VAL_KEY, 1), max_motion=max_motion, photometric=False, augment=False)
    return [data.pair(i) for i in range(count)]


def _batches(pairs: Sequence[FlowPair], batch: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Stack consecutive pairs of equal size into batches."""
    i = 0
    while i < len(pairs):
        shape = pairs[i].ref.shape
        j = i
        while j < len(pairs) and j - i < batch and pairs[j].ref.shape == shape:
            j += 1
        chunk = pairs[i:j]
        yield tuple(torch.stack([p[k] for p in chunk]) for k in range(3))  # type: ignore[misc]
        i = j


@torch.no_grad()
def epe_stats(model: nn.Module, pairs: Sequence[FlowPair], batch: int = 8) -> dict:
    """Mean EPE (pixels, over all pixels of all pairs) of ``model.flow_dy_dx``, the zero-flow EPE, and both by speed."""
    device = next(model.parameters()).device
    total = zero = pixels = 0.0
    bins = {f"{lo:g}-{hi:g}": [0.0, 0.0, 0.0] for lo, hi in SPEED_BINS}  # epe sum, zero sum, count
    for ref, supp, flow in _batches(pairs, batch):
        flow = flow.to(device)
        pred = model.flow_dy_dx(ref.to(device), supp.to(device)).float()
        err = torch.linalg.vector_norm(pred - flow, dim=1)
        speed = torch.linalg.vector_norm(flow, dim=1)
        total += err.sum().item()
        zero += speed.sum().item()
        pixels += err.numel()
        for (lo, hi), acc in zip(SPEED_BINS, bins.values()):
            mask = (speed >= lo) & (speed < hi)
            acc[0] += err[mask].sum().item()
            acc[1] += speed[mask].sum().item()
            acc[2] += mask.sum().item()
    if not pixels:
        raise InputError("no pairs to evaluate")
    return {
        "epe": total / pixels,
        "zero_epe": zero / pixels,
        "by_speed": {name: {"epe": a / n, "zero_epe": z / n, "fraction": n / pixels} for name, (a, z, n) in bins.items() if n},
    }


def evaluate_epe(model: nn.Module, pairs: Sequence[FlowPair] | Iterable[tuple[Tensor, Tensor, Tensor]]) -> float:
    """Mean end-point error in pixels of ``model.flow_dy_dx(ref, supp)`` against each pair's flow."""
    return epe_stats(model, [FlowPair(*p) for p in pairs])["epe"]


def record_levels(model: SpyNet) -> contextlib.AbstractContextManager[list[Tensor]]:
    """While active, each forward of ``model`` appends its six level flows (coarse to fine, (x, y) order)."""
    # the module's input ends with the upsampled flow, so input + residual is the level's flow
    return record_forward(model.basic_module, lambda module, inputs, output: inputs[0][:, 6:8] + output)


def end_point_error(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """Mean over pixels of the Euclidean distance between two (B, 2, h, w) flows (smoothed at 0)."""
    return torch.sqrt(((pred - target) ** 2).sum(dim=1) + eps).mean()


def flow_loss(levels: list[Tensor], target: Tensor, level_weight: float = 0.5) -> tuple[Tensor, Tensor]:
    """(loss, final-level EPE) for SPyNet level flows in (x, y) order against a (dy, dx) target."""
    target_xy = target.flip(1)
    final = end_point_error(levels[-1], target_xy)
    loss = final
    coarse = levels[:-1]
    if level_weight and coarse:
        terms = []
        for flow in coarse:
            factor = target.shape[-1] // flow.shape[-1]
            terms.append(factor * end_point_error(flow, F.avg_pool2d(target_xy, factor) / factor))
        loss = loss + level_weight * torch.stack(terms).mean()
    return loss, final.detach()


def init_spynet(model: SpyNet) -> SpyNet:
    """Initialise every level for learning flow from scratch (in place).

    A fresh network's flow output is uncorrelated with any feature linear in its inputs (for
    isotropic motion, E[(ref - warped) * flow] = 0), so with PyTorch's default init SPyNet sits at
    the zero-flow solution for thousands of steps. Here 16 of the 32 first-layer filters of each
    level start as ``±It ± g·D`` (It: the centre-pixel difference ref - warped of the channel
    means; D: the central x or y derivative of all six image channels' mean; g in 1, 3), whose
    rectified sums already correlate with the flow (|It + D| - |It - D| ~ sign(It·D)); the rest
    of the filters are He-initialised, biases zero, and the last layer zero so training starts at
    the zero-flow baseline.
    """
    with torch.no_grad():
        for level in model.basic_module:
            convs = [m for m in level.basic_module if isinstance(m, nn.Conv2d)]
            for conv in convs[:-1]:
                nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                nn.init.zeros_(conv.bias)
            nn.init.zeros_(convs[-1].weight)
            nn.init.zeros_(convs[-1].bias)
            first = convs[0].weight  # (32, 8, 7, 7): inputs ref RGB, warped RGB, flow (x, y)
            centre = first.shape[-1] // 2
            temporal = torch.zeros_like(first[0])
            temporal[0:3, centre, centre], temporal[3:6, centre, centre] = 1 / 3, -1 / 3
            dx = torch.zeros_like(first[0])
            dx[0:6, centre, centre + 1], dx[0:6, centre, centre - 1] = 1 / 12, -1 / 12
            unit = 0
            for derivative in (dx, dx.transpose(1, 2)):
                for gain in (1.0, 3.0):
                    for s1, s2 in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
                        first[unit] = 4.0 * (s1 * temporal + s2 * gain * derivative)
                        unit += 1
    return model


def make_spynet(cfg: FlowTrainConfig) -> SpyNet:
    """A fresh SPyNet set up by :func:`init_spynet` (seeded by cfg.seed), or the init_from weights."""
    if cfg.init_from:
        model = load_model(cfg.init_from)
        if not isinstance(model, SpyNet):
            raise ModelError(f"--init-from {cfg.init_from} is a {type(model).__name__}, not a SpyNet")
        return model.train()
    torch.manual_seed(cfg.seed)
    return init_spynet(SpyNet())


def check_config(cfg: FlowTrainConfig, world: int = 1) -> None:
    if cfg.patch < 32 or cfg.patch % 32:
        raise UsageError(f"--patch must be a positive multiple of 32 (SPyNet's coarsest level is 1/32), got {cfg.patch}")
    if cfg.batch % world:
        raise UsageError(f"--batch {cfg.batch} is not divisible by {world} processes")
    if not cfg.scales or any(int(s) != s or s < 1 for s in cfg.scales):
        raise UsageError(f"--scales must be positive integers, got {cfg.scales}")
    if cfg.max_motion <= 0.1 or cfg.val_motion <= 0.1:
        raise UsageError("--max-motion and --val-motion must be above 0.1 pixels")


class FlowTask:
    """SPyNet on synthetic pairs with exact flow: the EPE of every pyramid level."""

    def __init__(self, cfg: FlowTrainConfig, run: Run) -> None:
        check_config(cfg, run.world)
        self.cfg = cfg
        self.stills = load_clips(cfg.dataset, Path(cfg.root) if cfg.root else None, cfg.exclude,
                                 Path(cfg.frame_cache) if cfg.frame_cache else None)
        self.data = FlowPairs(self.stills, (cfg.patch, cfg.patch), key=(cfg.seed,), max_motion=cfg.max_motion,
                              scales=cfg.scales, noise=cfg.noise)
        self.model = make_spynet(cfg)
        self.val: list[FlowPair] = []
        if run.main and cfg.val_pairs:
            val_stills = load_clips("videos", Path(cfg.val_root)) if cfg.val_root else []
            self.val = validation_pairs(cfg.val_pairs, tuple(cfg.val_size), cfg.val_motion, val_stills)

    def describe(self, run: Run, start: int, iters: int) -> str:
        cfg = self.cfg
        return (f"training SPyNet ({sum(p.numel() for p in self.model.parameters()):,} params) on "
                f"{len(self.stills) or 'procedural'} {'still sources' if self.stills else 'textures'}, {cfg.patch}x{cfg.patch} pairs, "
                f"batch {cfg.batch}, motion up to {cfg.max_motion:g} px, {run.world} process(es) on {run.device}, steps {start}..{iters}")

    def loss(self, net: nn.Module, batch: dict[str, Tensor], device: torch.device, watch: bool) -> tuple[Tensor, dict]:
        ref, supp, flow = (batch[k].to(device, non_blocking=True) for k in ("ref", "supp", "flow"))
        with record_levels(self.model) as levels:
            net(ref, supp)
        loss, epe = flow_loss(levels, flow, self.cfg.level_weight)
        return loss, ({"epe": epe.item()} if watch else {})

    def deploy(self, model: nn.Module) -> nn.Module:
        return model

    def validate(self, model: nn.Module, step: int) -> dict | None:
        return epe_stats(model, self.val) if self.val else None

    def report(self, step: int, scores: dict) -> str:
        speeds = ", ".join(f"{k} px: {v['epe']:.3f} ({v['zero_epe']:.3f})" for k, v in scores["by_speed"].items())
        return f"step {step} validation: EPE {scores['epe']:.3f} px (zero flow {scores['zero_epe']:.3f}); by speed {speeds}"


def train_flow(cfg: FlowTrainConfig, resume: bool = False, log=print) -> Path:
    """Train SPyNet per cfg (continuing from cfg.out when resume); returns the deploy weights path."""
    run = Run(cfg.device)
    try:
        return fit(FlowTask(cfg, run), cfg, run, resume, log if run.main else (lambda *a, **k: None))
    finally:
        run.close()
