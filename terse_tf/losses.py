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


def energy_distance(samples: tf.Tensor, reference: tf.Tensor) -> tf.Tensor:
  """Energy distance between two point sets [N, D] and [M, D] (Székely & Rizzo), a scalar >= 0:

      2 E|x - y| - E|x - x'| - E|y - y'|,  x from `samples`, y from `reference`,

  zero in expectation exactly when both come from one distribution. Its gradient pulls each sample toward
  the reference and pushes samples apart, so as a penalty it counters collapse onto one mode. Pairs of a
  point with itself are left out of the within-set means (the estimate is unbiased).
  """

  def mean_distance(a, b, exclude_self):
    squared = tf.reduce_sum(tf.square(a[:, None, :] - b[None, :, :]), axis=-1)
    # The epsilon keeps the gradient of the square root finite where two points coincide.
    distances = tf.sqrt(squared + 1e-12)
    if not exclude_self:
      return tf.reduce_mean(distances)
    count = tf.cast(tf.shape(a)[0], distances.dtype)
    off_diagonal = 1.0 - tf.eye(tf.shape(a)[0], dtype=distances.dtype)
    return tf.reduce_sum(distances * off_diagonal) / tf.maximum(count * (count - 1.0), 1.0)

  return (2.0 * mean_distance(samples, reference, False) - mean_distance(samples, samples, True)
          - mean_distance(reference, reference, True))
