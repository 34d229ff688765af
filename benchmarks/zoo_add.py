"""Measure a trained model on the held-out sets and register it in vsrx/weights/manifest.json.

    python benchmarks/zoo_add.py runs/decomp5 --name edvr-s-decomp5 --family edvr-s --default \
        --data ../shared/data --hardware "2-core CPU" --notes "..."

Held-out sets (never trained on): the four DAVIS clips of heldout/davis (854x480 camera footage,
every frame, the Vid4 protocol; the main yardstick), the Vimeo-90K septuplets sequences/00002/*
(Vimeo-90K-T protocol: im4 scored) and bikes.mp4 (all frames). All are x4 with MATLAB-bicubic LR,
scored next to bicubic on Y and RGB. The weights are copied to vsrx/weights/<name>-<sha256[:8]>.safetensors
(the zoo folder, `vsrx.models.zoo.WEIGHTS_DIR`: package data that wheels carry; VSRX_WEIGHTS overrides).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from vsrx.evaluate.datasets import open_dataset
from vsrx.evaluate.runner import evaluate, model_rows
from vsrx.models import load_model, zoo
from vsrx.models.spynet import SpyNet
from vsrx.models.weights import read_metadata


def held_out_scores(weights: Path, data: Path) -> dict:
    """{set: {psnr_y, psnr_rgb, bicubic_psnr_y, bicubic_psnr_rgb, ssim_y, ms_per_frame}}."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "sequences").mkdir()
        (root / "sequences" / "00002").symlink_to((data / "vimeo90k_sample" / "sequences" / "00002").resolve())
        names = sorted(p.name for p in (root / "sequences" / "00002").iterdir())
        (root / "sep_testlist.txt").write_text("".join(f"00002/{n}\n" for n in names))
        sets = {"davis": open_dataset("vid4", [data / "heldout" / "davis"]),
                "vimeo90k_00002": open_dataset("vimeo90k-t", [root]), "bikes": open_dataset("video", [data / "bikes.mp4"])}
        scores = {}
        for key, dataset in sets.items():
            result = evaluate(dataset, model_rows((str(weights),), (), (), "cpu", "fp32", 1, "reflection_circle", None))
            bic, row = result["rows"][0]["average"], result["rows"][1]
            scores[key] = {"psnr_y": row["average"]["psnr_y"], "psnr_rgb": row["average"]["psnr_rgb"],
                           "ssim_y": row["average"]["ssim_y"], "bicubic_psnr_y": bic["psnr_y"],
                           "bicubic_psnr_rgb": bic["psnr_rgb"], "ms_per_frame": row["ms_per_frame"]}
            print(f"{key}: {scores[key]['psnr_y']:.3f} dB Y vs bicubic {bic['psnr_y']:.3f} "
                  f"({scores[key]['psnr_y'] - bic['psnr_y']:+.3f})", flush=True)
    return scores


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a `vsrx train --out` directory (or a .safetensors file, e.g. a checkpoint's)")
    p.add_argument("--name", required=True)
    p.add_argument("--family", default="", help="EDVR family name, e.g. edvr-s (a name --model accepts with --align)")
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--default", action="store_true", help="make this the default model of `vsrx upscale`")
    p.add_argument("--hardware", default="")
    p.add_argument("--wall-time", default="", help="training wall time, e.g. '1.6 h'")
    p.add_argument("--notes", default="")
    args = p.parse_args()
    weights = args.run if args.run.is_file() else args.run / "model.safetensors"
    model = load_model(weights)
    log = [json.loads(line) for line in (args.run / "metrics.jsonl").read_text().splitlines()] if args.run.is_dir() else []
    train_cfg = json.loads((args.run / "config.json").read_text()) if args.run.is_dir() else {}
    # The step: from the weights' metadata, else a checkpoint folder's name (ckpt/step_00004500), else the log's last.
    named = weights.parent.name.removeprefix("step_")
    steps = int(read_metadata(weights).get("vsrx.step") or (named if named.isdigit() else max((e["step"] for e in log), default=0)))
    log = [e for e in log if e["step"] <= steps]
    recipe = {"hardware": args.hardware, "wall_time": args.wall_time, "trained_steps": steps}
    if isinstance(model, SpyNet):
        recipe |= {k: train_cfg.get(k) for k in ("dataset", "iters", "batch", "patch", "lr", "max_motion", "seed")}
        val = [e["val"] for e in log if "val" in e]
        metrics = {"synthetic_val": {"epe": val[-1]["epe"], "zero_flow_epe": val[-1]["zero_epe"]}} if val else {}
        entry = {"arch": "spynet"}
    else:
        recipe |= {k: train_cfg.get(k) for k in ("dataset", "exclude", "synthetic_fraction", "iters", "restarts", "batch",
                                                 "patch", "lr", "offset_fidelity", "fidelity_threshold", "flow", "seed")}
        recipe |= {k: train_cfg.get(k) for k in ("root", "init_from", "ema", "warmup", "preset")}
        recipe["max_mean_abs_offset"] = max((max(e["offset_mean"].values()) for e in log if "offset_mean" in e), default=None)
        cfg = model.config
        metrics = held_out_scores(weights, args.data)
        entry = {"family": args.family, "arch": "edvr", "align": cfg.align, "offsets": cfg.offsets, "groups": cfg.groups,
                 "frames": cfg.num_frame, "config": json.loads(cfg.to_json())}
    digest = zoo.sha256(weights)
    filename = f"{args.name}-{digest[:8]}.safetensors"
    zoo.WEIGHTS_DIR.mkdir(exist_ok=True)
    shutil.copyfile(weights, zoo.WEIGHTS_DIR / filename)
    manifest_path = zoo.WEIGHTS_DIR / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"default": None, "models": {}}
    old = manifest["models"].get(args.name)
    if old and old["file"] != filename:
        (zoo.WEIGHTS_DIR / old["file"]).unlink(missing_ok=True)
    manifest["models"][args.name] = {
        "file": filename, "sha256": digest, **entry, "params": sum(p.numel() for p in model.parameters()),
        "file_size": (zoo.WEIGHTS_DIR / filename).stat().st_size, "recipe": recipe, "metrics": metrics, "notes": args.notes,
    }
    if args.default:
        manifest["default"] = args.name
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"registered {args.name} -> {zoo.WEIGHTS_DIR / filename}")


if __name__ == "__main__":
    main()
