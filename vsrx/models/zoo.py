"""Named pretrained models: the manifest in weights/manifest.json, sha256-checked on load."""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

from vsrx.errors import ModelError

WEIGHTS_DIR = Path(os.environ.get("VSRX_WEIGHTS", Path(__file__).resolve().parents[2] / "weights"))


@lru_cache(maxsize=1)
def manifest() -> dict:
    """The zoo manifest: {"models": {name: entry}}; empty when no weights are bundled."""
    path = WEIGHTS_DIR / "manifest.json"
    if not path.is_file():
        return {"models": {}}
    return json.loads(path.read_text())


def names() -> list[str]:
    return list(manifest()["models"])


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve(name: str, align: str | None = None, offsets: int | None = None) -> Path:
    """The checked weights file of a zoo model."""
    entry = manifest()["models"].get(name)
    if entry is None:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(names()) or 'none bundled'}")
    path = WEIGHTS_DIR / entry["file"]
    if not path.is_file():
        raise ModelError(f"weights of {name} missing: {path}")
    if sha256(path) != entry["sha256"]:
        raise ModelError(f"weights of {name} are corrupt (sha256 mismatch): {path}")
    return path
