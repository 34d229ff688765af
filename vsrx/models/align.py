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

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vsrx.errors import ModelError
from vsrx.models.config import Alignment
from vsrx.models.hooks import record_forward
from vsrx.ops.warp import sample_offsets

Displacements = tuple[Tensor, "Tensor | None"]
"""(offsets, masks) of one aligner call: absolute (dy, dx) displacements (kernel position plus
learned offset) of shape (B, G, N, 2, H, W), and masks (B, G, N, H, W) or None (flow mode)."""

Implementation = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]
"""How an aligner computes y from (x, offset, mask): see `Aligner.implementation`."""


@functools.lru_cache(maxsize=None)
def kernel_grid(n: int) -> tuple[tuple[int, int], ...]:
    """The N integer (dy, dx) positions nearest the origin (ties in row-major order), row-major.

    N = 9 gives the 3x3 kernel grid of a DCN in torchvision's order, N = 25 a 5x5 grid,
    N = 1 the origin; other N take the closest rings (N = 5 is a plus sign).
    """
    r = math.isqrt(n) + 1
    points = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]
    nearest = sorted(points, key=lambda p: p[0] ** 2 + p[1] ** 2)[:n]  # stable: row-major ties
    return tuple(sorted(nearest))


def in_float32(implementation: Implementation) -> Implementation:
    """The implementation run in float32 on half-precision inputs, returning the input dtype:
    sampling coordinates in half precision lose sub-pixel accuracy at large offsets (and
    torchvision's kernel has no bf16)."""

    @functools.wraps(implementation)
    def sampled_in_float32(x: Tensor, offset: Tensor, mask: Tensor | None) -> Tensor:
        if x.dtype not in (torch.float16, torch.bfloat16):
            return implementation(x, offset, mask)
        return implementation(x.float(), offset.float(), None if mask is None else mask.float()).to(x.dtype)

    return sampled_in_float32


