"""Synthesizer S: (foreground cut-out, background) -> 6 raw affine parameters (paper §3.4, A.1).

A shared low-level backbone extracts identical features from the foreground and the background; parallel
mid-level branches (convolution, ReLU, BatchNorm bottlenecks) specialise them; a regression head of a
convolution and fully connected layers maps their concatenation to the parameters. The compositor clamps
the raw outputs into affNIST's ranges. Dropout in the head is the paper's source of diversity: with it
active, one foreground yields many transforms (paper Table 2, "Dropout"). Optionally S also takes a noise
vector, joined to the regression head's features: with a diversity penalty on the batch of transforms
(losses.energy_distance), it gives S a direct way to spread its outputs instead of collapsing onto the
frozen target's single weakest transform. BatchNorm statistics are synchronised across replicas, so a
step under MirroredStrategy equals the single-device step on the same global batch.
"""

from __future__ import annotations

import itertools
from typing import Callable, Iterator

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from terse_tf.compositor import NUM_PARAMS

# Xavier (Glorot) uniform with gain 0.4 (A.1): limit = gain * sqrt(6 / (fan_in + fan_out)), i.e. a
# VarianceScaling of scale gain^2 over the fan average.
XAVIER_GAIN = 0.4
DROPOUT_LAYER, OUTPUT_LAYER = "regression_dropout", "raw_params"


def xavier_initializer(seed: int | None = None) -> keras.initializers.Initializer:
  return keras.initializers.VarianceScaling(XAVIER_GAIN ** 2, mode="fan_avg", distribution="uniform",
                                            seed=seed)


def layer_seeds(seed: int | None) -> Iterator[int | None]:
  """One seed per layer, each drawing an independent stream, all fixed by `seed`; None when unseeded.

  A Keras initializer given an integer seed draws the same stateless stream every time: one seed shared by
  every layer makes same-shaped kernels bit-identical and the others scaled prefixes of one stream. The
  layer's index is hashed with the seed (numpy's SeedSequence), so nearby seeds (a per-cycle reset uses
  seed * 1000 + cycle) do not share streams either.
  """
  for index in itertools.count():
    yield None if seed is None else int(np.random.SeedSequence([seed, index]).generate_state(1)[0] >> 1)


