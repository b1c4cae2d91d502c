"""The three players and one step of each (paper §3, eq. 1-3): T's SGD step, D's Adam step, S's Adam step
against T and D. Each step has its own tape and optimizer and updates only its player; each is a function of
the players, the strategy, the step's settings and a global batch (TF-GAN's GANModel / GANTrainOps in
spirit), called by the trainer inside its own tf.function.

Losses are summed over replicas: every per-example loss is divided by the global batch
(tf.nn.compute_average_loss, or the target's loss), and every batch-level term (decay, a model's own
penalties, the diversity penalty) by the number of replicas, so that the optimizer's sum over replicas is the
single-device loss.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import keras
import tensorflow as tf

from terse_tf import losses
from terse_tf.cache import as_stored
from terse_tf.config import TrainConfig
from terse_tf.networks import discriminator as discriminator_lib
from terse_tf.networks import synthesizer as synthesizer_lib
from terse_tf.targets.base import Target
from terse_tf.tasks import Composition, Task


class Players(NamedTuple):
  """Who plays: S, T and (optionally) D, each with its optimizer."""
  synthesizer: keras.Model
  target: Target
  discriminator: keras.Model | None
  synth_optimizer: keras.optimizers.Optimizer
  target_optimizer: keras.optimizers.Optimizer
  discriminator_optimizer: keras.optimizers.Optimizer | None


@dataclasses.dataclass(frozen=True)
class StepSettings:
  """What the steps read of the config: the loss weights and the decay."""
  coupled_decay: bool           # The L2 term joins each loss (else the optimizers decay the weights).
  target_weight_decay: float
  synth_weight_decay: float
  diversity_weight: float
  diversity_per_class: bool
  discriminator_weight: float
  num_classes: int

  @classmethod
  def of(cls, config: TrainConfig, num_classes: int) -> StepSettings:
    return cls(coupled_decay=config.weight_decay_mode == "coupled",
               target_weight_decay=config.target_weight_decay, synth_weight_decay=config.synth_weight_decay,
               diversity_weight=config.diversity_weight, diversity_per_class=config.diversity_per_class,
               discriminator_weight=config.discriminator_weight, num_classes=num_classes)


def build_players(task: Task, config: TrainConfig) -> Players:
  """New players and optimizers as the config says (call inside the strategy's scope): T SGD with momentum
  (A.1), S Adam, D pix2pixHD's Adam (beta_1 0.5)."""
  # With coupled decay the optimizers decay nothing themselves: the L2 term joins each player's loss.
  decoupled = config.weight_decay_mode == "decoupled"
  target = task.build_target()
  synthesizer = task.build_synthesizer(seed=config.seed)
  target_optimizer = keras.optimizers.SGD(config.target_lr, momentum=config.target_momentum,
                                          weight_decay=config.target_weight_decay if decoupled else None)
  synth_optimizer = keras.optimizers.Adam(config.synth_lr,
                                          weight_decay=config.synth_weight_decay if decoupled else None)
  # Built here, before any tf.function step: under MirroredStrategy a lazily built Keras 3 optimizer fails
  # inside the first step ("You must feed a value for placeholder tensor").
  target_optimizer.build(target.model.trainable_variables)
  synth_optimizer.build(synthesizer.trainable_variables)
  discriminator = discriminator_optimizer = None
  if config.discriminator:
    discriminator = discriminator_lib.build_discriminator(task.image_shape, config.discriminator_scales,
                                                          config.discriminator_width, seed=config.seed + 7)
    discriminator_optimizer = keras.optimizers.Adam(config.discriminator_lr, beta_1=0.5)
    discriminator_optimizer.build(discriminator.trainable_variables)
  return Players(synthesizer, target, discriminator, synth_optimizer, target_optimizer, discriminator_optimizer)


def dropout_seed_states(players: Players) -> list[tf.Variable]:
  """Where the players' dropout layers are in their random streams (Keras seed generators, which a model's
  checkpoint leaves out): the trainer keeps them in its checkpoint, so that a resumed run draws the masks an
  uninterrupted one would."""
  models = [players.synthesizer, players.target.model, players.discriminator]
  return [variable for model in models if model is not None for variable in model.variables
          if getattr(variable, "path", "").endswith("seed_generator_state")]


def reset_synthesizer(players: Players, fresh: keras.Model) -> None:
  """S takes a fresh S's weights, and its optimizer starts over: the step count and Adam's moments, not the
  learning rate."""
  for variable, value in zip(players.synthesizer.variables, fresh.variables):
    variable.assign(value)
  for variable in players.synth_optimizer.variables:
    if variable.name != "learning_rate":
      variable.assign(tf.zeros_like(variable))


class SynthStepOutputs(NamedTuple):
  """What one synthesizer step produces, gathered over replicas."""
  loss: tf.Tensor                # scalar, S's loss (without decay).
  target_loss: tf.Tensor         # scalar, T's loss on the composites, which S maximises.
  diversity: tf.Tensor           # scalar, energy distance of the batch's transforms to the uniform box.
  adversarial: tf.Tensor         # scalar, S's realism term (0 without D).
  params: tf.Tensor              # [B, ..., 6] clamped affine parameters.
  pasted: tf.Tensor              # [B, ...] int32, 1 where a row of params is an object (not an empty slot).
  composites: tf.Tensor          # [B, H, W, C] on the cache's 8-bit grid, as T judged them.
  labels: dict                   # The composites' labels, as T takes them.
  hardness: tf.Tensor            # [B] T's hardness score.
  quota_class: tf.Tensor         # [B]


def decay_term(variables: list[tf.Variable], weight: float, settings: StepSettings, replicas: int) -> tf.Tensor:
  """This replica's share of the coupled L2 term (0 under decoupled decay)."""
  if not settings.coupled_decay or not weight:
    return tf.constant(0.0)
  return losses.l2_penalty(variables, weight) / replicas


def model_penalties(model: keras.Model, replicas: int) -> tf.Tensor:
  """This replica's share of the penalties a model's own layers add (Keras `losses`: a user's
  kernel_regularizer, say), read after the model's call."""
  if not model.losses:
    return tf.constant(0.0)
  return tf.add_n(model.losses) / replicas


def target_step(players: Players, strategy: tf.distribute.Strategy, settings: StepSettings, batch) -> tf.Tensor:
  """One SGD step of T (eq. 1) on a global batch (images, labels); returns T's mean loss on it (without the
  decay term and the model's own penalties)."""
  target, optimizer = players.target, players.target_optimizer
  replicas = strategy.num_replicas_in_sync

  def replica_step(images, labels):
    variables = target.model.trainable_variables
    with tf.GradientTape() as tape:
      loss = target.loss(images, labels, training=True)
      regularized = (loss + decay_term(variables, settings.target_weight_decay, settings, replicas) +
                     model_penalties(target.model, replicas))
    optimizer.apply_gradients(zip(tape.gradient(regularized, variables), variables))
    return loss

  return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_step, args=batch), axis=None)