class FlowGuide(nn.Module):
    """conv_offset's output with a flow added to each of its (dy, dx) offset pairs (masks unchanged);
    without a flow, the output itself. No parameters: it is where `record_offsets` reads the offsets."""

    def __init__(self, offset_channels: int) -> None:
        super().__init__()
        self.offset_channels = offset_channels

    def forward(self, out: Tensor, flow: Tensor | None) -> Tensor:
        if flow is None:
            return out
        k = self.offset_channels
        guided = out[:, :k] + flow.to(out.dtype).repeat(1, k // 2, 1, 1)
        return torch.cat([guided, out[:, k:]], dim=1) if out.shape[1] > k else guided


class Aligner(nn.Module):
    """Deformable alignment of neighbour features by offsets predicted from ``offset_feat``.

    ``forward(x, offset_feat)``: x (B, in_ch, H, W) are the features to align, offset_feat
    (B, offset_ch, H, W) the features the offsets are predicted from; returns (B, out_ch, H, W).
    The offsets and masks of a call are what ``conv_offset`` returns (plus the flow of a flow-guided
    call), read as `displacements`; `record_offsets` collects them while it is active.
    """

    def __init__(self, in_ch: int, out_ch: int, offset_ch: int, alignment: Alignment) -> None:
        super().__init__()
        if alignment.groups is None:
            raise ModelError(f"an aligner needs its number of groups G ({alignment.name} does not say)")
        alignment.check_channels(in_ch)
        self.alignment = alignment
        self.mode, self.groups, self.offsets = alignment.mode, alignment.groups, alignment.offsets
        per_offset = 3 if alignment.modulated else 2
        self.conv_offset = nn.Conv2d(offset_ch, self.groups * per_offset * self.offsets, 3, 1, 1)
        shape = (out_ch, in_ch, 3, 3) if self.mode == "dcn" else (out_ch, in_ch * self.offsets, 1, 1)
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.guide = FlowGuide(2 * self.groups * self.offsets)
        self.register_buffer(
            "grid", torch.tensor(kernel_grid(self.offsets), dtype=torch.float32).view(1, 1, self.offsets, 2, 1, 1),
            persistent=False,
        )
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

    def forward(self, x: Tensor, offset_feat: Tensor, flow: Tensor | None = None) -> Tensor:
        """With ``flow`` (B, 2, H, W) in (dy, dx) pixels, every offset is that flow plus its learned residual."""
        offset, mask = self.split(self.guide(self.conv_offset(offset_feat), flow))
        return self.implementation(x)(x, offset, mask)

    def split(self, out: Tensor) -> tuple[Tensor, Tensor | None]:
        """conv_offset's output as (offset, mask): 2*G*N interleaved (dy, dx) offset channels and
        G*N masks (sigmoid of the mask logits), or None in flow mode."""
        k = 2 * self.groups * self.offsets
        return out[:, :k], torch.sigmoid(out[:, k:]) if self.alignment.modulated else None

    def displacements(self, out: Tensor) -> Displacements:
        """conv_offset's output as (offsets, masks) per group and offset (see `Displacements`)."""
        offset, mask = self.split(out)
        b, _, h, w = offset.shape
        g, n = self.groups, self.offsets
        absolute = offset.reshape(b, g, n, 2, h, w) + self.grid.to(offset.dtype)
        return absolute, None if mask is None else mask.reshape(b, g, n, h, w)

    def implementation(self, x: Tensor) -> Implementation:
        """How this call computes, chosen in this one place (per call: the device and autograd
        state are known only then). dcn: torchvision's kernel. decomp-N and flow: the fused
        kernel for inference on CUDA where triton runs, else Eq. 3 in PyTorch operations."""
        if self.mode == "dcn":
            return in_float32(self.deform_conv)
        if x.is_cuda and not torch.is_grad_enabled():
            from vsrx.ops import fused  # imports triton only for CUDA inference

            if fused.available(x):
                return self.fused  # reads any input dtype; samples in float32 itself
        return in_float32(self.decomposed)

    def deform_conv(self, x: Tensor, offset: Tensor, mask: Tensor | None) -> Tensor:
        """dcn: torchvision's modulated deform_conv2d with the 3x3 weight."""
        from torchvision.ops import deform_conv2d  # imported on use: torchvision takes ~1 s to import

        return deform_conv2d(x, offset, self.weight.to(x.dtype), self.bias.to(x.dtype), padding=1, mask=mask)

    def decomposed(self, x: Tensor, offset: Tensor, mask: Tensor | None) -> Tensor:
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

    def fused(self, x: Tensor, offset: Tensor, mask: Tensor | None) -> Tensor:
        """Eq. 3 in one Triton kernel (CUDA inference): the N*C stacked tensor never reaches memory."""
        from vsrx.ops import fused

        return fused.fused_decomp(x, offset, mask, self.weight, self.bias, self.grid, self.groups, self.offsets)


@contextlib.contextmanager
def record_offsets(aligners: Mapping[str, Aligner],
                   keep: Callable[[Tensor], Tensor] | None = None) -> Iterator[dict[str, list[Displacements]]]:
    """While active, every call of each aligner appends its `Displacements` to the aligner's list,
    ``{name: [(offsets, masks), ...]}`` (with ``keep`` applied to each tensor, e.g. to keep some
    rows on the CPU). The tensors are those of the forward pass: a loss on them trains the
    offset predictors. Nothing is recorded, and nothing costs, outside the block."""
    def reader(aligner: Aligner) -> Callable:
        def read(module: nn.Module, inputs: tuple, out: Tensor) -> Displacements:
            offsets, masks = aligner.displacements(out)
            if keep is None:
                return offsets, masks
            return keep(offsets), None if masks is None else keep(masks)
        return read

    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(record_forward([a.guide], reader(a))) for name, a in aligners.items()}


def dcn_to_decomp(weight: Tensor) -> Tensor:
    """A dcn weight (out, in, 3, 3) as the equivalent decomp-9 1x1 weight (out, in*9, 1, 1)."""
    out_ch, in_ch = weight.shape[:2]
    return weight.reshape(out_ch, in_ch * 9, 1, 1)


def decomp_to_dcn(weight: Tensor) -> Tensor:
    """A decomp-9 1x1 weight (out, in*9, 1, 1) as the equivalent dcn weight (out, in, 3, 3)."""
    out_ch = weight.shape[0]
    return weight.reshape(out_ch, weight.shape[1] // 9, 3, 3)
