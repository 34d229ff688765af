"""Bilinear sampling at pixel coordinates, backward warping by a flow field, and sampling at N
offsets per pixel (the warps of deformable alignment).

Project convention for flows and offsets: channel 0 is dy (vertical), channel 1 is dx
(horizontal), both in pixels, and warping means ``out(p) = x(p + flow(p))``. Pixel ``(i, j)``
has its centre at coordinate ``(i, j)``. With ``padding_mode="zeros"`` each bilinear corner
that falls outside the image contributes zero, exactly as in torchvision's ``deform_conv2d``;
with ``"border"`` the sampling point is clamped into the image first (as BasicSR's SpyNet does).
"""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from vsrx.errors import InputError

PaddingMode = Literal["zeros", "border"]


def sample_at(x: Tensor, ys: Tensor, xs: Tensor, padding_mode: PaddingMode = "zeros") -> Tensor:
    """Sample ``x`` (B,C,H,W) bilinearly at pixel rows ``ys`` and columns ``xs`` (B,h,w); (B,C,h,w).

    The one bilinear sampler: `sample_bilinear`, `flow_warp` and `sample_offsets` all sample here.
    """
    height, width = x.shape[-2:]
    # Pixel centre i maps to (2i + 1) / size - 1 under align_corners=False; valid for size 1 too.
    grid = torch.stack(((2.0 * xs + 1.0) / width - 1.0, (2.0 * ys + 1.0) / height - 1.0), dim=-1).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def sample_bilinear(x: Tensor, coords: Tensor, padding_mode: PaddingMode = "zeros") -> Tensor:
    """Sample ``x`` (B,C,H,W) bilinearly at absolute pixel coordinates ``coords`` (B,2,h,w).

    ``coords[:, 0]`` is the row (y) and ``coords[:, 1]`` the column (x); the result is (B,C,h,w).
    """
    if x.dim() != 4 or coords.dim() != 4 or coords.shape[1] != 2 or coords.shape[0] != x.shape[0]:
        raise InputError(
            f"sample_bilinear needs x (B,C,H,W) and coords (B,2,h,w), got {tuple(x.shape)} "
            f"and {tuple(coords.shape)}"
        )
    if padding_mode not in ("zeros", "border"):
        raise InputError(f"padding_mode must be 'zeros' or 'border', got {padding_mode!r}")
    return sample_at(x, coords[:, 0], coords[:, 1], padding_mode)


def sample_offsets(x: Tensor, pos: Tensor) -> Tensor:
    """Bilinearly sample ``x`` (B, C, H, W) at N displaced copies of the pixel grid.

    ``pos`` is (B, N, 2, H, W): per-pixel (dy, dx) displacements in pixels. Returns
    (B, C, N, H, W) with out[:, :, n, i, j] = x(i + dy, j + dx); samples outside the image
    read zero (torchvision's deform_conv2d semantics). The N copies are sampled as one
    (N*H, W) image of coordinates, in a single grid_sample.
    """
    b, c, h, w = x.shape
    n = pos.shape[1]
    ys = torch.arange(h, device=x.device, dtype=pos.dtype).view(h, 1)
    xs = torch.arange(w, device=x.device, dtype=pos.dtype).view(1, w)
    rows, cols = (pos[:, :, 0] + ys).view(b, n * h, w), (pos[:, :, 1] + xs).view(b, n * h, w)
    return sample_at(x, rows, cols).view(b, c, n, h, w)


def pixel_grid(height: int, width: int, *, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Return the (1,2,H,W) tensor of pixel coordinates, channel 0 = row, channel 1 = column."""
    ys = torch.arange(height, dtype=dtype, device=device)
    xs = torch.arange(width, dtype=dtype, device=device)
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=0).unsqueeze(0)


def flow_warp(x: Tensor, flow: Tensor, padding_mode: PaddingMode = "zeros") -> Tensor:
    """Backward-warp ``x`` (B,C,H,W) by ``flow`` (B,2,H,W) in (dy, dx): ``out(p) = x(p + flow(p))``."""
    if x.dim() != 4 or flow.dim() != 4 or flow.shape[1] != 2:
        raise InputError(
            f"flow_warp needs x (B,C,H,W) and flow (B,2,H,W), got {tuple(x.shape)} "
            f"and {tuple(flow.shape)}"
        )
    if flow.shape[0] != x.shape[0] or flow.shape[-2:] != x.shape[-2:]:
        raise InputError(
            f"flow {tuple(flow.shape)} does not match the batch and size of x {tuple(x.shape)}"
        )
    base = pixel_grid(x.shape[2], x.shape[3], dtype=flow.dtype, device=flow.device)
    return sample_bilinear(x, base + flow, padding_mode)


DIHEDRAL = tuple((h, v, t) for t in (False, True) for v in (False, True) for h in (False, True))
"""The 8 rotations/reflections of an image as `flip_transpose` flags (hflip, vflip, transpose), the identity first."""


def flip_transpose(images: list[Tensor], flow: Tensor | None, hflip: bool, vflip: bool,
                   transpose: bool) -> tuple[list[Tensor], Tensor | None]:
    """Flip ``images`` (..., h, w) and their ``flow`` (..., 2, h, w; or None) left-right and/or
    upside down, then transpose them (the three flags give all 8 rotations/reflections); the flow
    is changed to stay the motion of the flipped images."""
    for flag, dim, channel in ((hflip, -1, 1), (vflip, -2, 0)):
        if flag:
            images = [x.flip(dim) for x in images]
            if flow is not None:
                flow = flow.flip(dim)
                flow[..., channel, :, :] = -flow[..., channel, :, :]
    if transpose:
        images = [x.transpose(-1, -2) for x in images]
        if flow is not None:
            flow = flow.transpose(-1, -2).flip(-3)  # (dy, dx) -> (dx, dy)
    return [x.contiguous() for x in images], None if flow is None else flow.contiguous()


def unflip_transpose(image: Tensor, hflip: bool, vflip: bool, transpose: bool) -> Tensor:
    """Undo `flip_transpose` with the same flags on an image (..., h, w)."""
    if transpose:
        image = image.transpose(-1, -2)
    if vflip:
        image = image.flip(-2)
    if hflip:
        image = image.flip(-1)
    return image
