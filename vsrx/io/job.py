"""A resumable upscale: the work in progress lives in a hidden folder beside the target.

    .out.mp4.vsrx-job/
        job.json             what the job is (`Job.prepare` compares it on resume): the input's
                             fingerprint, the model's sha256, every option that changes pixels or
                             encoding, the software versions, and the segment length
        seg-000003.mp4       a finished segment, encoded on its own (so it starts on a keyframe
                             and refers to no other segment), without audio
        seg-000003.json      its marker (frames, scene cuts, notes), written after the segment:
                             a segment is done once its marker exists
        frames/00000120.png  a frame-folder target's frames, each written whole (resume by frame)
        lock                 held (flock) by the process that owns the job

Every file appears atomically (written beside its name, then renamed). When all segments are
done, `Job.finish` joins them without re-encoding and muxes the source's audio and subtitles
once (`join_videos`), or renames the frames folder onto the target, and removes the folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vsrx.errors import UsageError
from vsrx.io.reader import FrameSource
from vsrx.io.atomic import atomic_write, remove_path
from vsrx.io.images import write_png
from vsrx.io.writer import VideoSink, join_videos, move_into_place

try:
    import fcntl
except ImportError:  # not POSIX: no lock against a second process on the same job
    fcntl = None

MANIFEST = "job.json"


def job_folder(target: str | Path) -> Path:
    """The hidden job folder of a target path."""
    target = Path(target)
    return target.with_name(f".{target.name}.vsrx-job")


def fingerprint(source: FrameSource) -> dict[str, Any]:
    """What identifies an input: path, size, modification time and stream layout (video: every
    stream's type and codec; folder: the image count), plus the frames the reader sees."""
    path = source.path.resolve()
    if path.is_dir():
        stats = [f.stat() for f in source.files]
        found = {"size": sum(s.st_size for s in stats), "mtime_ns": max(s.st_mtime_ns for s in stats),
                 "streams": [f"{len(stats)} images"]}
    else:
        import av

        stat = path.stat()
        with av.open(str(path)) as container:
            streams = [f"{s.type}:{s.codec_context.name}" for s in container.streams]
        found = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "streams": streams}
    return {"path": str(path), **found, "frames": source.num_frames,
            "video": f"{source.width}x{source.height} {source.pix_fmt}"}


