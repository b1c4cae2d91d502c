"""Losses and the hardness criterion, as pure functions of tensors, named by player (paper §3.2-3.4, A.1).

Each returns a per-example tensor; the players' steps (steps.py) average over the global batch in one place.
"""

from __future__ import annotations

from typing import NamedTuple

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


def _pairwise_distances(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
  """Euclidean distances [N, M] between the rows of a [N, D] and b [M, D]."""
  squared = tf.reduce_sum(tf.square(a[:, None, :] - b[None, :, :]), axis=-1)
  # The epsilon keeps the gradient of the square root finite where two points coincide.
  return tf.sqrt(squared + 1e-12)


def _off_diagonal(distances: tf.Tensor) -> tf.Tensor:
  """A square distance matrix with its diagonal (each point with itself) zeroed."""
  return distances * (1.0 - tf.eye(tf.shape(distances)[0], dtype=distances.dtype))


def _mean_within(points: tf.Tensor) -> tf.Tensor:
  """E|x - x'| over distinct pairs of one set (unbiased: pairs of a point with itself left out)."""
  count = tf.cast(tf.shape(points)[0], points.dtype)
  pairs = tf.maximum(count * (count - 1.0), 1.0)
  return tf.reduce_sum(_off_diagonal(_pairwise_distances(points, points))) / pairs


def energy_distance(samples: tf.Tensor, reference: tf.Tensor) -> tf.Tensor:
  """Energy distance between two point sets [N, D] and [M, D] (Székely & Rizzo), a scalar >= 0:

      2 E|x - y| - E|x - x'| - E|y - y'|,  x from `samples`, y from `reference`,

  zero in expectation exactly when both come from one distribution. Its gradient pulls each sample toward
  the reference and pushes samples apart, so as a penalty it counters collapse onto one mode. Pairs of a
  point with itself are left out of the within-set means (the estimate is unbiased).
  """
  return (2.0 * tf.reduce_mean(_pairwise_distances(samples, reference)) - _mean_within(samples)
          - _mean_within(reference))


def class_conditional_energy_distance(samples: tf.Tensor, reference: tf.Tensor, labels: tf.Tensor,
                                      num_classes: int) -> tf.Tensor:
  """The energy distance of each class's samples to the whole reference, averaged over classes weighted by
  their sample counts, a scalar.

  `energy_distance` on a pooled batch is ~0 when each class sits in its own part of the range and the classes
  together tile it (all 0s shifted up, all 1s down): the marginal is uniform, each class's is not. This form
  asks every class's samples to cover the reference. Classes with fewer than two samples in the batch have
  no within-class pairs and are left out.
  """
  membership = tf.one_hot(tf.cast(labels, tf.int32), num_classes, dtype=samples.dtype)  # [N, C]
  counts = tf.reduce_sum(membership, axis=0)                                             # [C]
  mean_to_reference = tf.reduce_mean(_pairwise_distances(samples, reference), axis=1)    # [N]
  cross = tf.linalg.matvec(membership, mean_to_reference, transpose_a=True) / tf.maximum(counts, 1.0)
  within_sums = tf.reduce_sum(
      membership * tf.matmul(_off_diagonal(_pairwise_distances(samples, samples)), membership), axis=0)
  within = within_sums / tf.maximum(counts * (counts - 1.0), 1.0)
  per_class = 2.0 * cross - within - _mean_within(reference)
  weights = tf.where(counts >= 2.0, counts, tf.zeros_like(counts))
  return tf.reduce_sum(weights * per_class) / tf.maximum(tf.reduce_sum(weights), 1.0)


def l2_penalty(variables: list[tf.Variable], weight: float) -> tf.Tensor:
  """Coupled weight decay as an L2 term, weight / 2 * sum |w|^2, a scalar: its gradient adds weight * w to
  each variable's gradient before the optimizer sees it, which is what the paper's PyTorch optimizers do
  with `weight_decay` (SGD with momentum and Adam alike). Keras 3's `weight_decay` is the decoupled kind
  (w -= lr * weight * w after the update), a different regulariser under momentum and Adam."""
  return 0.5 * weight * tf.add_n([tf.reduce_sum(tf.square(v)) for v in variables])


class MultiboxLoss(NamedTuple):
  """SSD's loss per image, unnormalised: the caller divides the batch's sum by its positives (summed over
  replicas first, so the loss does not depend on how the batch is split)."""
  per_image: tf.Tensor  # [B] classification (positives + mined negatives) + localisation, summed.
  positives: tf.Tensor  # [B] matched default boxes per image.


def ssd_multibox_loss(class_logits: tf.Tensor, box_regression: tf.Tensor, matched_classes: tf.Tensor,
                      matched_boxes: tf.Tensor, negatives_per_positive: float = 3.0,
                      min_negatives: int = 3) -> MultiboxLoss:
  """Detection target loss (§3.2 with SSD as T): softmax cross-entropy over classes + background and smooth
  L1 on the encoded boxes, for `class_logits` [B, A, C+1], `box_regression` [B, A, 4] against
  `matched_classes` [B, A] (0 = background, boxes.IGNORED = neither) and `matched_boxes` [B, A, 4]
  (boxes.match).

  Hard-negative mining (SSD §2.2): of the background default boxes, only the `negatives_per_positive` x
  positives with the highest cross-entropy count, and at least `min_negatives`, so an image without objects
  still teaches T what background looks like. Ignored default boxes count nowhere: the loss is that of the
  image without them.
  """
  matched_classes = tf.cast(matched_classes, tf.int32)
  positive, ignored = matched_classes > 0, matched_classes < 0
  cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.maximum(matched_classes, 0),
                                                                  logits=class_logits)
  positives = tf.reduce_sum(tf.cast(positive, tf.float32), axis=1)
  negatives = tf.reduce_sum(tf.cast(matched_classes == 0, tf.float32), axis=1)
  wanted = tf.minimum(tf.maximum(negatives_per_positive * positives, float(min_negatives)), negatives)
  # Rank each background box by its loss (0 = hardest); positives and ignored boxes rank last.
  background_loss = tf.where(positive | ignored, -1.0, cross_entropy)
  rank = tf.argsort(tf.argsort(background_loss, axis=1, direction="DESCENDING"), axis=1)
  mined = (matched_classes == 0) & (tf.cast(rank, tf.float32) < wanted[:, None])
  classification = tf.reduce_sum(cross_entropy * tf.cast(positive | mined, cross_entropy.dtype), axis=1)
  error = tf.abs(box_regression - tf.cast(matched_boxes, box_regression.dtype))
  smooth_l1 = tf.where(error < 1.0, 0.5 * tf.square(error), error - 0.5)
  localisation = tf.reduce_sum(tf.reduce_sum(smooth_l1, axis=-1) * tf.cast(positive, smooth_l1.dtype), axis=1)
  return MultiboxLoss(per_image=classification + localisation, positives=positives)


