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
