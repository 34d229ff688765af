"""Resumable jobs (`--resume`, kill -9), segment joins, many files (`--out-dir`) and `--dry-run`."""

import json
import os
import signal
import subprocess
import sys
import time

import av
import numpy as np
import pytest

from clips import make_clip, make_frame_folder, make_undecodable
from faults import fail_on_call
from helpers import tiny_edvr
from helpers import cli as run
from vsrx.models import save_model


def decoded(path):
    with av.open(str(path)) as c:
        tb = c.streams.video[0].time_base
        return [(f.pts * tb, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]


def packets(path, kind):
    with av.open(str(path)) as c:
        streams = getattr(c.streams, kind)
        return [bytes(p) for p in c.demux(streams[0]) if p.size] if streams else []


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def hidden(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


SLOW = ("import sys, time; import vsrx.inference as i; run = i.Upscaler._run; "
        "i.Upscaler._run = lambda self, *a: (time.sleep(0.25), run(self, *a))[1]; "
        "from vsrx.cli import main; main(sys.argv[1:], prog_name='vsrx')")


@pytest.mark.slow
def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path, model_path):
    src = make_clip(tmp_path / "in.mp4", frames=24, size=(32, 24), audio=True, vfr=True, cut_at=10)
    args = ["--model", model_path, "--segment-frames", "4", "--quiet"]
    assert run("upscale", src, tmp_path / "ref.mp4", *args).exit_code == 0
    out, job = tmp_path / "out.mp4", tmp_path / ".out.mp4.vsrx-job"
    proc = subprocess.Popen([sys.executable, "-c", SLOW, "upscale", str(src), str(out), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list(job.glob("seg-*.json"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    assert not out.exists() and len(list(job.glob("seg-*.json"))) >= 2
    kept = snapshot(job)

    refused = run("upscale", src, out, *args)  # without --resume: one line, nothing touched
    assert refused.exit_code == 2 and "--resume" in refused.output and "frames done" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    assert snapshot(job) == kept and not out.exists()

    resumed = run("upscale", src, out, *args, "--resume", "--json")
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads(resumed.output)
    assert summary["resumed"] >= 8 and summary["computed"] == 24 - summary["resumed"] and summary["frames"] == 24
    assert summary["scene_cuts"] == [10]
    ref, got = decoded(tmp_path / "ref.mp4"), decoded(out)
    assert len(got) == 24 and all(t == u and np.array_equal(a, b) for (t, a), (u, b) in zip(ref, got))
    assert [t for t, _ in got] == [t for t, _ in decoded(src)]  # VFR timestamps kept across segments
    assert packets(out, "audio") == packets(src, "audio") and packets(out, "audio")
    assert out.read_bytes() == (tmp_path / "ref.mp4").read_bytes()  # libx264 is deterministic here
    assert hidden(tmp_path) == []


@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".mov", ".webm", ".avi"])
def test_segments_join_into_one_continuous_video(tmp_path, model_path, ext):
    src = make_clip(tmp_path / "in.mkv", frames=10, size=(32, 24), audio=True, vfr=True, subtitles=True)
    out = tmp_path / f"out{ext}"
    result = run("upscale", src, out, "--model", model_path, "--segment-frames", "3", "--json")
    assert result.exit_code == 0, result.output
    got, want = decoded(out), decoded(src)
    assert len(got) == 10 and got[0][1].shape == (96, 128, 3)
    if ext != ".avi":  # AVI stores a constant rate
        assert [t for t, _ in got] == [t for t, _ in want]
    if ext != ".webm":  # WebM holds no AAC
        assert packets(out, "audio") == packets(src, "audio")
    if ext == ".mkv":
        assert packets(out, "subtitles") == packets(src, "subtitles")
    with av.open(str(out)) as c:  # every segment starts on a keyframe
        keys = [p.is_keyframe for p in c.demux(video=0) if p.size]
    assert all(keys[i] for i in (0, 3, 6, 9))
    assert hidden(tmp_path) == []


def test_resume_refuses_other_input_model_or_options_and_then_continues(tmp_path, model_path, monkeypatch):
    import vsrx.inference

    src = make_clip(tmp_path / "in.mkv", frames=8, size=(16, 16))
    args = ["--model", model_path, "--segment-frames", "2", "--quiet"]
    assert run("upscale", src, tmp_path / "ref.mkv", *args).exit_code == 0
    out, job = tmp_path / "out.mkv", tmp_path / ".out.mkv.vsrx-job"
    fail_on_call(monkeypatch, vsrx.inference.Upscaler, "_run", at=6)
    crashed = run("upscale", src, out, *args)
    monkeypatch.undo()
    assert crashed.exit_code != 0 and "--resume" in crashed.output and not out.exists()
    kept = snapshot(job)
    other = save_model(tiny_edvr(seed=1), tmp_path / "other.safetensors")
    cases = [(["--crf", "20"], "--crf was 18"), (["--scene-cuts", "off"], "--scene-cuts was auto"),
             (["--batch", "2"], "--batch was 1"), (["--frames"], "--frames was False"),
             (["--self-ensemble"], "--self-ensemble was False"),
             (["--model", other], "model differs")]
    for extra, needle in cases:
        result = run("upscale", src, out, *args, *extra, "--resume")
        assert result.exit_code == 2 and needle in result.output, (extra, result.output)
        assert len(result.output.strip().splitlines()) == 1
    stat = src.stat()
    os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    result = run("upscale", src, out, *args, "--resume")
    assert result.exit_code == 2 and "input changed" in result.output and "mtime_ns" in result.output
    assert snapshot(job) == kept and not out.exists()
    os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    result = run("upscale", src, out, *args, "--resume", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["resumed"] == 4
    assert out.read_bytes() == (tmp_path / "ref.mkv").read_bytes()
    assert hidden(tmp_path) == []
    # --overwrite (without --resume) drops an unfinished job and starts again
    fail_on_call(monkeypatch, vsrx.inference.Upscaler, "_run", at=6)
    assert run("upscale", src, tmp_path / "again.mkv", *args).exit_code != 0
    monkeypatch.undo()
    result = run("upscale", src, tmp_path / "again.mkv", *args, "--overwrite", "--json")
    assert result.exit_code == 0 and json.loads(result.output)["resumed"] == 0


def test_frame_folder_resumes_by_frame(tmp_path, model_path, monkeypatch):
    import vsrx.io.job

    src = make_frame_folder(tmp_path / "frames", frames=10, size=(20, 12))
    args = ["--model", model_path, "--batch", "2", "--quiet"]
    assert run("upscale", src, tmp_path / "ref", *args).exit_code == 0
    fail_on_call(monkeypatch, vsrx.io.job, "write_png", at=4)  # 3 frames written, then a crash
    assert run("upscale", src, tmp_path / "sr", *args).exit_code != 0
    monkeypatch.undo()
    assert len(list((tmp_path / ".sr.vsrx-job" / "frames").iterdir())) == 3
    result = run("upscale", src, tmp_path / "sr", *args, "--resume", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert (summary["resumed"], summary["computed"], summary["frames"]) == (3, 7, 10)
    assert snapshot(tmp_path / "sr") == snapshot(tmp_path / "ref")
    assert hidden(tmp_path) == []


def test_many_files_one_model_load_skip_finished_and_go_on_after_a_broken_one(tmp_path, model_path, monkeypatch):
    import vsrx.pipeline

    loads = []
    real = vsrx.pipeline.load_sr_model
    monkeypatch.setattr(vsrx.pipeline, "load_sr_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    srcs = tmp_path / "src"
    srcs.mkdir()
    a = make_clip(srcs / "a.mp4", frames=5, size=(16, 16), audio=True)
    b = make_undecodable(srcs / "b.mkv")
    c = make_frame_folder(srcs / "c", frames=4, size=(12, 8))
    d = make_clip(srcs / "d.mkv", frames=3, size=(16, 16))
    out = tmp_path / "out"
    out.mkdir()
    (out / "d.mkv").write_bytes(b"finished before")
    result = run("upscale", a, b, c, d, "--out-dir", out, "--model", model_path, "--json")
    assert result.exit_code == 1
    summary = json.loads(result.output)
    assert [f["status"] for f in summary["files"]] == ["done", "failed", "done", "skipped"] and summary["failed"] == 1
    assert "b.mkv" in summary["files"][1]["error"]
    assert len(loads) == 1
    assert len(decoded(out / "a.mp4")) == 5 and packets(out / "a.mp4", "audio") == packets(a, "audio")
    assert len(list((out / "c").iterdir())) == 4
    assert (out / "d.mkv").read_bytes() == b"finished before" and not (out / "b.mkv").exists()
    assert hidden(out) == []
    # the table, the broken file's one line, a chosen container
    result = run("upscale", a, b, c, "--out-dir", tmp_path / "mkv", "--ext", "mkv", "--model", model_path, "--quiet")
    assert result.exit_code == 1
    assert "vsrx: " + str(b) + ": no decodable video frames" in result.output.replace("\n", "")
    assert "failed" in result.output and "done" in result.output
    assert sorted(p.name for p in (tmp_path / "mkv").iterdir()) == ["a.mkv", "c.mkv"]
    assert len(decoded(tmp_path / "mkv" / "c.mkv")) == 4


def test_many_files_refuse_two_sources_with_one_output(tmp_path, model_path):
    (tmp_path / "x").mkdir()
    a = make_clip(tmp_path / "x" / "a.mp4", frames=3, size=(16, 16))
    b = make_clip(tmp_path / "a.mp4", frames=3, size=(16, 16))
    result = run("upscale", a, b, "--out-dir", tmp_path / "out", "--model", model_path)
    assert result.exit_code == 2 and "both be written" in result.output and not (tmp_path / "out").exists()


def test_dry_run_estimates_and_writes_nothing(tmp_path, model_path):
    a = make_clip(tmp_path / "a.mp4", frames=9, size=(32, 24))
    c = make_frame_folder(tmp_path / "c", frames=5, size=(20, 12))
    before = snapshot(tmp_path)
    result = run("upscale", a, c, "--out-dir", tmp_path / "out", "--model", model_path, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["dry_run"]
    assert [(r["frames"], r["todo"], r["size"], r["status"]) for r in rows] == [(9, 9, "128x96", "new"), (5, 5, "80x48", "new")]
    assert all(r["seconds_per_frame"] > 0 and r["seconds"] == pytest.approx(r["todo"] * r["seconds_per_frame"]) for r in rows)
    result = run("upscale", a, tmp_path / "one.mkv", "--model", model_path, "--dry-run")
    assert result.exit_code == 0 and "128x96" in result.output and "nothing written" in result.output
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    result = run("upscale", a, tmp_path / "bad.mp4", "--out-dir", tmp_path / "out", "--model", model_path, "--dry-run", "--json")
    assert result.exit_code == 1 and json.loads(result.output)["dry_run"][1]["status"].startswith("failed: ")
    (tmp_path / "bad.mp4").unlink()
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "c"]


def test_usage_errors(tmp_path, model_path):
    a = make_clip(tmp_path / "a.mp4", frames=3, size=(16, 16))
    for args, needle in [((a,), "SRC and DST"), ((a, tmp_path / "b.mp4", "--ext", "mkv"), "--ext goes with --out-dir"),
                         ((a, "--out-dir", tmp_path / "o", "--ext", "xyz"), "'.xyz'")]:
        result = run("upscale", *args, "--model", model_path)
        assert result.exit_code == 2 and needle in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]