def _patch_cross_entropy(patch_logits: list[tf.Tensor], real: bool) -> tf.Tensor:
  """Mean sigmoid cross-entropy of every patch at every scale against one label, per example [B]."""
  per_scale = [tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
      labels=tf.fill(tf.shape(logits), 1.0 if real else 0.0), logits=logits), axis=[1, 2, 3])
      for logits in patch_logits]
  return tf.add_n(per_scale) / len(per_scale)


def discriminator_loss(real_logits: list[tf.Tensor], composite_logits: list[tf.Tensor]) -> tf.Tensor:
  """D's loss (§3.3, eq. 2): cross-entropy of calling real images real and composites composite, averaged
  over patches and scales, per example [B] (real and composite batches paired by index)."""
  return _patch_cross_entropy(real_logits, real=True) + _patch_cross_entropy(composite_logits, real=False)


def synthesizer_adversarial_loss(composite_logits: list[tf.Tensor]) -> tf.Tensor:
  """S's realism term (§3.4, eq. 3's D part): the non-saturating form, cross-entropy of D calling the
  composites real, per example [B]; S adds it to its target term with --discriminator_weight."""
  return _patch_cross_entropy(composite_logits, real=True)


def discriminator_accuracy(real_logits: list[tf.Tensor], composite_logits: list[tf.Tensor]) -> tf.Tensor:
  """Share of patches, over scales and both batches, that D labels correctly, a scalar (for TensorBoard)."""
  right = [tf.reduce_mean(tf.cast(logits > 0, tf.float32)) for logits in real_logits]
  right += [tf.reduce_mean(tf.cast(logits <= 0, tf.float32)) for logits in composite_logits]
  return tf.add_n(right) / len(right)
