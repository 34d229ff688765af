"""`vsrx viz-offsets`: offsets of a model built to warp by a known translation, on a clip that
translates by it; the files, summary and HTML page it writes; its error messages."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
import torch
from helpers import cli, tiny_edvr
from torchvision.io import decode_png, read_file, write_png

from vsrx.models import save_model
from vsrx.models.edvr import EDVR
from vsrx.models.spynet import SpyNet
from vsrx.ops.warp import flow_warp
from vsrx.viz.capture import LEVEL_SCALE, LEVELS, capture_window, offsets_px, warped_per_offset
from vsrx.viz.report import visualise

D = (2.0, -1.0)  # (dy, dx): frame t+1 sampled at p + D is frame t
H, W = 30, 42  # not multiples of 4: the model pads, the report crops back
FRAMES = 5


def translating_model(d: tuple[float, float] = D) -> EDVR:
    """A flow-mode EDVR whose every aligner samples the neighbour at p + d (in input pixels)."""
    model = tiny_edvr("flow", 1)
    for level, name in (("l3", "dcn_pack.l3"), ("l2", "dcn_pack.l2"), ("l1", "dcn_pack.l1"), ("cascade", "cas_dcnpack")):
        conv = model.pcd_align.get_submodule(name).conv_offset
        with torch.no_grad():
            conv.weight.zero_()
            conv.bias.copy_(torch.tensor(d) / LEVEL_SCALE[level])  # level pixels
    return model.eval()


def translating_clip() -> torch.Tensor:
    """(FRAMES, 3, H, W) uint8 with frame t(p) = texture(p - t * D): frame t+1 at p + D is frame t."""
    torch.manual_seed(1)
    texture = torch.nn.functional.interpolate(torch.rand(1, 3, 24, 32), size=(H + 20, W + 20), mode="bilinear")[0]
    texture = (texture * 255).round().to(torch.uint8)
    dy, dx = int(D[0]), int(D[1])
    return torch.stack([texture[:, 8 - t * dy + 2: 8 - t * dy + 2 + H, 8 - t * dx: 8 - t * dx + W] for t in range(FRAMES)])


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("viz")
    clip = root / "clip"
    clip.mkdir()
    for t, frame in enumerate(translating_clip()):
        write_png(frame, str(clip / f"f{t:03d}.png"))
    spynet = SpyNet()
    for p in spynet.parameters():
        torch.nn.init.zeros_(p)  # a SPyNet that sees no motion anywhere: flow exactly 0
    decomp = tiny_edvr("decomp", 3, with_tsa=True)
    for a in decomp.aligners().values():
        torch.nn.init.normal_(a.conv_offset.weight, std=0.05)
    return {
        "root": root, "clip": clip,
        "flow_model": save_model(translating_model(), root / "flow.safetensors"),
        "decomp_model": save_model(decomp, root / "decomp.safetensors"),
        "spynet": save_model(spynet, root / "spynet.safetensors"),
    }


def run(*args):
    return cli("viz-offsets", *args)


def test_offsets_match_known_translation(tmp_path):
    model = translating_model()
    frames = translating_clip()[1:4].float() / 255  # window around clip frame 2
    cap = capture_window(model, frames, [0, 2], LEVELS)
    for level in LEVELS:
        for slot in (0, 2):
            off = offsets_px(cap, level, slot)
            assert off.shape[:3] == (1, 1, 2) and off.shape[-2:] == (math.ceil(H / LEVEL_SCALE[level]), math.ceil(W / LEVEL_SCALE[level]))
            assert torch.allclose(off[0, 0, 0], torch.full_like(off[0, 0, 0], D[0]), atol=1e-5), level
            assert torch.allclose(off[0, 0, 1], torch.full_like(off[0, 0, 1], D[1]), atol=1e-5), level
    # The recorded offsets point where the clip moved: frame c+1 warped by the l1 offset is frame c ...
    off = offsets_px(cap, "l1", 2)[0, 0]
    m = 6
    warped = flow_warp(frames[2:3], off[None])[0]
    assert torch.allclose(warped[:, m:-m, m:-m], frames[1, :, m:-m, m:-m], atol=1e-5)
    # ... and the features the aligner warps by it match the centre's features away from the border.
    aligned = warped_per_offset(cap, "l1", 2)[0]
    ref = cap.levels["l1"].inputs[cap.row(1)][:, :H, :W]
    assert torch.allclose(aligned[:, m:-m, m:-m], ref[:, m:-m, m:-m], atol=1e-4)
    assert not torch.allclose(cap.levels["l1"].inputs[cap.row(2)][:, m:H - m, m:W - m], ref[:, m:-m, m:-m], atol=1e-2)

    flows = {j: torch.tensor(D).view(2, 1, 1).expand(2, H, W) * j for j in (-1, 0, 1)}
    summary = visualise(model, frames, tmp_path, neighbours=[-1, 0, 1], levels=LEVELS, flows=flows)
    norm = math.hypot(*D)
    results = {(r["level"], r["neighbour"]): r for r in summary["results"]}
    assert len(results) == 12
    for level in LEVELS:
        right, wrong, centre = results[level, 1], results[level, -1], results[level, 0]
        assert right["within_1px"] == 1.0 and right["mean_distance"] < 1e-5
        assert right["mean_abs_offset"] == pytest.approx(norm, abs=1e-5)
        assert wrong["within_1px"] == 0.0 and wrong["mean_distance"] == pytest.approx(2 * norm, abs=1e-5)
        assert centre["within_1px"] == 0.0 and centre["mean_distance"] == pytest.approx(norm, abs=1e-5)
        assert right["mask"] is None and right["diversity"] == 0.0 and not right["overflow"]
        assert "mask" not in right["files"]


def html_refs(page: str) -> list[str]:
    return re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page)


def check_report(out: Path) -> dict:
    """Every PNG decodes, every file named exists, the HTML references exactly existing local files,
    and the summary's numbers agree with its CSVs."""
    summary = json.loads((out / "summary.json").read_text())
    pngs = sorted(out.glob("*.png"))
    for png in pngs:
        image = decode_png(read_file(str(png)))
        assert image.shape[0] == 3 and image.shape[1] > 8 and image.shape[2] > 8, png
    page = (out / "index.html").read_text()
    refs = html_refs(page)
    assert refs and all((out / ref).is_file() for ref in refs), refs
    assert not any(re.match(r"[a-z]+:", ref) or ref.startswith("/") for ref in refs)
    assert "<script" not in page and "http" not in page
    assert {p.name for p in pngs} <= set(refs)  # every picture is shown
    for key in ("mode", "groups", "offsets", "num_frame", "levels", "neighbours", "frame", "window", "results"):
        assert key in summary
    assert len(summary["results"]) == len(summary["levels"]) * len(summary["neighbours"])
    for r in summary["results"]:
        for key in ("mean_abs_offset", "diversity", "within_1px", "mask", "overflow", "offset_absmean", "frame"):
            assert key in r
        assert r["frame"] == summary["window"][summary["center_slot"] + r["neighbour"]]
        assert all((out / name).is_file() for name in r["files"].values())
        assert r["files"]["offsets"] in refs and r["files"]["diversity"] in refs and r["files"]["features"] in refs
        h, w = r["size"]
        with open(out / r["files"]["distance_csv"]) as f:
            rows = list(csv.DictReader(f))
        counts = [int(row["count"]) for row in rows]
        assert sum(counts) == r["num_offsets"] * h * w
        below = sum(c for c, row in zip(counts, rows) if float(row["distance_hi_px"]) <= 1.0)
        assert below / sum(counts) == pytest.approx(r["within_1px"], abs=1e-9)
        if r["mask"] is not None:
            weighted = sum(c * float(row["mask_mean"]) for c, row in zip(counts, rows) if c)
            assert weighted / sum(counts) == pytest.approx(r["mask"]["mean"], rel=1e-4)
            assert r["mask"]["min"] <= r["mask"]["mean"] <= r["mask"]["max"]
    return summary


