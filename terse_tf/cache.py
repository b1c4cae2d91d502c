"""The hard-example cache (A.1): composites that fooled T, with their labels, kept per class and per cycle.

The cache lives on disk, one shard per checkpoint interval: entries accumulate in memory and are written
as one shard (atomically: a temporary file renamed into place) just before each checkpoint, whose
`committed_shards` counter records how many shards it saw. A process killed between the two leaves a shard
the checkpoint does not count; `sync`, run when the trainer resumes, deletes it, so the cache always holds
exactly what the restored state expects and a resumed run fills the same quota without duplicates. T reads
the shards as a stream (`dataset`), so the cache's size is bounded by the disk, not by memory or by the
checkpoint (10k detection composites at 300x300x3 are ~2.7 GB).

Images are stored as uint8, a quarter of float32's size. A composite's hardness must be measured on the
image the cache will hold: `as_stored` rounds composites to that 8-bit grid before T judges them.
Labels are a dict of arrays, one row per entry: {"label"} for a classifier, {"boxes", "classes", "count",
"ignore_boxes"} for a detector (any keys: the cache stores what it is given); each entry also has a
`quota_class`, the class its quota counts it under, and a `weight`, what it counts for there: 1 when quotas
count samples, its object count when they count instances (--quota_unit). The newest shard's keys are the
cache's: a label key older shards lack (written before it existed) reads as zeros, a missing weight as 1.
"""

from __future__ import annotations

import glob
import os
import zipfile

import numpy as np
import tensorflow as tf

from terse_tf import files
from terse_tf.data.photos import to_uint8  # The inverse of the 8-bit grid of `as_stored`.
from terse_tf.errors import DataError

SHARD_PATTERN = "shard-{:05d}.npz"
_LABEL_PREFIX = "label/"


def as_stored(images: tf.Tensor) -> tf.Tensor:
  """Float images in [0, 1] rounded to the cache's 8-bit grid, with a straight-through gradient (the
  rounding is invisible to backpropagation, so S's gradient is that of the unrounded composite)."""
  stored = tf.round(tf.clip_by_value(images, 0.0, 1.0) * 255.0) / 255.0
  return images + tf.stop_gradient(stored - images)


