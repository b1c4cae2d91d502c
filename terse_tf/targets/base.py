"""The interface every target T presents to the trainer, whatever its task.

Labels travel as one dict of tensors per batch, with a leading batch axis: {"label": [B]} for a classifier;
{"boxes": [B, G, 4] normalised ymin, xmin, ymax, xmax, "classes": [B, G] 0-based, "count": [B],
"ignore_boxes": [B, G, 4]} for a detector, whose first `count` rows of each image are real and the rest
padding; "ignore_boxes" are the boxes of objects too little of which is in view to count (zero rows for
none), which T's loss learns neither as objects nor as background; a detector's labels may lack the key
(no ignore boxes), and the exported `hardness` signature takes none. The cache, the datasets and the export
treat both alike.
"""

from __future__ import annotations

import abc
from typing import NamedTuple

import keras
import tensorflow as tf

from terse_tf.errors import ConfigError

Labels = dict[str, tf.Tensor]


class Judgement(NamedTuple):
  """T's (inference-mode) verdict on a batch of composites."""
  hardness: tf.Tensor     # [B] how well T gets each composite right: hard, and cached, below --hard_threshold.
  quota_class: tf.Tensor  # [B] int64, the class under which the composite counts towards the cache's quota.


class Target(abc.ABC):
  """T: a Keras model plus what the sleep cycles need to know about its task. The loss and the verdict
  take the model's outputs, so that S's step runs T once for both."""

  model: keras.Model
  # Where Judgement.hardness lies, for its histograms and to check --hard_threshold against.
  hardness_range: tuple[float, float]
  # The --hard_threshold a run gets when it sets none: below it, a composite is hard.
  default_hard_threshold: float

  @classmethod
  def resolve_hard_threshold(cls, value: float | None, which: str) -> float:
    """--hard_threshold for this kind of target (`which` names it in the error): `value`, or the default when
    it is None; a ConfigError outside hardness_range, NaN included, where it would make every composite
    hard, or none."""
    if value is None:
      return cls.default_hard_threshold
    low, high = cls.hardness_range
    if not low <= value <= high:
      raise ConfigError(f"--hard_threshold={value} lies outside the range of the hardness score, which lies in "
                        f"[{low:g}, {high:g}] for {which}; its default is {cls.default_hard_threshold:g}")
    return value

  @abc.abstractmethod
  def replica_loss(self, outputs, labels: Labels) -> tf.Tensor:
    """This replica's share of T's mean loss over the global batch (scalar), from `model`'s outputs:
    summed over replicas by the trainer, it is the loss of the whole batch, however the batch is split.
    S maximises it (eq. 3)."""

  @abc.abstractmethod
  def judge(self, outputs, labels: Labels) -> Judgement:
    """T's verdict on composites with their labels, from `model`'s inference-mode outputs."""

  @abc.abstractmethod
  def label_specs(self) -> dict[str, tf.TensorSpec]:
    """The labels' specs, batch axis first, in the order the exported `hardness` signature takes them."""

  @abc.abstractmethod
  def serving_outputs(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
    """What the exported T returns for float images [B, H, W, C] in [0, 1] (inference mode)."""
