"""Training data: clips from REDS, Vimeo-90K, video/frame folders or synthetic motion, cut into
random LR/HR window patches with MATLAB-bicubic LR generated on the fly.

Every sample is a pure function of (seed, index), so a run resumes, and shards across ranks,
without saving any data-loader state.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from vsrx.errors import InputError, UsageError
from vsrx.evaluate.bicubic import imresize
from vsrx.evaluate.datasets import REDS4_CLIPS, Clip, excluded, folder_clip, vimeo_septuplets, x4_subfolder
from vsrx.io.images import list_images, natural_key, read_image
from vsrx.io.reader import open_source
from vsrx.io.windows import training_window
from vsrx.ops.warp import flip_transpose

VIDEO_EXTS = {".mp4", ".mkv", ".mov", ".webm", ".avi", ".m4v", ".y4m", ".ts", ".flv", ".mpg", ".mpeg"}
DATASETS = ("reds", "vimeo90k", "videos", "synthetic")
MARGIN = 2  # LR pixels of context around a patch: the x1/4 bicubic kernel reaches 2 LR pixels out


def reds_clips(root: Path, val_clips: tuple[str, ...] = REDS4_CLIPS) -> list[Clip]:
    """REDS train_sharp/<clip>/ with train_sharp_bicubic/X4/<clip>/ (or without X4), minus the validation clips."""
    hr_root = root / "train_sharp"
    lr_root = x4_subfolder(root / "train_sharp_bicubic")
    if not hr_root.is_dir() or not lr_root.is_dir():
        raise InputError(f"REDS layout expected: {hr_root}/<clip>/%08d.png and {root / 'train_sharp_bicubic/X4'}/<clip>/%08d.png")
    folders = sorted(p for p in hr_root.iterdir() if p.is_dir() and p.name not in val_clips)
    clips = [folder_clip(folder.name, folder, lr_root / folder.name) for folder in folders]
    if not clips:
        raise InputError(f"no REDS training clips under {hr_root}")
    return clips


def vimeo_clips(root: Path, exclude: tuple[str, ...] = ()) -> list[Clip]:
    """Vimeo-90K sequences/<5 digits>/<4 digits>/im1..im7.png, listed by sep_trainlist.txt when present,
    with the LR frames of a *matlabLRx4 folder beside them when there is one."""
    lr_root = next(iter(sorted(root.glob("*matlabLRx4"))), None)
    return vimeo_septuplets(root, "sep_trainlist.txt", lr_root, exclude)


def video_clips(root: Path, exclude: tuple[str, ...] = (), cache: Path | None = None) -> list[Clip]:
    """Every video file (decoded into memory) and every folder of frames under root, recursively;
    with ``cache``, each decoded clip is kept there and memory-mapped (`cached_frames`)."""
    if not root.exists():
        raise InputError(f"training root not found: {root}")
    clips = []
    candidates = [root] if root.is_file() else sorted([root, *root.rglob("*")], key=natural_key)
    for path in candidates:
        if excluded(path.relative_to(root if root.is_dir() else root.parent), exclude):
            continue
        if path.is_file() and path.suffix.lower() in VIDEO_EXTS:
            frames = cached_frames(cache, [path], lambda: np.stack([f.rgb for f in open_source(path)]))
            clips.append(Clip(str(path.relative_to(root) if root.is_dir() else path.name), frames))
        elif path.is_dir():
            files = list_images(path)
            if files:  # decoded once, like the video files: every sample then only slices memory
                clips.append(Clip(str(path.relative_to(root)) or path.name, cached_frames(cache, files, lambda: _stack(files))))
    if not clips:
        raise InputError(f"no video files or frame folders found under {root}")
    return clips


def cached_frames(cache: Path | None, files: list[Path], decode: Callable[[], np.ndarray]) -> np.ndarray:
    """``decode()``, or with a cache folder the same array memory-mapped from a .npy file there,
    written on first use and named after the files' paths, sizes and modification times. Runs
    that share a cache share one copy of the frames through the page cache (two runs no longer
    need twice the memory) and do not decode again."""
    if cache is None:
        return decode()
    stats = [(str(f.resolve()), st.st_size, st.st_mtime_ns) for f in files for st in [f.stat()]]
    key = hashlib.sha256(repr(stats).encode()).hexdigest()[:16]
    path = cache / f"{files[0].parent.name if len(files) > 1 else files[0].stem}-{key}.npy"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, decode())
        os.replace(tmp, path)  # whole or not at all: a run killed while writing leaves no cache entry
    return np.load(path, mmap_mode="r")


def _stack(files: list[Path]) -> np.ndarray:
    frames = [read_image(f) for f in files]
    odd = next((f for f, a in zip(files, frames) if a.shape != frames[0].shape), None)
    if odd is not None:
        raise InputError(f"{odd}: frame size differs from the other frames of its folder")
    return np.stack(frames)


def load_clips(dataset: str, root: Path | None, exclude: tuple[str, ...] = (), cache: Path | None = None) -> list[Clip]:
    """The clips of a dataset layout ('synthetic' uses the frames of any videos/folders under root as
    stills); ``cache``: see `video_clips` (REDS and Vimeo-90K read their image files per sample)."""
    if dataset not in DATASETS:
        raise UsageError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if dataset == "synthetic" and root is None:
        return []
    if root is None:
        raise UsageError(f"--root is required for --dataset {dataset}")
    root = Path(root)
    if dataset == "reds":
        return reds_clips(root, tuple(exclude) or REDS4_CLIPS)
    if dataset == "vimeo90k":
        return vimeo_clips(root, exclude)
    return video_clips(root, exclude, cache)


def lr_from_hr(hr: Tensor) -> Tensor:
    """LR patches in [0, 1] from uint8 HR crops (..., 4(p + 2 MARGIN), 4(p + 2 MARGIN)) on any device:
    MATLAB-bicubic x1/4, rounded like a stored 8-bit LR frame, the MARGIN context cut off."""
    lr = imresize(hr.float(), 0.25).clamp_(0, 255).round_()
    return lr[..., MARGIN:-MARGIN, MARGIN:-MARGIN] / 255


class WindowPatches(Dataset):
    """Random (LR window, HR centre) patch pairs; item i is fixed by (seed, i).

    Returns dict lr (T, 3, p, p), gt (3, 4p, 4p) float in [0, 1], flow (T, 2, p, p) in LR
    pixels, (dy, dx), centre -> frame t, and has_flow (1 for synthetic samples, whose flow is
    exact; 0 and zero flow for real ones). ``synthetic`` is the fraction of samples rendered
    with synthetic motion from still frames of the clips (procedural textures without clips).
    With ``lr_on_device`` (clips without stored LR only), ``lr`` is replaced by ``hr``: the uint8
    HR crops (T, 3, 4(p + 2 MARGIN), 4(p + 2 MARGIN)) that :func:`lr_from_hr` turns into ``lr``
    on the training device.
    """

    def __init__(
        self,
        clips: list[Clip],
        num_frame: int,
        patch: int = 64,
        *,
        synthetic: float = 0.0,
        augment: bool = True,
        temporal_reverse: bool = True,
        seed: int = 0,
        length: int = 10**9,
        lr_on_device: bool = False,
    ) -> None:
        if lr_on_device and any(c.lr is not None for c in clips):
            raise UsageError("LR made on the device needs clips without stored LR frames")
        self.clips, self.num_frame, self.patch, self.lr_on_device = clips, num_frame, patch, lr_on_device
        self.synthetic, self.augment, self.temporal_reverse = synthetic, augment, temporal_reverse
        self.seed, self.length = seed, length
        if synthetic < 1:
            short = [c.name for c in clips if len(c) < num_frame]
            if short:
                raise InputError(f"clip {short[0]} has fewer frames than the {num_frame}-frame window")
        weights = np.array([max(len(c), 1) for c in clips], dtype=np.float64)
        self.weights = weights / weights.sum() if len(clips) else weights

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        rng = np.random.default_rng([self.seed, index])
        if rng.random() < self.synthetic:
            sample = {**self._synthetic(rng), "has_flow": torch.tensor(1.0)}
        else:
            flow = torch.zeros(self.num_frame, 2, self.patch, self.patch)
            sample = {**self._real(rng), "flow": flow, "has_flow": torch.tensor(0.0)}
        return self._augment(sample, rng) if self.augment else sample

    def _real(self, rng: np.random.Generator) -> dict[str, Tensor]:
        clip = self.clips[rng.choice(len(self.clips), p=self.weights)]
        window = training_window(int(rng.integers(len(clip))), self.num_frame, len(clip))
        p = self.patch
        if clip.lr is not None:
            lr_frames = [clip.lr_frame(i) for i in window]
            h, w = lr_frames[0].shape[:2]
            top, left = self._corner(rng, h, w)
            lr = np.stack([f[top : top + p, left : left + p] for f in lr_frames])
            gt = clip.frame(window[self.num_frame // 2])[4 * top : 4 * (top + p), 4 * left : 4 * (left + p)]
            if gt.shape[:2] != (4 * p, 4 * p):
                raise InputError(f"clip {clip.name}: HR frame is not 4x its LR frame")
            return {"lr": torch.from_numpy(lr).permute(0, 3, 1, 2).float() / 255, "gt": torch.from_numpy(gt).permute(2, 0, 1).float() / 255}
        hr = np.stack([clip.frame(i) for i in window])
        h, w = hr.shape[1] // 4, hr.shape[2] // 4
        top, left = self._corner(rng, h, w)
        # Crop HR with MARGIN LR pixels of context, mirrored (MATLAB's symmetric padding) where the
        # frame ends, so the LR patch equals the crop of a full-frame LR.
        mt, ml = min(MARGIN, top), min(MARGIN, left)
        mb, mr = min(MARGIN, h - top - p), min(MARGIN, w - left - p)
        crop = hr[:, 4 * (top - mt) : 4 * (top + p + mb), 4 * (left - ml) : 4 * (left + p + mr)]
        pad = [(0, 0), (4 * (MARGIN - mt), 4 * (MARGIN - mb)), (4 * (MARGIN - ml), 4 * (MARGIN - mr)), (0, 0)]
        crop = torch.from_numpy(np.pad(crop, pad, mode="symmetric")).permute(0, 3, 1, 2)
        return self._pair(crop)

    def _pair(self, hr: Tensor) -> dict[str, Tensor]:
        """lr (or hr, see lr_on_device) and gt of a uint8 HR window crop with MARGIN LR pixels of context."""
        m, p = MARGIN, self.patch
        gt = hr[self.num_frame // 2, :, 4 * m : 4 * (m + p), 4 * m : 4 * (m + p)].float() / 255
        return {"hr": hr, "gt": gt} if self.lr_on_device else {"lr": lr_from_hr(hr), "gt": gt}

    def _corner(self, rng: np.random.Generator, h: int, w: int) -> tuple[int, int]:
        p = self.patch
        if h < p or w < p:
            raise InputError(f"LR frames of {w}x{h} are smaller than the {p}x{p} training patch")
        return int(rng.integers(h - p + 1)), int(rng.integers(w - p + 1))

    def _synthetic(self, rng: np.random.Generator) -> dict[str, Tensor]:
        from vsrx.train.synthetic import make_synthetic_clip, procedural_texture

        p, m = self.patch, MARGIN
        size = 4 * (p + 2 * m)
        if self.clips:
            clip = self.clips[rng.choice(len(self.clips), p=self.weights)]
            still = clip.frame(int(rng.integers(len(clip))))
        else:
            still = procedural_texture(2 * size, 2 * size, rng)
        frames, flows = make_synthetic_clip(still, self.num_frame, (size, size), rng, max_shift=float(rng.uniform(0.5, 16.0)))
        # Flow at LR resolution: average over each 4x4 HR block, magnitudes divided by 4.
        flow = torch.nn.functional.avg_pool2d(flows, 4)[:, :, m : m + p, m : m + p] / 4
        return {**self._pair((frames * 255).round_().clamp_(0, 255).to(torch.uint8)), "flow": flow}

    def _augment(self, s: dict[str, Tensor], rng: np.random.Generator) -> dict[str, Tensor]:
        """Flips, transposition (with flips: all 8 rotations/reflections) and temporal reversal, flows kept consistent."""
        hflip, vflip, transpose, reverse = (bool(b) for b in rng.integers(0, 2, size=4))
        x = "hr" if "hr" in s else "lr"
        (s[x], s["gt"]), s["flow"] = flip_transpose([s[x], s["gt"]], s["flow"], hflip, vflip, transpose)
        if reverse and self.temporal_reverse:
            s[x], s["flow"] = s[x].flip(0), s["flow"].flip(0)
        return s
