"""Files written whole or not at all, and strict JSON: what every part of the project
writes with. A leaf module: it imports nothing of the project, so anything may import it
(the app's serving code included) without pulling in the data pipeline."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch


class WriteError(OSError):
    """A file that could not be written (a full disk, a folder without write permission);
    the file that was there before is unchanged."""

    def __init__(self, path: Path, cause: BaseException):
        reason = getattr(cause, "strerror", None) or str(cause).splitlines()[-1].strip()
        super().__init__(f"could not write {path}: {reason}")
        self.path = path


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """`write(file)` into a temporary file next to `path`, then rename: never half a file, no
    temporary file left when writing fails; mode 644 (mkstemp's 600 hides an export from
    others). A failed write is a WriteError (torch.save reports a full disk as a RuntimeError)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise WriteError(path, err) from err
    except BaseException:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj: object, path: str | os.PathLike) -> None:
    """torch.save, atomically."""
    atomic_write(path, lambda f: torch.save(obj, f))


def json_text(obj: object, indent: int | None = None) -> str:
    """Strict JSON (no NaN): a non-finite number, as a diverged run records, becomes null."""

    def finite(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: finite(v) for k, v in o.items()}
        return [finite(v) for v in o] if isinstance(o, (list, tuple)) else o

    return json.dumps(finite(obj), indent=indent, allow_nan=False)


def write_json(obj: object, path: str | os.PathLike) -> None:
    """json_text of obj (indented), atomically."""
    atomic_write(path, lambda f: f.write(json_text(obj, indent=1).encode()))
