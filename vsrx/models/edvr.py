"""EDVR (Wang et al., 2019) built from its named parts, state-dict compatible with BasicSR.

Feature extraction -> PCD alignment (pyramid, cascading) -> fusion (TSA or a 1x1 conv) ->
reconstruction -> two pixel-shuffle x2 stages, plus the bilinearly upsampled centre frame.
Every aligner in PCD is an `Aligner` of the chosen mode (dcn, decomp-N or flow). A flow-guided
model (``config.flow_guided``) carries a SPyNet: each aligner's offsets are then the optical flow
from the centre frame to the neighbour (at that level's scale) plus the learned residual, so the
alignment follows the motion from the first step instead of having to learn offsets of many pixels.

The model is split in two so callers can cache per-frame work: ``extract`` computes a frame's
feature pyramid (independent of the window), ``reconstruct_window`` aligns, fuses and
upsamples one window of cached pyramids. ``forward`` is the two composed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vsrx.errors import ModelError
from vsrx.models.align import Aligner
from vsrx.models.config import PRESETS, Alignment, EDVRConfig
from vsrx.models.spynet import FRAME_MIN_SIZE, SpyNet
from vsrx.ops.warp import flow_warp

__all__ = ["EDVR", "PRESETS", "EDVRConfig", "PCDAlignment", "TSAFusion"]

Pyramid = tuple[Tensor, Tensor, Tensor]


def lrelu(x: Tensor) -> Tensor:
    return F.leaky_relu(x, 0.1)


def upsample2(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class ResidualBlockNoBN(nn.Module):
    """conv-ReLU-conv plus identity, no batch norm; kaiming init scaled by 0.1 (BasicSR)."""

    def __init__(self, num_feat: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight)
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class PCDAlignment(nn.Module):
    """Pyramid, Cascading and Deformable alignment of neighbour features to the reference."""

    def __init__(self, num_feat: int, alignment: Alignment) -> None:
        super().__init__()
        self.offset_conv1, self.offset_conv2 = nn.ModuleDict(), nn.ModuleDict()
        self.offset_conv3, self.dcn_pack, self.feat_conv = nn.ModuleDict(), nn.ModuleDict(), nn.ModuleDict()
        for i in (3, 2, 1):
            level = f"l{i}"
            self.offset_conv1[level] = nn.Conv2d(num_feat * 2, num_feat, 3, 1, 1)
            if i == 3:
                self.offset_conv2[level] = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            else:
                self.offset_conv2[level] = nn.Conv2d(num_feat * 2, num_feat, 3, 1, 1)
                self.offset_conv3[level] = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
                self.feat_conv[level] = nn.Conv2d(num_feat * 2, num_feat, 3, 1, 1)
            self.dcn_pack[level] = Aligner(num_feat, num_feat, num_feat, alignment)
        self.cas_offset_conv1 = nn.Conv2d(num_feat * 2, num_feat, 3, 1, 1)
        self.cas_offset_conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.cas_dcnpack = Aligner(num_feat, num_feat, num_feat, alignment)

    @staticmethod
    def half_conv(conv: nn.Conv2d, x: Tensor, second: bool) -> Tensor:
        """What one half of a conv's concatenated input contributes (the bias goes with the first half).

        conv(cat(a, b)) == half_conv(conv, a, False) + half_conv(conv, b, True).
        """
        nf = x.shape[1]
        weight = conv.weight[:, nf:] if second else conv.weight[:, :nf]
        return F.conv2d(x, weight, None if second else conv.bias, padding=1)

    def neighbour_terms(self, pyramid: Pyramid) -> Pyramid:
        """A frame's share of offset_conv1 at l1, l2, l3: depends on that frame alone, so it is cached with it."""
        return tuple(self.half_conv(self.offset_conv1[f"l{i}"], pyramid[i - 1], False) for i in (1, 2, 3))

    def reference_terms(self, ref: Pyramid) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The centre frame's share of offset_conv1 (l1, l2, l3) and of cas_offset_conv1: once per window, not T times."""
        terms = tuple(self.half_conv(self.offset_conv1[f"l{i}"], ref[i - 1], True) for i in (1, 2, 3))
        return (*terms, self.half_conv(self.cas_offset_conv1, ref[0], True))

    def forward(self, nbr: Pyramid, ref: Pyramid | None, terms: tuple[Pyramid, tuple[Tensor, ...]] | None = None,
                flow: Tensor | None = None) -> Tensor:
        """Aligned l1 features of nbr (l1, l2, l3) to ref (the same batch shape).

        With ``terms`` = (neighbour_terms of nbr, reference_terms of the B reference frames), the
        first offset convolutions are assembled from those shares instead (nbr's batch is B*T,
        the references' B) and ``ref`` is not needed: the same function with less work.
        With ``flow`` (nbr's batch, 2, H, W; (dy, dx) at l1), every aligner's offsets are that flow,
        box-averaged to its level and scaled with it, plus their learned residual, which is predicted
        from the neighbour warped by that flow (so no per-frame terms: the warp depends on the window).
        """
        if terms is not None and flow is not None:
            raise ModelError("flow-guided alignment predicts its offsets from warped neighbours: it takes no per-frame terms")
        up_offset = up_feat = None
        flows = (flow, *(None if flow is None else F.avg_pool2d(flow, k) / k for k in (2, 4)))
        for i in (3, 2, 1):
            level = f"l{i}"
            if terms is not None:
                offset = self._plus_reference(terms[0][i - 1], terms[1][i - 1])
            else:
                moved = nbr[i - 1] if flow is None else flow_warp(nbr[i - 1], flows[i - 1])
                offset = self.offset_conv1[level](torch.cat([moved, ref[i - 1]], dim=1))
            offset = lrelu(offset)
            if i == 3:
                offset = lrelu(self.offset_conv2[level](offset))
            else:
                offset = lrelu(self.offset_conv2[level](torch.cat([offset, up_offset], dim=1)))
                offset = lrelu(self.offset_conv3[level](offset))
            feat = self.dcn_pack[level](nbr[i - 1], offset, flows[i - 1])
            if i < 3:
                feat = self.feat_conv[level](torch.cat([feat, up_feat], dim=1))
            if i > 1:
                feat = lrelu(feat)
                # Offset features move to the finer level: twice the resolution, twice the magnitude.
                up_offset, up_feat = upsample2(offset) * 2, upsample2(feat)
        if terms is None:
            offset = self.cas_offset_conv1(torch.cat([feat, ref[0]], dim=1))
        else:
            offset = self._plus_reference(self.half_conv(self.cas_offset_conv1, feat, False), terms[1][3])
        offset = lrelu(self.cas_offset_conv2(lrelu(offset)))
        return lrelu(self.cas_dcnpack(feat, offset, flow))

    @staticmethod
    def _plus_reference(x: Tensor, ref: Tensor) -> Tensor:
        """x (B*T, C, h, w) plus its window's reference term (B, C, h, w), broadcast over T."""
        return (x.reshape(ref.shape[0], -1, *x.shape[1:]) + ref.unsqueeze(1)).flatten(0, 1)


