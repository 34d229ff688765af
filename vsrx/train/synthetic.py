"""Procedural training clips whose motion is known exactly.

A clip is rendered from one source image: a background seen by a moving camera (pan, zoom,
rotation or a general affine motion, always sampled bilinearly from inside the source so no
border is empty) and optional foreground layers, textured shapes cut from other parts of the
image that move with their own affine motion and occlude the background.

Flow convention (the project's): ``flows[t]`` has channel 0 = dy and channel 1 = dx in pixels
and goes from the centre frame ``c = num_frames // 2`` to frame ``t``:
``frames[c](p) ≈ frames[t](p + flows[t](p))``, so ``flow_warp(frames[t], flows[t])`` aligns
frame ``t`` to the centre; ``flows[c]`` is zero. The flow at ``p`` follows the surface visible at
``p`` in the centre frame (the topmost layer whose mask is at least 0.5 there, else the
background) and is exact for the generated geometry. Where that surface is hidden in frame
``t`` (occluded by a layer, or moved out of view) the flow still points to its hidden position,
so warping samples the occluder there (or zero outside the frame); background that frame ``t``
shows but the centre frame hides (disocclusion) is reached by no centre pixel.
"""

import itertools
import math
from dataclasses import dataclass, replace
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor

from vsrx.errors import InputError
from vsrx.ops.warp import pixel_grid, sample_bilinear

Motion = Literal["none", "integer", "pan", "zoom", "rotate", "affine", "random"]
MOTIONS: tuple[str, ...] = get_args(Motion)
_RANDOM_CAMERA = ("pan", "zoom", "rotate", "affine")
_RANDOM_LAYER = ("pan", "affine")
_LAYER_SPEED = 1.5  # layers move up to this many times faster than the camera
_MAX_HALVINGS = 12


def procedural_texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Return a random (h, w, 3) uint8 image: gradient and sinusoids under textured rectangles and ellipses."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    image = ys[..., None] / h * rng.uniform(-1, 1, 3) + xs[..., None] / w * rng.uniform(-1, 1, 3)
    for _ in range(rng.integers(6, 13)):
        frequency = math.exp(rng.uniform(math.log(1 / 64), math.log(1 / 4)))
        angle = rng.uniform(0, math.pi)
        phase = 2 * math.pi * frequency * (math.cos(angle) * ys + math.sin(angle) * xs)
        image += np.sin(phase + rng.uniform(0, 2 * math.pi))[..., None] * rng.uniform(-0.5, 0.5, 3)
    image = (image - image.min()) / max(image.max() - image.min(), 1e-9)
    for _ in range(rng.integers(4, 13)):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.03, 0.25) * h, rng.uniform(0.03, 0.25) * w
        if rng.random() < 0.5:
            inside = (np.abs(ys - cy) <= ry) & (np.abs(xs - cx) <= rx)
        else:
            inside = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
        frequency, angle = rng.uniform(1 / 32, 1 / 6), rng.uniform(0, math.pi)
        along = 2 * math.pi * frequency * (math.cos(angle) * ys[inside] + math.sin(angle) * xs[inside])
        across = 2 * math.pi * frequency * (math.cos(angle) * xs[inside] - math.sin(angle) * ys[inside])
        pattern = np.sin(along + rng.uniform(0, 2 * math.pi)) * np.sin(across + rng.uniform(0, 2 * math.pi))
        fill = rng.uniform(0, 1, 3) + rng.uniform(0.05, 0.3) * pattern[:, None]
        opacity = rng.uniform(0.5, 1.0)
        image[inside] = (1 - opacity) * image[inside] + opacity * fill
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


