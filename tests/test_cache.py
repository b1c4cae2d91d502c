"""The hard-example cache: quotas, order, and a checkpoint round trip."""

import numpy as np
import pytest
import tensorflow as tf

from terse_tf.cache import HardExampleCache


def candidates(labels, value=0.5):
  labels = np.asarray(labels)
  images = np.full((len(labels), 4, 4, 1), value, np.float32)
  images[:, 0, 0, 0] = np.arange(len(labels)) / 100  # tell entries apart
  return images, labels, -np.linspace(0, 1, len(labels))


def test_per_class_quota_per_cycle():
  cache = HardExampleCache(capacity=20, image_shape=(4, 4, 1), num_classes=3)
  images, labels, margins = candidates([0, 0, 0, 1, 2, 0])
  assert cache.add(images, labels, margins, cycle=1, per_class_quota=2) == 4
  assert cache.class_counts(cycle=1).tolist() == [2, 1, 1]
  # The first candidates of a class win; later ones of a full class are dropped.
  stored, stored_labels = cache.contents()
  np.testing.assert_allclose(stored[:, 0, 0, 0] / 255, [0.0, 0.01, 0.03, 0.04], atol=0.003)
  assert stored_labels.tolist() == [0, 0, 1, 2]
  # A new cycle has its own quota; the old entries stay.
  assert cache.add(images, labels, margins, cycle=2, per_class_quota=2) == 4
  assert len(cache) == 8 and cache.class_counts().tolist() == [4, 2, 2]


def test_overflow_is_an_error_not_a_silent_drop():
  cache = HardExampleCache(capacity=2, image_shape=(4, 4, 1), num_classes=3)
  with pytest.raises(ValueError, match="cache is full"):
    cache.add(*candidates([0, 1, 2]), cycle=1, per_class_quota=5)


def test_images_are_stored_as_uint8(tmp_path):
  cache = HardExampleCache(capacity=4, image_shape=(4, 4, 1), num_classes=3)
  cache.add(*candidates([1], value=1.0), cycle=1, per_class_quota=1)
  assert cache.contents()[0].dtype == np.uint8 and cache.contents()[0][0, 1, 1, 0] == 255


def test_checkpoint_round_trip(tmp_path):
  cache = HardExampleCache(capacity=10, image_shape=(4, 4, 1), num_classes=3)
  cache.add(*candidates([2, 1, 0, 2]), cycle=3, per_class_quota=5)
  path = tf.train.Checkpoint(cache=cache).save(str(tmp_path / "ckpt"))
  restored = HardExampleCache(capacity=10, image_shape=(4, 4, 1), num_classes=3)
  tf.train.Checkpoint(cache=restored).restore(path).assert_existing_objects_matched()
  for a, b in zip(cache.contents(), restored.contents()):
    np.testing.assert_array_equal(a, b)
  assert restored.class_counts(cycle=3).tolist() == [1, 1, 2]
  np.testing.assert_array_equal(restored.margins.numpy(), cache.margins.numpy())
