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
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from vsrx.errors import ModelError
from vsrx.models.config import Alignment

WEIGHTS_DIR = Path(os.environ.get("VSRX_WEIGHTS") or str(resources.files("vsrx") / "weights"))


@dataclass(frozen=True)
class ZooModel:
    """One pretrained model of the manifest. ``meta`` is its whole manifest entry (recipe, measured
    ``metrics``, ``notes``, ...), as torchvision's weights carry theirs; the fields are what code reads."""

    name: str
    file: str
    sha256: str
    arch: str
    params: int
    family: str | None = None
    alignment: Alignment | None = None  # EDVR models only
    frames: int | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_entry(cls, name: str, entry: dict[str, Any]) -> ZooModel:
        """A manifest entry ({"file", "sha256", "arch", "params", "family", "align", "offsets", ...})."""
        alignment = Alignment(entry["align"], entry["offsets"], entry.get("groups")) if "align" in entry else None
        return cls(name, entry["file"], entry["sha256"], entry.get("arch", "-"), entry["params"], entry.get("family"),
                   alignment, entry.get("frames"), entry)

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / self.file

    @property
    def present(self) -> bool:
        return self.path.is_file()

    def psnr_gain(self, dataset: str) -> float | None:
        """Measured Y PSNR over bicubic in dB on a manifest metrics key (e.g. "davis"); None if not measured."""
        m = self.meta.get("metrics", {}).get(dataset)
        return m["psnr_y"] - m["bicubic_psnr_y"] if m else None

    def verified_path(self) -> Path:
        """The weights file, checked against its sha256."""
        if not self.present:
            raise ModelError(f"weights of {self.name} are missing: {self.path}")
        if sha256(self.path) != self.sha256:
            raise ModelError(f"weights of {self.name} are corrupt (sha256 mismatch): {self.path}")
        return self.path


@dataclass(frozen=True)
class Manifest:
    """vsrx/weights/manifest.json: the default model's name and every model by name."""

    default: str | None
    models: dict[str, ZooModel]

    def to_json(self) -> dict[str, Any]:
        """As the manifest file stores it, with each model's "present"."""
        return {"default": self.default, "models": {n: {**m.meta, "present": m.present} for n, m in self.models.items()}}


@lru_cache(maxsize=1)
def manifest() -> Manifest:
    """The bundled manifest; empty when no weights are bundled."""
    path = WEIGHTS_DIR / "manifest.json"
    if not path.is_file():
        return Manifest(None, {})
    data = json.loads(path.read_text())
    return Manifest(data.get("default"), {name: ZooModel.from_entry(name, e) for name, e in data["models"].items()})


def names() -> list[str]:
    models = manifest().models
    return [*models, *sorted({m.family for m in models.values() if m.family})]


def default_name() -> str:
    name = manifest().default
    if not name:
        raise ModelError(f"no default model is bundled ({WEIGHTS_DIR} has no manifest default); pass --model PATH to a .safetensors file")
    return name


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pick(name: str, align: str | None = None, offsets: int | None = None) -> ZooModel:
    """The zoo model of a name, or of a family plus alignment mode (default: its decomp variant;
    a dcn model also serves decomp-9, as its exact conversion)."""
    models = manifest().models
    if name in models:
        return models[name]
    family = [m for m in models.values() if m.family == name]
    if not family:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(names()) or 'none bundled'}")
    wanted = align or "decomp"
    for m in family:
        if m.alignment.mode == wanted and (offsets is None or m.alignment.offsets == offsets):
            return m
    if wanted == "decomp" and offsets in (None, 9):
        dcn = [m for m in family if m.alignment.mode == "dcn"]
        if dcn:
            return dcn[0]
    asked = Alignment.of(wanted, offsets).name if offsets else wanted
    raise ModelError(f"{name} has no {asked} variant; available: {', '.join(m.alignment.flags for m in family)}")


def resolve(name: str, align: str | None = None, offsets: int | None = None) -> Path:
    """The sha256-checked weights file of a zoo model (by name, or family plus mode)."""
    return pick(name, align, offsets).verified_path()