def discriminator_step(players: Players, strategy: tf.distribute.Strategy, real, composites
                       ) -> tuple[tf.Tensor, tf.Tensor]:
  """One Adam step of D (eq. 2) on real images against S's composites, S and T frozen; returns D's mean loss
  and the share of its patches it got right."""
  discriminator, optimizer = players.discriminator, players.discriminator_optimizer
  replicas = strategy.num_replicas_in_sync

  def replica_step(real_images, composite_images):
    variables = discriminator.trainable_variables
    with tf.GradientTape() as tape:
      real_logits = discriminator(real_images, training=True)
      composite_logits = discriminator(composite_images, training=True)
      loss = tf.nn.compute_average_loss(losses.discriminator_loss(real_logits, composite_logits))
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    return loss, losses.discriminator_accuracy(real_logits, composite_logits) / replicas

  per_replica = strategy.run(replica_step, args=(real, composites))
  return tuple(strategy.reduce(tf.distribute.ReduceOp.SUM, x, axis=None) for x in per_replica)


def diversity(composition: Composition, seed: tf.Tensor, settings: StepSettings) -> tf.Tensor:
  """The energy distance of the batch's normalised transforms to as many drawn uniformly from the box
  (per class with diversity_per_class)."""
  uniform = tf.random.stateless_uniform(tf.shape(composition.normalized), seed, -1.0, 1.0)
  if settings.diversity_per_class:
    return losses.class_conditional_energy_distance(composition.normalized, uniform,
                                                    composition.object_classes, settings.num_classes)
  return losses.energy_distance(composition.normalized, uniform)


