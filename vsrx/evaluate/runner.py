"""Score SR rows (bicubic baseline first) on a dataset; write the result as JSON, CSV or a rich table.

Infinite PSNR (an SR frame equal to its GT) stays ``math.inf`` in the result dict; JSON and CSV store it
as the string "inf" so the JSON stays strict.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.table import Table

from vsrx.io.images import write_png
from vsrx.errors import ModelError, UsageError
from vsrx.evaluate.bicubic import bicubic_upscale
from vsrx.evaluate.datasets import CONVENTIONAL_CHANNEL, SCALE, Clip, Dataset
from vsrx.evaluate.metrics import frame_metrics
from vsrx.models.config import Alignment

METRICS = ("psnr_y", "psnr_rgb", "ssim_y", "ssim_rgb")
MAX_CLIP_COLUMNS = 8
"""render_table shows per-clip columns only for datasets with at most this many clips."""

SrFn = Callable[[list[np.ndarray]], Iterable[np.ndarray]]
"""Upscales a whole clip: LR frames (HxWx3 uint8) in, SR frames (4Hx4Wx3 uint8) out, in order."""


@dataclass(frozen=True)
class RowSpec:
    """Labels of one result row: model name, alignment mode, offsets N and parameter count."""

    model: str
    align: str | None = None
    offsets: int | None = None
    params: int | None = None

    @property
    def dirname(self) -> str:
        """Folder name for this row's saved frames."""
        label = "-".join(str(part) for part in (self.model, self.align, self.offsets) if part)
        return re.sub(r"[^A-Za-z0-9._-]+", "_", label)


BICUBIC = RowSpec("bicubic", params=0)


def _bicubic_sr(lr: list[np.ndarray]) -> Iterator[np.ndarray]:
    """The bicubic baseline: MATLAB imresize x4 of every frame."""
    return (bicubic_upscale(frame, SCALE) for frame in lr)


def _cuda_in_use() -> bool:
    """Whether this process has initialised CUDA (so GPU memory is what to report)."""
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def _peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (0 where `resource` is missing, as on Windows)."""
    try:
        import resource
    except ImportError:
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _mean(values: Iterable[float]) -> float:
    """Arithmetic mean as a Python float (inf if any value is inf)."""
    return float(np.mean(list(values)))


class _RowRun:
    """Accumulates one row's per-clip scores, SR time and peak memory."""

    def __init__(self, spec: RowSpec, sr_fn: SrFn) -> None:
        self.spec, self.sr_fn = spec, sr_fn
        self.clips: dict[str, dict[str, Any]] = {}
        self.seconds = 0.0
        self.frames = 0
        self.peak_mb = 0.0

    def _check(self, sr: Any, lr: np.ndarray, clip: Clip, index: int) -> None:
        """ModelError unless `sr` is a uint8 frame 4x the size of its LR frame."""
        shape = (lr.shape[0] * SCALE, lr.shape[1] * SCALE, 3)
        if not isinstance(sr, np.ndarray) or sr.dtype != np.uint8 or sr.shape != shape:
            got = f"{sr.dtype} {sr.shape}" if isinstance(sr, np.ndarray) else type(sr).__name__
            raise ModelError(f"{self.spec.model}: clip {clip.name}: SR frame {index} is {got}, expected uint8 {shape}")

    def run_clip(self, clip: Clip, lr: list[np.ndarray], crop_border: int, save_dir: Path | None) -> None:
        """Upscale `clip` with the row's sr_fn (timed up to its last scored frame) and score the scored frames."""
        cuda = _cuda_in_use()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        last = clip.scored_indices(len(lr))[-1]
        gt_frames = clip.gt_frames(lr)
        start = time.perf_counter()
        produced = self.sr_fn(lr)
        outputs = iter(produced)
        self.seconds += time.perf_counter() - start
        if isinstance(produced, Sized) and len(produced) != len(lr):
            raise ModelError(f"{self.spec.model}: clip {clip.name}: {len(produced)} SR frames for {len(lr)} LR frames")
        scores: list[dict[str, Any]] = []
        pending = next(gt_frames, None)
        for i in range(last + 1):
            start = time.perf_counter()
            sr = next(outputs, None)
            if cuda:
                torch.cuda.synchronize()
            self.seconds += time.perf_counter() - start
            if sr is None:
                raise ModelError(f"{self.spec.model}: clip {clip.name}: {i} SR frames for {len(lr)} LR frames")
            self._check(sr, lr[i], clip, i)
            if save_dir is not None:
                path = save_dir / self.spec.dirname / clip.name / f"{i:08d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_png(path, sr)
            if pending is not None and pending[0] == i:
                scores.append({"index": i, **frame_metrics(sr, pending[1], crop_border)})
                pending = next(gt_frames, None)
        close = getattr(outputs, "close", None)
        if close is not None:
            close()
        self.frames += len(produced) if isinstance(produced, Sized) else last + 1
        peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_rss_mb()
        self.peak_mb = max(self.peak_mb, peak)
        self.clips[clip.name] = {**{m: _mean(f[m] for f in scores) for m in METRICS}, "frames": scores}

    def result(self) -> dict[str, Any]:
        """This row as a JSON-able dict (inf PSNR kept as math.inf)."""
        return {
            "model": self.spec.model,
            "align": self.spec.align,
            "offsets": self.spec.offsets,
            "params": self.spec.params,
            "clips": self.clips,
            "average": {m: _mean(c[m] for c in self.clips.values()) for m in METRICS},
            "ms_per_frame": 1000.0 * self.seconds / self.frames if self.frames else 0.0,
            "peak_mem_mb": self.peak_mb,
        }


