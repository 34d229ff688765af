"""EDVR models with dcn / decomp-N / flow alignment, their weights files and the model zoo.

The names below are imported on first use: `from vsrx.models import zoo` (what `vsrx models`
needs) must not pay for importing torch.
"""

from __future__ import annotations

import os
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING

from vsrx.errors import ModelError, UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from vsrx.models.config import PRESETS, Alignment, EDVRConfig
    from vsrx.models.edvr import EDVR
    from vsrx.models.weights import build_model, convert_alignment, save_model

__all__ = ["EDVR", "EDVRConfig", "PRESETS", "Alignment", "build_model", "load_model", "load_sr_model", "save_model",
           "convert_alignment"]
_LAZY = {"EDVR": "edvr", "EDVRConfig": "config", "PRESETS": "config", "Alignment": "config", "build_model": "weights",
         "save_model": "weights", "convert_alignment": "weights"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"vsrx.models.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'vsrx.models' has no attribute {name!r}")


def load_model(
    path_or_name: str | os.PathLike,
    align: str | None = None,
    offsets: int | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Load a safetensors weights file or a zoo model by name, in eval mode on ``device``.

    ``align="decomp", offsets=9`` on a dcn model converts it exactly; other mismatches raise ModelError.
    """
    from vsrx.models import zoo
    from vsrx.models.weights import load_weights

    path = Path(path_or_name)
    if not path.exists() and str(path_or_name) in zoo.names():
        path = zoo.resolve(str(path_or_name), align, offsets)
    elif not path.exists():
        known = ", ".join(zoo.names()) or "none bundled"
        raise ModelError(f"no weights file or zoo model named {str(path_or_name)!r} (zoo: {known})")
    model = load_weights(path, align, offsets)
    return model.to(device).eval()


def load_sr_model(
    name: str | None = None,
    align: str | None = None,
    offsets: int | None = None,
    device: str | torch.device = "cpu",
) -> tuple[EDVR, str, Path]:
    """A super-resolution model to run, its display name and its weights file.

    ``name`` is a zoo name or weights file; None is the bundled default model, or with ``align``
    or ``offsets`` that mode's variant of the default model's family. Its config is the mode
    asked for (a dcn model asked as decomp-9 is converted).
    """
    from vsrx.models import zoo
    from vsrx.models.edvr import EDVR

    if name is None:
        name = zoo.default_name()
        if align or offsets:
            name = zoo.manifest().models[name].family or name
    model = load_model(name, align, offsets, device=device)
    if not isinstance(model, EDVR):
        raise UsageError(f"{name} is not a super-resolution model")
    path = Path(name) if Path(name).exists() else zoo.resolve(name, align, offsets)
    return model, Path(name).name, path
