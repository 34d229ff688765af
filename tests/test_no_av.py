"""Without PyAV: `import vsrx`, the models, training data and frame-folder upscaling still work
(the GPU machine has no PyAV); a video path fails with one line saying to install it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import child_env

from vsrx.io.images import read_image, write_png
from vsrx.models import build_model, save_model

_CHILD = r"""
import contextlib, io, json, sys
sys.modules["av"] = None  # `import av` now raises ImportError, as where PyAV is not installed
import vsrx, vsrx.pipeline, vsrx.train.trainer, vsrx.evaluate.runner
from vsrx.cli import main
from vsrx.train.data import load_clips

def run(args):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            main(args, prog_name="vsrx", standalone_mode=False)
            code = 0
        except SystemExit as exit:
            code = exit.code
    return {"code": code, "stderr": err.getvalue()}

src, dst, model, video = sys.argv[1:5]
out = {"upscale": run(["upscale", src, dst, "--model", model, "--device", "cpu", "--quiet"]),
       "video": run(["upscale", video, dst + "2", "--model", model, "--device", "cpu", "--quiet"]),
       "to_video": run(["upscale", src, dst + ".mp4", "--model", model, "--device", "cpu", "--quiet"]),
       "clips": [len(c) for c in load_clips("videos", src)]}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_frame_folder_upscale_and_training_data_without_pyav(tmp_path):
    src = tmp_path / "frames"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        write_png(src / f"{i:03d}.png", rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    model = save_model(build_model("edvr-s", "decomp", 3, num_frame=3), tmp_path / "m.safetensors")
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not needed: the error comes first")
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(src), str(tmp_path / "out"), str(model), str(video)],
                          env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["upscale"]["code"] == 0, out["upscale"]["stderr"]
    frames = sorted((tmp_path / "out").iterdir())
    assert [f.name for f in frames] == [f"{i:08d}.png" for i in range(4)]
    assert read_image(frames[0]).shape == (48, 64, 3)
    for key, what in (("video", "reading"), ("to_video", "writing")):
        lines = out[key]["stderr"].strip().splitlines()
        assert out[key]["code"] == 1 and len(lines) == 1, out[key]
        assert what in lines[0] and "needs PyAV" in lines[0] and "pip install av" in lines[0]
    assert not (tmp_path / "out.mp4").exists() and not (tmp_path / "out2").exists()
    assert out["clips"] == [4]
