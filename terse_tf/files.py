"""Atomic file writes: a crash mid-write leaves the previous file (or none), never a truncated one."""

from __future__ import annotations

import json
import os
import tempfile
from typing import IO, Callable

import numpy as np


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
  """Calls `write(file)` on a temporary file beside `path`, then renames it onto `path` (atomic on POSIX)."""
  directory = os.path.dirname(path) or "."
  os.makedirs(directory, exist_ok=True)
  handle, temporary = tempfile.mkstemp(dir=directory, suffix=".tmp")
  try:
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