def evaluate(
    dataset: Dataset,
    rows: Sequence[tuple[RowSpec, SrFn]],
    crop_border: int = 0,
    save_dir: str | Path | None = None,
    progress: Callable[[Clip], None] | None = None,
) -> dict[str, Any]:
    """Score the bicubic baseline and then each (spec, sr_fn) row on every clip; `progress` is told of each clip."""
    runs = [_RowRun(BICUBIC, _bicubic_sr), *(_RowRun(spec, fn) for spec, fn in rows)]
    seen: set[str] = set()
    for run in runs:
        if run.spec.dirname in seen:
            raise UsageError(f"two rows are both labelled {run.spec.dirname!r}; give them distinct names")
        seen.add(run.spec.dirname)
    save = None if save_dir is None else Path(save_dir)
    for clip in dataset.clips:
        lr = clip.lr_frames()
        for run in runs:
            run.run_clip(clip, lr, crop_border, save)
        if progress is not None:
            progress(clip)
    return {"dataset": dataset.name, "rows": [run.result() for run in runs]}


def model_rows(models: Sequence[str], aligns: Sequence[str], offsets_list: Sequence[int], device: str,
               precision: str, batch: int, padding: str, tile: int | None,
               self_ensemble: bool = False) -> list[tuple[RowSpec, SrFn]]:
    """(RowSpec, sr_fn) for each model x alignment mode x N asked for (`vsrx eval`); no models: the
    bundled default model. Each runs as `vsrx upscale` runs it (`Engine`); with ``self_ensemble`` the
    rows are labelled "<model>+x8"."""
    from vsrx.device import pick_device, pick_dtype
    from vsrx.inference import Engine, Upscaler, to_uint8
    from vsrx.models import load_sr_model, zoo

    dev = pick_device(device)
    dtype = pick_dtype(precision, dev)
    rows = []
    for name in models or (zoo.default_name(),):
        for align in aligns or (None,):
            for offsets in (offsets_list if align == "decomp" else ()) or (None,):
                model, label, _ = load_sr_model(name, align, offsets, dev)
                upscaler = Upscaler(Engine().prepare(model, dev, dtype), padding=padding, batch=batch, device=dev,
                                    dtype=dtype, tile=tile, self_ensemble=self_ensemble)

                def sr_fn(lr_frames, upscaler=upscaler):
                    frames = (torch.from_numpy(f).permute(2, 0, 1) for f in lr_frames)
                    return (to_uint8(x).cpu().numpy() for x in upscaler.stream(frames, len(lr_frames)))

                spec = RowSpec(label + ("+x8" if self_ensemble else ""), model.config.align, model.config.offsets, sum(p.numel() for p in model.parameters()))
                rows.append((spec, sr_fn))
    return rows


def _jsonable(value: Any) -> Any:
    """`value` with non-finite floats replaced by the strings "inf", "-inf" or "nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def write_json(result: dict[str, Any], path: str | Path) -> None:
    """Write an evaluate() result as strict JSON (infinite PSNR as the string "inf")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(result), indent=2, allow_nan=False) + "\n")


def write_csv(result: dict[str, Any], path: str | Path) -> None:
    """Write one CSV line per row x clip x scored frame (infinite PSNR as "inf")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "align", "offsets", "params", "clip", "frame", *METRICS])
        for row in result["rows"]:
            for clip, scores in row["clips"].items():
                for frame in scores["frames"]:
                    labels = [row["model"], row["align"], row["offsets"], row["params"], clip, frame["index"]]
                    writer.writerow([*labels, *(frame[m] for m in METRICS)])


def _mode(row: dict[str, Any]) -> str:
    """Alignment mode of a row for display: dcn, flow, decomp-N, or '-'."""
    return Alignment.of(row["align"], row["offsets"]).name if row["align"] else "-"


def _params(count: int | None) -> str:
    """A parameter count in millions, or '-' when there is none."""
    return f"{count / 1e6:.2f}M" if count else "-"


def _score(scores: dict[str, Any], channel: str) -> str:
    """'PSNR/SSIM' on `channel` (scores may hold "inf" strings read back from JSON)."""
    return f"{float(scores['psnr_' + channel]):.2f}/{float(scores['ssim_' + channel]):.4f}"


def render_table(result: dict[str, Any], channel: str | None = None) -> Table:
    """A rich table of an evaluate() result on `channel` ("y"/"rgb"; default: the dataset's convention)."""
    channel = channel or CONVENTIONAL_CHANNEL.get(result["dataset"], "y")
    if channel not in ("y", "rgb"):
        raise UsageError(f"unknown metric channel {channel!r}; choose y or rgb")
    clip_names = list(result["rows"][0]["clips"]) if result["rows"] else []
    if len(clip_names) > MAX_CLIP_COLUMNS:
        clip_names = []
    table = Table(title=f"{result['dataset']}: PSNR (dB) / SSIM on {channel.upper()}")
    for name in ("model", "mode", "params"):
        table.add_column(name)
    for name in (*clip_names, "average", "ms/frame", "peak MB"):
        table.add_column(name, justify="right")
    for row in result["rows"]:
        table.add_row(
            row["model"],
            _mode(row),
            _params(row["params"]),
            *(_score(row["clips"][name], channel) for name in clip_names),
            _score(row["average"], channel),
            f"{row['ms_per_frame']:.1f}",
            f"{row['peak_mem_mb']:.0f}",
        )
    return table
