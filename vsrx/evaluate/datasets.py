"""Benchmark layouts (REDS4, Vid4, Vimeo-90K-T, a frame folder, video files) as clips of GT and LR frames.
Training (`vsrx.train.data`) lists its REDS and Vimeo-90K clips with the same `Clip` and helpers.

LR frames come from an LR folder when there is one, otherwise from the GT: crop to a multiple of 4,
MATLAB bicubic x1/4, round to uint8.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vsrx.io import images
from vsrx.errors import InputError, UsageError
from vsrx.evaluate.bicubic import downscale_x4_uint8, modcrop
from vsrx.io.images import natural_key
from vsrx.io.reader import VideoSource

SCALE = 4
REDS4_CLIPS = ("000", "011", "015", "020")
VIMEO_FRAMES = 7
VIMEO_CENTRE = 3
CONVENTIONAL_CHANNEL = {"reds4": "rgb", "vid4": "y", "vimeo90k-t": "y", "frames": "y", "video": "y"}
"""Channel ("y" or "rgb") each layout is conventionally scored on."""
LAYOUTS = tuple(CONVENTIONAL_CHANNEL)


def _read(path: Path, clip: str) -> np.ndarray:
    """Decode an 8-bit image file to HxWx3 uint8 RGB; errors name the clip and file."""
    try:
        return images.read_image(path)
    except InputError as error:
        raise InputError(f"clip {clip}: {error}") from None


def _size(img: np.ndarray) -> str:
    """An image's size as WxH."""
    return f"{img.shape[1]}x{img.shape[0]}"


