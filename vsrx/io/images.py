"""Still-image files: decode to HxWx3 uint8 RGB (torchvision's libpng/libjpeg codecs); encode and
write PNG (FFmpeg's encoder through PyAV, torchvision's without PyAV)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch

from vsrx.errors import InputError, VsrxError
from vsrx.io.atomic import atomic_write

try:  # PyAV encodes PNG frames (8 and 16 bits); without it torchvision's codec writes 8-bit ones
    import av
except ImportError:
    av = None


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def natural_key(path: Path) -> tuple[str | int, ...]:
    """Sort key that orders digit runs by value, so 'frame2' < 'frame10'."""
    parts = re.split(r"(\d+)", path.name.lower())
    return tuple(int(part) if i % 2 else part for i, part in enumerate(parts))


def list_images(folder: Path) -> list[Path]:
    """The image files of a folder (hidden files left out), in natural order."""
    files = (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    return sorted((p for p in files if p.is_file()), key=natural_key)


def require_av(what: str) -> None:
    """Raise a one-line VsrxError when PyAV, which `what` needs, is not installed."""
    if av is None:
        raise VsrxError(f"{what} needs PyAV, which is not installed: pip install av")


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
    """An 8-bit image file as HxWx3 uint8 RGB; InputError naming the file when it cannot be decoded.

    Training and evaluation read frames with this. `vsrx upscale` decodes a frame folder with PyAV
    instead (`vsrx.io.reader.FolderSource`: 16-bit PNG, BMP, colour range), as it decodes video.
    The two agree on PNG but not on JPEG (up to 36 levels apart, chroma upsampling), so merging
    them would change either upscaled frames or the published scores; they stay two for now.
    """
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


def check_frame(rgb: np.ndarray) -> None:
    """ValueError unless ``rgb`` is a uint8 or uint16 HxWx3 frame (what the PNG and video writers take)."""
    if rgb.dtype not in (np.uint8, np.uint16) or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected a uint8 or uint16 HxWx3 frame, got {rgb.dtype} {rgb.shape}")


def rgb_format(rgb: np.ndarray) -> str:
    """The packed RGB pix_fmt of a checked frame: rgb24 for uint8, rgb48le for uint16."""
    return "rgb48le" if rgb.dtype == np.uint16 else "rgb24"


def encode_png(rgb: np.ndarray) -> bytes:
    """A uint8 or uint16 HxWx3 frame as the bytes of an 8-bit (rgb24) or 16-bit (rgb48) PNG file.

    FFmpeg's PNG encoder through PyAV; without PyAV, torchvision's (8-bit only). One encoder for
    every PNG vsrx writes, so a frame is the same file whichever command wrote it.
    """
    check_frame(rgb)
    rgb = np.ascontiguousarray(rgb)
    if av is None:
        if rgb.dtype != np.uint8:
            require_av("writing 16-bit PNG frames")
        tvio, ctx = _codecs(), _quiet()
        try:
            return tvio.encode_png(torch.from_numpy(rgb).permute(2, 0, 1).contiguous()).numpy().tobytes()
        finally:
            ctx.__exit__(None, None, None)
    pix_fmt = "rgb48be" if rgb.dtype == np.uint16 else "rgb24"  # PNG stores 16-bit samples big-endian
    frame = av.VideoFrame.from_ndarray(rgb, format=rgb_format(rgb))
    if frame.format.name != pix_fmt:
        frame = frame.reformat(format=pix_fmt)
    encoder = av.CodecContext.create("png", "w")
    encoder.width, encoder.height, encoder.pix_fmt = rgb.shape[1], rgb.shape[0], pix_fmt
    return b"".join(bytes(packet) for packet in [*encoder.encode(frame), *encoder.encode(None)])


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write a uint8 or uint16 HxWx3 frame as a PNG file (see `encode_png`), whole or not at all."""
    return atomic_write(path, encode_png(rgb), fsync=False)
