"""`vsrx bench`: latency, throughput and peak memory per alignment mode, precision and batch,
model-only and end to end, always next to a naive reference measured in the same run.

Each mode is compared with its own naive reference: the same model and weights run the
straightforward way, every window's features recomputed, every aligner through torchvision's
DCN (decomp-N and flow embedded in a k x k kernel, `DeformConvAligner`), fp32, batch 1, (N, C, H, W)
layout throughout and the C library's default allocator (no `keep_freed_memory`). Ratios are
same-model ratios, and each model-only case reports its largest output difference from the
reference in grey levels.
Each configuration runs in its own process so its peak host memory is its own. Weights are
random with offset predictors switched on: speed does not depend on the values.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from itertools import product
from pathlib import Path

import torch
from torch import Tensor

from vsrx.device import pick_device, pick_dtype
from vsrx.errors import UsageError
from vsrx.inference import Engine, Upscaler, to_uint8
from vsrx.models.align import Aligner, Implementation, in_float32, kernel_grid
from vsrx.models.config import Alignment
from vsrx.models.edvr import EDVR

REFERENCE = {"cache": False, "precision": "fp32", "batch": 1, "dcn_impl": "torchvision", "tuned_malloc": False,
             "channels_last": False}


@dataclass
class Case:
    mode: str = "decomp-5"  # dcn, flow or decomp-N
    cache: bool = True
    precision: str = "fp32"
    batch: int = 1
    dcn_impl: str = "auto"  # auto: dcn runs as its exact decomp-9 form on CPU; torchvision: every aligner by deform_conv2d
    end_to_end: bool = False
    tuned_malloc: bool = True  # what the vsrx command line does (vsrx.runtime.keep_freed_memory)
    channels_last: bool | None = None  # None: as `vsrx upscale` does (on CPU)

    def engine(self) -> Engine:
        """How the case runs its model: as `vsrx upscale` does, or (torchvision) with `DeformConvAligner`s."""
        kind = DeformConvEngine if self.dcn_impl == "torchvision" else Engine
        return kind(dcn_impl=self.dcn_impl, channels_last=self.channels_last, cache=self.cache)


def cases(modes: list[str], precisions: list[str], batches: list[int], caches: list[str],
          end_to_end: bool = False) -> list[Case]:
    """Every combination of the modes (dcn, flow, decomp-N), precisions, batch sizes and feature
    cache settings (on, off), model only and, with ``end_to_end``, also decode + model + encode."""
    if not set(caches) <= {"on", "off"}:
        raise UsageError(f"--cache takes on, off or on,off, got {','.join(caches)}")
    for mode in modes:
        Alignment.parse(mode)
    return [Case(mode=m, precision=p, batch=b, cache=c == "on", end_to_end=e2e)
            for e2e, m, c, p, b in product([False, True] if end_to_end else [False], modes, caches, precisions, batches)]


class DeformConvAligner(Aligner):
    """The naive reference's aligner: decomp-N and flow too through torchvision's deform_conv2d, the
    N kernel positions placed in the smallest odd k x k kernel that holds them, the other taps with
    zero weight and mask (dcn as always)."""

    def implementation(self, x: Tensor) -> Implementation:
        return in_float32(self.deform_conv if self.mode == "dcn" else self.embedded)

    def embedded(self, x: Tensor, offset: Tensor, mask: Tensor | None) -> Tensor:
        from torchvision.ops import deform_conv2d

        b, c, h, w = x.shape
        g, n = self.groups, self.offsets
        points = kernel_grid(n)
        r = max(max(abs(dy), abs(dx)) for dy, dx in points)
        k = 2 * r + 1
        taps = [(dy + r) * k + dx + r for dy, dx in points]
        full = offset.new_zeros(b, g, k * k, 2, h, w)
        full[:, :, taps] = offset.reshape(b, g, n, 2, h, w)
        modulation = offset.new_zeros(b, g, k * k, h, w)
        modulation[:, :, taps] = 1 if mask is None else mask.reshape(b, g, n, h, w)
        weight = x.new_zeros(self.weight.shape[0], c, k * k)
        weight[:, :, taps] = self.weight.to(x.dtype).reshape(-1, c, n)
        return deform_conv2d(x, full.view(b, -1, h, w), weight.view(-1, c, k, k), self.bias.to(x.dtype),
                             padding=r, mask=modulation.view(b, -1, h, w))


def with_deform_conv_aligners(model: EDVR) -> EDVR:
    """``model`` with each aligner replaced by a `DeformConvAligner` holding the same weights."""
    for name, a in model.aligners().items():
        in_ch = a.weight.shape[1] // (1 if a.mode == "dcn" else a.offsets)
        naive = DeformConvAligner(in_ch, a.weight.shape[0], a.conv_offset.in_channels, a.alignment).to(a.weight)
        naive.load_state_dict(a.state_dict())  # after the dtype change: float64 weights stay exact
        model.set_submodule(name, naive)
    return model


class DeformConvEngine(Engine):
    """The naive reference's engine: the model's aligners are `DeformConvAligner`s."""

    def prepare(self, model: EDVR, device: torch.device, dtype: torch.dtype) -> EDVR:
        return super().prepare(with_deform_conv_aligners(model), device, dtype)


def machine(device: str, threads: int) -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": threads,
            "torch": torch.__version__, "python": platform.python_version(), "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def make_clip(path: Path, frames: int, h: int, w: int) -> Path:
    """A moving-gradient test clip: ``path``.mp4 (H.264, 25 fps), or a folder ``path`` of PNG frames
    when PyAV is not installed (end to end is then frames in, PNG frames out). Returns its path."""
    import numpy as np

    from vsrx.io import reader

    yy, xx = np.mgrid[0:h, 0:w]
    images = (np.stack([(xx + 3 * i) % 256, (2 * yy + i) % 256, (xx + yy) % 256], -1).astype(np.uint8) for i in range(frames))
    if reader.av is None:
        from vsrx.io.images import write_png

        path.mkdir()
        for i, img in enumerate(images):
            write_png(path / f"{i:05d}.png", img)
        return path
    av, path = reader.av, path.with_suffix(".mp4")
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for img in images:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode(None))
    return path


def run_case(case: Case, preset: str, size: tuple[int, int], frames: int, device: str, num_frame: int,
             dump: str | None = None) -> dict:
    """Measure one configuration in this process; model-only cases save their uint8 outputs to ``dump`` (.npy)."""
    import numpy as np

    from vsrx.runtime import keep_freed_memory

    if case.tuned_malloc:
        keep_freed_memory()
    from vsrx.models.weights import build_model, save_model
    from vsrx.pipeline import UpscaleOptions, upscale

    dev = pick_device(device)
    dtype = pick_dtype(case.precision, dev)
    alignment = Alignment.parse(case.mode)
    torch.manual_seed(0)
    model = build_model(preset, alignment.mode, alignment.offsets, num_frame=num_frame).eval()
    for a in model.aligners().values():  # offsets of a plausible size, not all zero
        torch.nn.init.normal_(a.conv_offset.weight, std=0.01)
    h, w = size
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    opts = UpscaleOptions(device=device, precision=case.precision, batch=case.batch)
    engine = case.engine()
    if case.end_to_end:
        tmp = Path(tempfile.mkdtemp())
        src = make_clip(tmp / "in", frames, h, w)
        opts = replace(opts, model=str(save_model(model, tmp / "m.safetensors")))
        t0 = time.perf_counter()
        result = upscale(str(src), str(tmp / f"out{src.suffix}"), opts, engine=engine)
        seconds, count = time.perf_counter() - t0, result.frames
        io = "video" if src.suffix else "frames"
    else:
        model = engine.prepare(model, dev, dtype)  # as `vsrx upscale` runs it (or the naive reference)
        gen = torch.Generator().manual_seed(1)
        clip = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen) for _ in range(min(frames, 16))]
        it = Upscaler(model, batch=case.batch, device=dev, dtype=dtype, cache=engine.cache).stream(
            (clip[i % len(clip)] for i in range(frames + case.batch)), frames + case.batch)
        first = to_uint8(next(it)).cpu()  # the warm-up batch; its first output is compared with the reference
        for _ in range(case.batch - 1):
            next(it)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        count = sum(1 for _ in it)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - t0
        if dump:
            np.save(dump, first.numpy())
    result = {**asdict(case), **({"io": io} if case.end_to_end else {}), "frames": count,
              "ms_per_frame": 1000 * seconds / count, "fps": count / seconds,
              "peak_host_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if dev.type == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return result


def bench(cases: list[Case], preset: str = "edvr-s", size: tuple[int, int] = (180, 320), frames: int = 8,
          device: str = "auto", num_frame: int = 7, threads: int | None = None, report=print,
          keep_going: bool = False) -> dict:
    """Run each mode's naive reference and every case, each in a fresh process; returns {machine, results}.

    A failing case raises RuntimeError, or with ``keep_going`` becomes a result with an ``error``
    (e.g. out of GPU memory) and the other cases still run."""
    import numpy as np

    threads = threads or os.cpu_count() or 1
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    results, refs = [], {}
    ref_cases = list({(c.mode, c.end_to_end): Case(mode=c.mode, end_to_end=c.end_to_end, **REFERENCE) for c in cases}.values())
    with tempfile.TemporaryDirectory() as tmp:
        for k, case in enumerate(ref_cases + cases):
            dump = None if case.end_to_end else str(Path(tmp) / f"{k}.npy")
            spec = json.dumps({"case": asdict(case), "preset": preset, "size": size, "frames": frames, "device": device,
                               "num_frame": num_frame, "dump": dump})
            proc = subprocess.run([sys.executable, "-m", "vsrx.bench", spec], capture_output=True, text=True, env=env)
            key = (case.mode, case.end_to_end)
            if proc.returncode:
                if not keep_going:
                    raise RuntimeError(f"benchmark case {case} failed:\n{proc.stderr[-2000:]}")
                results.append({**asdict(case), "reference": key not in refs, "error": proc.stderr.strip()[-300:]})
                refs.setdefault(key, None)  # a failed reference: later cases of its mode carry no ratio
                report(results[-1])
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["reference"] = key not in refs
            if r["reference"]:
                refs[key] = (r, dump)
            if refs[key] is not None:
                ref, ref_dump = refs[key]
                r["speedup"] = r["fps"] / ref["fps"]
                if dump:  # largest output difference from the same model's naive run, in grey levels
                    r["max_diff"] = int(np.abs(np.load(dump).astype(np.int16) - np.load(ref_dump).astype(np.int16)).max())
            results.append(r)
            report(r)
    return {"machine": machine(device, threads), "preset": preset, "lr_size": list(size), "num_frame": num_frame,
            "results": results}


def _child() -> None:
    spec = json.loads(sys.argv[1])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    print(json.dumps(run_case(Case(**spec["case"]), spec["preset"], tuple(spec["size"]), spec["frames"], spec["device"],
                              spec["num_frame"], spec.get("dump"))))


if __name__ == "__main__":
    _child()