def test_cli_flow_model(files):
    out = files["root"] / "out_flow"
    result = run(files["clip"], "--model", files["flow_model"], "--out", out, "--frame", 2, "--level", "l1",
                 "--level", "l2", "--flow", "spynet", "--spynet", files["spynet"])
    assert result.exit_code == 0, result.output
    summary = check_report(out)
    assert summary["frame"] == 2 and summary["window"] == [1, 2, 3] and summary["flow"] == "spynet"
    assert summary["neighbours"] == [-1, 1] and summary["levels"] == ["l1", "l2"]
    for r in summary["results"]:  # the reference flow is 0 and every offset is D
        assert r["flow_mean"] == 0.0 and r["within_1px"] == 0.0
        assert r["mean_distance"] == pytest.approx(math.hypot(*D), abs=1e-5)
        assert r["size"] == [math.ceil(H / r["scale"]), math.ceil(W / r["scale"])]
    assert "within 1 px of flow 0.0%" in result.output


def test_cli_decomp_model(files):
    out = files["root"] / "out_decomp"
    result = run(files["clip"], "--model", files["decomp_model"], "--out", out, "--neighbor", -1,
                 "--spynet", files["spynet"], "--groups-mean", "--features", "mean")
    assert result.exit_code == 0, result.output
    summary = check_report(out)
    assert summary["frame"] == FRAMES // 2 and summary["levels"] == ["l1", "cascade"] and summary["neighbours"] == [-1]
    for r in summary["results"]:
        assert r["num_offsets"] == 6 and len(r["order"]) == 3 and r["order"][0]["group"] is None
        assert r["diversity"] > 0 and 0 < r["mask"]["mean"] < 1 and "mask" in r["files"]
        dists = [o["l1_distance"] for o in r["order"]]
        assert dists == sorted(dists)


def test_cli_errors(files, monkeypatch):
    args = ("--model", files["flow_model"], "--out", files["root"] / "err")
    cases = [
        ((files["root"] / "missing.mp4", *args), 1, "no such file"),
        ((files["clip"], *args, "--frame", 5), 2, "out of range"),
        ((files["clip"], *args, "--neighbor", 2), 2, "outside the model's 3-frame window"),
        ((files["clip"], "--model", files["spynet"], "--out", files["root"] / "err"), 1, "no alignment offsets"),
        ((files["clip"], "--model", files["root"] / "nope.safetensors", "--out", files["root"] / "err"), 1, "nope.safetensors"),
    ]
    for call, code, text in cases:
        result = run(*call)
        assert result.exit_code == code and text in result.output, (call, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output
    from vsrx.models import zoo

    monkeypatch.setattr(zoo, "names", lambda: [])
    result = run(files["clip"], *args, "--flow", "spynet")
    assert result.exit_code == 1 and "--flow none" in result.output and "--spynet" in result.output
    assert not (files["root"] / "err").exists()
