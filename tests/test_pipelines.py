"""The players' input pipelines on their own: T's real set mixed with the cache at the configured share, and
S's stream resumed mid-cycle going on with the batches an uninterrupted one takes."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import smoke_config
from terse_tf import config as config_lib
from terse_tf import pipelines
from terse_tf.cache import HardExampleCache
from terse_tf.tasks import registry

STRATEGY = tf.distribute.get_strategy()


@pytest.fixture(scope="module")
def task(tmp_path_factory):
  config = smoke_config(str(tmp_path_factory.mktemp("run")))
  return registry.build(config.task, config.task_settings, config_lib.common_settings(config))


@pytest.mark.parametrize("cache_fraction", [0.0, 0.5])
def test_fine_tuning_batches_mix_real_digits_and_cache_at_the_configured_share(task, tmp_path, cache_fraction):
  cache = HardExampleCache(str(tmp_path / "cache"), task.num_classes)
  white = np.ones((40, *task.image_shape), np.float32)  # Unlike any real digit: easy to count.
  classes = np.arange(40) % 10
  cache.add(white, {"label": classes.astype(np.int32)}, classes, np.zeros(40), cycle=1, per_class_quota=4)
  cache.commit()
  real = len(task.real_examples()[0])

  def epoch(steps=0):
    return pipelines.target_dataset(task, cache, STRATEGY, 64, epoch_seed=3, steps=steps,
                                    cache_fraction=cache_fraction)

  batches = [images.numpy() for images, _ in epoch(steps=60)]
  assert len(batches) == 60 and batches[0].dtype == np.float32 and batches[0].max() <= 1.0
  cached_share = np.mean([(image == 1.0).all() for batch in batches for image in batch])
  expected = cache_fraction or 40 / (real + 40)
  assert abs(cached_share - expected) < 4 * np.sqrt(expected * (1 - expected) / (60 * 64))
  # An epoch is as many batches as one pass over real digits + cache, whichever way they are mixed.
  assert sum(1 for _ in epoch()) == (real + 40) // 64


@pytest.mark.parametrize("with_real", [False, True])
def test_a_resumed_synthesis_stream_goes_on_where_the_uninterrupted_one_is(task, with_real):
  def stream(skip_steps=0):
    return iter(pipelines.synth_dataset(task, STRATEGY, 16, seed=5, with_real=with_real, skip_steps=skip_steps))

  uninterrupted = stream()
  for _ in range(3):
    next(uninterrupted)
  expected, resumed = next(uninterrupted), next(stream(skip_steps=3))
  for a, b in zip(tf.nest.flatten(expected), tf.nest.flatten(resumed)):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  first = next(stream())  # (Control: the stream's batches differ, so the skip is what made them equal.)
  assert any(not np.array_equal(a.numpy(), b.numpy())
             for a, b in zip(tf.nest.flatten(first), tf.nest.flatten(expected)))


def test_a_cache_without_a_label_key_of_the_real_set_gets_it_as_zeros():
  """A cache written before a label key existed (every shard old) still batches with a real set that has it."""
  real_labels = {"boxes": tf.TensorSpec([3, 4], tf.float32), "ignore_boxes": tf.TensorSpec([3, 4], tf.float32)}
  cached = tf.data.Dataset.from_tensors((tf.zeros([8, 8, 3], tf.uint8), {"boxes": tf.ones([3, 4])}))
  filled = pipelines._with_label_keys(cached, real_labels)
  assert filled.element_spec[1] == real_labels
  _, labels = next(iter(filled))
  np.testing.assert_array_equal(labels["ignore_boxes"].numpy(), 0.0)
  np.testing.assert_array_equal(labels["boxes"].numpy(), 1.0)
  assert pipelines._with_label_keys(filled, real_labels) is filled
