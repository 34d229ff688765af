"""Fused Triton kernel for the decomposed modulated deformable alignment (the paper's Eq. 3).

``Aligner.decomposed`` computes N bilinear warps of every channel group, multiplies each by
its modulation mask, stacks them as channel ``c*N + n`` of a (B, C*N, H, W) tensor and mixes
that with one 1x1 convolution. `fused_decomp` computes the same

    y[b, o, p] = bias[o] + sum_{g, c in g, n} W[o, c*N + n] * m[b, g*N + n, p]
                                             * x[b, c](p + grid[n] + off[b, g, n, p])

in one kernel without materialising the stacked tensor: each program owns a tile of
``BLOCK_P`` pixels times ``BLOCK_O`` output channels, and for every (group, offset) pair it
computes the sampling position and the four modulated bilinear corner weights once per
pixel (always in float32), gathers the group's channels at the four corners into a
(channels, pixels) tile in registers and accumulates ``W[g, n] @ tile`` with ``tl.dot``
(float32 accumulation; fp16/bf16 operands when ``x`` is half precision, IEEE float32
otherwise). Samples outside the image read zero, per corner (torchvision's
``deform_conv2d`` semantics, as ``sample_offsets``).

Forward only (no autograd); meant for inference on CUDA. With ``TRITON_INTERPRET=1`` in the
environment *before triton is first imported*, the same kernel runs in Triton's interpreter
on CPU tensors (slowly; for tests only).
"""

from __future__ import annotations

import torch
from torch import Tensor

try:  # triton is optional: without it `available` is False and nothing here is used
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the installation
    triton = None
    tl = None

__all__ = ["available", "fused_decomp", "interpreting", "pack_weight"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INT32_MAX = 2**31 - 1


def interpreting() -> bool:
    """True when this module's kernel runs in Triton's CPU interpreter: ``TRITON_INTERPRET=1``
    was set when the kernel was defined (setting it later changes nothing)."""
    return _INTERPRETED


def available(x: Tensor) -> bool:
    """Whether `fused_decomp` can run on ``x``: triton importable and ``x`` a 4-d float32/fp16/bf16
    tensor on CUDA, or anywhere when the Triton interpreter is on."""
    if triton is None or x.dim() != 4 or x.dtype not in _DTYPES:
        return False
    return x.is_cuda or interpreting()


if triton is not None:

    # ~100 lines: one Triton program (gather, bilinear weights, mask, 1x1 mix, store); split into
    # @triton.jit helpers it would read no better and the interpreter test covers it as one piece.
    @triton.jit
    def _decomp_kernel(
        x_ptr, off_ptr, mask_ptr, w_ptr, bias_ptr, grid_ptr, y_ptr,
        H, W, O, G, N, Cg,
        sxb, sxc, sxh, sxw,
        sob, soc, soh, sow,
        smb, smc, smh, smw,
        syb, syc, syh, syw,
        HAS_MASK: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        BLOCK_P: tl.constexpr,
        BLOCK_O: tl.constexpr,
        BLOCK_C: tl.constexpr,
        DOT_PRECISION: tl.constexpr,
    ):
        pid_p = tl.program_id(0)
        pid_o = tl.program_id(1)
        pid_b = tl.program_id(2).to(tl.int64)

        p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        p_ok = p < H * W
        row = p // W
        col = p % W
        fy = row.to(tl.float32)
        fx = col.to(tl.float32)
        o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
        o_ok = o < O
        ci = tl.arange(0, BLOCK_C)
        c_ok = ci < Cg

        x_b = x_ptr + pid_b * sxb
        off_p = off_ptr + pid_b * sob + row * soh + col * sow
        m_p = mask_ptr + pid_b * smb + row * smh + col * smw
        hmax = H + 1.0
        wmax = W + 1.0

        acc = tl.zeros((BLOCK_O, BLOCK_P), dtype=tl.float32)
        for g in range(G):
            x_g = x_b + ((g * Cg + ci) * sxc)[:, None]  # (BLOCK_C, 1) channel planes of group g
            for n in range(N):
                k = g * N + n
                # Sampling position in float32 whatever the dtype of x or the offsets.
                dy = tl.load(off_p + (2 * k) * soc, mask=p_ok, other=0.0).to(tl.float32)
                dx = tl.load(off_p + (2 * k + 1) * soc, mask=p_ok, other=0.0).to(tl.float32)
                sy = fy + tl.load(grid_ptr + 2 * n) + dy
                sx = fx + tl.load(grid_ptr + 2 * n + 1) + dx
                # Clamping to [-2, size + 1] keeps every fully-outside sample fully outside and
                # keeps the int32 conversion below finite.
                sy = tl.minimum(tl.maximum(sy, -2.0), hmax)
                sx = tl.minimum(tl.maximum(sx, -2.0), wmax)
                y0f = tl.floor(sy)
                x0f = tl.floor(sx)
                ly = sy - y0f
                lx = sx - x0f
                hy = 1.0 - ly
                hx = 1.0 - lx
                if HAS_MASK:
                    mk = tl.load(m_p + k * smc, mask=p_ok, other=0.0).to(tl.float32)
                    hy = hy * mk
                    ly = ly * mk
                y0 = y0f.to(tl.int32)
                x0 = x0f.to(tl.int32)
                y1 = y0 + 1
                x1 = x0 + 1
                oky0 = (y0 >= 0) & (y0 < H) & p_ok
                oky1 = (y1 >= 0) & (y1 < H) & p_ok
                okx0 = (x0 >= 0) & (x0 < W)
                okx1 = (x1 >= 0) & (x1 < W)
                # Clamped addresses: masked lanes never point outside the tensor.
                ay0 = tl.minimum(tl.maximum(y0, 0), H - 1) * sxh
                ay1 = tl.minimum(tl.maximum(y1, 0), H - 1) * sxh
                ax0 = tl.minimum(tl.maximum(x0, 0), W - 1) * sxw
                ax1 = tl.minimum(tl.maximum(x1, 0), W - 1) * sxw

                ok = oky0 & okx0
                v = tl.load(x_g + (ay0 + ax0)[None, :], mask=c_ok[:, None] & ok[None, :], other=0.0)
                tile = v.to(tl.float32) * (hy * hx)[None, :]
                ok = oky0 & okx1
                v = tl.load(x_g + (ay0 + ax1)[None, :], mask=c_ok[:, None] & ok[None, :], other=0.0)
                tile += v.to(tl.float32) * (hy * lx)[None, :]
                ok = oky1 & okx0
                v = tl.load(x_g + (ay1 + ax0)[None, :], mask=c_ok[:, None] & ok[None, :], other=0.0)
                tile += v.to(tl.float32) * (ly * hx)[None, :]
                ok = oky1 & okx1
                v = tl.load(x_g + (ay1 + ax1)[None, :], mask=c_ok[:, None] & ok[None, :], other=0.0)
                tile += v.to(tl.float32) * (ly * lx)[None, :]

                # Mixing weights of (g, n): packed (G*N, O, Cg), operand dtype = x dtype.
                wk = tl.load(
                    w_ptr + (k * O + o)[:, None] * Cg + ci[None, :],
                    mask=o_ok[:, None] & c_ok[None, :],
                    other=0.0,
                )
                # Round the samples to x's dtype (the operand precision of the unfused path); the
                # second cast is a no-op except for bf16 under the interpreter (fp32 operands).
                tile = tile.to(x_ptr.dtype.element_ty).to(wk.dtype)
                acc = tl.dot(wk, tile, acc, input_precision=DOT_PRECISION)

        if HAS_BIAS:
            acc += tl.load(bias_ptr + o, mask=o_ok, other=0.0).to(tl.float32)[:, None]
        y_ptrs = y_ptr + pid_b * syb + (o * syc)[:, None] + (row * syh + col * syw)[None, :]
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=o_ok[:, None] & p_ok[None, :])

    # triton.jit returns an InterpretedFunction when TRITON_INTERPRET=1 was set at import time.
    _INTERPRETED = type(_decomp_kernel).__name__ == "InterpretedFunction"
