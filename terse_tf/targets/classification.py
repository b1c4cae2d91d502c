"""A classifier as target T (paper §3.2, A.1): cross-entropy, and the p_gt - max_other hardness margin."""

from __future__ import annotations

import keras
import tensorflow as tf

from terse_tf import losses
from terse_tf.networks import classifier
from terse_tf.targets.base import Judgement, Labels, SinglePassTarget


class ClassifierTarget(SinglePassTarget):
  """Labels: {"label": [B] int}."""

  hardness_range = (-1.0, 1.0)  # p_gt - max_other
  default_hard_threshold = 0.0  # T misclassifies it (A.1).

  @classmethod
  def build(cls, architecture: str, image_shape: tuple[int, int, int], num_classes: int) -> ClassifierTarget:
    """One of terse_tf's classifiers (networks/classifier.py) as T."""
    return cls(classifier.build_classifier(architecture, image_shape, num_classes))

  def __init__(self, model: keras.Model):
    """`model`: images [B, H, W, C] floats in [0, 1] -> logits [B, classes] (one of ours, or the user's)."""
    self.model = model
    self.logits = tf.function(lambda images: self.model(images, training=False))

  def replica_loss(self, outputs: tf.Tensor, labels: Labels) -> tf.Tensor:
    return tf.nn.compute_average_loss(losses.target_loss(labels["label"], outputs))

  def judge(self, outputs: tf.Tensor, labels: Labels) -> Judgement:
    """Hardness is the margin p_gt - max_other (A.1) of the logits; the quota class is the label."""
    return Judgement(hardness=losses.hardness_margin(labels["label"], outputs),
                     quota_class=tf.cast(labels["label"], tf.int64))

  def label_specs(self) -> dict[str, tf.TensorSpec]:
    return {"label": tf.TensorSpec([None], tf.int32, name="label")}

  def serving_outputs(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
    return {"probabilities": tf.nn.softmax(self.logits(images))}
