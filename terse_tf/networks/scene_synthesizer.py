"""Synthesizer S for natural images (paper A.2): (object cut-out, scene) -> 6 raw affine parameters.

As the digit synthesizer (synthesizer.py, §3.4): one convolutional backbone, shared by the foreground and
the background, extracts the same low-level features of both; parallel mid-level branches, one for the
foreground and one for the background, specialise them (two bottlenecks each of a 3x3 convolution, ReLU
and BatchNorm, synchronised across replicas), and each branch's output is pooled globally. A.2's addition,
an extra mid-level branch on the background alone, keeps where things are in the scene (a strided
convolution on the backbone's middle layer, pooled to a coarse grid and flattened). Fully connected layers
map the concatenation to the parameters, with dropout before the last one as S's source of variety (the
same layer names as the digit synthesizer, so `synthesizer.sampler` and the export treat both alike and run
the BatchNorms on their moving averages). Backbones:
  "vgg16": VGG16's convolutions (`keras.applications.VGG16`, `weights` None offline, "imagenet" or a local
      file), the layout branch from block3; inputs get VGG16's own preprocessing inside the model.
  "compact": four strided 3x3 convolutions, the layout branch from the second, for runs on a few CPU cores.
The mid-level branches have 2 x `width` channels, the compact backbone's output width (a bottleneck from
VGG16's 512). Foreground and background differ in size (40x40 cut-outs in a 128x128 scene). S places every
object of a scene in one call: foregrounds [B, N, h, w, 3] and backgrounds [B, H, W, 3] give parameters
[B, N, 6]; the background goes through the backbone once per scene, not once per object. With `noise_dim` > 0
each object also gets its own standard-normal noise vector: identical cut-outs in one scene then need not
land on the same spot, and with a diversity penalty S has a direct way to spread its placements.
"""

from __future__ import annotations

import keras
from keras import layers

from terse_tf.compositor import NUM_PARAMS
from terse_tf.networks import vgg16
from terse_tf.networks.synthesizer import DROPOUT_LAYER, OUTPUT_LAYER, layer_seeds, xavier_initializer

BACKBONES = ("compact", "vgg16")


def _compact_backbone(width: int, seeds) -> tuple[keras.Model, keras.Model]:
  """(whole backbone, its first half as the mid-level feature extractor), on images of any size."""
  images = keras.Input((None, None, 3))
  x, mid = images, None
  for i, filters in enumerate((width // 2, width, 2 * width, 2 * width)):
    x = layers.Conv2D(filters, 3, strides=2, padding="same", kernel_initializer=xavier_initializer(next(seeds)),
                      name=f"backbone_conv{i + 1}")(x)
    x = layers.LeakyReLU(0.2)(x)
    if i == 1:
      mid = x
  return keras.Model(images, x, name="shared_backbone"), keras.Model(images, mid, name="mid_level_backbone")


def _vgg16_backbone(weights: str | None) -> tuple[keras.Model, keras.Model]:
  vgg = vgg16.vgg16(weights, input_shape=(None, None, 3))
  return vgg, keras.Model(vgg.input, vgg.get_layer("block3_conv3").output, name="vgg16_block3")


def build_scene_synthesizer(foreground_shape: tuple[int, int, int], background_shape: tuple[int, int, int],
                            num_objects: int, backbone: str = "compact", width: int = 32,
                            dropout_rate: float = 0.3, noise_dim: int = 0, weights: str | None = None,
                            seed: int | None = None) -> keras.Model:
  """Keras model with inputs `foreground` ([num_objects, h, w, 3] premultiplied colour) and `background`
  ([H, W, 3]), floats in [0, 1], with `noise_dim` > 0 a third, `noise` [num_objects, noise_dim], and raw
  parameters [num_objects, 6] out."""
  seeds = layer_seeds(seed)
  if backbone == "compact":
    shared, mid_level = _compact_backbone(width, seeds)
    preprocess = lambda x: x
  elif backbone == "vgg16":
    shared, mid_level = _vgg16_backbone(weights)
    preprocess = lambda x: keras.applications.vgg16.preprocess_input(x * 255.0)
  else:
    raise ValueError(f"synthesizer backbone must be one of {BACKBONES}, got {backbone!r}")

  def mid_level_branch(name: str) -> keras.Sequential:
    # BatchNorm's moving averages at momentum 0.9 (PyTorch's 0.1): S trains for tens of steps a cycle, and the
    # frozen S (the generation pass, D's fakes, the export) runs on those averages; at Keras's 0.99 half of
    # them would still be their initial 0 and 1 after 80 steps.
    return keras.Sequential([
        layer for i in (1, 2) for layer in (
            layers.Conv2D(2 * width, 3, padding="same", kernel_initializer=xavier_initializer(next(seeds)),
                          name=f"bottleneck{i}"),
            layers.ReLU(), layers.BatchNormalization(momentum=0.9, synchronized=True))], name=name)

  foreground = keras.Input((num_objects, *foreground_shape), name="foreground")
  background = keras.Input(background_shape, name="background")
  fg, bg = preprocess(foreground), preprocess(background)
  pool = layers.GlobalAveragePooling2D
  object_features = layers.TimeDistributed(keras.Sequential(
      [shared, mid_level_branch("foreground_branch"), pool()]), name="foreground_features")(fg)
  background_layout = layers.Conv2D(width, 3, strides=2, padding="same", activation="relu",
                                    kernel_initializer=xavier_initializer(next(seeds)),
                                    name="background_layout_branch")(mid_level(bg))
  scene_features = layers.Concatenate(name="scene_features")([
      pool(name="background_pool")(mid_level_branch("background_branch")(shared(bg))),
      layers.Flatten(name="background_layout")(
          layers.AveragePooling2D(4, padding="same", name="layout_pool")(background_layout)),
  ])
  per_object = [object_features, layers.RepeatVector(num_objects, name="per_object")(scene_features)]
  inputs = [foreground, background]
  if noise_dim:
    noise = keras.Input((num_objects, noise_dim), name="noise")
    inputs.append(noise)
    per_object.append(noise)
  features = layers.Concatenate(name="features")(per_object)
  x = layers.Dense(4 * width, kernel_initializer=xavier_initializer(next(seeds)),
                   name="regression_fc1")(features)
  x = layers.LeakyReLU(0.2)(x)
  x = layers.Dropout(dropout_rate, seed=next(seeds), name=DROPOUT_LAYER)(x)
  raw_params = layers.Dense(NUM_PARAMS, kernel_initializer=xavier_initializer(next(seeds)), name=OUTPUT_LAYER)(x)
  return keras.Model(inputs, raw_params, name=f"scene_synthesizer_{backbone}")
