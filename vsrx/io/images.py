"""Still-image files: decode to HxWx3 uint8 RGB, write PNG (torchvision's libpng/libjpeg codecs)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torchvision import io as tvio

from vsrx.errors import InputError


def _quiet():
    # torchvision 0.29 deprecates its image codecs in favour of TorchCodec; they still work and are
    # the fastest we have, so keep the warning out of users' terminals.
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.filterwarnings("ignore", message=".*image decoding and encoding capabilities.*")
    return ctx


def read_image(path: str | Path) -> np.ndarray:
    """An 8-bit image file as HxWx3 uint8 RGB; InputError naming the file when it cannot be decoded."""
    ctx = _quiet()
    try:
        img = tvio.decode_image(tvio.read_file(str(path)), mode=tvio.ImageReadMode.RGB)
    except OSError as e:
        raise InputError(f"cannot read image {path}: {e.strerror or e}") from None
    except (RuntimeError, ValueError):
        raise InputError(f"cannot decode image {path} (not a valid png, jpeg, webp or gif file)") from None
    finally:
        ctx.__exit__(None, None, None)
    if img.dtype != torch.uint8:
        raise InputError(f"{path} is not an 8-bit image")
    return np.ascontiguousarray(img.permute(1, 2, 0).numpy())


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    """Write HxWx3 uint8 RGB as a PNG file."""
    ctx = _quiet()
    try:
        tvio.write_png(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous(), str(path))
    finally:
        ctx.__exit__(None, None, None)
