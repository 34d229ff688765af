"""Shared fixtures. Plain helpers live in helpers.py (no PyAV) and clips.py (generated clips, PyAV)."""

import pytest
from helpers import tiny_edvr

from vsrx.models import save_model


@pytest.fixture(scope="session")
def model_path(tmp_path_factory) -> str:
    """A weights file of `tiny_edvr()` (decomp-3, 3 frames, no TSA), written once per run."""
    return str(save_model(tiny_edvr(), tmp_path_factory.mktemp("m") / "tiny.safetensors"))
