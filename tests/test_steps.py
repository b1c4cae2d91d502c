"""The trainer's single steps against hand computations: weight decay, which player each step moves, S's
gradient from T's loss and D's verdict, what S's steps do to T's loss, what the cache stores, and
MirroredStrategy against one device."""

import contextlib
import dataclasses
import json
import subprocess
import sys
import textwrap
from typing import NamedTuple

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import DETECTION_SMOKE_FLAGFILE, REPO_ROOT, smoke_config, synth_batches
from terse_tf import config as config_lib, losses, steps, trainer as trainer_lib
from terse_tf.cache import as_stored
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


@pytest.mark.slow
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


# ------------------------------------------------------------------ S's step against one tape, with T and D
@pytest.fixture(scope="module")
def detection_trainer(tmp_path_factory):
  """A photo_digits smoke trainer (S, SSD T, D), nothing trained, whose S step draws no randomness: S
  without dropout or noise, no diversity penalty. Tests leave its weights and optimizers as they found them."""
  config = smoke_config(str(tmp_path_factory.mktemp("detection")), flagfile=DETECTION_SMOKE_FLAGFILE,
                        synth_dropout=0.0, synth_noise_dim=0, diversity_weight=0.0, export=False)
  return trainer_lib.Trainer(config)


@contextlib.contextmanager
def restored(variables):
  """Puts `variables` back as they were on leaving."""
  saved = values(variables)
  try:
    yield
  finally:
    for variable, value in zip(variables, saved):
      variable.assign(value)


class HandSynthStep(NamedTuple):
  """S's loss terms on one batch at S's present weights, and the gradient of each with respect to S's
  trainable variables (numpy, in their order)."""
  images: tf.Tensor         # The composites on the cache's 8-bit grid, which T and D judge.
  labels: dict
  target_loss: float
  adversarial: float
  target_gradient: list     # Of T's loss (S descends its negative).
  adversarial_gradient: list
  decay_gradient: list      # Of the coupled L2 term, decay * w.


def hand_synth_step(trainer, batch) -> HandSynthStep:
  """One tape, here, over what eq. 3 says S's step is: S (training mode, as in its step) places the
  objects, T and D (frozen: inference mode) judge the 8-bit composites; T's loss is its SSD loss, D's term
  the mean cross-entropy of D calling them real."""
  players = trainer.players
  variables = players.synthesizer.trainable_variables
  with restored(players.synthesizer.variables):  # S's BatchNorm statistics move in training mode.
    with tf.GradientTape(persistent=True) as tape:
      composition = trainer.task.compose(
          lambda foreground, background: synthesizer.raw_params(players.synthesizer, foreground, background,
                                                                training=True), batch)
      images = as_stored(composition.images)
      target_outputs = players.target.model(images, training=False)
      target_loss = players.target.replica_loss(target_outputs, composition.labels)
      adversarial = tf.reduce_mean(losses.synthesizer_adversarial_loss(
          players.discriminator(images, training=False)))
    target_gradient, adversarial_gradient = (
        [g.numpy() for g in tape.gradient(term, variables)] for term in (target_loss, adversarial))
  decay = trainer.config.synth_weight_decay if trainer.config.weight_decay_mode == "coupled" else 0.0
  return HandSynthStep(images, composition.labels, float(target_loss), float(adversarial), target_gradient,
                       adversarial_gradient, [decay * v.numpy() for v in variables])


def sgd_synth_gradient(trainer, settings, batch, lr=1e3):
  """S's gradient in its step: steps.synth_step with the trainer's players, strategy and compose, but with
  `settings` and a plain SGD optimizer in place of S's Adam (in a copy of the players), so that S moves by
  exactly -lr * its gradient; S is put back after. A large lr keeps the update far above float32's spacing
  at S's weights. Run eagerly (a trace costs seconds; the trainer's compiled step is checked below).
  Returns (outputs, the gradient per trainable variable)."""
  variables = trainer.synthesizer.trainable_variables
  optimizer = keras.optimizers.SGD(lr)
  optimizer.build(variables)
  players = trainer.players._replace(synth_optimizer=optimizer)
  step_seed = tf.stack([tf.constant(trainer.config.seed, tf.int64), trainer.synth_global_step.read_value()])
  with restored(trainer.synthesizer.variables):
    before = values(variables)
    outputs, _ = steps.synth_step(players, trainer.strategy, settings, trainer.task.compose, batch, step_seed)
    return outputs, [(b - a) / lr for b, a in zip(before, values(variables))]


def scaled_error(actual, expected):
  """max |actual - expected| over a variable, relative to the largest |expected| in it (its gradient's
  scale: float32 convolutions summed in another order move the small entries by that scale's ulps)."""
  return np.abs(actual - expected).max() / np.abs(expected).max()


