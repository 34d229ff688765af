"""`vsrx upscale` end to end on small generated clips: sizes, counts, timestamps, audio, safety, errors."""

import json
import subprocess
import sys

import av
import pytest

from clips import deep_pattern, make_clip, make_frame_folder, truncate, write_png16
from faults import fail_on_call
from helpers import child_env
from helpers import cli as run


def video_info(path):
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = list(c.decode(video=0))
        return {"size": (v.codec_context.width, v.codec_context.height), "count": len(frames),
                "pts": [f.pts for f in frames], "time_base": v.time_base, "audio": len(c.streams.audio)}


def packets(path, kind):
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(getattr(c.streams, kind)[0]) if p.size]


def test_upscale_video_4x_counts_timestamps_audio(tmp_path, model_path):
    src = make_clip(tmp_path / "in.mp4", frames=9, size=(32, 24), audio=True, vfr=True)
    out = tmp_path / "out.mp4"
    result = run("upscale", src, out, "--model", model_path, "--quiet")
    assert result.exit_code == 0, result.output
    a, b = video_info(src), video_info(out)
    assert b["size"] == (128, 96) and b["count"] == a["count"] == 9
    assert [p * b["time_base"] for p in b["pts"]] == [p * a["time_base"] for p in a["pts"]]
    assert b["audio"] == 1 and packets(out, "audio") == packets(src, "audio")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_upscale_frame_folder_odd_size_to_pngs(tmp_path, model_path):
    src = make_frame_folder(tmp_path / "frames", frames=5, size=(21, 15))
    result = run("upscale", src, tmp_path / "sr", "--model", model_path, "--json", "--batch", "2")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["frames"] == 5 and summary["mode"] == "decomp-3"
    files = sorted((tmp_path / "sr").iterdir())
    assert len(files) == 5
    from torchvision.io import read_image
    assert read_image(str(files[0])).shape == (3, 60, 84)


def test_self_ensemble_runs_the_eight_views(tmp_path, model_path):
    import torch
    from torchvision.io import read_image

    from vsrx.inference import to_uint8, upscale_stream
    from vsrx.models import load_sr_model

    src = make_frame_folder(tmp_path / "frames", frames=4, size=(20, 12))
    for name, extra in (("plain", []), ("x8", ["--self-ensemble"])):
        result = run("upscale", src, tmp_path / name, "--model", model_path, "--precision", "fp32", "--json", *extra)
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["self_ensemble"] == (name == "x8")
    out = {name: [read_image(str(p)).permute(1, 2, 0) for p in sorted((tmp_path / name).iterdir())] for name in ("plain", "x8")}
    model = load_sr_model(model_path, None, None, torch.device("cpu"))[0].eval()
    frames = [read_image(str(p)) for p in sorted(src.iterdir())]
    want = [to_uint8(y) for y in upscale_stream(model, iter(frames), 4, self_ensemble=True)]
    assert len(out["x8"]) == len(want) == 4
    assert max((a.int() - b.int()).abs().max().item() for a, b in zip(out["x8"], want)) <= 1
    assert sum((a != b).sum().item() for a, b in zip(out["x8"], out["plain"])) > 100


def test_start_end_range(tmp_path, model_path):
    src = make_clip(tmp_path / "in.mp4", frames=10, size=(16, 16))
    result = run("upscale", src, tmp_path / "part.mkv", "--model", model_path, "--start", 3, "--end", 7, "--quiet")
    assert result.exit_code == 0, result.output
    assert video_info(tmp_path / "part.mkv")["count"] == 4


def test_refuses_overwrite_and_same_path(tmp_path, model_path):
    src = make_clip(tmp_path / "in.mp4", frames=4, size=(16, 16))
    out = tmp_path / "out.mp4"
    out.write_bytes(b"precious")
    result = run("upscale", src, out, "--model", model_path)
    assert result.exit_code == 2 and "--overwrite" in result.output and out.read_bytes() == b"precious"
    result = run("upscale", src, src, "--model", model_path, "--overwrite")
    assert result.exit_code == 2 and "is the input" in result.output
    assert video_info(src)["count"] == 4
    assert run("upscale", src, out, "--model", model_path, "--overwrite", "--quiet").exit_code == 0
    assert video_info(out)["size"] == (64, 64)


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failure_mid_way_leaves_nothing_at_the_target(tmp_path, model_path, monkeypatch, exc):
    """Nothing appears at the output path; finished work stays hidden in the job folder only."""
    from vsrx.inference import Upscaler

    src = make_clip(tmp_path / "in.mp4", frames=8, size=(16, 16))
    for out in (tmp_path / "out.mp4", tmp_path / "frames_out"):
        fail_on_call(monkeypatch, Upscaler, "_run", at=3, exc=exc)
        result = run("upscale", src, out, "--model", model_path)
        monkeypatch.undo()
        assert result.exit_code != 0
        assert not out.exists()
    # the video's one segment was not finished: no job left; the frame folder keeps its 2 frames
    assert sorted(p.name for p in tmp_path.iterdir()) == [".frames_out.vsrx-job", "in.mp4"]
    assert sorted(p.name for p in (tmp_path / ".frames_out.vsrx-job" / "frames").iterdir()) == ["00000000.png", "00000001.png"]


