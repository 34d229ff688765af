"""The device and the precision a command runs at, from their command-line names.

torch is imported on use: the command line takes `PRECISIONS` from here for its choices.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from vsrx.errors import UsageError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp16", "bf16", "fp32")


def pick_device(name: str) -> torch.device:
    """auto: this process's GPU (LOCAL_RANK under torchrun) when CUDA is available, else the CPU;
    or cpu, cuda, cuda:N, checked."""
    import torch

    if name == "auto":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware: AMX (Intel Xeon since Sapphire Rapids) or
    AVX512-BF16 (AMD Zen 4 and later, Intel Cooper Lake). There oneDNN's bf16 convolutions run about
    2x its fp32 ones; on CPUs with neither, oneDNN emulates bf16 and it is slower than fp32."""
    import torch

    def probe(name: str) -> bool:  # private torch functions, so looked up defensively
        found = getattr(torch.cpu, name, None)
        return bool(found is not None and found())

    hardware = probe("_is_amx_tile_supported") or probe("_is_avx512_bf16_supported")
    return hardware and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def pick_dtype(precision: str, device: torch.device, cpu_bf16: bool = False) -> torch.dtype:
    """auto: fp16 on CUDA; on a CPU bf16 where ``cpu_bf16`` is asked and the CPU has bf16 hardware
    (`vsrx upscale`: 1.2-1.9x fp32 there, PSNR-equal, at most 2 grey levels off, BENCHMARKS.md),
    else fp32. Frames, the bilinear base and the output stay float32 and aligners sample in fp32
    whatever this is (`EDVR.extract`, align.py)."""
    import torch

    if precision == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if cpu_bf16 and cpu_has_fast_bf16() else torch.float32
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    if dtype is None:
        raise UsageError(f"unknown precision {precision!r}; use auto, fp16, bf16 or fp32")
    if dtype == torch.float16 and device.type == "cpu":
        raise UsageError("--precision fp16 needs a CUDA device; use fp32 or bf16 on CPU")
    return dtype
