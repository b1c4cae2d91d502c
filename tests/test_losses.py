"""Losses and the hardness criterion against values computed by hand."""

import numpy as np
import pytest
import tensorflow as tf

from terse_tf import losses

LOGITS = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]], np.float32)
LABELS = np.array([0, 1])


def softmax(x):
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def test_target_loss_is_cross_entropy():
  expected = -np.log(softmax(LOGITS)[np.arange(2), LABELS])
  np.testing.assert_allclose(losses.target_loss(LABELS, LOGITS).numpy(), expected, rtol=1e-6)


def test_synthesizer_loss_is_the_negative_target_loss():
  np.testing.assert_allclose(losses.synthesizer_loss(LABELS, LOGITS).numpy(),
                             -losses.target_loss(LABELS, LOGITS).numpy())


def test_hardness_margin_is_p_gt_minus_max_other():
  p = softmax(LOGITS)
  expected = [p[0, 0] - p[0, 1], p[1, 1] - p[1, 2]]
  np.testing.assert_allclose(losses.hardness_margin(LABELS, LOGITS).numpy(), expected, rtol=1e-6)


def test_hard_example_criterion():
  margin = losses.hardness_margin(LABELS, LOGITS)  # [+0.42, -0.90]
  assert losses.is_hard(margin, 0.0).numpy().tolist() == [False, True]
  assert losses.is_hard(margin, 0.5).numpy().tolist() == [True, True]
  assert losses.is_hard(margin, -0.95).numpy().tolist() == [False, False]


def test_margin_with_gt_the_only_likely_class_is_near_one():
  logits = tf.constant([[20.0, 0.0, 0.0]])
  assert losses.hardness_margin([0], logits).numpy()[0] == pytest.approx(1.0, abs=1e-6)


def _brute_force_energy_distance(x, y):
  def mean_distance(a, b, exclude_self):
    d = np.linalg.norm(a[:, None] - b[None], axis=-1)
    if exclude_self:
      return d[~np.eye(len(a), dtype=bool)].mean()
    return d.mean()
  return 2 * mean_distance(x, y, False) - mean_distance(x, x, True) - mean_distance(y, y, True)


def test_energy_distance_matches_its_definition():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(7, 3)), rng.uniform(size=(5, 3))
  assert losses.energy_distance(x, y).numpy() == pytest.approx(_brute_force_energy_distance(x, y), rel=1e-6)


def test_energy_distance_separates_a_collapsed_batch_from_the_reference():
  rng = np.random.default_rng(0)
  reference = rng.uniform(-1, 1, size=(256, 6)).astype(np.float32)
  spread = rng.uniform(-1, 1, size=(256, 6)).astype(np.float32)
  collapsed = (0.9 + 0.01 * rng.normal(size=(256, 6))).astype(np.float32)
  assert abs(losses.energy_distance(spread, reference).numpy()) < 0.05
  assert losses.energy_distance(collapsed, reference).numpy() > 2.0


def test_energy_distance_gradient_matches_finite_differences_and_is_finite_for_coincident_points():
  rng = np.random.default_rng(1)
  x = tf.Variable(rng.normal(size=(4, 2)))
  y = tf.constant(rng.normal(size=(6, 2)))
  with tf.GradientTape() as tape:
    value = losses.energy_distance(x, y)
  gradient = tape.gradient(value, x).numpy()
  step = 1e-6
  for i in range(4):
    for j in range(2):
      shifted = x.numpy().copy()
      shifted[i, j] += step
      plus = _brute_force_energy_distance(shifted, y.numpy())
      shifted[i, j] -= 2 * step
      minus = _brute_force_energy_distance(shifted, y.numpy())
      assert gradient[i, j] == pytest.approx((plus - minus) / (2 * step), rel=1e-4, abs=1e-8)
  # Points on top of each other get a finite gradient (no NaN from the square root at 0).
  with tf.GradientTape() as tape:
    value = losses.energy_distance(tf.zeros([3, 2], tf.float64) + x[:1] * 0, y)
  assert np.all(np.isfinite(tape.gradient(value, x).numpy()))


def test_class_conditional_energy_distance_matches_its_definition():
  """The size-weighted mean over classes with two or more samples of each class's energy distance to the
  whole reference; a class with one sample is left out."""
  rng = np.random.default_rng(2)
  x, y = rng.normal(size=(9, 3)), rng.uniform(size=(6, 3))
  labels = np.array([0, 0, 0, 2, 2, 3, 3, 3, 1])  # Class 1 has one sample.
  expected = sum(np.sum(labels == c) * _brute_force_energy_distance(x[labels == c], y) for c in (0, 2, 3)) / 8
  value = losses.class_conditional_energy_distance(x, y, labels, num_classes=4).numpy()
  assert value == pytest.approx(expected, rel=1e-6)


def test_class_conditional_energy_distance_sees_classes_that_split_the_range():
  """Each class in its own half of the box: the pooled batch is uniform, each class is not."""
  rng = np.random.default_rng(3)
  reference = rng.uniform(-1, 1, size=(512, 6)).astype(np.float32)
  labels = rng.integers(0, 2, size=512)
  split = rng.uniform(-1, 1, size=(512, 6)).astype(np.float32)
  split[:, 0] = np.where(labels == 0, 1, -1) * np.abs(split[:, 0])
  assert abs(losses.energy_distance(split, reference).numpy()) < 0.05
  assert losses.class_conditional_energy_distance(split, reference, labels, 2).numpy() > 0.1
  assert abs(losses.class_conditional_energy_distance(reference[::-1], reference, labels, 2).numpy()) < 0.05


def test_l2_penalty_gradient_is_the_decay_times_each_weight():
  variables = [tf.Variable([[1.0, -2.0], [0.5, 3.0]]), tf.Variable([0.25, -4.0])]
  with tf.GradientTape() as tape:
    penalty = losses.l2_penalty(variables, 0.1)
  assert float(penalty) == pytest.approx(0.05 * (1 + 4 + 0.25 + 9 + 0.0625 + 16))
  for gradient, variable in zip(tape.gradient(penalty, variables), variables):
    np.testing.assert_allclose(gradient.numpy(), 0.1 * variable.numpy(), rtol=1e-6)