class TSAFusion(nn.Module):
    """Temporal and spatial attention fusion of the aligned frames."""

    def __init__(self, num_feat: int, num_frame: int, center: int) -> None:
        super().__init__()
        self.center = center
        self.temporal_attn1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.temporal_attn2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.feat_fusion = nn.Conv2d(num_frame * num_feat, num_feat, 1, 1)
        self.max_pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.avg_pool = nn.AvgPool2d(3, stride=2, padding=1)
        self.spatial_attn1 = nn.Conv2d(num_frame * num_feat, num_feat, 1)
        self.spatial_attn2 = nn.Conv2d(num_feat * 2, num_feat, 1)
        self.spatial_attn3 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.spatial_attn4 = nn.Conv2d(num_feat, num_feat, 1)
        self.spatial_attn5 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.spatial_attn_l1 = nn.Conv2d(num_feat, num_feat, 1)
        self.spatial_attn_l2 = nn.Conv2d(num_feat * 2, num_feat, 3, 1, 1)
        self.spatial_attn_l3 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.spatial_attn_add1 = nn.Conv2d(num_feat, num_feat, 1)
        self.spatial_attn_add2 = nn.Conv2d(num_feat, num_feat, 1)

    def _pool(self, x: Tensor) -> Tensor:
        return torch.cat([self.max_pool(x), self.avg_pool(x)], dim=1)

    def forward(self, aligned: Tensor) -> Tensor:
        b, t, c, h, w = aligned.shape
        # Temporal attention: each frame weighted per pixel by its correlation with the centre.
        emb_ref = self.temporal_attn1(aligned[:, self.center])
        emb = self.temporal_attn2(aligned.reshape(b * t, c, h, w)).view(b, t, c, h, w)
        weight = torch.sigmoid((emb * emb_ref.unsqueeze(1)).sum(dim=2, keepdim=True))
        aligned = (aligned * weight).view(b, t * c, h, w)
        feat = lrelu(self.feat_fusion(aligned))
        # Spatial attention over a two-level pyramid.
        attn = lrelu(self.spatial_attn1(aligned))
        attn = lrelu(self.spatial_attn2(self._pool(attn)))
        attn_level = lrelu(self.spatial_attn_l1(attn))
        attn_level = lrelu(self.spatial_attn_l2(self._pool(attn_level)))
        attn_level = upsample2(lrelu(self.spatial_attn_l3(attn_level)))
        attn = lrelu(self.spatial_attn3(attn)) + attn_level
        attn = self.spatial_attn5(upsample2(lrelu(self.spatial_attn4(attn))))
        attn_add = self.spatial_attn_add2(lrelu(self.spatial_attn_add1(attn)))
        return feat * torch.sigmoid(attn) * 2 + attn_add