@dataclass(frozen=True)
class _Trajectory:
    """Affine motion: a centre-frame point u is at ``pivot + d(tau) + L**tau (u - pivot)`` in frame tau.

    ``d(tau) = tau * velocity + tau**2 / 2 * accel``; ``L`` is a rotation times a zoom/aspect/shear
    matrix, all per frame. Points are (y, x) in output pixels.
    """

    pivot: np.ndarray
    velocity: np.ndarray
    accel: np.ndarray
    angle: float = 0.0
    log_zoom: float = 0.0
    log_aspect: float = 0.0
    shear: float = 0.0
    integer: bool = False

    def affine(self, tau: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (A, b) with ``position_in_frame_tau = A @ u + b``."""
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        scale = np.array(
            [[math.exp(self.log_zoom + self.log_aspect), self.shear], [0.0, math.exp(self.log_zoom - self.log_aspect)]]
        )
        a = np.linalg.matrix_power(np.array([[cos, -sin], [sin, cos]]) @ scale, tau)
        shift = tau * self.velocity + 0.5 * tau * tau * self.accel
        return a, self.pivot + shift - a @ self.pivot

    def inverse(self, tau: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (A, b) mapping a position in frame tau back to the centre frame."""
        a, b = self.affine(tau)
        a_inv = np.linalg.inv(a)
        return a_inv, -a_inv @ b

    def halved(self) -> "_Trajectory":
        """The same kind of motion at half the strength (integer velocities stay integers)."""
        velocity = np.trunc(self.velocity / 2) if self.integer else self.velocity / 2
        return replace(
            self,
            velocity=velocity,
            accel=self.accel / 2,
            angle=self.angle / 2,
            log_zoom=self.log_zoom / 2,
            log_aspect=self.log_aspect / 2,
            shear=self.shear / 2,
        )


def _draw_trajectory(kind: str, pivot: np.ndarray, max_shift: float, rng: np.random.Generator) -> _Trajectory:
    """Draw a random trajectory of the given motion kind around ``pivot``."""

    def in_disc(radius: float) -> np.ndarray:
        angle = rng.uniform(0, 2 * math.pi)
        return radius * math.sqrt(rng.uniform()) * np.array([math.sin(angle), math.cos(angle)])

    zero = np.zeros(2)
    if kind == "none":
        return _Trajectory(pivot, zero, zero)
    if kind == "integer":
        return _Trajectory(pivot, np.round(in_disc(max_shift)), zero, integer=True)
    traj = _Trajectory(pivot, in_disc(max_shift), in_disc(0.1 * max_shift))
    if kind == "zoom":
        return replace(traj, log_zoom=rng.uniform(-0.04, 0.04))
    if kind == "rotate":
        return replace(traj, angle=rng.uniform(-0.04, 0.04))
    if kind == "affine":
        return replace(
            traj,
            angle=rng.uniform(-0.03, 0.03),
            log_zoom=rng.uniform(-0.03, 0.03),
            log_aspect=rng.uniform(-0.02, 0.02),
            shear=rng.uniform(-0.03, 0.03),
        )
    return traj  # "pan"


@dataclass(frozen=True)
class _Shape:
    """A layer mask: ellipse, rotated rectangle or wobbly blob inside a disc of ``radius``."""

    kind: str
    radius: float
    angle: float
    aspect: float
    harmonics: np.ndarray  # (3, 2): amplitude and phase of the blob's 2nd-4th harmonics

    @property
    def reach(self) -> int:
        """Half-size of a square around the centre outside which the mask is zero."""
        return math.ceil(self.radius) + 2

    def distance(self, u: Tensor) -> Tensor:
        """Approximate signed distance in pixels (negative inside) at layer coordinates u (2,h,w)."""
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        v = cos * u[0] + sin * u[1]
        x = -sin * u[0] + cos * u[1]
        long, short = self.radius, self.radius * self.aspect
        if self.kind == "ellipse":
            return (torch.sqrt((v / long) ** 2 + (x / short) ** 2) - 1) * short
        if self.kind == "rectangle":
            half_v, half_x = long / math.hypot(1, self.aspect), short / math.hypot(1, self.aspect)
            return torch.maximum(v.abs() - half_v, x.abs() - half_x)
        theta = torch.atan2(x, v)
        wobble = sum(a * torch.cos((k + 2) * theta + p) for k, (a, p) in enumerate(self.harmonics))
        amplitude = float(np.abs(self.harmonics[:, 0]).sum())
        return torch.sqrt(v**2 + x**2) - self.radius * (0.75 + 0.25 * wobble / amplitude)


@dataclass(frozen=True)
class _Layer:
    shape: _Shape
    trajectory: _Trajectory  # pivot = the layer's centre in the centre frame
    source: np.ndarray  # integer (y, x) of the layer's centre in the source image


def _draw_layer(
    kind: str, out_size: tuple[int, int], image_size: tuple[int, int], max_shift: float, rng: np.random.Generator
) -> _Layer:
    h, w = out_size
    shape = _Shape(
        kind=("ellipse", "rectangle", "blob")[rng.integers(3)],
        radius=rng.uniform(0.12, 0.3) * min(h, w),
        angle=rng.uniform(0, math.pi),
        aspect=rng.uniform(0.4, 1.0),
        harmonics=np.stack([rng.uniform(0.2, 1.0, 3), rng.uniform(0, 2 * math.pi, 3)], axis=1),
    )
    pivot = np.array([rng.integers(round(0.15 * n), round(0.85 * n) + 1) for n in (h, w)], dtype=np.float64)
    reach = shape.reach
    source = np.array([rng.integers(reach, n - reach) if n > 2 * reach else n // 2 for n in image_size])
    return _Layer(shape, _draw_trajectory(kind, pivot, _LAYER_SPEED * max_shift, rng), source)


def _camera_offsets(camera: _Trajectory, out_size: tuple[int, int], num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Min and max over all frames of (centre-frame point seen at an output corner) - pivot."""
    h, w = out_size
    corners = np.array([[0, 0, h - 1, h - 1], [0, w - 1, 0, w - 1]], dtype=np.float64)
    centre = num_frames // 2
    seen = []
    for t in range(num_frames):
        a, b = camera.inverse(t - centre)
        seen.append(a @ corners + b[:, None] - camera.pivot[:, None])
    offsets = np.concatenate(seen, axis=1)
    return offsets.min(axis=1), offsets.max(axis=1)


def _apply(a: np.ndarray, b: np.ndarray, points: Tensor) -> Tensor:
    """Apply ``A @ p + b`` to points (2,h,w)."""
    a_t = torch.from_numpy(a).to(points)
    return torch.einsum("ij,jhw->ihw", a_t, points) + torch.from_numpy(b).to(points)[:, None, None]


def _render(
    array: np.ndarray,
    num_frames: int,
    out_size: tuple[int, int],
    camera: _Trajectory,
    anchor: np.ndarray,
    reach: tuple[np.ndarray, np.ndarray],
    layers: list[_Layer],
) -> tuple[Tensor, Tensor]:
    """Frames and flows (float64) of the drawn camera path and layers; ``reach`` is the camera's
    (low, high) offset range from `_camera_offsets`. Draws no random numbers."""
    h, w = out_size
    low, high = reach
    image_size = np.array(array.shape[:2])
    # Convert only the part of the image that the camera and the layer textures can reach.
    boxes = [(np.floor(anchor + low), np.ceil(anchor + high))]
    boxes += [(layer.source - layer.shape.reach, layer.source + layer.shape.reach) for layer in layers]
    top = np.clip(np.min([box[0] for box in boxes], axis=0), 0, image_size - 1).astype(int)
    bottom = np.clip(np.max([box[1] for box in boxes], axis=0), 0, image_size - 1).astype(int)
    crop = array[top[0] : bottom[0] + 1, top[1] : bottom[1] + 1].astype(np.float64)
    if array.dtype == np.uint8:
        crop /= 255.0
    source = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))[None]

    def column(vector: np.ndarray) -> Tensor:
        return torch.from_numpy(np.asarray(vector, dtype=np.float64))[:, None, None]

    grid = pixel_grid(h, w, dtype=torch.float64, device=source.device)[0]
    owner = torch.full((h, w), -1)
    for index, layer in enumerate(layers):
        owner[layer.shape.distance(grid - column(layer.trajectory.pivot)) <= 0] = index
    centre = num_frames // 2
    frames = torch.empty(num_frames, 3, h, w, dtype=torch.float64)
    flows = torch.empty(num_frames, 2, h, w, dtype=torch.float64)
    for t in range(num_frames):
        tau = t - centre
        seen = _apply(*camera.inverse(tau), grid) + column(anchor - top - camera.pivot)
        frame = sample_bilinear(source, seen[None])[0]
        flow = _apply(*camera.affine(tau), grid) - grid
        for index, layer in enumerate(layers):
            local = _apply(*layer.trajectory.inverse(tau), grid) - column(layer.trajectory.pivot)
            alpha = (0.5 - layer.shape.distance(local)).clamp(0, 1)
            texture = sample_bilinear(source, (local + column(layer.source - top))[None], padding_mode="border")[0]
            frame = alpha * texture + (1 - alpha) * frame
            flow = torch.where(owner == index, _apply(*layer.trajectory.affine(tau), grid) - grid, flow)
        frames[t], flows[t] = frame, flow
    return frames, flows


def make_synthetic_clip(
    image: np.ndarray,
    num_frames: int,
    out_size: tuple[int, int],
    rng: np.random.Generator,
    motion: Motion = "random",
    *,
    num_layers: int | None = None,
    max_shift: float = 4.0,
    noise_std: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Render a clip from ``image`` (H,W,3; uint8, or float in [0, 1]) with exactly known motion.

    ``motion`` picks the kind of every trajectory: "none", "integer" (whole-pixel translation),
    "pan" (sub-pixel translation with slight acceleration), "zoom", "rotate", "affine", or
    "random" (a kind drawn independently for the camera, from pan/zoom/rotate/affine, and for each
    layer, from pan/affine). ``num_layers`` foreground layers are added (default: 0 to 2 drawn at
    random for "random", else 0). ``max_shift`` bounds the camera speed in pixels per frame
    (layers up to 1.5x); it is halved until the camera path fits inside the image. Gaussian noise
    of ``noise_std`` is added to the frames, not the flows.

    Returns ``(frames, flows)``: float32 (T,3,h,w) in [0, 1] and float32 (T,2,h,w) in (dy, dx);
    see the module docstring for the flow convention.
    """
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise InputError(f"synthetic clips need an (H, W, 3) image, got shape {array.shape}")
    if array.dtype != np.uint8 and not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"synthetic clips need a uint8 or float image, got {array.dtype}")
    if motion not in MOTIONS:
        raise InputError(f"unknown motion {motion!r}; choose from {', '.join(MOTIONS)}")
    h, w = out_size
    if num_frames < 1 or h < 1 or w < 1:
        raise InputError(f"need at least one frame of at least 1x1 pixels, got {num_frames} of {h}x{w}")
    image_size = np.array(array.shape[:2])
    if np.any(image_size < out_size):
        raise InputError(f"source image {array.shape[0]}x{array.shape[1]} is smaller than the clip size {h}x{w}")
    if num_layers is None:
        num_layers = int(rng.integers(0, 3)) if motion == "random" else 0

    def kind(choices: tuple[str, ...]) -> str:
        return choices[rng.integers(len(choices))] if motion == "random" else motion

    camera = _draw_trajectory(kind(_RANDOM_CAMERA), np.array([h // 2, w // 2], dtype=np.float64), max_shift, rng)
    for halvings in itertools.count():
        low, high = _camera_offsets(camera, out_size, num_frames)
        first, last = np.ceil(-low).astype(int), np.floor(image_size - 1 - high).astype(int)
        if np.all(first <= last):
            break
        # A static camera always fits, since the image is at least the clip size.
        static = _Trajectory(camera.pivot, np.zeros(2), np.zeros(2))
        camera = camera.halved() if halvings < _MAX_HALVINGS else static
    # The source point seen at the camera pivot; an integer makes the centre frame an exact crop.
    anchor = np.array([rng.integers(first[0], last[0] + 1), rng.integers(first[1], last[1] + 1)])
    layers = [_draw_layer(kind(_RANDOM_LAYER), out_size, array.shape[:2], max_shift, rng) for _ in range(num_layers)]

    frames, flows = _render(array, num_frames, out_size, camera, anchor, (low, high), layers)
    if noise_std > 0:
        frames = (frames + torch.from_numpy(rng.normal(0.0, noise_std, frames.shape))).clamp(0, 1)
    return frames.float(), flows.float()
