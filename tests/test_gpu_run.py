"""benchmarks/gpu_run.py --dry-run, as the GPU machine would run it (no PyAV), so the prepared
GPU run cannot rot: every stage runs its real code paths at tiny sizes and reports."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile

import pytest
from helpers import ROOT, child_env

from vsrx.models import load_model

pytestmark = pytest.mark.slow  # one dry run of the whole kit: minutes on 2 cores


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_run")
    site = tmp / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['av'] = None  # as on the GPU machine\n")
    env = child_env(site)
    out = tmp / "out"
    proc = subprocess.run([sys.executable, "benchmarks/gpu_run.py", "--out", str(out), "--work", str(tmp / "work"),
                           "--pack", str(tmp / "no-pack"), "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "report.json").read_text()), out, proc.stdout


def test_every_stage_ran_and_passed(dry_run):
    report, _, stdout = dry_run
    stages = report["stages"]
    assert list(stages) == ["env", "correctness", "speed", "train", "after_train"]
    for name, stage in stages.items():
        assert stage["status"] in ("ok", "skipped"), (name, json.dumps(stage)[:2000])
        assert stage["seconds"] > 0
    assert report["kit"]["dry_run"] and "returned:" in stdout


def test_env_and_pack(dry_run):
    checks = dry_run[0]["stages"]["env"]["checks"]
    env = checks["env"]
    assert env["av"].startswith("not importable") and env["torch"] and env["cpus"] >= 1
    assert env["gpu"] == "skipped: no CUDA" or env["gpu"]["memory_gib"] > 0
    assert checks["pack"]["synthetic"] and checks["pack"]["frames"] == 20


def test_correctness_checks(dry_run):
    c = dry_run[0]["stages"]["correctness"]["checks"]
    assert set(c) == {"cuda_tests", "bicubic", "fused", "precision", "oom_retry", "upscale_cli"}
    assert c["cuda_tests"]["tests"] and all(not t.startswith(("failure", "error")) for t in c["cuda_tests"]["tests"].values())
    assert c["bicubic"]["float32_vs_float64"] < 1e-5
    assert all(r["max_diff"] <= 1 and r["frames"][0] == r["frames"][1] > 0 for r in c["fused"]["results"].values())
    assert set(c["precision"]["results"]) == {"dcn", "decomp-5", "decomp-9", "flow"}
    for mode in c["precision"]["results"].values():
        assert mode["bf16"]["psnr"] == "inf" or mode["bf16"]["psnr"] > 25
        assert mode["fp16"] == "skipped: no CUDA" or mode["fp16"]["max_diff"] <= 1
    oom = c["oom_retry"]
    assert oom["frames_in"] == oom["frames_uncapped"] == 3
    if oom.get("retry") == "skipped: no CUDA":  # on CPU: the tiled path against the untiled one
        assert oom["tiled_vs_untiled"]["frames"] == [3, 3]
    else:
        assert oom["frames_capped"] == 3 and oom["capped_vs_uncapped"]["frames"] == [3, 3]
    cli = c["upscale_cli"]
    assert cli["frames"]["exit_code"] == 0 and cli["frames"]["files"] == 3 and cli["frames"]["size_4x"]
    assert cli["video"] == "skipped: PyAV not importable"


def test_speed_rows_sit_next_to_their_references(dry_run):
    s = dry_run[0]["stages"]["speed"]["checks"]
    for preset in ("bench_edvr_m", "bench_edvr_s"):
        rows = s[preset]["rows"]
        assert any(r["reference"] for r in rows) and any(not r["reference"] for r in rows)
        assert all(r["fps"] > 0 and r["speedup"] > 0 for r in rows)
    e2e = [r for r in s["bench_edvr_s"]["rows"] if r["end_to_end"]]
    assert e2e and all(r["io"] == "frames" for r in e2e)  # no PyAV: frame folders in and out
    assert {r["method"] for r in s["bench_fused"]["rows"]} >= {"unfused", "torchvision"}
    onnx = s["onnx"]  # no GPU provider here: the CPU provider stands in, through the same code
    assert onnx["status"] == "ok" and [r["provider"] for r in onnx["rows"]] == ["CPUExecutionProvider"]
    assert onnx["rows"][0]["ms_per_window"] > 0 and onnx["rows"][0]["max_diff_grey_levels"] < 0.1


def test_train_ran_twice_with_resume_and_returned_weights(dry_run):
    report, out, _ = dry_run
    runs = report["stages"]["train"]["runs"]
    assert set(runs) == {"edvr-s-decomp5", "edvr-m-decomp5"}
    for run in runs.values():
        first, second = run["phases"]
        assert first["exit_code"] == second["exit_code"] == 0
        assert "--time-limit" in first["command"] and "--resume" in second["command"]
        assert second["steps_end"] > first["checkpoint_step"] >= 1
    returned = [r["file"] for r in report["returned"]]
    assert len(returned) <= 8 and {"report.json", "gpu_run.log", "edvr-s-decomp5.tar", "edvr-m-decomp5.tar"} <= set(returned)
    for name in returned:
        assert (out / name).stat().st_size < 16 * 2**20
    with tarfile.open(out / "edvr-s-decomp5.tar") as t:
        names = t.getnames()
        assert "edvr-s-decomp5/metrics.jsonl" in names and any(n.endswith("state.pt") for n in names)
        t.extractall(out / "x", filter="data")
    model = load_model(out / "x" / "edvr-s-decomp5" / "model.safetensors")
    assert model.config.mode_name == "decomp-5"
    trained = report["stages"]["after_train"]["checks"]["trained_precision"]["results"]
    assert set(trained) == set(runs)
