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
import functools
from typing import Callable, NamedTuple

import keras
import tensorflow as tf

from terse_tf import boxes
from terse_tf.errors import ConfigError

Labels = dict[str, tf.Tensor]


class Judgement(NamedTuple):
  """T's (inference-mode) verdict on a batch of composites."""
  hardness: tf.Tensor     # [B] how well T gets each composite right: hard, and cached, below --hard_threshold.
  quota_class: tf.Tensor  # [B] int64, the class under which the composite counts towards the cache's quota.


class Target(abc.ABC):
  """T: a model plus what the sleep cycles need to know about its task. The trainer hands T images and
  labels and lets it run its model as it must: once for the loss and the verdict of S's step where it can
  (SinglePassTarget), or as a detector whose loss needs the labels inside the model (targets/frcnn.py)."""

  # What holds T's variables: what T's optimizer updates and the checkpoint and the export track.
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
  def loss(self, images: tf.Tensor, labels: Labels, training: bool) -> tf.Tensor:
    """This replica's share of T's mean loss over the global batch (scalar) on float images [B, H, W, C] in
    [0, 1]: summed over replicas by the trainer, it is the loss of the whole batch, however the batch is
    split. `training`: T's own step (eq. 1), its layers in training mode; else T is frozen in S's step,
    which maximises it (eq. 3): no variable of T, BatchNorm statistics included, may change."""

  @abc.abstractmethod
  def verdict(self, images: tf.Tensor, labels: Labels) -> Judgement:
    """T's (inference-mode) verdict on composites with their labels."""

  def frozen_loss_and_verdict(self, images: tf.Tensor, labels: Labels) -> tuple[tf.Tensor, Judgement]:
    """S's step: T's frozen loss and its verdict on the same composites."""
    return self.loss(images, labels, training=False), self.verdict(images, labels)

  @abc.abstractmethod
  def label_specs(self) -> dict[str, tf.TensorSpec]:
    """The labels' specs, batch axis first, in the order the exported `hardness` signature takes them."""

  @abc.abstractmethod
  def serving_outputs(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
    """What the exported T returns for float images [B, H, W, C] in [0, 1] (inference mode)."""


class SinglePassTarget(Target):
  """A target whose loss and verdict are functions of its model's outputs on the images alone (a classifier,
  an SSD): S's step runs the model once, in inference mode, for both."""

  @abc.abstractmethod
  def replica_loss(self, outputs, labels: Labels) -> tf.Tensor:
    """Target.loss from `model`'s outputs."""

  @abc.abstractmethod
  def judge(self, outputs, labels: Labels) -> Judgement:
    """Target.verdict from `model`'s inference-mode outputs."""

  def loss(self, images: tf.Tensor, labels: Labels, training: bool) -> tf.Tensor:
    return self.replica_loss(self.model(images, training=training), labels)

  def verdict(self, images: tf.Tensor, labels: Labels) -> Judgement:
    return self.judge(self.model(images, training=False), labels)

  def frozen_loss_and_verdict(self, images: tf.Tensor, labels: Labels) -> tuple[tf.Tensor, Judgement]:
    outputs = self.model(images, training=False)  # Inference mode: T frozen, no update.
    return self.replica_loss(outputs, labels), self.judge(outputs, labels)


class DetectorTarget(Target):
  """A detector: labels {"boxes", "classes", "count"} (module docstring), detections for evaluation, and
  the exported serving_default {boxes, scores, classes 0-based, num_detections} from them."""

  @abc.abstractmethod
  def detect(self, images: tf.Tensor) -> boxes.Detections:
    """T's detections on float images [B, H, W, 3] in [0, 1] (inference mode)."""

  @functools.cached_property
  def detections(self) -> Callable[[tf.Tensor], boxes.Detections]:
    """`detect` traced once per target, so that each evaluation does not trace detection again."""
    return tf.function(self.detect)

  def label_specs(self) -> dict[str, tf.TensorSpec]:
    return {"boxes": tf.TensorSpec([None, None, 4], tf.float32, name="boxes"),
            "classes": tf.TensorSpec([None, None], tf.int32, name="classes"),
            "count": tf.TensorSpec([None], tf.int32, name="count")}

  def serving_outputs(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
    detections = self.detect(images)
    return {"boxes": detections.boxes, "scores": detections.scores,
            "classes": tf.cast(detections.classes, tf.int32), "num_detections": detections.num_detections}
