"""Pack training footage into JPEG/PNG frame folders small enough to travel with a GPU run.

    python benchmarks/pack_data.py                      # ../shared/data -> .gpu_pack/, size fitted to the tree
    python benchmarks/pack_data.py --max-mb 20 --segment 12 --quality 95

The GPU machine gets a copy of the working tree of at most 64 MiB and has no PyAV, so the pack
holds frame folders that torchvision decodes: `vsrx train --dataset videos --root .gpu_pack/train`
reads them as clips. Only training footage is read (never ``heldout/``, ``bikes.mp4`` or
``vimeo90k_sample/sequences/00002``). Every clip contributes short runs of consecutive frames
(``--segment``), taken round-robin over the clips and spread over each clip's length, until the
byte budget is spent, so all footage is represented before any clip gets a second run:

- DAVIS frames (JPEG) and Vimeo-90K septuplets (PNG) are copied byte for byte: no loss;
- frames of the H.264 videos are decoded, cropped (not resized) to a centred window of at most
  ``--crop`` pixels a side, and encoded as JPEG ``--quality``; their PSNR against the decoded
  source frames is measured and written to ``manifest.json``.

The default budget is 64 MiB minus what else travels (tracked and untracked, not ignored files)
minus ``--margin`` MiB. ``manifest.json`` names the clips, their sources, sizes and the JPEG cost,
and ``real``: a lossless run of consecutive frames for the GPU run's correctness checks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vsrx.evaluate.metrics import frame_metrics  # noqa: E402
from vsrx.io.images import list_images, read_image  # noqa: E402

LIMIT_MIB = 64
HELD_OUT = ("heldout", "bikes.mp4", "00002")  # path parts that must never be packed (data/README.md)
MIN_SIDE = 256  # HR frames below this cannot give a 64-pixel LR training patch


@dataclass
class Segment:
    """A run of consecutive frames of one source: file copies, or frame indices of a video."""

    name: str
    source: Path
    start: int
    count: int
    files: list[Path] = field(default_factory=list)  # copied sources
    est_bytes: int = 0


def held_out(path: Path, data: Path) -> bool:
    return any(part in HELD_OUT for part in path.relative_to(data).parts)


def spread(slots: int) -> list[int]:
    """0..slots-1 ordered so every prefix is spread over the range (van der Corput order)."""
    order, seen, i = [], set(), 0
    while len(order) < slots:
        i += 1
        v, denom, k = 0.0, 1.0, i
        while k:
            denom *= 2
            v += (k & 1) / denom
            k >>= 1
        slot = min(int(v * slots), slots - 1)
        if slot not in seen:
            seen.add(slot)
            order.append(slot)
        if i > 64 * slots:  # the order above covers every slot long before this
            order += [s for s in range(slots) if s not in seen]
    return order


def runs(n: int, length: int) -> list[tuple[int, int]]:
    """(start, count) of the runs a clip of n frames offers, in spread order."""
    if n < length:
        return [(0, n)] if n >= 7 else []
    slots = n // length
    offset = (n - slots * length) // 2
    return [(offset + k * length, length) for k in spread(slots)]


def crop_box(h: int, w: int, crop: int) -> tuple[int, int, int, int]:
    """A centred window of at most crop x crop pixels, sides multiples of 4: (top, left, height, width)."""
    ch, cw = min(h, crop) // 4 * 4, min(w, crop) // 4 * 4
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def plan_sources(data: Path, length: int, crop: int, quality: int) -> list[list[Segment]]:
    """For each training source, its candidate segments in the order they will be taken."""
    sources: list[list[Segment]] = []
    for folder in sorted((data / "natural" / "davis").iterdir()):
        files = list_images(folder)
        sources.append([Segment(f"davis-{folder.name}-{s:04d}", folder, s, c, files[s : s + c],
                                sum(f.stat().st_size for f in files[s : s + c])) for s, c in runs(len(files), length)])
    septuplets = sorted(p for p in (data / "vimeo90k_sample" / "sequences").glob("*/*") if p.is_dir())
    vimeo = [Segment(f"vimeo-{p.parent.name}-{p.name}", p, 0, 7, list_images(p), sum(f.stat().st_size for f in list_images(p)))
             for p in septuplets if not held_out(p, data)]
    sources.append(vimeo)
    videos = sorted((data / "natural").glob("*/*.mp4")) + sorted(p for p in data.glob("*.mp4"))
    for video in videos:
        if held_out(video, data):
            continue
        from vsrx.io.reader import open_source

        src = open_source(video)
        if min(src.width, src.height) < MIN_SIDE:
            print(f"skipped {video.name}: {src.width}x{src.height} is too small for 64-pixel LR patches")
            continue
        first = next(iter(src)).rgb
        top, left, ch, cw = crop_box(*first.shape[:2], crop)
        per_frame = len(encode(first[top : top + ch, left : left + cw], quality))
        stem = f"{video.parent.name}-{video.stem}" if video.parent != data else video.stem
        sources.append([Segment(f"{stem}-{s:04d}", video, s, c, est_bytes=per_frame * c) for s, c in runs(src.num_frames, length)])
    for segs in sources:
        for seg in segs:
            assert not held_out(seg.source, data), seg.source
    return [s for s in sources if s]


def choose(sources: list[list[Segment]], budget: int) -> list[Segment]:
    """Round-robin over the sources, one segment each per round, while the estimate fits the budget."""
    chosen, total = [], 0
    for r in range(max(len(s) for s in sources)):
        for segs in sources:
            if r < len(segs) and total + segs[r].est_bytes <= budget:
                chosen.append(segs[r])
                total += segs[r].est_bytes
    return chosen


def encode(rgb: np.ndarray, quality: int) -> bytes:
    import torch
    from torchvision.io import encode_jpeg

    return encode_jpeg(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous(), quality=quality).numpy().tobytes()


def write_segments(chosen: list[Segment], out: Path, crop: int, quality: int) -> list[dict]:
    """Write the chosen segments as frame folders under out/train; returns one manifest row each."""
    from vsrx.io.reader import open_source

    rows = []
    copies = [s for s in chosen if s.files]
    by_video: dict[Path, list[Segment]] = {}
    for seg in chosen:
        if not seg.files:
            by_video.setdefault(seg.source, []).append(seg)
    for seg in copies:
        folder = out / "train" / seg.name
        folder.mkdir(parents=True)
        for k, f in enumerate(seg.files):
            shutil.copyfile(f, folder / f"{k:05d}{f.suffix.lower()}")
        rows.append({"name": seg.name, "source": str(seg.source), "start": seg.start, "frames": seg.count,
                     "encoding": "copy", "bytes": sum(f.stat().st_size for f in seg.files)})
    for video, segs in by_video.items():
        wanted = {seg.start + k: (seg, k) for seg in segs for k in range(seg.count)}
        metrics: dict[str, list[dict]] = {seg.name: [] for seg in segs}
        for frame in open_source(video):
            if frame.index > max(wanted):
                break
            if frame.index not in wanted:
                continue
            seg, k = wanted[frame.index]
            top, left, ch, cw = crop_box(*frame.rgb.shape[:2], crop)
            rgb = np.ascontiguousarray(frame.rgb[top : top + ch, left : left + cw])
            folder = out / "train" / seg.name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{k:05d}.jpg").write_bytes(encode(rgb, quality))
            metrics[seg.name].append(frame_metrics(read_image(folder / f"{k:05d}.jpg"), rgb))
        for seg in segs:
            m = metrics[seg.name]
            if len(m) < 7:  # the video ended early: too short for a 7-frame window
                shutil.rmtree(out / "train" / seg.name, ignore_errors=True)
                continue
            rows.append({"name": seg.name, "source": str(seg.source), "start": seg.start, "frames": len(m),
                         "encoding": f"jpeg q{quality}, centre crop", "bytes": folder_bytes(out / "train" / seg.name),
                         "psnr_rgb": float(np.mean([x["psnr_rgb"] for x in m])),
                         "psnr_y": float(np.mean([x["psnr_y"] for x in m]))})
    return rows


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def travelling_bytes(repo: Path) -> int:
    """Bytes of the files a device run copies besides carried paths: tracked and untracked, not ignored."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                           capture_output=True, check=True).stdout.split(b"\0")
    return sum((repo / n.decode()).stat().st_size for n in names if n and (repo / n.decode()).is_file())


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="the footage (see its README.md)")
    p.add_argument("--out", type=Path, default=ROOT / ".gpu_pack")
    p.add_argument("--max-mb", type=float, help="pack size in MiB (default: 64 MiB minus the rest of the tree minus --margin)")
    p.add_argument("--margin", type=float, default=2.0, help="MiB left free under the 64 MiB limit")
    p.add_argument("--segment", type=int, default=10, help="consecutive frames per run (7-frame windows need at least 7)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality for frames decoded from videos")
    p.add_argument("--crop", type=int, default=640, help="largest side kept of frames decoded from videos (centre crop)")
    args = p.parse_args(argv)
    data = args.data.resolve()
    if not (data / "natural" / "davis").is_dir():
        sys.exit(f"pack_data: {data} does not hold the training footage (natural/davis missing)")
    if args.segment < 7:
        sys.exit("pack_data: --segment must be at least 7 (one 7-frame window)")
    rest = travelling_bytes(ROOT)
    budget = int((args.max_mb if args.max_mb else LIMIT_MIB - args.margin - rest / 2**20) * 2**20)
    if budget <= 0:
        sys.exit(f"pack_data: no room: the rest of the tree is {rest / 2**20:.1f} MiB")
    sources = plan_sources(data, args.segment, args.crop, args.quality)
    chosen = choose(sources, int(budget * 0.97))  # JPEG sizes are estimated from one frame per video
    tmp = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rows = write_segments(chosen, tmp, args.crop, args.quality)
    order = [seg.name for seg in chosen]
    while folder_bytes(tmp) > budget:  # the estimate was short: drop the last chosen runs
        name = order.pop()
        rows = [r for r in rows if r["name"] != name]
        shutil.rmtree(tmp / "train" / name, ignore_errors=True)
    real = next(r["name"] for r in rows if r["encoding"] == "copy" and r["name"].startswith("davis") and r["frames"] >= 8)
    encoded = [r for r in rows if "psnr_rgb" in r]
    weights = [r["frames"] for r in encoded]
    manifest = {
        "data": str(data), "segment": args.segment, "quality": args.quality, "crop": args.crop,
        "budget_mib": budget / 2**20, "rest_of_tree_mib": rest / 2**20,
        "clips": len(rows), "frames": sum(r["frames"] for r in rows), "sources": len({r["source"] for r in rows}),
        "copied_frames": sum(r["frames"] for r in rows if r["encoding"] == "copy"),
        "jpeg_frames": sum(weights),
        "jpeg_psnr_rgb": float(np.average([r["psnr_rgb"] for r in encoded], weights=weights)) if encoded else math.inf,
        "jpeg_psnr_y": float(np.average([r["psnr_y"] for r in encoded], weights=weights)) if encoded else math.inf,
        "jpeg_psnr_rgb_worst_clip": min((r["psnr_rgb"] for r in encoded), default=math.inf),
        "real": f"train/{real}",
        "rows": sorted(rows, key=lambda r: r["name"]),
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    manifest["mib"] = folder_bytes(tmp) / 2**20
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(args.out, ignore_errors=True)
    os.replace(tmp, args.out)
    print(f"{args.out}: {manifest['clips']} clips, {manifest['frames']} frames from {manifest['sources']} sources, "
          f"{manifest['mib']:.1f} MiB (budget {budget / 2**20:.1f}; rest of the tree {rest / 2**20:.1f} MiB); "
          f"{manifest['copied_frames']} frames copied losslessly, {manifest['jpeg_frames']} re-encoded as JPEG "
          f"q{args.quality}: PSNR {manifest['jpeg_psnr_rgb']:.2f} dB RGB, {manifest['jpeg_psnr_y']:.2f} dB Y against the "
          f"decoded source (worst clip {manifest['jpeg_psnr_rgb_worst_clip']:.2f} dB)")
    return manifest


if __name__ == "__main__":
    main()