@dataclass(frozen=True, eq=False)
class Clip:
    """One sequence, for evaluation (its full-resolution frames are the GT) and for training (the HR).

    The full-resolution frames are image files or an in-memory (T, H, W, 3) uint8 array (``frames``),
    or a video file streamed as `vsrx.io.reader.VideoSource` decodes it (``video``). The LR frames
    are image files (``lr``), or, when None, made from the full-resolution frames: crop to a
    multiple of 4, MATLAB bicubic x1/4, round to uint8.
    """

    name: str
    frames: tuple[Path, ...] | np.ndarray = ()
    lr: tuple[Path, ...] | None = None
    video: Path | None = None
    scored: tuple[int, ...] | None = None
    """Indices of the frames that are scored; None scores every frame."""

    def __len__(self) -> int:
        """The number of frames in ``frames`` (0 for a video, which is only streamed)."""
        return len(self.frames)

    def frame(self, i: int) -> np.ndarray:
        """Full-resolution frame ``i`` of ``frames`` (HxWx3 uint8)."""
        frame = self.frames[i]
        return frame if isinstance(frame, np.ndarray) else _read(frame, self.name)

    def lr_frame(self, i: int) -> np.ndarray:
        """Stored LR frame ``i`` (HxWx3 uint8)."""
        return _read(self.lr[i], self.name)

    def scored_indices(self, num_frames: int) -> list[int]:
        """The scored frame indices of a clip of `num_frames` frames, ascending."""
        if self.scored is None:
            return list(range(num_frames))
        return sorted(i for i in self.scored if i < num_frames)

    def _gt(self, wanted: set[int] | None = None) -> Iterator[tuple[int, str, np.ndarray]]:
        """Yield (index, file label, frame) for the GT frames in `wanted` (all when None), in order."""
        if self.video is not None:
            try:
                for frame in VideoSource(self.video):
                    if wanted is None or frame.index in wanted:
                        yield frame.index, f"{self.video} frame {frame.index}", frame.rgb
            except InputError as error:
                raise InputError(f"clip {self.name}: {error}") from error
            return
        for i, frame in enumerate(self.frames):
            if wanted is None or i in wanted:
                yield i, f"frame {i}" if isinstance(frame, np.ndarray) else str(frame), self.frame(i)

    def lr_frames(self) -> list[np.ndarray]:
        """All LR frames (HxWx3 uint8, one size), read from the LR files or generated from the GT."""
        labelled: list[tuple[str, np.ndarray]] = []
        if self.lr is not None:
            labelled = [(str(path), _read(path, self.name)) for path in self.lr]
        else:
            for _, label, gt in self._gt():
                if min(gt.shape[:2]) < SCALE:
                    raise InputError(f"clip {self.name}: {label} is {_size(gt)}, smaller than {SCALE}x{SCALE}")
                labelled.append((f"{label} (downscaled)", downscale_x4_uint8(modcrop(gt, SCALE))))
        if not labelled:
            raise InputError(f"clip {self.name}: no frames")
        first = labelled[0][1]
        for label, frame in labelled:
            if frame.shape != first.shape:
                raise InputError(
                    f"clip {self.name}: {label} is {_size(frame)} but the first LR frame is {_size(first)}"
                )
        return [frame for _, frame in labelled]

    def gt_frames(self, lr: Sequence[np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (index, GT cropped to a multiple of 4) for each scored frame, checking it is 4x its LR frame."""
        wanted = self.scored_indices(len(lr))
        if not wanted:
            return
        for i, label, gt in self._gt(set(wanted)):
            if i >= len(lr):
                raise InputError(f"clip {self.name}: {label} has no LR frame ({len(lr)} LR frames)")
            gt = modcrop(gt, SCALE)
            h, w = lr[i].shape[0] * SCALE, lr[i].shape[1] * SCALE
            if gt.shape[:2] != (h, w):
                raise InputError(
                    f"clip {self.name}: {label} is {_size(gt)} after cropping to a multiple of {SCALE}, "
                    f"but {SCALE}x its LR frame is {w}x{h}"
                )
            yield i, gt
            if i == wanted[-1]:
                return


@dataclass(frozen=True)
class Dataset:
    """A named benchmark: its clips and the channel ("y" or "rgb") it is conventionally scored on."""

    name: str
    clips: tuple[Clip, ...]
    channel: str


def _list_images(folder: Path, clip: str) -> tuple[Path, ...]:
    """Image files in `folder`, naturally sorted; InputError if the folder is missing or holds none."""
    if not folder.is_dir():
        raise InputError(f"clip {clip}: folder {folder} does not exist")
    paths = images.list_images(folder)
    if not paths:
        raise InputError(f"clip {clip}: no image frames in {folder}")
    return tuple(paths)


def folder_clip(name: str, gt_dir: Path, lr_dir: Path | None, scored: tuple[int, ...] | None = None) -> Clip:
    """A clip from a GT frame folder and an optional LR frame folder with as many frames."""
    gt = _list_images(gt_dir, name)
    lr = None if lr_dir is None else _list_images(lr_dir, name)
    if lr is not None and len(lr) != len(gt):
        raise InputError(f"clip {name}: {len(gt)} GT frames in {gt_dir} but {len(lr)} LR frames in {lr_dir}")
    return Clip(name=name, frames=gt, lr=lr, scored=scored)


def _subdirs(folder: Path) -> list[Path]:
    """Sub-folders of `folder`, naturally sorted."""
    return sorted((p for p in folder.iterdir() if p.is_dir()), key=natural_key)


def x4_subfolder(folder: Path) -> Path:
    """`folder`/X4 when it exists, else `folder`."""
    return folder / "X4" if (folder / "X4").is_dir() else folder


def reds4(root: Path, lr_root: Path | None = None) -> Dataset:
    """REDS4: clips 000, 011, 015, 020 of root/train_sharp (or root/GT), LR from train_sharp_bicubic[/X4]."""
    root = Path(root)
    gt_base = next((root / d for d in ("train_sharp", "GT") if (root / d).is_dir()), None)
    if gt_base is None:
        raise InputError(f"REDS4: neither {root / 'train_sharp'} nor {root / 'GT'} exists")
    if lr_root is None:
        candidates = [root / "train_sharp_bicubic", root / "sharp_bicubic"]
        lr_root = next((d for d in candidates if d.is_dir()), None)
    lr_base = None if lr_root is None else x4_subfolder(Path(lr_root))
    clips = tuple(
        folder_clip(name, gt_base / name, None if lr_base is None else lr_base / name) for name in REDS4_CLIPS
    )
    return Dataset("reds4", clips, CONVENTIONAL_CHANNEL["reds4"])


def vid4(root: Path, lr_root: Path | None = None) -> Dataset:
    """Vid4: one GT frame folder per clip under `root` (or root/GT, with LR in root/BIx4 if present)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"Vid4: folder {root} does not exist")
    if (root / "GT").is_dir():
        if lr_root is None and (root / "BIx4").is_dir():
            lr_root = root / "BIx4"
        root = root / "GT"
    clip_dirs = _subdirs(root)
    if not clip_dirs:
        raise InputError(f"Vid4: no clip folders in {root}")
    clips = tuple(
        folder_clip(d.name, d, None if lr_root is None else x4_subfolder(Path(lr_root)) / d.name) for d in clip_dirs
    )
    return Dataset("vid4", clips, CONVENTIONAL_CHANNEL["vid4"])


def excluded(name: str | Path, exclude: Sequence[str]) -> bool:
    """Whether a clip's relative name, or any folder on its path, is in `exclude` (held-out clips)."""
    return str(name) in exclude or any(part in exclude for part in Path(name).parts)


def vimeo_septuplets(root: Path, listing: str, lr_root: Path | None = None, exclude: Sequence[str] = ()) -> list[Clip]:
    """Vimeo-90K: root/sequences/XXXXX/XXXX/im1..7.png, those named in root/`listing` (sep_trainlist.txt,
    sep_testlist.txt) when it exists, else all; LR frames under lr_root[/sequences] when given; im4 is scored."""
    root = Path(root)
    seq = root / "sequences"
    if not seq.is_dir():
        raise InputError(f"Vimeo-90K layout expected: {seq}/XXXXX/XXXX/im1.png ... im7.png")
    names_file = root / listing
    if names_file.is_file():
        names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
    else:
        names = [f"{a.name}/{b.name}" for a in _subdirs(seq) for b in _subdirs(a)]
    lr_base = None
    if lr_root is not None:
        lr_root = Path(lr_root)
        lr_base = lr_root / "sequences" if (lr_root / "sequences").is_dir() else lr_root
    clips = []
    for name in (n for n in names if not excluded(n, exclude)):
        clip = folder_clip(name, seq / name, None if lr_base is None else lr_base / name, (VIMEO_CENTRE,))
        if len(clip.frames) != VIMEO_FRAMES:
            raise InputError(f"clip {name}: {seq / name} holds {len(clip.frames)} frames, not {VIMEO_FRAMES}")
        clips.append(clip)
    if not clips:
        raise InputError(f"no Vimeo-90K septuplets in {seq}")
    return clips


def vimeo90k_t(root: Path, lr_root: Path | None = None) -> Dataset:
    """Vimeo-90K-T: the septuplets listed in root/sep_testlist.txt (all when it is missing); im4 is scored."""
    clips = tuple(vimeo_septuplets(root, "sep_testlist.txt", lr_root))
    return Dataset("vimeo90k-t", clips, CONVENTIONAL_CHANNEL["vimeo90k-t"])


def frames(gt: Path, lr: Path | None = None) -> Dataset:
    """One clip from a folder of GT frames and an optional folder of LR frames."""
    gt = Path(gt)
    clip = folder_clip(gt.resolve().name, gt, None if lr is None else Path(lr))
    return Dataset("frames", (clip,), CONVENTIONAL_CHANNEL["frames"])


def video(paths: Sequence[Path]) -> Dataset:
    """One clip per video file (decoded as `vsrx.io.reader.VideoSource` does); LR is generated from the GT."""
    if not paths:
        raise UsageError("the video layout needs at least one video file")
    clips: list[Clip] = []
    names: set[str] = set()
    for path in map(Path, paths):
        name = path.stem
        if name in names:
            name = f"{path.stem}-{len(clips)}"
        if not path.is_file():
            raise InputError(f"clip {name}: video file {path} does not exist")
        names.add(name)
        clips.append(Clip(name=name, video=path))
    return Dataset("video", tuple(clips), CONVENTIONAL_CHANNEL["video"])


def open_dataset(layout: str, paths: Sequence[Path], lr: Path | None = None) -> Dataset:
    """Open a dataset of `layout` (one of LAYOUTS) from its root (the video files for `video`)."""
    if layout not in LAYOUTS:
        raise UsageError(f"unknown dataset layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if layout == "video":
        if lr is not None:
            raise UsageError("the video layout generates its LR frames; it takes no LR folder")
        return video(paths)
    if len(paths) != 1:
        raise UsageError(f"the {layout} layout takes exactly one root folder, got {len(paths)}")
    opener = {"reds4": reds4, "vid4": vid4, "vimeo90k-t": vimeo90k_t, "frames": frames}[layout]
    return opener(Path(paths[0]), lr)
