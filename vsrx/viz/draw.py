"""Pictures as numpy arrays: tile grids, a colour map and colour bar, bar and line plots,
PCA of feature maps to RGB, and 3x5 bitmap digits for axis and colour-bar labels.

Everything returns (H, W, 3) uint8 arrays (`vsrx.io.images.write_png` saves them).

Why by hand: the plots are a handful of rectangles and lines, and the labels are numbers, which a
15-glyph 3x5 font draws in 25 lines. The alternatives cost more: matplotlib is not a dependency,
and torchvision.utils draws text only through PIL's fonts (PIL is not a vsrx dependency either);
its `flow_to_image` is what colours the flow fields below.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

WHITE, BLACK, GREY, RED, BLUE = (255, 255, 255), (0, 0, 0), (128, 128, 128), (214, 39, 40), (31, 119, 180)

# Viridis sampled at ten evenly spaced points; colours in between are interpolated linearly.
_VIRIDIS = np.array(
    [(68, 1, 84), (72, 40, 120), (62, 73, 137), (49, 104, 142), (38, 130, 142),
     (31, 158, 137), (53, 183, 121), (110, 206, 88), (181, 222, 43), (253, 231, 37)],
    dtype=np.float64,
)

# 3x5 glyphs, one string of 15 bits per character, rows top to bottom.
_GLYPHS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", "-": "000000111000000",
    "+": "000010111010000", "%": "101001010100101", " ": "000000000000000",
}


def to_hwc(image: Tensor) -> np.ndarray:
    """(3, H, W) uint8 tensor -> (H, W, 3) uint8 array."""
    return image.permute(1, 2, 0).contiguous().cpu().numpy()


def enlarge(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer factor (keeps pixels visible when small)."""
    if factor <= 1:
        return image
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def display_factor(h: int, w: int, target: int = 96) -> int:
    """The integer enlargement that makes the shorter side at least ``target`` pixels (max 8)."""
    return int(min(8, max(1, math.ceil(target / max(min(h, w), 1)))))