def synth_step(players: Players, strategy: tf.distribute.Strategy, settings: StepSettings,
               compose: Callable[..., Composition], batch, step_seed: tf.Tensor
               ) -> tuple[SynthStepOutputs, object]:
  """One Adam step of S against T and D (eq. 3), T and D frozen: S maximises T's loss on its composites
  while D calls them real (and the diversity penalty spreads its transforms). `compose` is the task's;
  `step_seed` [2] int64 seeds the step's random draws (S's noise, the penalty's uniform sample). Returns the
  outputs gathered over replicas, and the composites per replica, which D's step in lockstep takes."""
  synthesizer, target, discriminator = players.synthesizer, players.target, players.discriminator
  replicas = strategy.num_replicas_in_sync

  def replica_step(synth_batch, step_seed):
    variables = synthesizer.trainable_variables
    replica_seed = tf.random.experimental.stateless_fold_in(
        step_seed, tf.distribute.get_replica_context().replica_id_in_sync_group)
    noise_seed, diversity_seed = tf.unstack(tf.random.split(replica_seed, 2))
    with tf.GradientTape() as tape:
      composition = compose(
          lambda foreground, background: synthesizer_lib.raw_params(synthesizer, foreground, background,
                                                                    training=True, noise_seed=noise_seed),
          synth_batch)
      # T judges the composite the cache would store (8-bit), so what is cached as hard is hard.
      images = as_stored(composition.images)
      target_loss, judgement = target.frozen_loss_and_verdict(images, composition.labels)  # T not updated.
      # Each replica's batch-level penalty counts 1/replicas, so the sum over replicas is their mean.
      spread = diversity(composition, diversity_seed, settings) / replicas
      adversarial = tf.constant(0.0)
      if discriminator is not None:  # D frozen: called in inference mode, its variables not updated.
        adversarial = tf.nn.compute_average_loss(
            losses.synthesizer_adversarial_loss(discriminator(images, training=False)))
      loss = -target_loss + settings.diversity_weight * spread + settings.discriminator_weight * adversarial
      regularized = (loss + decay_term(variables, settings.synth_weight_decay, settings, replicas) +
                     model_penalties(synthesizer, replicas))
    players.synth_optimizer.apply_gradients(zip(tape.gradient(regularized, variables), variables))
    pasted = tf.cast(composition.pasted, tf.int32)  # strategy.gather takes no bool.
    return ((loss, target_loss, spread, adversarial),
            (composition.params, pasted, images, composition.labels, judgement.hardness, judgement.quota_class))

  scalars, per_example = strategy.run(replica_step, args=(batch, step_seed))
  summed = [strategy.reduce(tf.distribute.ReduceOp.SUM, x, axis=None) for x in scalars]
  gathered = tf.nest.map_structure(lambda x: strategy.gather(x, axis=0), per_example)
  return SynthStepOutputs(*summed, *gathered), per_example[2]


class Generated(NamedTuple):
  """What S, frozen, composes for one batch, and T's judgement of it, gathered over replicas."""
  params: tf.Tensor              # [B, ..., 6] clamped affine parameters.
  pasted: tf.Tensor              # [B, ...] int32, 1 where a row of params is an object.
  composites: tf.Tensor          # [B, H, W, C] on the cache's 8-bit grid, as T judged them.
  labels: dict
  hardness: tf.Tensor            # [B]
  quota_class: tf.Tensor         # [B]


def _frozen_composition(sample: Callable[..., tf.Tensor], compose: Callable[..., Composition], synth_batch,
                        step_seed: tf.Tensor) -> Composition:
  """One replica's composition by S frozen as `sample` draws it, keyed by `step_seed` [2] and the replica."""
  replica_seed = tf.random.experimental.stateless_fold_in(
      step_seed, tf.distribute.get_replica_context().replica_id_in_sync_group)
  return compose(lambda foreground, background: sample(foreground, background, replica_seed), synth_batch)


def generation_step(players: Players, strategy: tf.distribute.Strategy, sample: Callable[..., tf.Tensor],
                    compose: Callable[..., Composition], batch, step_seed: tf.Tensor) -> Generated:
  """S's composites of a global batch with every player frozen, and T's judgement of them (A.2's generation
  pass). `sample` is `synthesizer.seeded_sampler(S)`: S in inference mode with its dropout (and noise) on,
  keyed by `step_seed` [2] and the replica, so a resumed run composes what an uninterrupted one would.
  Returns the outputs gathered from the replicas."""
  target = players.target

  def replica_step(synth_batch, step_seed):
    composition = _frozen_composition(sample, compose, synth_batch, step_seed)
    images = as_stored(composition.images)
    judgement = target.verdict(images, composition.labels)
    pasted = tf.cast(composition.pasted, tf.int32)
    return composition.params, pasted, images, composition.labels, judgement.hardness, judgement.quota_class

  per_example = strategy.run(replica_step, args=(batch, step_seed))
  gathered = tf.nest.map_structure(lambda x: strategy.gather(x, axis=0), per_example)
  return Generated(*gathered)


def frozen_composites(strategy: tf.distribute.Strategy, sample: Callable[..., tf.Tensor],
                      compose: Callable[..., Composition], batch, step_seed: tf.Tensor):
  """generation_step's composites per replica, without T's judgement: the fakes D trains on while S is fixed
  (D's pre-training, D beside T), where a verdict would cost a T forward pass per batch for nothing."""
  return strategy.run(lambda synth_batch, seed: as_stored(
      _frozen_composition(sample, compose, synth_batch, seed).images), args=(batch, step_seed))

