"""The alignment family of "Understanding Deformable Alignment in Video Super-Resolution".

A modulated deformable convolution (DCNv2, 3x3, G groups) is, by the paper's Eq. 3, nine
bilinear warps of the neighbour features (one per kernel position, each by its own offset
field), each multiplied by its modulation mask, stacked, and mixed by a single 1x1
convolution. `Aligner` implements that family in one module with three modes:

- ``dcn``: torchvision's ``deform_conv2d`` with a 3x3 kernel (N = 9 kernel positions);
- ``decomp``: the explicit decomposition with any number N of offsets per group;
- ``flow``: flow-based alignment, G = N = 1 and no modulation: one learned flow per pixel.

All modes share the parameter names of BasicSR's ``DCNv2Pack`` (``weight``, ``bias``,
``conv_offset.weight``, ``conv_offset.bias``) and its channel layout: ``conv_offset`` gives
2*G*N interleaved (dy, dx) offset channels (channel 2*(g*N + n) is dy of offset n of group
g), then G*N mask logits. ``dcn`` keeps the weight as (out, in, 3, 3); ``decomp``/``flow``
store the 1x1 mixing convolution, (out, in*N, 1, 1) with input channel index ``c*N + n``,
so a dcn weight becomes a decomp-9 weight by a reshape.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vsrx.errors import ModelError

ALIGN_MODES = ("dcn", "decomp", "flow")


@lru_cache(maxsize=None)
def kernel_grid(n: int) -> tuple[tuple[int, int], ...]:
    """The N integer (dy, dx) positions nearest the origin (ties in row-major order), row-major.

    N = 9 gives the 3x3 kernel grid of a DCN in torchvision's order, N = 25 a 5x5 grid,
    N = 1 the origin; other N take the closest rings (N = 5 is a plus sign).
    """
    r = math.isqrt(n) + 1
    points = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]
    nearest = sorted(points, key=lambda p: p[0] ** 2 + p[1] ** 2)[:n]  # stable: row-major ties
    return tuple(sorted(nearest))


def sample_offsets(x: Tensor, pos: Tensor) -> Tensor:
    """Bilinearly sample ``x`` (B, C, H, W) at N displaced copies of the pixel grid.

    ``pos`` is (B, N, 2, H, W): per-pixel (dy, dx) displacements in pixels. Returns
    (B, C, N, H, W) with out[:, :, n, i, j] = x(i + dy, j + dx); samples outside the image
    read zero (torchvision's deform_conv2d semantics).
    """
    b, c, h, w = x.shape
    n = pos.shape[1]
    ys = torch.arange(h, device=x.device, dtype=pos.dtype).view(h, 1)
    xs = torch.arange(w, device=x.device, dtype=pos.dtype).view(1, w)
    # grid_sample with align_corners=False maps normalised g to pixel ((g + 1) * size - 1) / 2.
    gy = (2 * (pos[:, :, 0] + ys) + 1) / h - 1
    gx = (2 * (pos[:, :, 1] + xs) + 1) / w - 1
    grid = torch.stack((gx, gy), dim=-1).view(b, n * h, w, 2)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.view(b, c, n, h, w)


class Aligner(nn.Module):
    """Deformable alignment of neighbour features by offsets predicted from ``offset_feat``.

    ``forward(x, offset_feat)``: x (B, in_ch, H, W) are the features to align, offset_feat
    (B, offset_ch, H, W) the features the offsets are predicted from. When ``record`` is a
    list, each call appends ``(offsets, masks)``: absolute (dy, dx) displacements
    (kernel position plus learned offset) of shape (B, G, N, 2, H, W) and masks
    (B, G, N, H, W) or None in flow mode. Recording costs nothing when ``record`` is None.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        offset_ch: int,
        groups: int = 8,
        offsets: int = 9,
        mode: str = "dcn",
    ) -> None:
        super().__init__()
        if mode not in ALIGN_MODES:
            raise ModelError(f"unknown alignment mode {mode!r}; choose one of {', '.join(ALIGN_MODES)}")
        if mode == "dcn" and offsets != 9:
            raise ModelError(f"dcn alignment has N=9 offsets (3x3 kernel), not {offsets}")
        if mode == "flow" and (groups, offsets) != (1, 1):
            raise ModelError("flow alignment has one group and one offset (G=N=1)")
        if groups < 1 or offsets < 1 or in_ch % groups:
            raise ModelError(f"{in_ch} channels cannot form {groups} groups with {offsets} offsets")
        self.mode, self.groups, self.offsets = mode, groups, offsets
        self.modulated = mode != "flow"
        per_offset = 3 if self.modulated else 2
        self.conv_offset = nn.Conv2d(offset_ch, groups * per_offset * offsets, 3, 1, 1)
        shape = (out_ch, in_ch, 3, 3) if mode == "dcn" else (out_ch, in_ch * offsets, 1, 1)
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.register_buffer(
            "grid", torch.tensor(kernel_grid(offsets), dtype=torch.float32).view(1, 1, offsets, 2, 1, 1), persistent=False
        )
        self.record: list | None = None
        self.via_torchvision = False  # decomp/flow through deform_conv2d as well (the naive reference of `vsrx bench`)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """BasicSR's DCNv2 init: uniform(+-1/sqrt(fan_in)) weights, zero bias, zero offsets (masks 0.5)."""
        bound = 1.0 / math.sqrt(self.weight[0].numel())
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.bias)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, groups={self.groups}, offsets={self.offsets}"

    def forward(self, x: Tensor, offset_feat: Tensor) -> Tensor:
        out = self.conv_offset(offset_feat)
        g, n = self.groups, self.offsets
        offset = out[:, : 2 * g * n]
        mask = torch.sigmoid(out[:, 2 * g * n :]) if self.modulated else None
        if self.record is not None:
            b, _, h, w = offset.shape
            absolute = offset.reshape(b, g, n, 2, h, w) + self.grid.to(offset.dtype)
            self.record.append((absolute, None if mask is None else mask.reshape(b, g, n, h, w)))
        if self.mode != "dcn" and not self.via_torchvision and x.is_cuda and not torch.is_grad_enabled():
            from vsrx.ops import fused  # imports triton only for CUDA inference

            if fused.available(x):  # Eq. 3 in one kernel: the N*C stacked tensor never reaches memory
                return fused.fused_decomp(x, offset, mask, self.weight, self.bias, self.grid, self.groups, self.offsets)
        out_dtype = x.dtype
        if out_dtype in (torch.float16, torch.bfloat16):
            # Sampling coordinates in half precision lose sub-pixel accuracy at large offsets
            # (and torchvision's kernel has no bf16): sample in float32, return the input dtype.
            x, offset = x.float(), offset.float()
            mask = None if mask is None else mask.float()
        if self.mode == "dcn":
            from torchvision.ops import deform_conv2d  # imported on use: torchvision takes ~1 s to import

            y = deform_conv2d(x, offset, self.weight.to(x.dtype), self.bias.to(x.dtype), padding=1, mask=mask)
        elif self.via_torchvision:
            y = self._via_deform_conv2d(x, offset, mask)
        else:
            y = self._decomposed(x, offset, mask)
        return y.to(out_dtype)

    def _decomposed(self, x: Tensor, offset: Tensor, mask: Tensor | None) -> Tensor:
        """Eq. 3: N warps per group, modulated, stacked, one 1x1 convolution."""
        b, c, h, w = x.shape
        g, n = self.groups, self.offsets
        pos = offset.reshape(b * g, n, 2, h, w) + self.grid.to(offset.dtype).view(1, n, 2, 1, 1)
        warped = sample_offsets(x.reshape(b * g, c // g, h, w), pos)
        if mask is not None:
            mask = mask.reshape(b * g, 1, n, h, w)
            # In place at inference: a fresh N*C-channel tensor per call costs more in page faults than the multiply.
            warped = warped * mask if torch.is_grad_enabled() else warped.mul_(mask)
        return F.conv2d(warped.reshape(b, c * n, h, w), self.weight.to(x.dtype), self.bias.to(x.dtype))

    def _via_deform_conv2d(self, x: Tensor, offset: Tensor, mask: Tensor | None) -> Tensor:
        """The same function through torchvision's deform_conv2d: the N kernel positions placed in
        the smallest odd k x k kernel that holds them, the other taps with zero weight and mask."""
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


def dcn_to_decomp(weight: Tensor) -> Tensor:
    """A dcn weight (out, in, 3, 3) as the equivalent decomp-9 1x1 weight (out, in*9, 1, 1)."""
    out_ch, in_ch = weight.shape[:2]
    return weight.reshape(out_ch, in_ch * 9, 1, 1)


def decomp_to_dcn(weight: Tensor) -> Tensor:
    """A decomp-9 1x1 weight (out, in*9, 1, 1) as the equivalent dcn weight (out, in, 3, 3)."""
    out_ch = weight.shape[0]
    return weight.reshape(out_ch, weight.shape[1] // 9, 3, 3)