def grid(tiles: list[np.ndarray], columns: int, pad: int = 2, background: tuple[int, int, int] = WHITE) -> np.ndarray:
    """Tiles of one size laid out row-major in ``columns`` columns with ``pad`` pixels between."""
    h, w = tiles[0].shape[:2]
    columns = max(1, min(columns, len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    out = np.empty((rows * h + (rows + 1) * pad, columns * w + (columns + 1) * pad, 3), np.uint8)
    out[:] = background
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        out[top : top + h, left : left + w] = tile
    return out


def colormap(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map a 2-D array to viridis RGB, ``lo`` to dark purple and ``hi`` to yellow (clipped)."""
    span = hi - lo if hi > lo else 1.0
    t = np.clip((np.nan_to_num(values, nan=lo) - lo) / span, 0.0, 1.0) * (len(_VIRIDIS) - 1)
    i = np.minimum(np.floor(t).astype(np.int64), len(_VIRIDIS) - 2)
    f = (t - i)[..., None]
    return np.round(_VIRIDIS[i] * (1 - f) + _VIRIDIS[i + 1] * f).astype(np.uint8)


def format_number(value: float, decimals: int | None = None) -> str:
    """A short label the bitmap font can draw (digits, '.', '-'; no exponent); ``decimals`` fixes the precision."""
    if not math.isfinite(value):
        return "-"
    if decimals is not None:
        return f"{value:.{decimals}f}"
    a = abs(value)
    if a >= 100 or value == int(value):
        return str(int(round(value)))
    if a >= 10:
        return f"{value:.1f}"
    if a >= 0.01:
        return f"{value:.2f}"
    return f"{value:.3f}"


def text_size(text: str, scale: int = 2) -> tuple[int, int]:
    """(height, width) in pixels of ``text`` drawn at ``scale``."""
    return 5 * scale, max(len(text) * 4 * scale - scale, 0)


def draw_text(image: np.ndarray, text: str, top: int, left: int, colour=BLACK, scale: int = 2) -> None:
    """Draw ``text`` (digits, '.', '-', '+', '%', ' ') into ``image`` in place, clipped to its bounds."""
    for k, ch in enumerate(text):
        bits = _GLYPHS.get(ch, _GLYPHS[" "])
        for idx, bit in enumerate(bits):
            if bit == "1":
                r, c = divmod(idx, 3)
                y, x = top + r * scale, left + (4 * k + c) * scale
                y0, x0 = max(y, 0), max(x, 0)
                image[y0 : max(y + scale, 0), x0 : max(x + scale, 0)] = colour


def heatmap(values: np.ndarray, lo: float, hi: float, factor: int = 1, bar_width: int = 14) -> np.ndarray:
    """A viridis heat map of ``values`` with a labelled colour bar (``hi`` at the top, ``lo`` at the bottom)."""
    body = enlarge(colormap(values, lo, hi), factor)
    h, w = body.shape[:2]
    h = max(h, 40)
    span = hi - lo
    # Enough decimals to tell the three labels apart (a narrow range around a large value needs more).
    decimals = None if span <= 0 or span >= 2 else min(6, max(2, math.ceil(-math.log10(span / 2))))
    labels = (format_number(hi, decimals), format_number((lo + hi) / 2, decimals), format_number(lo, decimals))
    label_w = max(text_size(t)[1] for t in labels)
    gap, margin = 6, 6
    out = np.full((h + 2 * margin, w + gap + bar_width + 4 + label_w + 2 * margin, 3), 255, np.uint8)
    out[margin : margin + body.shape[0], margin : margin + w] = body
    left = margin + w + gap
    ramp = np.linspace(hi, lo, h)[:, None].repeat(bar_width, axis=1)
    out[margin : margin + h, left : left + bar_width] = colormap(ramp, lo, hi)
    text_left = left + bar_width + 4
    th = text_size("0")[0]
    draw_text(out, labels[0], margin, text_left)
    draw_text(out, labels[1], margin + (h - th) // 2, text_left)
    draw_text(out, labels[2], margin + h - th, text_left)
    return out


class Axes:
    """A plot area with data ranges [x0, x1] x [y0, y1] drawn on a white canvas with black axes."""

    def __init__(self, x0: float, x1: float, y0: float, y1: float, size: tuple[int, int] = (220, 420)) -> None:
        self.x0, self.x1, self.y0, self.y1 = x0, x1 if x1 > x0 else x0 + 1, y0, y1 if y1 > y0 else y0 + 1
        height, width = size
        self.image = np.full((height, width, 3), 255, np.uint8)
        self.left, self.right, self.top, self.bottom = 52, width - 16, 12, height - 26
        self.image[self.top : self.bottom + 1, self.left - 1] = BLACK
        self.image[self.bottom + 1, self.left - 1 : self.right + 1] = BLACK

    def px(self, x: float) -> int:
        return int(round(self.left + (x - self.x0) / (self.x1 - self.x0) * (self.right - self.left)))

    def py(self, y: float) -> int:
        return int(round(self.bottom - (y - self.y0) / (self.y1 - self.y0) * (self.bottom - self.top)))

    def rect(self, x_lo: float, x_hi: float, y_lo: float, y_hi: float, colour) -> None:
        a, b = sorted((self.px(x_lo), self.px(x_hi)))
        c, d = sorted((self.py(y_hi), self.py(y_lo)))
        a, b = max(a, self.left), min(b, self.right)
        c, d = max(c, self.top), min(d, self.bottom)
        if b > a and d >= c:
            self.image[c : d + 1, a:b] = colour

    def vline(self, x: float, colour, width: int = 2) -> None:
        p = self.px(x)
        if self.left <= p <= self.right:
            self.image[self.top : self.bottom + 1, p - width // 2 : p - width // 2 + width] = colour

    def line(self, xa: float, ya: float, xb: float, yb: float, colour) -> None:
        pa, pb = (self.px(xa), self.py(ya)), (self.px(xb), self.py(yb))
        steps = max(abs(pb[0] - pa[0]), abs(pb[1] - pa[1]), 1)
        for s in range(steps + 1):
            x = round(pa[0] + (pb[0] - pa[0]) * s / steps)
            y = round(pa[1] + (pb[1] - pa[1]) * s / steps)
            self.image[max(y - 1, 0) : y + 1, max(x - 1, 0) : x + 1] = colour

    def dot(self, x: float, y: float, colour, radius: int = 2) -> None:
        px, py = self.px(x), self.py(y)
        self.image[max(py - radius, 0) : py + radius + 1, max(px - radius, 0) : px + radius + 1] = colour

    def xtick(self, x: float, label: str | None = None) -> None:
        p = self.px(x)
        self.image[self.bottom + 1 : self.bottom + 5, p] = BLACK
        label = format_number(x) if label is None else label
        th, tw = text_size(label)
        draw_text(self.image, label, self.bottom + 8, min(max(p - tw // 2, 0), self.image.shape[1] - tw))

    def ytick(self, y: float, label: str | None = None) -> None:
        p = self.py(y)
        self.image[p, self.left - 5 : self.left - 1] = BLACK
        label = format_number(y) if label is None else label
        th, tw = text_size(label)
        draw_text(self.image, label, min(max(p - th // 2, 0), self.image.shape[0] - th), self.left - 8 - tw)


def histogram_plot(edges: np.ndarray, fractions: np.ndarray, marker: float = 1.0) -> np.ndarray:
    """Bars of ``fractions`` over bins ``edges`` (the last bin may end at inf: drawn as one more bin
    width and labelled by its lower edge), with a red line at ``marker``."""
    finite_end = edges[-1] if math.isfinite(edges[-1]) else edges[-2] + (edges[-2] - edges[-3] if len(edges) > 2 else 1)
    top = float(fractions.max()) if fractions.size and fractions.max() > 0 else 1.0
    ax = Axes(float(edges[0]), float(finite_end), 0.0, top)
    for k, f in enumerate(fractions):
        hi = edges[k + 1] if math.isfinite(edges[k + 1]) else finite_end
        ax.rect(edges[k], hi, 0.0, float(f), GREY if not math.isfinite(edges[k + 1]) else BLUE)
        ax.image[ax.py(float(f)) : ax.bottom + 1, ax.px(float(hi)) - 1] = WHITE  # gaps between bars
    ax.vline(marker, RED)
    ax.xtick(float(edges[0]))
    ax.xtick(marker)
    last = float(edges[-2] if not math.isfinite(edges[-1]) else edges[-1])
    if ax.px(last) - ax.px(marker) > 30:
        ax.xtick(last)
    ax.ytick(0.0)
    ax.ytick(top)
    return ax.image


def line_plot(xs: np.ndarray, ys: np.ndarray, x_range: tuple[float, float], y_range: tuple[float, float] = (0.0, 1.0),
              marker: float | None = 1.0) -> np.ndarray:
    """Points (xs, ys) joined by lines (NaN ys leave gaps), optional red line at ``marker``."""
    ax = Axes(*x_range, *y_range)
    if marker is not None:
        ax.vline(marker, RED, width=1)
    prev = None
    for x, y in zip(xs, ys):
        if not math.isfinite(y):
            prev = None
            continue
        if prev is not None:
            ax.line(*prev, x, y, BLUE)
        ax.dot(x, y, BLUE)
        prev = (x, y)
    ax.xtick(x_range[0])
    if marker is not None:
        ax.xtick(marker)
    if ax.px(x_range[1]) - ax.px(marker or x_range[0]) > 30:
        ax.xtick(x_range[1])
    ax.ytick(y_range[0])
    ax.ytick(y_range[1])
    return ax.image


def flow_tiles(fields: Tensor) -> tuple[list[np.ndarray], float]:
    """Colour-code (K, 2, h, w) (dy, dx) fields with one shared normalisation; returns the tiles and
    the magnitude (pixels) drawn at full saturation."""
    from torchvision.utils import flow_to_image

    fields = fields.float().cpu()
    peak = float(fields.norm(dim=1).max()) if fields.numel() else 0.0
    images = flow_to_image(fields.flip(1))  # torchvision wants (u, v) = (dx, dy)
    return [to_hwc(im) for im in images], peak


def colour_wheel(size: int = 96) -> np.ndarray:
    """The colour of each displacement direction: a disc whose pixels are coloured by their own
    position relative to the centre (right = +dx, down = +dy; full radius = full saturation)."""
    from torchvision.utils import flow_to_image

    r = (size - 1) / 2
    ys, xs = torch.meshgrid(torch.arange(size) - r, torch.arange(size) - r, indexing="ij")
    field = torch.stack((xs, ys)).float()
    inside = field.norm(dim=0) <= r
    image = flow_to_image(torch.where(inside, field, torch.zeros(())) / r * (r + 1e-3))
    image[:, ~inside] = 255
    return to_hwc(image)


def features_to_rgb(maps: list[Tensor], method: str = "pca") -> list[np.ndarray]:
    """Feature maps (C, h, w) of one channel space as RGB with one shared projection.

    ``pca``: the top three principal components of all maps' pixels together; ``mean``: the
    channel mean in grey. Each output channel is stretched from its 1st to its 99th percentile.
    """
    feats = [m.detach().float().cpu() for m in maps]
    c = feats[0].shape[0]
    pixels = torch.cat([f.flatten(1).T for f in feats])  # (P, C)
    if method == "mean" or c < 2:
        proj = [f.mean(0, keepdim=True).expand(3, -1, -1) for f in feats]
    else:
        sample = pixels[:: max(1, pixels.shape[0] // 200_000)]
        mean = sample.mean(0)
        centred = sample - mean
        cov = centred.T @ centred / max(centred.shape[0] - 1, 1)
        _, vecs = torch.linalg.eigh(cov.double())
        basis = vecs[:, -3:].flip(1).float()  # (C, k), strongest first
        if basis.shape[1] < 3:
            basis = torch.cat([basis, basis.new_zeros(c, 3 - basis.shape[1])], 1)
        proj = [torch.einsum("chw,ck->khw", f - mean.view(-1, 1, 1), basis) for f in feats]
    stacked = torch.cat([p.flatten(1) for p in proj], 1)  # (3, P)
    q = torch.quantile(stacked[:, :: max(1, stacked.shape[1] // 100_000)], torch.tensor([0.01, 0.99]), dim=1)
    lo, hi = q[0].view(3, 1, 1), q[1].view(3, 1, 1)
    out = []
    for p in proj:
        scaled = ((p - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
        out.append(to_hwc(scaled.mul(255).round().to(torch.uint8)))
    return out