class HardExampleCache(tf.Module):
  """Append-only on-disk store of (image, labels, quota class, hardness, cycle) with a per-class quota per
  cycle. Only `committed_shards` is checkpointed; the entries live in `directory`."""

  def __init__(self, directory: str, num_classes: int):
    super().__init__(name="hard_example_cache")
    self.directory, self.num_classes = directory, num_classes
    self.committed_shards = tf.Variable(0, dtype=tf.int64, trainable=False, name="committed_shards")
    # Per-entry metadata of every committed and pending entry (small: four numbers per entry).
    self._quota_classes, self._margins, self._cycles, self._weights = (
        np.zeros([0], np.int64), np.zeros([0], np.float32), np.zeros([0], np.int64), np.zeros([0], np.int64))
    self._pending: list[dict[str, np.ndarray]] = []

  # ------------------------------------------------------------------------------------ bookkeeping
  def __len__(self) -> int:
    return len(self._quota_classes)

  def _shard_path(self, index: int) -> str:
    return os.path.join(self.directory, SHARD_PATTERN.format(index))

  def shard_paths(self) -> list[str]:
    return [self._shard_path(i) for i in range(int(self.committed_shards.numpy()))]

  def sync(self) -> None:
    """Makes the directory agree with `committed_shards` (after a restore, or for a new run): deletes shards
    a checkpoint never counted and half-written temporaries, and reloads the committed entries' metadata."""
    os.makedirs(self.directory, exist_ok=True)
    committed = set(self.shard_paths())
    for path in glob.glob(os.path.join(self.directory, "*")):
      if path not in committed:
        os.remove(path)
    metadata = {"quota_class": [], "margin": [], "cycle": [], "weight": []}
    for path in self.shard_paths():
      if not os.path.exists(path):
        raise DataError(f"{path}: the checkpoint counts {len(committed)} cache shards but this one is missing; "
                        "the run directory was changed by hand. Rerun with --fresh to start over")
      try:
        with np.load(path) as shard:
          for key in ("quota_class", "margin", "cycle"):
            metadata[key].append(shard[key])
          # Shards written before quotas could count instances weigh each entry 1, as their run counted.
          metadata["weight"].append(shard["weight"] if "weight" in shard.files
                                    else np.ones(len(shard["cycle"]), np.int64))
      except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: damaged cache shard ({type(e).__name__}: {e}); the run cannot resume with it. "
                        "Rerun with --fresh to start over") from e
    self._quota_classes, self._margins, self._cycles, self._weights = (
        np.concatenate(metadata[k]) if metadata[k] else np.zeros([0], dtype)
        for k, dtype in (("quota_class", np.int64), ("margin", np.float32), ("cycle", np.int64),
                         ("weight", np.int64)))
    self._pending = []

  def class_counts(self, cycle: int | None = None) -> np.ndarray:
    """Entries per class [num_classes], in `cycle` only when given."""
    classes = self._quota_classes if cycle is None else self._quota_classes[self._cycles == cycle]
    return np.bincount(classes, minlength=self.num_classes)

  def quota_filled(self, cycle: int) -> np.ndarray:
    """How much of each class's quota `cycle`'s entries fill [num_classes]: their summed weights."""
    in_cycle = self._cycles == cycle
    return np.bincount(self._quota_classes[in_cycle], weights=self._weights[in_cycle],
                       minlength=self.num_classes).astype(np.int64)

  def margins(self) -> np.ndarray:
    return self._margins

  def cycles(self) -> np.ndarray:
    return self._cycles

  # ------------------------------------------------------------------------------------ writing
  def add(self, images: np.ndarray, labels: dict[str, np.ndarray], quota_classes: np.ndarray,
          margins: np.ndarray, cycle: int, per_class_quota: int, weights: np.ndarray | None = None) -> int:
    """Appends candidates (float images in [0, 1], already on the 8-bit grid of `as_stored` when their
    hardness was measured on them) in order while their quota class is under quota this cycle. `weights`:
    what each counts for towards its quota (1 each when None). A candidate is kept while its class has room,
    so the last one kept may pass the quota by less than its weight.

    Returns how many were added. They reach the disk at the next `commit`.
    """
    weights = np.ones(len(quota_classes), np.int64) if weights is None else np.asarray(weights, np.int64)
    room = np.maximum(per_class_quota - self.quota_filled(cycle), 0)
    keep = np.zeros(len(quota_classes), bool)
    for i, quota_class in enumerate(quota_classes):
      if room[quota_class] > 0:
        keep[i], room[quota_class] = True, room[quota_class] - weights[i]
    count = int(keep.sum())
    if count:
      entry = {"image": to_uint8(images[keep]), "quota_class": np.asarray(quota_classes)[keep].astype(np.int64),
               "margin": np.asarray(margins)[keep].astype(np.float32), "cycle": np.full(count, cycle, np.int64),
               "weight": weights[keep]}
      entry.update({_LABEL_PREFIX + key: np.asarray(value)[keep] for key, value in labels.items()})
      self._pending.append(entry)
      self._quota_classes = np.concatenate([self._quota_classes, entry["quota_class"]])
      self._margins = np.concatenate([self._margins, entry["margin"]])
      self._cycles = np.concatenate([self._cycles, entry["cycle"]])
      self._weights = np.concatenate([self._weights, entry["weight"]])
    return count

  def commit(self) -> None:
    """Writes the pending entries as the next shard; the caller checkpoints `committed_shards` next."""
    if not self._pending:
      return
    shard = {key: np.concatenate([entry[key] for entry in self._pending]) for key in self._pending[0]}
    files.savez(self._shard_path(int(self.committed_shards.numpy())), **shard)
    self.committed_shards.assign_add(1)
    self._pending = []

  # ------------------------------------------------------------------------------------ reading
  def _label_format(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Each label's per-entry shape and dtype in the newest shard: the format this code writes."""
    with np.load(self.shard_paths()[-1]) as newest:
      return {key[len(_LABEL_PREFIX):]: (newest[key].shape[1:], newest[key].dtype) for key in newest.files
              if key.startswith(_LABEL_PREFIX)}

  def _shards(self):
    # A run resumed by a newer terse_tf adds shards with label keys its older ones lack (a detector's
    # "ignore_boxes"): the older entries read as zeros there, which such keys mean to be "none".
    label_format = self._label_format()
    for path in self.shard_paths():
      with np.load(path) as shard:
        images = shard["image"]
        yield images, {key: shard[_LABEL_PREFIX + key] if _LABEL_PREFIX + key in shard.files
                       else np.zeros([len(images), *shape], dtype)
                       for key, (shape, dtype) in label_format.items()}

  def contents(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(images uint8 [N, H, W, C], labels {key: [N, ...]}) of every committed entry, in order."""
    if not self.shard_paths():
      raise ValueError("the hard-example cache has no committed entries")
    shards = list(self._shards())
    images = np.concatenate([images for images, _ in shards])
    return images, {key: np.concatenate([labels[key] for _, labels in shards]) for key in shards[0][1]}

  def dataset(self) -> tf.data.Dataset | None:
    """The committed entries as a stream of (uint8 image, labels), one shard in memory at a time, in the
    order they were added (callers shuffle); None while nothing is committed."""
    paths = self.shard_paths()
    if not paths:
      return None
    with np.load(paths[0]) as first:
      image_shape = first["image"].shape[1:]
    labels = {key: tf.TensorSpec([None, *shape], dtype) for key, (shape, dtype) in self._label_format().items()}
    signature = (tf.TensorSpec([None, *image_shape], tf.uint8), labels)
    return tf.data.Dataset.from_generator(self._shards, output_signature=signature).unbatch()
