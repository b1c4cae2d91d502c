"""Synthesizer S: (foreground cut-out, background) -> 6 raw affine parameters (paper §3.4, A.1).

A shared low-level backbone extracts identical features from the foreground and the background; parallel
mid-level branches (convolution, ReLU, BatchNorm bottlenecks) specialise them; a regression head of a
convolution and fully connected layers maps their concatenation to the parameters. The compositor clamps
the raw outputs into affNIST's ranges. Dropout in the head is the paper's source of diversity: with it
active, one foreground yields many transforms (paper Table 2, "Dropout"). Optionally S also takes a noise
vector, joined to the regression head's features: with a diversity penalty on the batch of transforms
(losses.energy_distance), it gives S a direct way to spread its outputs instead of collapsing onto the
frozen target's single weakest transform.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

from terse_tf.compositor import NUM_PARAMS

# Xavier (Glorot) uniform with gain 0.4 (A.1): limit = gain * sqrt(6 / (fan_in + fan_out)), i.e. a
# VarianceScaling of scale gain^2 over the fan average.
XAVIER_GAIN = 0.4


def xavier_initializer(seed: int | None = None) -> keras.initializers.Initializer:
  return keras.initializers.VarianceScaling(XAVIER_GAIN ** 2, mode="fan_avg", distribution="uniform",
                                            seed=seed)


def build_synthesizer(image_shape: tuple[int, int, int], width: int = 32, dropout_rate: float = 0.3,
                      noise_dim: int = 0, seed: int | None = None) -> keras.Model:
  """Keras model with inputs `foreground` (premultiplied colour) and `background`, both `image_shape`,
  and with `noise_dim` > 0 a third, `noise` [noise_dim] (standard normal)."""
  init = lambda: xavier_initializer(seed)  # A fresh initializer per layer: a seeded one repeats itself.

  def conv(filters, strides=1, name=None):
    return layers.Conv2D(filters, 3, strides=strides, padding="same", kernel_initializer=init(), name=name)

  backbone = keras.Sequential([
      conv(width // 2, strides=2, name="conv1"), layers.LeakyReLU(0.2),
      conv(width, strides=2, name="conv2"), layers.LeakyReLU(0.2),
  ], name="shared_backbone")

  def mid_level_branch(name):
    return keras.Sequential([
        conv(width, name="bottleneck1"), layers.ReLU(), layers.BatchNormalization(),
        conv(width, name="bottleneck2"), layers.ReLU(), layers.BatchNormalization(),
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
  x = layers.Dropout(dropout_rate, seed=seed)(x)
  raw_params = layers.Dense(NUM_PARAMS, kernel_initializer=init(), name="raw_params")(x)
  return keras.Model(inputs, raw_params, name="synthesizer")


def noise_dim(model: keras.Model) -> int:
  """Length of the synthesizer's noise input, 0 when it has none."""
  return model.inputs[2].shape[-1] if len(model.inputs) > 2 else 0


def raw_params(model: keras.Model, foreground: tf.Tensor, background: tf.Tensor,
               training: bool) -> tf.Tensor:
  """S's raw parameters [B, 6] for premultiplied foregrounds and backgrounds [B, H, W, C]; draws S's
  noise, if it takes any, here."""
  inputs = [foreground, background]
  if noise_dim(model):
    inputs.append(tf.random.normal([tf.shape(foreground)[0], noise_dim(model)]))
  return model(inputs, training=training)
