"""Test helpers that need no PyAV (conftest.py loads them, and the GPU machine runs tests without PyAV):
tiny seeded models, the CLI run in-process, and the environment of a child Python."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from click.testing import CliRunner, Result

from vsrx.cli import main
from vsrx.models import EDVR, EDVRConfig

ROOT = Path(__file__).resolve().parents[1]
"""The checkout under test."""


def tiny_edvr(align: str = "decomp", offsets: int = 3, *, groups: int | None = None, num_frame: int = 3,
              with_tsa: bool = False, flow_guided: bool = False, seed: int = 0) -> EDVR:
    """An 8-feature EDVR with one extraction and one reconstruction block, initialised from `seed`.
    `groups` defaults to 2 (1 for flow alignment, which has one group)."""
    torch.manual_seed(seed)
    groups = (1 if align == "flow" else 2) if groups is None else groups
    return EDVR(EDVRConfig(num_feat=8, num_frame=num_frame, groups=groups, num_extract_block=1, num_reconstruct_block=1,
                           with_tsa=with_tsa, align=align, offsets=offsets, flow_guided=flow_guided))


def cli(*args: object) -> Result:
    """`vsrx ARGS...` run in-process (each argument str()-ed); click's Result has exit_code and output."""
    return CliRunner().invoke(main, [str(a) for a in args])


def child_env(*first: Path, **extra: str) -> dict[str, str]:
    """The environment for a child Python that imports this checkout (after `first`), one OpenMP thread."""
    path = os.pathsep.join(filter(None, [*map(str, first), str(ROOT), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path, **extra)