class EDVR(nn.Module):
    """EDVR x4. Input (B, T, 3, H, W) RGB in [0, 1], H and W multiples of 4; output (B, 3, 4H, 4W)."""

    scale = 4

    def __init__(self, config: EDVRConfig) -> None:
        super().__init__()
        self.config = config
        nf = config.num_feat
        self.conv_first = nn.Conv2d(3, nf, 3, 1, 1)
        self.feature_extraction = nn.Sequential(*[ResidualBlockNoBN(nf) for _ in range(config.num_extract_block)])
        self.conv_l2_1 = nn.Conv2d(nf, nf, 3, 2, 1)
        self.conv_l2_2 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_l3_1 = nn.Conv2d(nf, nf, 3, 2, 1)
        self.conv_l3_2 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.pcd_align = PCDAlignment(nf, config.alignment)
        if config.with_tsa:
            self.fusion: nn.Module = TSAFusion(nf, config.num_frame, config.center)
        else:
            self.fusion = nn.Conv2d(config.num_frame * nf, nf, 1, 1)
        self.reconstruction = nn.Sequential(*[ResidualBlockNoBN(nf) for _ in range(config.num_reconstruct_block)])
        self.upconv1 = nn.Conv2d(nf, nf * 4, 3, 1, 1)
        hf = config.hr_feat
        self.upconv2 = nn.Conv2d(nf, hf * 4, 3, 1, 1)
        self.conv_hr = nn.Conv2d(hf, hf, 3, 1, 1)
        self.conv_last = nn.Conv2d(hf, 3, 3, 1, 1)
        if config.flow_guided:  # fixed: it is trained on its own (`vsrx train --task flow`), not with the model
            self.spynet = SpyNet(FRAME_MIN_SIZE).requires_grad_(False)

    def aligners(self) -> dict[str, Aligner]:
        """The model's aligners by qualified name (pcd_align.dcn_pack.l3 ... pcd_align.cas_dcnpack)."""
        return {name: m for name, m in self.named_modules() if isinstance(m, Aligner)}

    def channels_last_tail(self) -> "EDVR":
        """Store the reconstruction trunk and the x4 tail channels-last, for inference on CPU.

        oneDNN's 3x3 convolutions run ~25% faster on (N, H, W, C) tensors there, and past fusion
        the model is only convolutions, pixel shuffles and additions. Alignment stays (N, C, H, W):
        its sampling and group reshapes would need layout copies that cost what the convolutions
        save (measured: whole model channels-last ~1% faster, tail only 4-8%).
        """
        for module in (self.reconstruction, self.upconv1, self.upconv2, self.conv_hr, self.conv_last):
            module.to(memory_format=torch.channels_last)
        return self

    def extract(self, frames: Tensor, with_terms: bool = False) -> tuple[Tensor, ...]:
        """Per-frame features of independent frames (N, 3, H, W): the pyramid (l1, l2, l3), and with
        ``with_terms`` also each frame's share of PCD's first offset convolutions (not for a flow-guided
        model, whose offsets are predicted from warped neighbours). Cacheable per frame.

        Frames may come in float32 whatever the model's dtype: a reduced-precision model casts them
        here, and `reconstruct_window` adds its output to a centre frame upsampled in the frame's
        dtype, so the bilinear base and the sum stay exact (bf16 frames alone would be off by up to
        a grey level: bf16 resolves 1/256 near 1.0)."""
        l1 = self.feature_extraction(lrelu(self.conv_first(frames.to(self.conv_first.weight.dtype))))
        l2 = lrelu(self.conv_l2_2(lrelu(self.conv_l2_1(l1))))
        l3 = lrelu(self.conv_l3_2(lrelu(self.conv_l3_1(l2))))
        if with_terms and not self.config.flow_guided:
            return (l1, l2, l3, *self.pcd_align.neighbour_terms((l1, l2, l3)))
        return l1, l2, l3

    def window_flows(self, window: Tensor) -> Tensor:
        """The flow from each window's centre frame to each of its frames, (B*T, 2, H, W) in (dy, dx)
        pixels, for a flow-guided model's `reconstruct_window`; window is (B, T, 3, H, W). The centre's
        flow to itself is zero; SPyNet runs without gradients (it is not trained with the model)."""
        window = window.to(self.spynet.mean.dtype)  # float32 frames into a reduced-precision model (see extract)
        return self.spynet.centre_flows(window, self.config.center).flatten(0, 1)

    def reconstruct_window(self, features: tuple[Tensor, ...], center_frame: Tensor, flows: Tensor | None = None) -> Tensor:
        """Align, fuse and upsample one window of per-frame features (each (B, T, C, h, w), as `extract`
        gives them, with or without terms) and its centre frame (B, 3, H, W). A flow-guided model also
        needs the window's `window_flows`."""
        if self.config.flow_guided and flows is None:
            raise ModelError("a flow-guided model needs the window's flows (EDVR.window_flows)")
        b, t = features[0].shape[:2]
        c = self.config.center
        # All T frames (the centre too) are aligned to the centre in one batched PCD call.
        nbr = tuple(level.flatten(0, 1) for level in features[:3])
        if len(features) == 6:
            ref_terms = self.pcd_align.reference_terms(tuple(level[:, c] for level in features[:3]))
            aligned = self.pcd_align(nbr, None, (tuple(x.flatten(0, 1) for x in features[3:]), ref_terms), flows)
        else:
            ref = tuple(level[:, c : c + 1].expand_as(level).flatten(0, 1) for level in features)
            aligned = self.pcd_align(nbr, ref, flow=flows)
        aligned = aligned.view(b, t, *aligned.shape[1:])
        feat = self.fusion(aligned if self.config.with_tsa else aligned.flatten(1, 2))
        if self.upconv1.weight.is_contiguous(memory_format=torch.channels_last):  # see channels_last_tail
            feat = feat.contiguous(memory_format=torch.channels_last)
        out = self.reconstruction(feat)
        out = lrelu(F.pixel_shuffle(self.upconv1(out), 2))
        out = lrelu(F.pixel_shuffle(self.upconv2(out), 2))
        out = self.conv_last(lrelu(self.conv_hr(out)))
        base = F.interpolate(center_frame, scale_factor=4, mode="bilinear", align_corners=False)
        return out + base

    def forward(self, x: Tensor) -> Tensor:
        b, t, ch, h, w = x.shape
        if t != self.config.num_frame:
            raise ModelError(f"model expects windows of {self.config.num_frame} frames, got {t}")
        if h % 4 or w % 4:
            raise ModelError(f"frame size {w}x{h} is not a multiple of 4 (pad the input first)")
        pyramid = tuple(level.view(b, t, *level.shape[1:]) for level in self.extract(x.flatten(0, 1)))
        flows = self.window_flows(x) if self.config.flow_guided else None
        return self.reconstruct_window(pyramid, x[:, self.config.center], flows)
