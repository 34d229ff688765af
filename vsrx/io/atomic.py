"""Files and folders that appear whole or not at all: written under a hidden name beside the
target, then renamed onto it. Imports nothing from vsrx, so every layer (models included) can use it."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike, data: bytes | Callable[[str], None], *, fsync: bool = True) -> Path:
    """Write ``path`` whole or not at all: ``data`` (bytes, or a function that writes the temporary
    path it is given) goes to a hidden file beside ``path`` that is then renamed onto it.

    ``fsync`` forces the file to disk before the rename, so it also survives a power cut (weights,
    checkpoints); an upscale job's many frame files skip that, since a resume re-makes them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if isinstance(data, bytes):
            Path(tmp).write_bytes(data)
        else:
            data(tmp)
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def replace_path(temp: Path, path: Path) -> None:
    """Rename the finished file or folder ``temp`` onto ``path``. What is already there is moved
    aside first and deleted after, so ``path`` is at every moment either the old or the new one."""
    if not path.exists() or (temp.is_file() and path.is_file()):
        os.replace(temp, path)
        return
    old = path.with_name(f".{path.name}.{secrets.token_hex(4)}.old")
    os.replace(path, old)
    os.replace(temp, path)
    remove_path(old)


def remove_path(path: Path) -> None:
    """Delete a file or folder if it exists."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
