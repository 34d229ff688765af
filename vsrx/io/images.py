"""Still-image files: decode to HxWx3 uint8 RGB, write PNG (torchvision's libpng/libjpeg codecs)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch

from vsrx.errors import InputError


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def natural_key(path: Path) -> tuple[str | int, ...]:
    """Sort key that orders digit runs by value, so 'frame2' < 'frame10'."""
    parts = re.split(r"(\d+)", path.name.lower())
    return tuple(int(part) if i % 2 else part for i, part in enumerate(parts))


def list_images(folder: Path) -> list[Path]:
    """The image files of a folder (hidden files left out), in natural order."""
    files = (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    return sorted((p for p in files if p.is_file()), key=natural_key)


def _codecs():
    """torchvision.io, imported on first use: importing torchvision costs about a second at start-up."""
    from torchvision import io

    return io


def _quiet():
    # torchvision 0.29 deprecates its image codecs in favour of TorchCodec; they still work and are
    # the fastest we have, so keep the warning out of users' terminals.
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.filterwarnings("ignore", message=".*image decoding and encoding capabilities.*")
    return ctx


def read_image(path: str | Path) -> np.ndarray:
    """An 8-bit image file as HxWx3 uint8 RGB; InputError naming the file when it cannot be decoded."""
    tvio, ctx = _codecs(), _quiet()
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


def encode_png(rgb: np.ndarray) -> bytes:
    """HxWx3 uint8 RGB as the bytes of a PNG file."""
    tvio, ctx = _codecs(), _quiet()
    try:
        return tvio.encode_png(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous()).numpy().tobytes()
    finally:
        ctx.__exit__(None, None, None)


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    """Write HxWx3 uint8 RGB as a PNG file."""
    Path(path).write_bytes(encode_png(rgb))
