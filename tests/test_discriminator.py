"""D: its multi-scale patch outputs, its initialisation, its losses by hand, and that it learns to tell
pasted objects from untouched images it has not seen."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from terse_tf import compositor, losses
from terse_tf.networks import discriminator
from terse_tf.tasks import affnist as affnist_task


def test_discriminator_judges_patches_at_each_scale():
  model = discriminator.build_discriminator((64, 64, 3), num_scales=3, width=16, seed=0)
  outputs = model(tf.zeros([2, 64, 64, 3]))
  # Three stride-2 convolutions per PatchGAN: 1/8 of each scale's side.
  assert [tuple(o.shape) for o in outputs] == [(2, 8, 8, 1), (2, 4, 4, 1), (2, 2, 2, 1)]


def test_discriminator_weights_start_normal_with_std_0_02():
  model = discriminator.build_discriminator((64, 64, 3), width=32, seed=0)
  kernels = np.concatenate([v.numpy().ravel() for v in model.trainable_variables if v.path.endswith("kernel")])
  assert abs(kernels.mean()) < 1e-3 and kernels.std() == pytest.approx(0.02, rel=0.05)


def test_losses_by_hand():
  real = [tf.constant([[[[2.0]], [[0.0]]]]), tf.constant([[[[-1.0]]]])]   # Two scales, one example.
  fake = [tf.constant([[[[-3.0]], [[1.0]]]]), tf.constant([[[[0.5]]]])]
  softplus = lambda x: np.log1p(np.exp(x))
  # Calling x real costs softplus(-x); calling it composite costs softplus(x); scales weigh alike.
  real_term = (np.mean([softplus(-2.0), softplus(0.0)]) + softplus(1.0)) / 2
  fake_term = (np.mean([softplus(-3.0), softplus(1.0)]) + softplus(0.5)) / 2
  assert float(losses.discriminator_loss(real, fake)[0]) == pytest.approx(real_term + fake_term, rel=1e-6)
  s_term = (np.mean([softplus(3.0), softplus(-1.0)]) + softplus(-0.5)) / 2
  assert float(losses.synthesizer_adversarial_loss(fake)[0]) == pytest.approx(s_term, rel=1e-6)
  # Patches right: real 2.0 (yes), 0.0 (no), -1.0 (no); composite -3.0 (yes), 1.0 (no), 0.5 (no).
  assert float(losses.discriminator_accuracy(real, fake)) == pytest.approx((0.5 + 0 + 0.5 + 0) / 4)


def smooth_images_and_composites(rng, count):
  """Smooth random images, and as many composites: other smooth images with a square of fine-grained noise
  pasted in, a tell that any image of the kind shows (a subtle seam alone, D did not learn in a few hundred
  steps at this size)."""
  smooth = lambda: tf.image.resize(rng.uniform(size=(count, 8, 8, 3)).astype(np.float32), (32, 32)).numpy()
  real, base = smooth(), smooth()
  cutout = np.concatenate([rng.uniform(size=(count, 16, 16, 3)), np.ones((count, 16, 16, 1))], -1)
  params = compositor.clamp_params(tf.constant(rng.normal(size=(count, 6)), tf.float32),
                                   affnist_task.ranges())
  config = compositor.CompositorConfig(ranges=affnist_task.ranges())
  return tf.constant(real), compositor.composite(tf.constant(cutout, tf.float32), tf.constant(base), params,
                                                 config).image


def test_discriminator_learns_to_spot_pasted_regions_in_images_it_has_not_seen():
  rng = np.random.default_rng(0)
  real, composites = smooth_images_and_composites(rng, 256)
  unseen_real, unseen_composites = smooth_images_and_composites(rng, 64)
  keras.utils.set_random_seed(0)
  model = discriminator.build_discriminator((32, 32, 3), num_scales=2, width=16, seed=0)
  optimizer = keras.optimizers.Adam(2e-4, beta_1=0.5)

  @tf.function
  def step(real_batch, composite_batch):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(losses.discriminator_loss(model(real_batch), model(composite_batch)))
    optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))

  def unseen_accuracy():
    return float(losses.discriminator_accuracy(model(unseen_real), model(unseen_composites)))

  assert unseen_accuracy() < 0.65
  for start in rng.integers(0, 256 - 32, 120):
    step(real[start:start + 32], composites[start:start + 32])
  # Measured: 0.82-0.87 on unseen images after 150 such steps (patch-level, two seeds).
  assert unseen_accuracy() > 0.75
