"""Atomic file writes: a crash mid-write leaves the previous file (or none), never a truncated one. And
directory locks: one process at a time writes a directory, and a killed one leaves no stale lock."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import tempfile
from typing import IO, Callable

import numpy as np
from absl import logging


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


def content_digest(root: str, paths: list[str]) -> str:
  """A sha256 of files' names (relative to `root`) and bytes: what they hold, whatever spelling of the path
  names them (a model retrained into the same folder digests otherwise, one folder under two spellings
  alike)."""
  hasher = hashlib.sha256()
  for path in paths:
    hasher.update(os.path.relpath(path, root).encode() + b"\0")
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        hasher.update(block)
  return hasher.hexdigest()


LOCK_NAME = ".terse_tf.lock"


class DirectoryInUseError(OSError):
  """Another process holds the directory's lock; the message names it (pid and host)."""


class DirectoryLock:
  """An exclusive lock on a directory, held from `acquire` to `release` or the process's end, however it
  ends (the kernel drops a flock with the process, so a killed run never leaves the directory locked).

  Per process, not per object: several objects of one process may lock the same directory (a test that
  reopens a run in-process, an experiment that resumes one), each `acquire` matched by a `release`; another
  process is refused while any of them holds it.
  """

  _held: dict[str, tuple[IO[str], int]] = {}  # realpath -> (the locked file, how many hold it)

  def __init__(self, directory: str):
    self.path = os.path.join(os.path.realpath(directory), LOCK_NAME)
    self._holding = False

  def acquire(self) -> None:
    if self._holding:
      return
    handle, holders = self._held.get(self.path, (None, 0))
    if handle is None:
      handle = open(self.path, "a+")
      try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise DirectoryInUseError(f"in use by another process ({holder})") from None
      except OSError as e:  # A file system without flock (some FUSE and NFS mounts): go on without the lock.
        handle.close()
        logging.warning("%s: cannot be locked on this file system (%s); nothing stops a second process from "
                        "using it at the same time", os.path.dirname(self.path), e.strerror or e)
        return
      handle.seek(0)
      handle.truncate()
      handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
      handle.flush()
    self._held[self.path] = (handle, holders + 1)
    self._holding = True

  def release(self) -> None:
    if not self._holding:
      return
    self._holding = False
    handle, holders = self._held.pop(self.path)
    if holders > 1:
      self._held[self.path] = (handle, holders - 1)
    else:
      handle.close()  # Closing the last descriptor drops the flock.
