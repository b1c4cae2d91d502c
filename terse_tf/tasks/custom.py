"""A classification task around the user's own Keras classifier and data (terse_tf.api builds it).

The user brings a classifier (images [H, W, C] floats in [0, 1] -> logits), a folder of cut-outs with one
sub-folder per class (data/cutouts.py), photos to crop backgrounds from, and labelled real images. S pastes
one cut-out per background; a composite's label is its cut-out's class. The random-placement baseline puts
cut-outs at uniform parameters over the ranges; evaluation is accuracy on the user's test images.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from terse_tf import compositor as compositor_lib
from terse_tf.data import photos as photos_lib
from terse_tf.data.cutouts import Cutouts, fit
from terse_tf.errors import ConfigError
from terse_tf.networks import synthesizer
from terse_tf.targets.classification import ClassifierTarget
from terse_tf.tasks.base import PastedObjectClassification

# Where S may put a cut-out fitted to the whole image: anywhere it stays in the frame (keep_in_frame), at
# 40-100% of the image's size, turned and sheared moderately.
DEFAULT_RANGES = compositor_lib.AffineRanges(max_rotation_deg=30.0, max_translation_px=1.0, max_shear=0.2,
                                             min_scale=0.4, max_scale=1.0)


@dataclasses.dataclass(frozen=True)
class CustomTaskConfig:
  ranges: compositor_lib.AffineRanges = DEFAULT_RANGES
  num_backgrounds: int = 500    # Random crops of the photos S pastes on.
  synth_width: int = 32
  synth_dropout: float = 0.3
  synth_noise_dim: int = 0
  jit_compile: bool = True


class CustomClassificationTask(PastedObjectClassification):
  """Classification with the user's own classifier, cut-outs, backgrounds and real images."""

  random_source = "random_placement"
  headline = "test_accuracy"

  def __init__(self, model_fn: Callable[[], keras.Model], cutouts: Cutouts, backgrounds: list[np.ndarray],
               real: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
               config: CustomTaskConfig = CustomTaskConfig(), seed: int = 0):
    probe = model_fn()
    self.image_shape = tuple(probe.input_shape[1:])
    if len(self.image_shape) != 3 or None in self.image_shape:
      raise ConfigError(f"the target must take images of a fixed size [H, W, C]; its input is {probe.input_shape}")
    self.num_classes = int(probe.output_shape[-1])
    self.class_names = cutouts.class_names
    if len(self.class_names) != self.num_classes:
      raise ConfigError(f"the cut-outs have {len(self.class_names)} classes ({self.class_names}); the target "
                        f"has {self.num_classes} outputs")
    self.model_fn, self.config = model_fn, config
    self.compositor = compositor_lib.CompositorConfig(ranges=config.ranges)
    height, width, channels = self.image_shape
    fitted = cutouts.images if cutouts.images.shape[1:3] == (height, width) else np.stack(
        [fit(cutout, (height, width)) for cutout in cutouts.images])
    self.cutouts = Cutouts(fitted, cutouts.classes, cutouts.class_names).with_channels(channels + 1)
    self.cutout_classes = cutouts.classes
    crops = photos_lib.random_crops(backgrounds, config.num_backgrounds, max(height, width),
                                    np.random.default_rng(seed)).astype(np.float32) / 255
    crops = tf.image.resize(crops, (height, width), antialias=True).numpy()
    self.backgrounds = crops if channels == 3 else photos_lib.luminance(crops)
    self.real, self.test = (self._checked(real, "real"), self._checked(test, "test"))
    self._composite = tf.function(compositor_lib.composite, jit_compile=config.jit_compile)

  def _checked(self, split: tuple[np.ndarray, np.ndarray], name: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = split
    if images.shape[1:] != self.image_shape or images.dtype != np.uint8 or len(images) != len(labels):
      raise ConfigError(f"{name} images must be uint8 [N, {', '.join(map(str, self.image_shape))}] with N "
                        f"labels; got {images.dtype} {images.shape} and {len(labels)} labels")
    return images, np.asarray(labels, np.int32)

  def describe(self) -> str:
    return (f"your classifier on {self.image_shape}: {len(self.cutouts)} cut-outs of {self.num_classes} "
            f"classes, {len(self.backgrounds)} backgrounds, {len(self.real[1])} real and {len(self.test[1])} "
            "test images")

  def identity(self) -> dict:
    return {"image_shape": list(self.image_shape), "class_names": self.class_names,
            "cutouts": len(self.cutouts), "real": len(self.real[1]), "test": len(self.test[1])}

  def build_target(self) -> ClassifierTarget:
    return ClassifierTarget(self.model_fn())

  def build_synthesizer(self, seed: int | None) -> keras.Model:
    return synthesizer.build_synthesizer(self.image_shape, self.config.synth_width, self.config.synth_dropout,
                                         self.config.synth_noise_dim, seed=seed)

  def real_examples(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    return self.real[0], {"label": self.real[1]}

  def synth_dataset(self, batch_size: int, seed: int, context: tf.distribute.InputContext) -> tf.data.Dataset:
    """Cut-outs (shuffled, with their classes) on random backgrounds."""
    objects = tf.data.Dataset.from_tensor_slices((self.cutouts, self.cutout_classes)).shard(
        context.num_input_pipelines, context.input_pipeline_id).shuffle(len(self.cutouts), seed=seed).repeat()
    scenes = tf.data.Dataset.from_tensor_slices(self.backgrounds).shuffle(len(self.backgrounds),
                                                                           seed=seed + 1).repeat()
    ds = tf.data.Dataset.zip(objects, scenes).batch(batch_size, drop_remainder=True)
    return ds.map(lambda o, b: {"foreground": o[0], "label": o[1], "background": b}).prefetch(2)

  def random_samples(self, per_class: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """`per_class` cut-outs per class at uniform parameters over the ranges, on random backgrounds."""
    rng = np.random.default_rng(seed)
    picks = np.concatenate([rng.choice(np.flatnonzero(self.cutout_classes == c), per_class, replace=True)
                            for c in range(self.num_classes) if np.any(self.cutout_classes == c)])
    raw_uniform = rng.uniform(-1, 1, size=(len(picks), 6)).astype(np.float32)
    foreground = tf.constant(self.cutouts[picks])
    background = tf.constant(self.backgrounds[rng.integers(len(self.backgrounds), size=len(picks))])
    # Uniform over the clamp box: the tanh clamp's inverse of uniform places in [-1, 1].
    _, result = self.place_and_paste(tf.atanh(tf.constant(raw_uniform) * 0.999), foreground, background)
    return result.image.numpy(), {"label": self.cutout_classes[picks]}

  def evaluate(self, target: ClassifierTarget, batch_size: int) -> dict[str, float]:
    images, labels = self.test
    correct = 0
    for start in range(0, len(labels), batch_size):
      logits = target.logits(tf.constant(images[start:start + batch_size], tf.float32) / 255.0)
      correct += int(np.sum(logits.numpy().argmax(-1) == labels[start:start + batch_size]))
    return {"test_accuracy": correct / len(labels)}
