"""The players' input pipelines (tf.data, fed per replica through distribute_datasets_from_function): T's
real set mixed with the hard-example cache, and S's stream of what it composes from (with D, paired with
real images)."""

from __future__ import annotations

import tensorflow as tf

from terse_tf.cache import HardExampleCache
from terse_tf.tasks import Task


def _global_steps_share(strategy: tf.distribute.Strategy, context: tf.distribute.InputContext) -> int:
  """Batches this input pipeline gives per global step: one per replica it feeds."""
  return strategy.num_replicas_in_sync // context.num_input_pipelines


def real_dataset(task: Task, context: tf.distribute.InputContext, seed: int) -> tf.data.Dataset:
  """The task's real training set, this input pipeline's share, shuffled (one pass of uint8 images)."""
  images, labels = task.real_examples()
  ds = tf.data.Dataset.from_tensor_slices((images, labels)).shard(context.num_input_pipelines,
                                                                  context.input_pipeline_id)
  return ds.shuffle(len(images), seed=seed)


def _with_label_keys(ds: tf.data.Dataset, label_specs: dict[str, tf.TensorSpec]) -> tf.data.Dataset:
  """`ds`'s (image, labels) with each label of `label_specs` the labels lack added as zeros: a cache written
  before a label key existed (a detector's "ignore_boxes", whose zeros mean "none") batches with a real set
  that has it, and a task's real set without it with composites that have it."""
  missing = {key: spec for key, spec in label_specs.items() if key not in ds.element_spec[1]}
  if not missing:
    return ds
  return ds.map(lambda image, labels: (image, {**labels, **{key: tf.zeros(spec.shape, spec.dtype)
                                                           for key, spec in missing.items()}}))


def target_steps(task: Task, cache: HardExampleCache, batch_size: int, steps: int = 0) -> int:
  """Global steps in one epoch of T: `steps`, or one pass over the real set and the cache."""
  return steps or (len(task.real_examples()[0]) + len(cache)) // batch_size


def target_dataset(task: Task, cache: HardExampleCache, strategy: tf.distribute.Strategy, batch_size: int,
                   epoch_seed: int, steps: int = 0, cache_fraction: float = 0.0,
                   cache_shuffle_buffer: int = 20000) -> tf.distribute.DistributedDataset:
  """The real training set plus every cached hard example, shuffled, in global batches of `batch_size` float
  images: one epoch of T, or `steps` batches.

  An epoch is as many batches as one pass over both would take; its examples come from the two in proportion
  to their sizes (one pool, A.1), or with `cache_fraction` from the cache at that share.
  """
  num_real, num_cached = len(task.real_examples()[0]), len(cache)
  fraction = cache_fraction or num_cached / (num_real + num_cached)

  def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
    batch = context.get_per_replica_batch_size(batch_size)
    batches = target_steps(task, cache, batch_size, steps) * _global_steps_share(strategy, context)
    ds = real_dataset(task, context, epoch_seed)
    cached = cache.dataset()
    if cached is not None:
      cached = _with_label_keys(cached.shard(context.num_input_pipelines, context.input_pipeline_id),
                                ds.element_spec[1])
      ds = _with_label_keys(ds, cached.element_spec[1])  # A real set without a key the composites carry.
      cached = cached.shuffle(min(num_cached, cache_shuffle_buffer), seed=epoch_seed + 1)
      ds = tf.data.Dataset.sample_from_datasets([ds.repeat(), cached.repeat()],
                                                weights=[1.0 - fraction, fraction], seed=epoch_seed)
    elif steps:
      ds = ds.repeat()
    ds = ds.batch(batch, drop_remainder=True).take(batches).enumerate()

    def prepare(index: tf.Tensor, example: tuple) -> tuple:
      # The task's augmentation, seeded by (epoch, pipeline, batch): a resumed epoch redraws the same.
      seed = tf.stack([tf.cast(epoch_seed * 1000 + context.input_pipeline_id, tf.int64), index])
      return task.augment(tf.image.convert_image_dtype(example[0], tf.float32), example[1], seed)

    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

  return strategy.distribute_datasets_from_function(dataset_fn)


def synth_dataset(task: Task, strategy: tf.distribute.Strategy, batch_size: int, seed: int, with_real: bool,
                  skip_steps: int = 0) -> tf.distribute.DistributedDataset:
  """Endless global batches for S; `with_real` (D plays): (S's batch, real float images for D's step) pairs.
  `skip_steps`: the global steps a resumed cycle had taken, whose batches it skips, so that it goes on with
  the batches an uninterrupted run would take (the stream is a function of the seed)."""
  def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
    batch = context.get_per_replica_batch_size(batch_size)
    ds = task.synth_dataset(batch, seed, context)
    if with_real:
      real = real_dataset(task, context, seed + 1).repeat().batch(batch, drop_remainder=True)
      # D's real images get §3.1's artefacts in the share S's backgrounds do: on both of D's sides a blended
      # region is no cue.
      artifact_seeds = tf.data.Dataset.random(seed=seed + 3).batch(2)  # (seed + 2 seeds S's batches.)
      real = tf.data.Dataset.zip((real, artifact_seeds)).map(
          lambda example, artifact_seed: task.background_artifacts(
              tf.image.convert_image_dtype(example[0], tf.float32), artifact_seed))
      ds = tf.data.Dataset.zip((ds, real))
    return ds.skip(skip_steps * _global_steps_share(strategy, context)).prefetch(2)

  return strategy.distribute_datasets_from_function(dataset_fn)