else:  # pragma: no cover - without triton
    _INTERPRETED = False


def _extent(t: Tensor) -> int:
    """Elements spanned by one image of ``t`` (the kernel indexes within an image in int32)."""
    return 1 + sum((size - 1) * abs(stride) for size, stride in zip(t.shape[1:], t.stride()[1:]))


def _pow2(n: int, lo: int = 1) -> int:
    return max(lo, 1 << max(0, int(n) - 1).bit_length())


def pack_weight(weight: Tensor, groups: int, offsets: int, dtype: torch.dtype) -> Tensor:
    """The 1x1 mixing weight (O, C*N[, 1, 1]) (input channel c*N + n) as (G*N, O, Cg) in ``dtype``."""
    o = weight.shape[0]
    w = weight.reshape(o, groups, -1, offsets)  # (O, G, Cg, N)
    return w.permute(1, 3, 0, 2).reshape(groups * offsets, o, -1).to(dtype).contiguous()


# ~100 lines: the input checks, the launch heuristic and the one launch of `_decomp_kernel`, kept in
# one piece as tests/test_fused.py checks them (Triton's CPU interpreter; the GPU check waits for
# benchmarks/gpu_run.py).
def fused_decomp(
    x: Tensor,
    offset: Tensor,
    mask: Tensor | None,
    weight: Tensor,
    bias: Tensor | None,
    grid: Tensor,
    groups: int,
    offsets: int,
    *,
    block_p: int | None = None,
    block_o: int | None = None,
    num_warps: int | None = None,
    precision: str | None = None,
) -> Tensor:
    """Eq. 3 in one kernel: same result as ``Aligner.decomposed(x, offset, mask)``.

    x (B, C, H, W) float32/fp16/bf16 (any strides, e.g. channels_last); offset
    (B, 2*G*N, H, W) interleaved (dy, dx) per (g, n), any float dtype (read as float32);
    mask (B, G*N, H, W) or None (no modulation); weight (O, C*N, 1, 1) or (O, C*N) with input
    channel index c*N + n; bias (O,) or None; grid the N kernel positions (dy, dx), any shape
    with N*2 elements (``Aligner.grid`` works as is). Returns (B, O, H, W) in x's dtype (and
    x's memory format). Forward only: the result carries no autograd graph.

    The tuning knobs (``block_p`` pixels and ``block_o`` output channels per program,
    ``num_warps``) default to a heuristic. ``precision`` is the float32 mixing product's
    ``tl.dot`` input precision: ``"tf32x3"`` (default: tensor cores, float32-level accuracy),
    ``"tf32"`` (faster, ~1e-3 relative error) or ``"ieee"`` (no tensor cores; spills registers
    on sm_90). fp16/bf16 inputs always multiply fp16/bf16 operands with float32 accumulation.
    """
    if not available(x):
        raise RuntimeError("fused_decomp needs triton and a CUDA tensor (or TRITON_INTERPRET=1)")
    b, c, h, w = x.shape
    g, n = int(groups), int(offsets)
    if g < 1 or n < 1 or c % g:
        raise ValueError(f"{c} channels cannot form {g} groups")
    cg = c // g
    o = weight.shape[0]
    if weight[0].numel() != c * n:
        raise ValueError(f"weight {tuple(weight.shape)} does not mix {c}*{n} channels")
    if offset.shape != (b, 2 * g * n, h, w):
        raise ValueError(f"offset {tuple(offset.shape)} is not ({b}, {2 * g * n}, {h}, {w})")
    if mask is not None and mask.shape != (b, g * n, h, w):
        raise ValueError(f"mask {tuple(mask.shape)} is not ({b}, {g * n}, {h}, {w})")
    if grid.numel() != 2 * n:
        raise ValueError(f"grid has {grid.numel()} values, not 2*{n}")
    if offset.device != x.device or (mask is not None and mask.device != x.device):
        raise ValueError("x, offset and mask must be on the same device")
    for name, value in (("block_p", block_p), ("block_o", block_o)):
        if value is not None and (value < 16 or value & (value - 1)):
            raise ValueError(f"{name} must be a power of two >= 16 (tl.dot), not {value}")
    extent = max(_extent(t) for t in (x, offset, mask) if t is not None)
    if extent > _INT32_MAX or o * h * w > _INT32_MAX:
        raise ValueError("image too large for the kernel's 32-bit per-image indexing")

    with torch.no_grad():
        dev = x.device
        wp = pack_weight(weight.detach().to(dev), g, n, x.dtype)
        if x.dtype == torch.bfloat16 and interpreting():
            # Triton's interpreter multiplies raw bf16 bit patterns in tl.dot (triton-lang/triton
            # #11584, unsupported upstream): feed it bf16-rounded float32 operands instead.
            wp = wp.float()
        gp = grid.detach().reshape(n, 2).to(device=dev, dtype=torch.float32).contiguous()
        bp = None if bias is None else bias.detach().to(device=dev, dtype=torch.float32).contiguous()
        offset = offset.detach()
        mask = None if mask is None else mask.detach()
        x = x.detach()
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        y = torch.empty((b, o, h, w), device=dev, dtype=x.dtype, memory_format=fmt)
        if b == 0 or h * w == 0 or o == 0:
            return y

        bc = _pow2(cg, 16)  # tl.dot needs K >= 16; padded channels are masked (no memory traffic)
        # Heuristic from sm_90 register counts (ptxas): 64 pixels x 64 outputs x 4 warps needs
        # ~144-168 registers/thread without spills; 128 pixels needs ~254 (fp16) and spills in
        # ieee float32. Wider outputs use several output tiles (each re-gathers its samples).
        bo = block_o or min(_pow2(o, 16), 64)
        bp_ = block_p or 64
        warps = num_warps or 4
        m_arg = mask if mask is not None else offset  # dummy pointer, never read
        if x.dtype != torch.float32:
            precision = "tf32"  # ignored for fp16/bf16 operands
        elif precision is None:
            precision = "tf32x3"
        elif precision not in ("tf32x3", "tf32", "ieee"):
            raise ValueError(f"precision must be 'tf32x3', 'tf32' or 'ieee', not {precision!r}")
        launch = (triton.cdiv(h * w, bp_), triton.cdiv(o, bo), b)
        _decomp_kernel[launch](
            x, offset, m_arg, wp, bp if bp is not None else wp, gp, y,
            h, w, o, g, n, cg,
            *x.stride(), *offset.stride(), *m_arg.stride(), *y.stride(),
            HAS_MASK=mask is not None,
            HAS_BIAS=bp is not None,
            BLOCK_P=bp_,
            BLOCK_O=bo,
            BLOCK_C=bc,
            DOT_PRECISION=precision,
            num_warps=warps,
        )
    return y
