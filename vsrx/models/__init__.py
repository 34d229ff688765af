"""EDVR models with dcn / decomp-N / flow alignment, their weights files and the model zoo.

The names below are imported on first use: `from vsrx.models import zoo` (what `vsrx models`
needs) must not pay for importing torch.
"""

from __future__ import annotations

import os
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING

from vsrx.errors import ModelError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from vsrx.models.edvr import EDVR, PRESETS, EDVRConfig
    from vsrx.models.weights import build_model, convert_alignment, save_model

__all__ = ["EDVR", "EDVRConfig", "PRESETS", "build_model", "load_model", "save_model", "convert_alignment"]
_LAZY = {"EDVR": "edvr", "EDVRConfig": "edvr", "PRESETS": "edvr", "build_model": "weights", "save_model": "weights",
         "convert_alignment": "weights"}


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