def test_synthesizer_step_descends_the_hand_gradient_of_ts_loss_and_ds_verdict(detection_trainer):
  """S's real step against one tape here: S descends -T's loss + discriminator_weight * D's realism term
  (+ the coupled decay), and with discriminator_weight 0 its gradient lacks exactly the weighted gradient of
  D's term. A step that stopped D's gradient, dropped its term or showed D anything but the composites
  fails here: D's part of every variable's gradient is at least 5x the tolerance (the least is a BatchNorm
  scale's, whose gradient the coupled decay of its weights at 1 dominates)."""
  trainer = detection_trainer
  batch = next(iter(synth_batches(trainer, 0)))[0]
  settings = steps.StepSettings.of(trainer.config, trainer.task.num_classes)
  weight = settings.discriminator_weight
  assert weight > 0 and trainer.discriminator is not None
  hand = hand_synth_step(trainer, batch)
  outputs, gradient = sgd_synth_gradient(trainer, settings, batch)
  _, without_d = sgd_synth_gradient(trainer, dataclasses.replace(settings, discriminator_weight=0.0), batch)

  paths = [v.path for v in trainer.synthesizer.trainable_variables]
  for path, actual, actual_without_d, t, d, decay in zip(paths, gradient, without_d, hand.target_gradient,
                                                        hand.adversarial_gradient, hand.decay_gradient):
    expected = -t + weight * d + decay
    error = scaled_error(actual, expected)
    assert error < 1e-3, (path, error)
    error = scaled_error(actual_without_d, expected - weight * d)
    assert error < 1e-3, ("without D's term", path, error)
    assert np.abs(weight * d).max() > 5e-3 * np.abs(expected).max(), path  # D's part counts.
  np.testing.assert_allclose(float(outputs.adversarial), hand.adversarial, rtol=1e-4)
  np.testing.assert_allclose(float(outputs.loss), -hand.target_loss + weight * hand.adversarial, rtol=1e-4)


def adam_first_moments(optimizer, variables):
  """Adam's first moment of each variable (Keras 3 names it after the variable's path)."""
  by_name = {v.name: v for v in optimizer.variables}
  return [by_name[variable.path.replace("/", "_") + "_momentum"].numpy() for variable in variables]


def test_a_detection_synthesizer_step_reports_ts_ssd_loss_and_judgement_and_takes_adams_step(
    detection_trainer):
  """The trainer's own S step (its tf.function, settings and Adam) on a photo_digits batch, SSD T and D
  playing, against one tape here: T judged the composites and labels the tape makes, its reported loss is
  T's SSD loss on them and the hardness and quota class T's judgement of them; and S took Adam's first step
  of the hand gradient of -T's loss + discriminator_weight * D's term (+ the coupled decay). After a first
  step from zero, Adam's first moment is (1 - beta_1) * the gradient, and S moved by lr * g / (|g| + eps /
  sqrt(1 - beta_2)) per weight."""
  trainer = detection_trainer
  target, optimizer = trainer.target, trainer.players.synth_optimizer
  assert int(optimizer.iterations.numpy()) == 0
  batch = next(iter(synth_batches(trainer, 1)))[0]
  hand = hand_synth_step(trainer, batch)
  variables = trainer.synthesizer.trainable_variables
  with restored(trainer.synthesizer.variables + optimizer.variables):
    before = values(variables)
    outputs, composites = trainer._synth_step(batch)
    moved = [b - a for b, a in zip(before, values(variables))]
    gradient = [m / (1.0 - optimizer.beta_1) for m in adam_first_moments(optimizer, variables)]

  # The composites are the tape's (a pixel may round to the next 8-bit level), with its labels...
  difference = np.abs(outputs.composites.numpy() - hand.images.numpy())
  assert difference.max() <= 1.0 / 255.0 + 1e-6 and np.mean(difference > 1e-6) < 1e-3
  np.testing.assert_array_equal(composites.numpy(), outputs.composites.numpy())  # What D's step takes.
  for key in ("classes", "count"):
    np.testing.assert_array_equal(outputs.labels[key].numpy(), hand.labels[key].numpy(), err_msg=key)
  np.testing.assert_allclose(outputs.labels["boxes"].numpy(), hand.labels["boxes"].numpy(), atol=1e-5)
  # ...T's loss the SSD loss on them (summed over replicas: one here)...
  target_outputs = target.model(outputs.composites, training=False)
  recomputed = float(target.replica_loss(target_outputs, outputs.labels))
  np.testing.assert_allclose(float(outputs.target_loss), recomputed, rtol=1e-4)
  np.testing.assert_allclose(float(outputs.target_loss), hand.target_loss, rtol=1e-4)
  np.testing.assert_allclose(float(outputs.adversarial), hand.adversarial, rtol=1e-4)
  weight = trainer.config.discriminator_weight
  np.testing.assert_allclose(float(outputs.loss), -hand.target_loss + weight * hand.adversarial, rtol=1e-4)
  # ...T's judgement of them the step's hardness and quota class...
  judgement = target.judge(target_outputs, outputs.labels)
  np.testing.assert_allclose(outputs.hardness.numpy(), judgement.hardness.numpy(), atol=1e-5)
  np.testing.assert_array_equal(outputs.quota_class.numpy(), judgement.quota_class.numpy())
  assert outputs.hardness.numpy().min() < 1.0  # Some scene has an object for T to judge.
  # ...and S's gradient the tape's, of which Adam took its first step.
  lr, epsilon = trainer.config.synth_lr, optimizer.epsilon / np.sqrt(1.0 - optimizer.beta_2)
  for variable, g, step, t, d, decay in zip(variables, gradient, moved, hand.target_gradient,
                                            hand.adversarial_gradient, hand.decay_gradient):
    error = scaled_error(g, -t + weight * d + decay)
    assert error < 1e-3, (variable.path, error)
    np.testing.assert_allclose(step, lr * g / (np.abs(g) + epsilon), rtol=1e-4, atol=1e-3 * lr,
                               err_msg=variable.path)
