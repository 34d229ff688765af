"""Named pretrained models: vsrx/weights/manifest.json lists each file with its sha256, config,
training recipe and measured quality; files are checked against their sha256 on load.

The weights are package data, found with importlib.resources wherever vsrx is installed (a
wheel carries them); the VSRX_WEIGHTS environment variable points at another folder instead.

A name is either a model's own name (``edvr-s-decomp5``) or its family (``edvr-s``); a family
with ``align``/``offsets`` picks the matching variant. dcn models also run as decomp-9.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path

from vsrx.errors import ModelError

WEIGHTS_DIR = Path(os.environ.get("VSRX_WEIGHTS") or str(resources.files("vsrx") / "weights"))


@lru_cache(maxsize=1)
def manifest() -> dict:
    """{"default": name | None, "models": {name: entry}}; empty when no weights are bundled."""
    path = WEIGHTS_DIR / "manifest.json"
    if not path.is_file():
        return {"default": None, "models": {}}
    return json.loads(path.read_text())


def names() -> list[str]:
    models = manifest()["models"]
    return [*models, *sorted({e["family"] for e in models.values() if "family" in e})]


def default_name() -> str:
    name = manifest().get("default")
    if not name:
        raise ModelError(f"no default model is bundled ({WEIGHTS_DIR} has no manifest default); pass --model PATH to a .safetensors file")
    return name


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def mode_of(entry: dict) -> str:
    return f"decomp-{entry['offsets']}" if entry["align"] == "decomp" else entry["align"]


def pick(name: str, align: str | None = None, offsets: int | None = None) -> tuple[str, dict]:
    """The zoo entry for a model name, or for a family plus alignment mode."""
    models = manifest()["models"]
    if name in models:
        return name, models[name]
    family = {n: e for n, e in models.items() if e.get("family") == name}
    if not family:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(names()) or 'none bundled'}")
    wanted = align or "decomp"
    for n, e in family.items():
        if e["align"] == wanted and (offsets is None or e["offsets"] == offsets):
            return n, e
    if wanted == "decomp" and offsets in (None, 9):
        dcn = [(n, e) for n, e in family.items() if e["align"] == "dcn"]
        if dcn:
            return dcn[0]
    asked = f"decomp-{offsets}" if wanted == "decomp" and offsets else wanted
    available = ", ".join(f"--align {e['align']}" + (f" --offsets {e['offsets']}" if e["align"] == "decomp" else "") for e in family.values())
    raise ModelError(f"{name} has no {asked} variant; available: {available}")


def resolve(name: str, align: str | None = None, offsets: int | None = None) -> Path:
    """The sha256-checked weights file of a zoo model (by name, or family plus mode)."""
    chosen, entry = pick(name, align, offsets)
    path = WEIGHTS_DIR / entry["file"]
    if not path.is_file():
        raise ModelError(f"weights of {chosen} are missing: {path}")
    if sha256(path) != entry["sha256"]:
        raise ModelError(f"weights of {chosen} are corrupt (sha256 mismatch): {path}")
    return path
