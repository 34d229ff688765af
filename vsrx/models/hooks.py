"""Reading what a module computes inside a model without changing the module: forward hooks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from torch import nn


@contextlib.contextmanager
def record_forward(modules: Iterable[nn.Module], read: Callable[[nn.Module, tuple, Any], Any]) -> Iterator[list]:
    """While active, every forward of any of ``modules`` appends ``read(module, inputs, output)``
    to the yielded list, in call order; the hooks are removed on leaving, whatever happens."""
    records: list = []
    handles = [m.register_forward_hook(lambda module, inputs, output: records.append(read(module, inputs, output)))
               for m in modules]
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()
