"""The trainer's single steps against hand computations: weight decay, which player each step moves, what
S's steps do to T's loss, what the cache stores, and MirroredStrategy against one device."""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO_ROOT, smoke_config, synth_batches
from terse_tf import config as config_lib, losses, trainer as trainer_lib
from terse_tf.networks import synthesizer
from terse_tf.tasks import affnist as affnist_task


def deterministic_trainer(run_dir, **overrides):
  """A smoke-size trainer whose steps draw no randomness: T without dropout (the Swish CNN, BatchNorm),
  S without dropout, noise or diversity penalty."""
  settings = dict(target="itn_swish", synth_dropout=0.0, synth_noise_dim=0, diversity_weight=0.0, export=False)
  settings.update(overrides)
  return trainer_lib.Trainer(smoke_config(str(run_dir), **settings))


def digit_batch(trainer, size=64):
  """(images, labels) as T's steps take them."""
  splits = trainer.task.splits
  images = tf.constant(splits.train_images[:size, ..., None] / 255.0, tf.float32)
  return images, {"label": tf.constant(splits.train_labels[:size])}


def values(variables):
  return [v.numpy().copy() for v in variables]


def target_gradients(trainer, images, labels):
  variables = trainer.target.model.trainable_variables
  with tf.GradientTape() as tape:
    loss = tf.reduce_mean(losses.target_loss(labels["label"], trainer.target.model(images, training=True)))
  return [g.numpy() for g in tape.gradient(loss, variables)]


@pytest.mark.parametrize("mode", config_lib.WEIGHT_DECAY_MODES)
def test_target_sgd_decays_as_the_mode_says_over_two_steps(tmp_path, mode):
  """Coupled (PyTorch's, the paper's): the decay joins the gradient, so it enters the momentum.
  Decoupled (Keras 3's): w -= lr * decay * w before each momentum update."""
  decay = 0.5
  trainer = deterministic_trainer(tmp_path, target_weight_decay=decay, weight_decay_mode=mode)
  config = trainer.config
  lr, momentum = config.target_lr, config.target_momentum
  images, labels = digit_batch(trainer)
  variables = trainer.target.model.trainable_variables

  w0, g1 = values(variables), target_gradients(trainer, images, labels)
  trainer._target_step((images, labels))
  w1 = values(variables)
  g2 = target_gradients(trainer, images, labels)
  trainer._target_step((images, labels))
  w2 = values(variables)

  gap_between_modes = 0.0
  for a0, a1, a2, b1, b2 in zip(w0, w1, w2, g1, g2):
    coupled_m1 = -lr * (b1 + decay * a0)
    coupled = (a0 + coupled_m1, a1 + momentum * coupled_m1 - lr * (b2 + decay * a1))
    decoupled_m1 = -lr * b1
    decoupled = (a0 * (1 - lr * decay) + decoupled_m1, a1 * (1 - lr * decay) + momentum * decoupled_m1 - lr * b2)
    expected = coupled if mode == "coupled" else decoupled
    np.testing.assert_allclose(a1, expected[0], atol=1e-6)
    np.testing.assert_allclose(a2, expected[1], atol=1e-6)
    gap_between_modes = max(gap_between_modes, np.abs(coupled[1] - decoupled[1]).max())
  assert gap_between_modes > 1e-4  # The tolerance above tells the two modes apart.


def test_synthesizer_adam_adds_coupled_decay_to_the_gradient(tmp_path):
  """With a decay so large that it dominates S's gradient, Adam's first step (lr * g / |g| per weight) moves
  every kernel weight by about lr toward zero; decoupled decay would shrink it by lr * decay * w instead."""
  decay, lr = 1e3, 1e-4
  trainer = deterministic_trainer(tmp_path, synth_weight_decay=decay, synth_lr=lr)
  variables = trainer.synthesizer.trainable_variables
  before = values(variables)
  trainer._synth_step(next(iter(synth_batches(trainer, 0))))
  for variable, w0 in zip(variables, before):
    if variable.path.endswith("kernel"):
      large = np.abs(w0) > 1e-3  # Where decay * w dwarfs the loss's gradient.
      np.testing.assert_allclose((w0 - variable.numpy())[large], lr * np.sign(w0[large]), rtol=1e-3)


def test_a_synthesizer_step_moves_no_target_variable_and_a_target_step_no_synthesizer_variable(tmp_path):
  trainer = deterministic_trainer(tmp_path)
  target_before, synth_before = values(trainer.target.model.variables), values(trainer.synthesizer.variables)
  batches = iter(synth_batches(trainer, 0))
  for _ in range(3):
    trainer._synth_step(next(batches))
  # Every T variable, BatchNorm's moving statistics included, is where it was.
  for before, after in zip(target_before, values(trainer.target.model.variables)):
    np.testing.assert_array_equal(before, after)
  synth_after = values(trainer.synthesizer.variables)
  assert any(not np.array_equal(a, b) for a, b in zip(synth_before, synth_after))

  images, labels = digit_batch(trainer)
  for _ in range(3):
    trainer._target_step((images, labels))
  for before, after in zip(synth_after, values(trainer.synthesizer.variables)):
    np.testing.assert_array_equal(before, after)
  moved = [not np.array_equal(a, b) for a, b in zip(target_before, values(trainer.target.model.variables))]
  assert all(moved)  # Kernels, BatchNorm scales and offsets, and the moving statistics.


