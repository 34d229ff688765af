"""The evaluation runner on tiny generated datasets: scores, aggregation, writers, table, errors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from clips import make_clip
from helpers import cli, tiny_edvr
from rich.console import Console
from torchvision.io import decode_image, read_file, write_png

from vsrx.errors import ModelError, UsageError
from vsrx.evaluate.bicubic import bicubic_upscale, downscale_x4_uint8
from vsrx.evaluate.datasets import open_dataset
from vsrx.evaluate.metrics import frame_metrics
from vsrx.evaluate.runner import RowSpec, evaluate, render_table, write_csv, write_json

METRICS = ("psnr_y", "psnr_rgb", "ssim_y", "ssim_rgb")


def save(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), str(path))


def smooth(phase: float, size: int = 64) -> np.ndarray:
    """Low-frequency RGB sinusoids, uint8."""
    y, x = np.mgrid[0:size, 0:size] / size
    planes = [128 + 60 * np.sin(2 * np.pi * x + phase + c) * np.cos(np.pi * y + c) for c in range(3)]
    return np.stack(planes, -1).round().astype(np.uint8)


@pytest.fixture
def vid4_root(tmp_path) -> tuple[Path, dict[str, list[np.ndarray]]]:
    """Two clips of smooth 64x64 frames (2 and 3 frames) in the Vid4 layout."""
    gts = {"calendar": [smooth(0.0), smooth(0.3)], "city": [smooth(1.0), smooth(1.2), smooth(1.4)]}
    for clip, frames in gts.items():
        for i, frame in enumerate(frames):
            save(tmp_path / "vid4" / clip / f"{i:04d}.png", frame)
    return tmp_path / "vid4", gts


def test_bicubic_row_matches_direct_computation(vid4_root):
    root, gts = vid4_root
    result = evaluate(open_dataset("vid4", [root]), [])
    assert result["dataset"] == "vid4" and len(result["rows"]) == 1
    row = result["rows"][0]
    assert (row["model"], row["align"], row["offsets"], row["params"]) == ("bicubic", None, None, 0)
    for clip, frames in gts.items():
        expected = [frame_metrics(bicubic_upscale(downscale_x4_uint8(gt)), gt) for gt in frames]
        got = row["clips"][clip]
        assert [f["index"] for f in got["frames"]] == list(range(len(frames)))
        for m in METRICS:
            assert [f[m] for f in got["frames"]] == pytest.approx([e[m] for e in expected], abs=1e-12)
            assert got[m] == pytest.approx(np.mean([e[m] for e in expected]), abs=1e-12)
    for m in METRICS:
        assert row["average"][m] == pytest.approx((row["clips"]["calendar"][m] + row["clips"]["city"][m]) / 2)
    assert row["average"]["psnr_y"] > 35
    assert row["ms_per_frame"] > 0 and row["peak_mem_mb"] > 0


def test_identity_row_gives_inf_and_writers_keep_it(vid4_root, tmp_path):
    root, gts = vid4_root
    served = iter(gts.values())

    def oracle(lr):
        frames = next(served)
        assert len(frames) == len(lr)
        return frames

    spec = RowSpec("oracle", align="dcn", offsets=9, params=1234567)
    result = evaluate(open_dataset("vid4", [root]), [(spec, oracle)])
    row = result["rows"][1]
    assert row["model"] == "oracle" and row["average"]["psnr_rgb"] == math.inf
    assert row["average"]["ssim_y"] == pytest.approx(1.0) and row["clips"]["city"]["psnr_y"] == math.inf

    write_json(result, tmp_path / "out" / "result.json")
    text = (tmp_path / "out" / "result.json").read_text()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert data["rows"][1]["average"]["psnr_y"] == "inf"
    assert data["rows"][0]["average"]["psnr_y"] == pytest.approx(result["rows"][0]["average"]["psnr_y"])

    write_csv(result, tmp_path / "out" / "result.csv")
    with (tmp_path / "out" / "result.csv").open() as handle:
        lines = list(csv.DictReader(handle))
    assert len(lines) == 2 * 5
    assert lines[-1] == {
        "model": "oracle", "align": "dcn", "offsets": "9", "params": "1234567",
        "clip": "city", "frame": "2", "psnr_y": "inf", "psnr_rgb": "inf", "ssim_y": "1.0", "ssim_rgb": "1.0",
    }  # fmt: skip

    console = Console(record=True, width=200)
    console.print(render_table(result))
    out = console.export_text()
    assert "vid4" in out and "on Y" in out and "calendar" in out and "dcn" in out and "1.23M" in out
    assert "inf/1.0000" in out


def test_vimeo_scores_only_im4_and_stops_consuming_after_it(tmp_path):
    for i in range(7):
        save(tmp_path / "sequences" / "00001" / "0001" / f"im{i + 1}.png", smooth(0.1 * i, 32))
    calls = []

    def lazy(lr):
        for i, frame in enumerate(lr):
            calls.append(i)
            yield bicubic_upscale(frame)

    result = evaluate(open_dataset("vimeo90k-t", [tmp_path]), [(RowSpec("lazy"), lazy)], save_dir=tmp_path / "sr")
    bicubic, row = result["rows"]
    assert calls == [0, 1, 2, 3]
    assert [f["index"] for f in row["clips"]["00001/0001"]["frames"]] == [3]
    assert row["average"] == pytest.approx(bicubic["average"])
    saved = sorted(p.name for p in (tmp_path / "sr" / "lazy" / "00001" / "0001").iterdir())
    assert saved == [f"{i:08d}.png" for i in range(4)]
    png = decode_image(read_file(str(tmp_path / "sr" / "bicubic" / "00001" / "0001" / "00000003.png")))
    lr = downscale_x4_uint8(smooth(0.3, 32))
    np.testing.assert_array_equal(png.permute(1, 2, 0).numpy(), bicubic_upscale(lr))


def test_bad_sr_output_names_model_clip_and_frame(vid4_root):
    root, _ = vid4_root
    ds = open_dataset("vid4", [root])

    def small(lr):
        return (frame for frame in lr)

    with pytest.raises(ModelError, match=r"tiny: clip calendar: SR frame 0 is uint8 \(16, 16, 3\), expected"):
        evaluate(ds, [(RowSpec("tiny"), small)])
    with pytest.raises(ModelError, match=r"short: clip calendar: 1 SR frames for 2 LR frames"):
        evaluate(ds, [(RowSpec("short"), lambda lr: [bicubic_upscale(lr[0])])])
    with pytest.raises(UsageError, match="both labelled 'bicubic'"):
        evaluate(ds, [(RowSpec("bicubic"), small)])


def test_video_dataset_end_to_end(tmp_path):
    path = make_clip(tmp_path / "clip.mp4", frames=2, size=(32, 24))
    result = evaluate(open_dataset("video", [path]), [], crop_border=2)
    row = result["rows"][0]
    assert list(row["clips"]) == ["clip"] and len(row["clips"]["clip"]["frames"]) == 2
    assert all(math.isfinite(row["average"][m]) for m in METRICS)


def test_eval_cli_runs_models_and_modes_into_one_table(vid4_root, tmp_path):
    """`vsrx eval` with a dcn model run as dcn and as decomp-9: same scores, stable JSON schema."""
    from vsrx.models import save_model

    root, _ = vid4_root
    weights = save_model(tiny_edvr("dcn", 9), tmp_path / "tiny.safetensors")
    out = tmp_path / "r.json"
    result = cli("eval", "--dataset", "vid4", "--root", root, "--model", weights, "--align", "dcn", "--align", "decomp",
                 "--offsets", "9", "--json", out, "--csv", tmp_path / "r.csv")
    assert result.exit_code == 0, result.output
    assert "bicubic" in result.output and "tiny.safet" in result.output
    data = json.loads(out.read_text())
    assert data["dataset"] == "vid4" and [r["model"] for r in data["rows"]] == ["bicubic", "tiny.safetensors", "tiny.safetensors"]
    dcn, decomp = data["rows"][1], data["rows"][2]
    assert (dcn["align"], decomp["align"], decomp["offsets"]) == ("dcn", "decomp", 9)
    for row in data["rows"]:
        assert set(row["average"]) == set(METRICS) and "ms_per_frame" in row and sorted(row["clips"]) == ["calendar", "city"]
        for clip in row["clips"].values():
            assert set(METRICS) <= set(clip) and clip["frames"]
    for clip in dcn["clips"]:
        assert dcn["clips"][clip]["psnr_y"] == pytest.approx(decomp["clips"][clip]["psnr_y"], abs=0.01)


def test_eval_cli_self_ensemble_row_is_labelled_and_scored_apart(vid4_root, tmp_path, model_path):
    root, _ = vid4_root
    out = {}
    for name, extra in (("plain", []), ("x8", ["--self-ensemble"])):
        result = cli("eval", "--dataset", "vid4", "--root", root, "--model", model_path, "--precision", "fp32",
                     "--json", tmp_path / f"{name}.json", *extra)
        assert result.exit_code == 0, result.output
        out[name] = json.loads((tmp_path / f"{name}.json").read_text())["rows"][1]
    assert (out["plain"]["model"], out["x8"]["model"]) == ("tiny.safetensors", "tiny.safetensors+x8")
    assert out["x8"]["average"]["psnr_y"] != out["plain"]["average"]["psnr_y"]


def test_eval_cli_bad_root_is_one_line(tmp_path):
    result = cli("eval", "--dataset", "vid4", "--root", tmp_path / "missing", "--bicubic-only")
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and "missing" in result.output
