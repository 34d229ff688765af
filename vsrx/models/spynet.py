"""SPyNet optical flow (Ranjan & Black, 2017) in BasicSR's parameter layout.

The official BasicSR weights ``spynet_sintel_final-3d2a1287.pth`` hold 60 tensors under
``'params'`` (``basic_module.{0..5}.basic_module.{0,2,4,6,8}.{weight,bias}``) and no
normalisation constants, so the ImageNet mean/std here are non-persistent buffers and the
file loads with ``strict=True``.

Flow conventions: :meth:`SpyNet.forward` returns BasicSR's (x, y) channel order;
:meth:`SpyNet.flow_dy_dx` returns the project's (dy, dx) order. Both describe the flow from
``ref`` to ``supp``: ``ref(p) ≈ supp(p + flow(p))``, so ``flow_warp(supp, flow_dy_dx)`` aligns
``supp`` to ``ref``.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vsrx.errors import InputError
from vsrx.ops.warp import flow_warp

NUM_LEVELS = 6
FRAME_MIN_SIZE = 32
"""The ``min_size`` for flow on whole video frames: levels whose short side is under 32 pixels are
skipped. Measured on x4-bicubic LR frames (212x120) of the DAVIS training clips with the bundled
weights, the mean |ref - warp(neighbour)| for neighbours 1..3 frames away is 18.8/20.9/23.0 grey
levels with all six levels (worse than no flow at all: 17.3/21.9/24.8; the coarsest levels, a few
pixels wide, diverge on large smooth regions) and 10.0/13.1/15.2 starting at 32x56 (BENCHMARKS.md)."""
_CHANNELS = (8, 32, 64, 32, 16, 2)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class BasicModule(nn.Module):
    """One pyramid level: five 7x7 convolutions (8-32-64-32-16-2) with ReLU between them."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for index, (c_in, c_out) in enumerate(zip(_CHANNELS[:-1], _CHANNELS[1:])):
            if index:
                layers.append(nn.ReLU())
            layers.append(nn.Conv2d(c_in, c_out, kernel_size=7, padding=3))
        self.basic_module = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.basic_module(x)


class SpyNet(nn.Module):
    """Coarse-to-fine flow estimator taking RGB frames in [0, 1] of any size (1,440,300 params)."""

    mean: Tensor
    std: Tensor

    def __init__(self, min_size: int = 0) -> None:
        super().__init__()
        self.min_size = min_size  # pyramid levels with a shorter side are skipped (zero flow there); 0: all (BasicSR)
        self.basic_module = nn.ModuleList(BasicModule() for _ in range(NUM_LEVELS))
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _pyramid_flow(self, ref: Tensor, supp: Tensor) -> Tensor:
        """Flow in (x, y) order for normalised inputs whose sides are multiples of 32."""
        refs, supps = [ref], [supp]
        for _ in range(NUM_LEVELS - 1):
            refs.append(F.avg_pool2d(refs[-1], kernel_size=2, stride=2))
            supps.append(F.avg_pool2d(supps[-1], kernel_size=2, stride=2))
        flow = None
        for level, (ref_l, supp_l) in enumerate(zip(reversed(refs), reversed(supps))):
            if flow is None:
                if min(ref_l.shape[-2:]) < self.min_size and level < NUM_LEVELS - 1:
                    continue
                flow = ref_l.new_zeros(ref_l.shape[0], 2, *ref_l.shape[-2:])
            else:
                flow = 2.0 * F.interpolate(flow, scale_factor=2, mode="bilinear", align_corners=True)
            warped = flow_warp(supp_l, flow.flip(1), padding_mode="border")
            flow = flow + self.basic_module[level](torch.cat((ref_l, warped, flow), dim=1))
        return flow

    def forward(self, ref: Tensor, supp: Tensor) -> Tensor:
        """Return the (B,2,H,W) flow from ``ref`` to ``supp`` in BasicSR's (x, y) channel order."""
        if ref.dim() != 4 or ref.shape[1] != 3 or ref.shape != supp.shape:
            raise InputError(
                f"SpyNet needs two RGB batches of equal shape (B,3,H,W), got {tuple(ref.shape)} "
                f"and {tuple(supp.shape)}"
            )
        height, width = ref.shape[-2:]
        padded = (32 * math.ceil(height / 32), 32 * math.ceil(width / 32))
        if padded != (height, width):
            ref = F.interpolate(ref, size=padded, mode="bilinear", align_corners=False)
            supp = F.interpolate(supp, size=padded, mode="bilinear", align_corners=False)
        flow = self._pyramid_flow((ref - self.mean) / self.std, (supp - self.mean) / self.std)
        if padded != (height, width):
            flow = F.interpolate(flow, size=(height, width), mode="bilinear", align_corners=False)
            scale = torch.tensor([width / padded[1], height / padded[0]], dtype=flow.dtype, device=flow.device)
            flow = flow * scale.view(1, 2, 1, 1)
        return flow

    def flow_dy_dx(self, ref: Tensor, supp: Tensor) -> Tensor:
        """Return the flow from ``ref`` to ``supp`` in the project's (dy, dx) order."""
        return self(ref, supp).flip(1)

    def centre_flows(self, window: Tensor, center: int) -> Tensor:
        """The (dy, dx) flow from each window's frame ``center`` to each of its frames, (B, T, 2, H, W)
        for windows (B, T, 3, H, W); zero for the centre itself. Without gradients."""
        b, t = window.shape[:2]
        others = [k for k in range(t) if k != center]
        with torch.no_grad():
            ref = window[:, center : center + 1].expand(b, t - 1, *window.shape[2:]).flatten(0, 1)
            moved = self.flow_dy_dx(ref, window[:, others].flatten(0, 1))
        flows = moved.new_zeros(b, t, 2, *window.shape[-2:])
        flows[:, others] = moved.view(b, t - 1, 2, *window.shape[-2:])
        return flows