def test_bad_inputs_give_one_line(tmp_path, model_path):
    (tmp_path / "notes.txt").write_text("hello")
    cases = [
        (["upscale", tmp_path / "missing.mp4", tmp_path / "o.mp4", "--model", model_path], 1, "missing.mp4"),
        (["upscale", tmp_path / "notes.txt", tmp_path / "o.mp4", "--model", model_path], 1, "notes.txt"),
        (["upscale", make_clip(tmp_path / "a.mp4", frames=3, size=(16, 16)), tmp_path / "o.mp4", "--model", "nope"], 1, "nope"),
        (["upscale", tmp_path / "a.mp4", tmp_path / "o.xyz", "--model", model_path], 2, ".xyz"),
        (["upscale", tmp_path / "a.mp4", tmp_path / "o.mp4", "--model", model_path, "--start", 5], 2, "--start"),
        (["upscale", tmp_path / "a.mp4", tmp_path / "o.mp4", "--model", model_path, "-e", "novalue"], 2, "key=value"),
        (["upscale", tmp_path / "a.mp4", tmp_path / "o.mp4", "--model", model_path, "--device", "cuda:7"], 2, "cuda"),
        (["upscale", tmp_path / "a.mp4", tmp_path / "o.mp4", "--model", model_path, "--align", "flow"], 1, "cannot run as flow"),
    ]
    for args, code, needle in cases:
        result = run(*args)
        assert result.exit_code == code, (args, result.output)
        assert needle in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert not (tmp_path / "o.mp4").exists()


def test_truncated_video_upscales_what_decodes(tmp_path, model_path):
    src = make_clip(tmp_path / "in.mkv", frames=30, size=(32, 32))
    cut = truncate(src, keep=0.5)
    result = run("upscale", cut, tmp_path / "out.mkv", "--model", model_path, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert 0 < summary["frames"] < 30
    assert video_info(tmp_path / "out.mkv")["count"] == summary["frames"]


@pytest.mark.slow
@pytest.mark.parametrize("deep", [False, True], ids=["8bit", "16bit"])
def test_torchrun_two_processes_match_single(tmp_path, model_path, monkeypatch, deep):
    """Ranks share out the segments; the output equals one process's exactly (features are computed
    in fixed groups wherever a rank starts). The 8-bit case resumes a job another run left unfinished."""
    if deep:  # 16-bit PNGs
        src = tmp_path / "frames"
        src.mkdir()
        for i in range(7):
            write_png16(src / f"frame{i + 1}.png", deep_pattern(i, (20, 12), gray=False))
    else:
        src = make_frame_folder(tmp_path / "frames", frames=7, size=(20, 12))
    env = child_env()
    args = ["upscale", str(src), "--model", model_path, "--quiet", "--segment-frames", "2", "--resume"]
    one = subprocess.run([sys.executable, "-m", "vsrx", *args[:2], str(tmp_path / "one"), *args[2:]], env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    if not deep:  # a crash after 3 frames: segment 0 done, segment 1 half written
        from vsrx.inference import Upscaler

        fail_on_call(monkeypatch, Upscaler, "_run", at=4)
        assert run(*args[:2], tmp_path / "two", *args[2:]).exit_code != 0
        monkeypatch.undo()
        assert len(list((tmp_path / ".two.vsrx-job" / "frames").iterdir())) == 3
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
                          "-m", "vsrx", *args[:2], str(tmp_path / "two"), *args[2:]], env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr
    a, b = sorted((tmp_path / "one").iterdir()), sorted((tmp_path / "two").iterdir())
    assert [p.name for p in a] == [p.name for p in b] and len(a) == 7
    assert all(p.read_bytes() == q.read_bytes() for p, q in zip(a, b))
    if deep:
        with av.open(str(b[0])) as c:
            assert next(c.decode(video=0)).format.name == "rgb48be"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