def composite_loss(trainer, batch):
  """T's mean cross-entropy on the composites S makes of a fixed batch."""
  composition = trainer.task.compose(
      lambda foreground, background: synthesizer.raw_params(trainer.synthesizer, foreground, background,
                                                            training=True), batch)
  logits = trainer.target.model(composition.images, training=False)
  return float(tf.reduce_mean(losses.target_loss(composition.labels["label"], logits)))


def test_synthesizer_steps_raise_the_targets_loss_on_its_composites(tmp_path):
  trainer = deterministic_trainer(tmp_path, target="paper", synth_lr=1e-2, cycles=0, baseline_epochs=8,
                                  target_lr=0.05)
  trainer.run()  # The baseline T, which S then attacks.
  batches = iter(synth_batches(trainer, 0))
  fixed = next(batches)
  before = composite_loss(trainer, fixed)
  for _ in range(30):
    trainer._synth_step(next(batches))
  after = composite_loss(trainer, fixed)
  assert after > before + 1.0, (before, after)


def test_cached_margins_are_the_targets_margins_on_the_stored_images(tmp_path):
  """The hardness the cache records is measured on the 8-bit image it stores, so it holds on re-reading.
  An untrained T puts many margins near 0, where rounding after measuring would flip some."""
  trainer = deterministic_trainer(tmp_path, target="paper", synth_lr=1e-2, hard_per_class=(20,),
                                  synth_max_steps=12)
  trainer._synthesize(cycle=1)
  trainer.cache.commit()
  images, labels = trainer.cache.contents()
  assert len(images) > 20
  margins = trainer.cache.margins()
  logits = affnist_task.logits_in_batches(trainer.target, images, batch_size=1000)
  remeasured = losses.hardness_margin(labels["label"], logits).numpy()
  np.testing.assert_allclose(remeasured, margins, atol=1e-5)
  assert np.all(remeasured < trainer.hard_threshold)


MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, "tests")
    from conftest import synth_batches
    from terse_tf import pipelines
    from test_steps import deterministic_trainer, digit_batch, values

    # Large decays: a coupled L2 term counted once per replica would show.
    settings = dict(target_weight_decay=0.5, synth_weight_decay=0.5)
    single = deterministic_trainer(sys.argv[1] + "/single", **settings)
    mirrored = deterministic_trainer(sys.argv[1] + "/mirrored", strategy="mirrored", **settings)
    networks = {"target": lambda t: t.target.model, "synthesizer": lambda t: t.synthesizer}
    for network in networks.values():
      for a, b in zip(network(mirrored).variables, network(single).variables):
        a.assign(b)

    def distributed(batch):
      dataset = tf.data.Dataset.from_tensor_slices(batch).batch(len(tf.nest.flatten(batch)[0]))
      return next(iter(mirrored.strategy.experimental_distribute_dataset(dataset)))

    report = {"replicas": mirrored.strategy.num_replicas_in_sync}
    batch = digit_batch(single)
    report["target_loss"] = [float(single._target_step(batch)), float(mirrored._target_step(distributed(batch)))]
    synth_batch = tf.nest.map_structure(lambda t: t.numpy(), next(iter(synth_batches(single, 0))))
    one, _ = single._synth_step(tf.nest.map_structure(tf.constant, synth_batch))
    two, _ = mirrored._synth_step(distributed(synth_batch))
    report["synth_loss"] = [float(one.loss), float(two.loss)]
    report["params"] = float(np.abs(one.params.numpy() - two.params.numpy()).max())
    report["margins"] = float(np.abs(one.hardness.numpy() - two.hardness.numpy()).max())
    for network, model in networks.items():
      pairs = zip(values(model(single).variables), values(model(mirrored).variables))
      report[network] = max(float(np.abs(a - b).max()) for a, b in pairs)
    report["finetune_batches"] = sum(1 for _ in pipelines.target_dataset(
        mirrored.task, mirrored.cache, mirrored.strategy, mirrored.config.batch_size, 0, steps=5))
    print(json.dumps(report))
""")


def test_one_step_under_mirrored_strategy_equals_the_single_device_step(tmp_path):
  """Two logical CPUs, the same global batch, the same weights: T's and S's steps agree with one device's
  to 1e-5, float32 sums taken in another order (losses scaled by the global batch, BatchNorm statistics
  synchronised across replicas, the coupled decay term shared out between replicas)."""
  result = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, str(tmp_path)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["replicas"] == 2 and report["finetune_batches"] == 5
  for key in ("target_loss", "synth_loss"):
    np.testing.assert_allclose(*report[key], rtol=1e-5, err_msg=key)
  for key in ("params", "margins", "target", "synthesizer"):
    assert report[key] < 1e-5, (key, report)


def test_the_targets_own_regularizers_join_its_loss(tmp_path):
  """A kernel_regularizer of the model (a user's, say) counts in T's step, once per global batch."""
  trainer = deterministic_trainer(tmp_path, target_weight_decay=0.0)
  kernel = trainer.target.model.layers[-1].kernel
  kernel.regularizer = keras.regularizers.L2(0.5)  # Penalty 0.5 * sum(w^2): gradient w.
  assert trainer.target.model.losses  # Keras reports it...
  images, labels = digit_batch(trainer)
  variables = trainer.target.model.trainable_variables
  w0, g = values(variables), target_gradients(trainer, images, labels)
  trainer._target_step((images, labels))
  lr = trainer.config.target_lr
  for variable, before, gradient, after in zip(variables, w0, g, values(variables)):
    penalty_gradient = before if variable is kernel else 0.0  # ...and the step follows it.
    np.testing.assert_allclose(after, before - lr * (gradient + penalty_gradient), atol=1e-6)
