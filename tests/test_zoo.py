"""The model zoo: names and families, sha256 checks, `vsrx models`, default model resolution."""

import json
from pathlib import Path

import pytest
from helpers import cli, tiny_edvr

from vsrx.errors import ModelError
from vsrx.models import load_model, save_model, zoo


@pytest.fixture
def fake_zoo(tmp_path, monkeypatch):
    models = {}
    for name, align, offsets, groups in (("t-decomp5", "decomp", 5, 2), ("t-dcn", "dcn", 9, 2), ("t-flow", "flow", 1, 1)):
        path = save_model(tiny_edvr(align, offsets, groups=groups), tmp_path / f"{name}.safetensors")
        models[name] = {"file": path.name, "sha256": zoo.sha256(path), "family": "tiny", "arch": "edvr", "align": align,
                        "offsets": offsets, "groups": groups, "frames": 3, "params": 1,
                        "metrics": {"vimeo90k_00002": {"psnr_y": 31.5, "bicubic_psnr_y": 30.0}}}
    (tmp_path / "manifest.json").write_text(json.dumps({"default": "t-decomp5", "models": models}))
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", tmp_path)
    zoo.manifest.cache_clear()
    yield tmp_path
    zoo.manifest.cache_clear()


def test_names_families_and_modes(fake_zoo):
    assert load_model("t-flow").config.mode_name == "flow"
    assert load_model("tiny").config.mode_name == "decomp-5"  # a family defaults to its decomp variant
    assert load_model("tiny", align="flow").config.mode_name == "flow"
    assert load_model("tiny", align="decomp", offsets=9).config.mode_name == "decomp-9"  # the dcn model, converted
    with pytest.raises(ModelError, match="no decomp-3 variant; available: --align decomp --offsets 5, --align dcn, --align flow"):
        load_model("tiny", align="decomp", offsets=3)
    with pytest.raises(ModelError, match="unknown model 'nope'|no weights file or zoo model named 'nope'"):
        load_model("nope")
    assert zoo.default_name() == "t-decomp5"


def test_corrupt_and_missing_files_are_refused(fake_zoo):
    path = fake_zoo / "t-dcn.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="corrupt"):
        load_model("t-dcn")
    (fake_zoo / "t-flow.safetensors").unlink()
    with pytest.raises(ModelError, match="missing"):
        load_model("t-flow")


def test_models_command_table_and_json(fake_zoo):
    (fake_zoo / "t-flow.safetensors").unlink()
    result = cli("models")
    assert result.exit_code == 0, result.output
    assert "t-decomp5 (default)" in result.output and "+1.50 dB" in result.output and "MISSING" in result.output
    data = json.loads(cli("models", "--json").output)
    assert data["default"] == "t-decomp5" and data["models"]["t-flow"]["present"] is False
    assert data["models"]["t-dcn"]["present"] is True


def test_upscale_uses_the_default_model(fake_zoo, tmp_path):
    from clips import make_frame_folder

    src = make_frame_folder(tmp_path / "in", frames=3, size=(12, 8))
    result = cli("upscale", src, tmp_path / "out", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["model"] == "t-decomp5" and summary["mode"] == "decomp-5" and summary["frames"] == 3
    result = cli("upscale", src, tmp_path / "out2", "--align", "flow", "--json")
    assert json.loads(result.output)["mode"] == "flow"


def test_zoo_is_package_data_and_listing_it_needs_no_torch(tmp_path):
    """The bundled weights live inside the package (what a wheel carries), VSRX_WEIGHTS points
    elsewhere, and `vsrx models` answers without importing torch (a fast start)."""
    import os
    import subprocess
    import sys

    code = ("import json, sys; from vsrx.cli import main; from vsrx.models import zoo; "
            "main(['models', '--json'], standalone_mode=False); "
            "print(json.dumps({'dir': str(zoo.WEIGHTS_DIR), 'torch': 'torch' in sys.modules}))")
    env = {k: v for k, v in os.environ.items() if k != "VSRX_WEIGHTS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    listing, last = json.loads(out[: out.rindex("\n{")]), json.loads(out.splitlines()[-1])
    import vsrx

    assert last == {"dir": str(Path(vsrx.__file__).parent / "weights"), "torch": False}
    assert listing["default"] in listing["models"] and all(e["present"] for e in listing["models"].values())
    out = subprocess.run([sys.executable, "-c", code], env={**env, "VSRX_WEIGHTS": str(tmp_path)}, capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out.splitlines()[-1])["dir"] == str(tmp_path)
