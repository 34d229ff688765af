"""Training: EDVR (trainer.py) and SPyNet (flow.py) tasks run by one loop (loop.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from vsrx.errors import UsageError


def start_training(task: str, given: dict[str, Any], resume: str | None, log: Callable[[str], None]) -> Path:
    """Run ``vsrx train``: a new run of ``task`` from the settings given on the command line (the
    config's defaults fill the rest), or, with ``resume``, the run in that directory from its saved
    config (only loop.RESUME_OVERRIDES may be given). Returns the deploy weights path."""
    from vsrx.train.flow import FlowTrainConfig, train_flow
    from vsrx.train.loop import resume_config
    from vsrx.train.trainer import TrainConfig, train

    kinds = {"sr": (TrainConfig, train), "flow": (FlowTrainConfig, train_flow)}
    if resume:
        cfg = resume_config(Path(resume), given, {name: kind for name, (kind, _) in kinds.items()})
        return kinds[cfg.task][1](cfg, resume=True, log=log)
    kind, run = kinds[task]
    unused = sorted(set(given) - {f.name for f in dataclasses.fields(kind)})
    if unused:
        raise UsageError(f"--task {task} does not use --{unused[0].replace('_', '-')}")
    return run(kind(**given), resume=False, log=log)