class Job:
    """One target's job folder. Segment n covers frames [lo, hi) of `segments[n]`; every process
    of a run builds the same Job from the same manifest, and one of them `prepare`s the folder."""

    def __init__(self, target: str | Path, manifest: dict[str, Any]) -> None:
        self.target = Path(target)
        self.folder = job_folder(self.target)
        self.manifest = json.loads(json.dumps(manifest))  # as it reads back from job.json
        options = self.manifest["options"]
        self.start, self.end, self.size = options["start"], options["end"], options["segment_frames"]
        self.segments = [(lo, min(lo + self.size, self.end)) for lo in range(self.start, self.end, self.size)]
        self.frames = options["frames"]
        self._lock: int | None = None

    @classmethod
    def load(cls, target: str | Path) -> "Job | None":
        """The job waiting at a target, as its manifest describes it; None when there is none."""
        try:
            return cls(target, json.loads((job_folder(target) / MANIFEST).read_text()))
        except (OSError, ValueError, KeyError):
            return None

    # -- the folder's state
    def segment_path(self, n: int) -> Path:
        return self.folder / f"seg-{n:06d}{self.target.suffix.lower()}"

    def frame_path(self, index: int) -> Path:
        """A frame-folder target's frame: numbered from 0 at the first frame of the range."""
        return self.folder / "frames" / f"{index - self.start:08d}.png"

    def marker(self, n: int) -> dict[str, Any] | None:
        """The marker of segment n if it is done, else None."""
        try:
            return json.loads((self.folder / f"seg-{n:06d}.json").read_text())
        except (OSError, ValueError):
            return None

    def mark(self, n: int, frames: int, cuts: list[int], notes: list[str]) -> None:
        """Record segment n as done (after its segment file or frames are in place)."""
        marker = json.dumps({"frames": frames, "cuts": cuts, "notes": notes}).encode()
        atomic_write(self.folder / f"seg-{n:06d}.json", marker, fsync=False)

    def _first_missing(self, n: int) -> int:
        """The first frame of segment n still to compute (frames are written in order)."""
        lo, hi = self.segments[n]
        if not self.frames:
            return lo
        return next((i for i in range(lo, hi) if not self.frame_path(i).exists()), hi)

    def todo(self, align: Callable[[int], int]) -> list[tuple[int, int]]:
        """The [lo, hi) frame ranges left to compute, one per unfinished segment; `align` moves a
        frame-folder resume point back to where a run can start (a batch group's first centre).
        A segment with all its frames but no marker redoes its last group, to learn its cuts."""
        return [(align(min(self._first_missing(n), hi - 1)), hi) for n, (lo, hi) in enumerate(self.segments)
                if self.marker(n) is None]

    def frames_done(self) -> int:
        """Frames finished so far: whole segments, and the frames written of unfinished ones."""
        done = 0
        for n, (lo, _) in enumerate(self.segments):
            marker = self.marker(n)
            done += marker["frames"] if marker else self._first_missing(n) - lo
        return done

    def segment_of(self, index: int) -> int:
        return (index - self.start) // self.size

    # -- life cycle
    def prepare(self, resume: bool, overwrite: bool) -> int:
        """Create the folder, or take up the one there (`resume`), refusing one that does not fit;
        returns how many frames are already done. Holds the lock until `finish` or `release`."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            old = Job.load(self.target)  # counted by its own segment plan
            done = old.frames_done() if old is not None else 0
            if done and resume:
                differs = _difference(old.manifest, self.manifest)
                if differs:
                    raise UsageError(f"cannot resume {self.target}: {differs}; pass the job's settings, "
                                     f"or --overwrite without --resume to start again")
                return done
            if done and not overwrite:
                raise UsageError(f"{self.target}: an unfinished upscale is waiting ({done} of {old.end - old.start} "
                                 f"frames done, in {self.folder.name}); add --resume to continue it, or "
                                 f"--overwrite to start again")
            for entry in self.folder.iterdir():  # nothing worth keeping, or --overwrite: start afresh
                if entry.name != "lock":
                    remove_path(entry)
            if self.frames:
                (self.folder / "frames").mkdir()
            atomic_write(self.folder / MANIFEST, json.dumps(self.manifest, indent=1).encode(), fsync=False)
            return 0
        except BaseException:
            self.release()
            raise

    def finish(self, source: FrameSource, audio: bool, subtitles: bool, overwrite: bool) -> tuple[int, list[int], list[str]]:
        """Put the finished output at the target and remove the folder; (frames, scene cuts, notes)."""
        markers = [self.marker(n) for n in range(len(self.segments))]
        missing = [n for n, m in enumerate(markers) if m is None]
        if missing:
            raise UsageError(f"cannot finish {self.target}: segment {missing[0]} of the job is not done")
        notes = list(dict.fromkeys(note for m in markers for note in m["notes"]))
        if self.frames:
            move_into_place(self.folder / "frames", self.target, source, overwrite)
        else:
            parts = [self.segment_path(n) for n, m in enumerate(markers) if m["frames"]]
            notes += join_videos(parts, self.target, source, audio=audio, subtitles=subtitles, overwrite=overwrite)
        self.discard()
        return sum(m["frames"] for m in markers), sorted({c for m in markers for c in m["cuts"]}), notes

    def keep_or_discard(self) -> int:
        """After a failure: keep the folder if it holds finished work (returns the frames done), else remove it."""
        try:
            done = self.frames_done() if (self.folder / MANIFEST).is_file() else 0
            if not done:
                self.discard()
            return done
        finally:
            self.release()

    def discard(self) -> None:
        remove_path(self.folder)
        self.release()

    def release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _take_lock(self) -> None:
        self._lock = os.open(self.folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is None:
            return
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.release()
            raise UsageError(f"{self.target}: another vsrx process is working on this output") from None


class SegmentWriter:
    """Writes one process's share of a job: each frame into its segment (a `VideoSink` per segment,
    or one PNG per frame), and each segment's marker as soon as its last frame is in."""

    def __init__(self, job: Job, source: FrameSource, video: dict[str, Any], cuts: Callable[[], list[int]]) -> None:
        self.job, self.source, self.video, self.cuts = job, source, video, cuts
        self.written = 0
        self._segment: int | None = None
        self._sink: VideoSink | None = None
        self._last = -1

    def write(self, index: int, rgb: np.ndarray, pts: int | None, duration: int | None) -> None:
        n = self.job.segment_of(index)
        if n != self._segment:
            self._close_segment()
            self._segment = n
            if not self.job.frames:
                lo = self.job.segments[n][0]
                self._sink = VideoSink(self.job.segment_path(n), self.source, audio=False, subtitles=False,
                                       overwrite=True, start_frame=lo - self.job.start, **self.video)
        if self._sink is not None:
            self._sink.write(rgb, pts, duration)
            self.written += 1
        elif not self.job.frame_path(index).exists():  # else written by the run this one resumes
            write_png(self.job.frame_path(index), rgb)
            self.written += 1
        self._last = index
        if index == self.job.segments[n][1] - 1:
            self._close_segment()

    def close(self, ended_at: int | None, ranges: list[tuple[int, int]]) -> None:
        """After the last frame: finish the open segment; if the input ended early (at frame
        `ended_at`), mark this process's segments past the end as done with no frames."""
        self._close_segment()
        if ended_at is None:
            return
        for lo, hi in ranges:
            for n in range(self.job.segment_of(max(lo, ended_at)), self.job.segment_of(hi - 1) + 1):
                if self.job.segments[n][0] >= ended_at and self.job.marker(n) is None:
                    self.job.mark(n, 0, [], [])

    def abort(self) -> None:
        """Drop the unfinished segment file (finished segments and frames stay for a resume)."""
        if self._sink is not None:
            self._sink.abort()
            self._sink = None

    def _close_segment(self) -> None:
        n = self._segment
        if n is None:
            return
        lo, hi = self.job.segments[n]
        notes = []
        if self._sink is not None:
            notes = self._sink.close()
            self._sink = None
        self.job.mark(n, self._last + 1 - lo, [c for c in self.cuts() if lo <= c < hi], notes)
        self._segment = None


def _difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """What differs between two manifests, in words (None when they agree): the input, the model,
    the software, or else every option set on both sides that differs."""
    for section, say in (("input", "the input changed since the job began"), ("model", "the model differs"),
                         ("software", "the software changed")):
        a, b = old.get(section, {}), new.get(section, {})
        changed = [f"{key}: {a.get(key)} -> {b.get(key)}" for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]
        if changed:
            return f"{say} ({changed[0]})"
    a, b = old.get("options", {}), new.get("options", {})
    changed = [key for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]
    both = [key for key in changed if key in a and key in b] or changed
    return "; ".join(f"--{key.replace('_', '-')} was {a.get(key)} for the job, now {b.get(key)}" for key in both) or None
