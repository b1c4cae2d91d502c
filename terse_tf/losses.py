"""Losses and the hardness criterion, as pure functions of tensors, named by player (paper §3.2-3.4, A.1).

Each returns a per-example tensor; the trainer averages over the global batch in one place.
"""

from __future__ import annotations

import tensorflow as tf


def target_loss(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
  """Classification target loss (§3.2): cross-entropy of T on real or composite images, [B]."""
  return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32), logits=logits)


def synthesizer_loss(labels: tf.Tensor, target_logits: tf.Tensor) -> tf.Tensor:
  """S's loss (§3.4, eq. 3 with T frozen): S maximises T's loss on its composites, so it minimises its
  negative, [B]."""
  return -target_loss(labels, target_logits)


def hardness_margin(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
  """p_gt - max_{c != gt} p_c under T's softmax (A.1), [B]: negative means T misclassifies."""
  probabilities = tf.nn.softmax(logits)
  one_hot = tf.one_hot(tf.cast(labels, tf.int32), tf.shape(logits)[-1], dtype=probabilities.dtype)
  p_gt = tf.reduce_sum(probabilities * one_hot, axis=-1)
  max_other = tf.reduce_max(probabilities - 2.0 * one_hot, axis=-1)  # Pushes the gt class below any other.
  return p_gt - max_other


def is_hard(margin: tf.Tensor, threshold: float) -> tf.Tensor:
  """A composite is a hard example when p_gt - max_other < threshold (A.1), [B] bool."""
  return margin < threshold
