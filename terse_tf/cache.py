"""The hard-example cache (A.1): composites that fooled T, kept per class and per sleep cycle.

The cache lives in fixed-capacity variables so it is saved in the same checkpoint as S, T and their
optimizers: a crash loses no entry that a checkpoint saw, and resuming continues filling the same quota.
Images are stored as uint8 (like MNIST and affNIST themselves), a quarter of float32's size. A composite's
hardness must be measured on the image the cache will hold: `as_stored` rounds composites to that 8-bit
grid before T sees them, so a borderline composite is judged as T will see it when it fine-tunes.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def as_stored(images: tf.Tensor) -> tf.Tensor:
  """Float images in [0, 1] rounded to the cache's 8-bit grid, with a straight-through gradient (the
  rounding is invisible to backpropagation, so S's gradient is that of the unrounded composite)."""
  stored = tf.round(tf.clip_by_value(images, 0.0, 1.0) * 255.0) / 255.0
  return images + tf.stop_gradient(stored - images)


class HardExampleCache(tf.Module):
  """Append-only store of (image, label, hardness margin, cycle) with a per-class quota per cycle."""

  def __init__(self, capacity: int, image_shape: tuple[int, int, int], num_classes: int):
    super().__init__(name="hard_example_cache")
    self.capacity, self.num_classes = capacity, num_classes
    with tf.device("/cpu:0"):  # Host memory: only ever read back as a whole for a T epoch.
      self.images = tf.Variable(tf.zeros([capacity, *image_shape], tf.uint8), trainable=False, name="images")
      self.labels = tf.Variable(tf.zeros([capacity], tf.int32), trainable=False, name="labels")
      self.margins = tf.Variable(tf.zeros([capacity], tf.float32), trainable=False, name="margins")
      self.cycles = tf.Variable(tf.zeros([capacity], tf.int32), trainable=False, name="cycles")
      self.size = tf.Variable(0, dtype=tf.int64, trainable=False, name="size")

  def __len__(self) -> int:
    return int(self.size.numpy())

  def class_counts(self, cycle: int | None = None) -> np.ndarray:
    """Entries per class [num_classes], in `cycle` only when given."""
    size = len(self)
    labels = self.labels.numpy()[:size]
    if cycle is not None:
      labels = labels[self.cycles.numpy()[:size] == cycle]
    return np.bincount(labels, minlength=self.num_classes)

  def add(self, images: np.ndarray, labels: np.ndarray, margins: np.ndarray, cycle: int,
          per_class_quota: int) -> int:
    """Appends candidates (float images in [0, 1], already on the 8-bit grid of `as_stored` when their
    margins were measured on them) in order while their class is under quota this cycle.

    Returns how many were added.
    """
    room = self.class_counts(cycle)
    room = np.maximum(per_class_quota - room, 0)
    keep = np.zeros(len(labels), bool)
    for i, label in enumerate(labels):
      if room[label] > 0:
        keep[i], room[label] = True, room[label] - 1
    count = int(keep.sum())
    start = len(self)
    if start + count > self.capacity:
      raise ValueError(f"hard-example cache is full ({self.capacity}); it was sized for the configured "
                       "cycles and per-class quota")
    if count:
      end = start + count
      # A scatter writes the rows in place; a slice assignment copies the whole variable (about 100 ms per
      # call at 64k entries, which was most of a synthesizer step).
      rows = tf.range(start, end)
      self.images.scatter_update(tf.IndexedSlices(
          np.clip(np.rint(images[keep] * 255), 0, 255).astype(np.uint8), rows))
      self.labels.scatter_update(tf.IndexedSlices(labels[keep].astype(np.int32), rows))
      self.margins.scatter_update(tf.IndexedSlices(margins[keep].astype(np.float32), rows))
      self.cycles.scatter_update(tf.IndexedSlices(np.full(count, cycle, np.int32), rows))
      self.size.assign(end)
    return count

  def contents(self) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, H, W, C], labels int32 [N]) of every entry so far."""
    size = len(self)
    return self.images.numpy()[:size], self.labels.numpy()[:size]