def build_synthesizer(image_shape: tuple[int, int, int], width: int = 32, dropout_rate: float = 0.3,
                      noise_dim: int = 0, seed: int | None = None) -> keras.Model:
  """Keras model with inputs `foreground` (premultiplied colour) and `background`, both `image_shape`,
  and with `noise_dim` > 0 a third, `noise` [noise_dim] (standard normal)."""
  seeds = layer_seeds(seed)
  init = lambda: xavier_initializer(next(seeds))

  def conv(filters, strides=1, name=None):
    return layers.Conv2D(filters, 3, strides=strides, padding="same", kernel_initializer=init(), name=name)

  backbone = keras.Sequential([
      conv(width // 2, strides=2, name="conv1"), layers.LeakyReLU(0.2),
      conv(width, strides=2, name="conv2"), layers.LeakyReLU(0.2),
  ], name="shared_backbone")

  def mid_level_branch(name):
    return keras.Sequential([
        conv(width, name="bottleneck1"), layers.ReLU(), layers.BatchNormalization(synchronized=True),
        conv(width, name="bottleneck2"), layers.ReLU(), layers.BatchNormalization(synchronized=True),
    ], name=name)

  foreground = keras.Input(image_shape, name="foreground")
  background = keras.Input(image_shape, name="background")
  features = layers.Concatenate(name="mid_level_features")([
      mid_level_branch("foreground_branch")(backbone(foreground)),
      mid_level_branch("background_branch")(backbone(background)),
  ])
  x = conv(width, strides=2, name="regression_conv")(features)
  x = layers.LeakyReLU(0.2)(x)
  x = layers.Flatten()(x)
  inputs = [foreground, background]
  if noise_dim:
    noise = keras.Input((noise_dim,), name="noise")
    inputs.append(noise)
    x = layers.Concatenate(name="features_and_noise")([x, noise])
  x = layers.Dense(2 * width, kernel_initializer=init(), name="regression_fc1")(x)
  x = layers.LeakyReLU(0.2)(x)
  x = layers.Dropout(dropout_rate, seed=next(seeds), name=DROPOUT_LAYER)(x)
  raw_params = layers.Dense(NUM_PARAMS, kernel_initializer=init(), name=OUTPUT_LAYER)(x)
  return keras.Model(inputs, raw_params, name="synthesizer")


def noise_dim(model: keras.Model) -> int:
  """Length of the synthesizer's noise input, 0 when it has none."""
  return model.inputs[2].shape[-1] if len(model.inputs) > 2 else 0


def _inputs(model: keras.Model, foreground: tf.Tensor, background: tf.Tensor,
            noise_seed: tf.Tensor | None = None) -> list[tf.Tensor]:
  """S's inputs for a batch: the images, and a standard-normal draw if S takes noise (one vector per
  example, or per object for a scene synthesizer): fresh each call, or a function of `noise_seed`."""
  inputs = [foreground, background]
  if noise_dim(model):
    shape = [tf.shape(foreground)[0], *model.inputs[2].shape[1:]]
    inputs.append(tf.random.normal(shape) if noise_seed is None else tf.random.stateless_normal(shape, noise_seed))
  return inputs


def raw_params(model: keras.Model, foreground: tf.Tensor, background: tf.Tensor, training: bool,
               noise_seed: tf.Tensor | None = None) -> tf.Tensor:
  """S's raw parameters [B, 6] for premultiplied foregrounds and backgrounds [B, H, W, C]; S's noise, if it
  takes any, drawn afresh or from `noise_seed` ([2] ints: the trainer's steps, so that a resumed run draws
  what an uninterrupted one would)."""
  return model(_inputs(model, foreground, background, noise_seed), training=training)


def sampler(model: keras.Model) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
  """A function (foreground, background) -> raw parameters [B, 6] of `model` with its dropout active and
  every other layer in inference mode: the stochastic S that filled the cache, servable (BatchNorm uses its
  moving averages, so a served batch of any size or content gets the same treatment)."""
  features = keras.Model(model.inputs, model.get_layer(DROPOUT_LAYER).input)
  dropout, head = model.get_layer(DROPOUT_LAYER), model.get_layer(OUTPUT_LAYER)

  def sample(foreground: tf.Tensor, background: tf.Tensor) -> tf.Tensor:
    features_in_inference = features(_inputs(model, foreground, background), training=False)
    return head(dropout(features_in_inference, training=True))

  return sample


def seeded_sampler(model: keras.Model) -> Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]:
  """`sampler` with its randomness keyed by a `seed` [2] int32 argument: dropout masks and noise come from
  stateless RNGs, so the same inputs and seed give the same parameters in any process. The dataset generator
  rests on it: a shard is a function of its seed, so a resumed run rewrites exactly what a killed one lost."""
  features = keras.Model(model.inputs, model.get_layer(DROPOUT_LAYER).input)
  rate, head = model.get_layer(DROPOUT_LAYER).rate, model.get_layer(OUTPUT_LAYER)

  def sample(foreground: tf.Tensor, background: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    noise_seed, dropout_seed = tf.unstack(tf.random.split(seed, 2))
    inputs = [foreground, background]
    if noise_dim(model):
      inputs.append(tf.random.stateless_normal([tf.shape(foreground)[0], *model.inputs[2].shape[1:]], noise_seed))
    x = features(inputs, training=False)
    if rate:
      x = tf.nn.experimental.stateless_dropout(x, rate, dropout_seed)
    return head(x)

  return sample


SEED_SPEC = tf.TensorSpec([2], tf.int32, name="seed")


def serving_endpoints(model: keras.Model, endpoint: Callable[[Callable], Callable],
                      input_signature: list[tf.TensorSpec]) -> dict[str, tuple[Callable, list[tf.TensorSpec]]]:
  """The exported S's three signatures, built by `endpoint` from a raw-parameter function: serving_default,
  S in inference mode; sample, S with its dropout on (`sampler`); and generate, sample with one more input,
  `seed` [2] int32, that fixes its dropout and noise (`seeded_sampler`)."""
  def inference(foreground: tf.Tensor, background: tf.Tensor) -> tf.Tensor:
    return raw_params(model, foreground, background, training=False)

  seeded = seeded_sampler(model)

  def generate(*inputs: tf.Tensor) -> dict[str, tf.Tensor]:
    *task_inputs, seed = inputs
    return endpoint(lambda foreground, background: seeded(foreground, background, seed))(*task_inputs)

  return {"serving_default": (endpoint(inference), input_signature),
          "sample": (endpoint(sampler(model)), input_signature),
          "generate": (generate, [*input_signature, SEED_SPEC])}
