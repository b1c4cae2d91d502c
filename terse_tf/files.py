"""Atomic file writes: a crash mid-write leaves the previous file (or none), never a truncated one."""

from __future__ import annotations

import json
import os
import tempfile
from typing import IO, Callable

import numpy as np


def _umask() -> int:
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


# The mode open() would give a new file (mkstemp's own is 0600, which would hide a run's files from the
# other workers of a multi-worker run and from a shared group).
_FILE_MODE = 0o666 & ~_umask()


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
  """Calls `write(file)` on a temporary file beside `path`, then renames it onto `path` (atomic on POSIX)."""
  directory = os.path.dirname(path) or "."
  os.makedirs(directory, exist_ok=True)
  handle, temporary = tempfile.mkstemp(dir=directory, suffix=".tmp")
  try:
    os.fchmod(handle, _FILE_MODE)
    with os.fdopen(handle, "wb") as f:
      write(f)
    os.replace(temporary, path)
  except BaseException:
    os.unlink(temporary)
    raise


def write_json(path: str, payload: dict) -> None:
  atomic_write(path, lambda f: f.write(json.dumps(payload, indent=2).encode()))


def savez(path: str, compressed: bool = False, **arrays: np.ndarray) -> None:
  atomic_write(path, lambda f: (np.savez_compressed if compressed else np.savez)(f, **arrays))
