"""The affNIST task (paper §4.1): MNIST digits pasted on black 40x40 backgrounds, classified by a small CNN,
tested on affNIST (real .mat files, or a set generated from held-out digits with its recipe)."""

from __future__ import annotations

import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf
from absl import flags

from terse_tf import compositor as compositor_lib
from terse_tf.data import affnist, mnist
from terse_tf.errors import ConfigError
from terse_tf.networks import classifier, synthesizer
from terse_tf.targets.classification import ClassifierTarget
from terse_tf.tasks import mnist_flags, registry
from terse_tf.tasks.base import CommonSettings, PastedObjectClassification

IMAGE_SHAPE = (mnist.IMAGE_SIZE, mnist.IMAGE_SIZE, 1)
# The shift that keeps MNIST's 20x20 digit box inside the 40x40 frame, (40 - 20) / 2: the translation clamp
# when S's composites may leave the frame (--nokeep_in_frame); it also matches affNIST's spread of shifts.
MAX_TRANSLATION_PX = 10.0


def ranges(max_translation_px: float = MAX_TRANSLATION_PX) -> compositor_lib.AffineRanges:
  """affNIST's documented ranges: rotation <= 20 degrees, shear <= 0.2, each axis scaled 0.8-1.2."""
  return compositor_lib.AffineRanges(
      max_rotation_deg=affnist.MAX_ROTATION_DEG, max_translation_px=max_translation_px,
      max_shear=affnist.MAX_SHEAR, min_scale=affnist.MIN_SCALE, max_scale=affnist.MAX_SCALE)


def foregrounds(digits: tf.Tensor) -> tf.Tensor:
  """uint8 digits [..., H, W] -> RGBA-style cut-outs [..., H, W, 2]: white ink whose alpha is the digit."""
  alpha = tf.cast(digits, tf.float32)[..., None] / 255.0
  return tf.concat([tf.ones_like(alpha), alpha], axis=-1)


@dataclasses.dataclass(frozen=True)
class AffnistSettings:
  """The affnist task's own settings: the MNIST split, the affNIST test set, and the translation clamp S
  works under with --nokeep_in_frame."""
  data: mnist.DataConfig = mnist.DataConfig()
  affnist: affnist.AffnistConfig = affnist.AffnistConfig()
  max_translation_px: float = MAX_TRANSLATION_PX


def define_flags(flag_values: flags.FlagValues) -> None:
  mnist_flags.define_flags(flag_values)
  flags.DEFINE_string("affnist_dir", "", "Real affNIST test .mat file or folder; else one is generated.",
                      flag_values=flag_values)
  # The user's cache directory (XDG's rule: $XDG_CACHE_HOME, else ~/.cache), read when the flag is defined.
  default_cache_dir = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "terse_tf")
  flags.DEFINE_string("affnist_cache_dir", default_cache_dir, "Where generated affNIST test sets are kept ('' "
                      "for none).", flag_values=flag_values)
  flags.DEFINE_integer("affnist_test_digits", 1000, "Test digits transformed into the generated affNIST test "
                       "set (0: all).", lower_bound=0, flag_values=flag_values)
  flags.DEFINE_integer("affnist_transforms_per_digit", affnist.TRANSFORMS_PER_DIGIT,
                       "Random transforms per test digit (affNIST: 32).", lower_bound=1, flag_values=flag_values)
  flags.DEFINE_float("max_translation_px", MAX_TRANSLATION_PX,
                     "affnist: translation clamp in pixels, used only with --nokeep_in_frame: under "
                     "--keep_in_frame (the default) each foreground's own in-frame shifts bound its translation "
                     "instead, and this value has no effect.", lower_bound=0, flag_values=flag_values)


def settings_from_flags(f: flags.FlagValues) -> AffnistSettings:
  return AffnistSettings(
      data=mnist_flags.data_config(f),
      affnist=affnist.AffnistConfig(affnist_dir=f.affnist_dir, cache_dir=os.path.expanduser(f.affnist_cache_dir),
                                    num_test_digits=f.affnist_test_digits,
                                    transforms_per_digit=f.affnist_transforms_per_digit, seed=f.seed),
      max_translation_px=f.max_translation_px)


@registry.register("affnist", settings=AffnistSettings, define_flags=define_flags,
                   settings_from_flags=settings_from_flags,
                   summary="digit classification on affNIST (§4.1)")
class AffnistTask(PastedObjectClassification):
  targets = classifier.ARCHITECTURES
  random_source = "random_affine"
  headline = "affnist_test_accuracy"
  image_shape = IMAGE_SHAPE
  num_classes = mnist.NUM_CLASSES
  class_names = [str(digit) for digit in range(mnist.NUM_CLASSES)]

  def __init__(self, settings: AffnistSettings, common: CommonSettings):
    if common.target not in self.targets:
      raise ConfigError(f"--target must be one of {self.targets} for --task=affnist (a classifier), got "
                        f"{common.target!r}")
    self.settings, self.common = settings, common
    self._set_compositing(common, ranges(settings.max_translation_px))
    self.splits = mnist.load_splits(settings.data)
    test_images, test_labels, self.test_description = affnist.load_test_set(
        self.splits.test_images, self.splits.test_labels, settings.affnist)
    self.affnist_test = (test_images, test_labels)

  def describe(self) -> str:
    return (f"{self.splits.source} digits {self.splits.sizes()}; affNIST test: {len(self.affnist_test[1])} "
            f"images, {self.test_description}")

  def identity(self) -> dict:
    # Without the task's name: affNIST runs predate tasks, and their checkpoints' identity stays as it was.
    affnist_settings = dataclasses.asdict(self.settings.affnist)
    del affnist_settings["cache_dir"]  # Where a generated set is cached does not change it.
    return {"data": dataclasses.asdict(self.settings.data), "affnist": affnist_settings,
            "target": self.common.target}

  def build_target(self) -> ClassifierTarget:
    return ClassifierTarget.build(self.common.target, IMAGE_SHAPE, mnist.NUM_CLASSES)

  def build_synthesizer(self, seed: int | None) -> keras.Model:
    settings = self.common.synthesizer
    return synthesizer.build_synthesizer(IMAGE_SHAPE, settings.width, settings.dropout, settings.noise_dim,
                                         seed=seed)

  def real_examples(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    return self.splits.train_images[..., None], {"label": self.splits.train_labels}

  def synth_dataset(self, batch_size: int, seed: int, context: tf.distribute.InputContext) -> tf.data.Dataset:
    """Training digits on black backgrounds."""
    digits, labels = self.splits.train_images, self.splits.train_labels
    ds = tf.data.Dataset.from_tensor_slices((digits, labels)).shard(
        context.num_input_pipelines, context.input_pipeline_id)
    ds = ds.shuffle(len(labels), seed=seed).repeat().batch(batch_size, drop_remainder=True)
    return ds.map(lambda d, y: {"foreground": foregrounds(d), "background": tf.zeros([batch_size, *IMAGE_SHAPE]),
                                "label": y}).prefetch(2)

  def random_samples(self, per_class: int, seed, source: str | None = None
                     ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """`per_class` training digits per class under affNIST-recipe transforms (the random-augmentation
    baseline)."""
    del source  # One random source: random_affine.
    rng = np.random.default_rng(seed)
    labels = self.splits.train_labels
    picks = np.concatenate([
        rng.choice(np.flatnonzero(labels == c), per_class, replace=per_class > np.sum(labels == c))
        for c in range(mnist.NUM_CLASSES)])
    digits, picked_labels = affnist.generate(self.splits.train_images[picks], labels[picks],
                                             transforms_per_digit=1, seed=int(rng.integers(2**31)))
    return digits[..., None].astype(np.float32) / 255.0, {"label": picked_labels}

  def accuracy(self, target: ClassifierTarget, digits: np.ndarray, labels: np.ndarray, batch_size: int) -> float:
    """Fraction of uint8 digits [N, H, W] that T classifies correctly."""
    logits = logits_in_batches(target, digits[..., None], batch_size)
    return float(np.mean(logits.argmax(axis=-1) == labels))

  def evaluate(self, target: ClassifierTarget, batch_size: int) -> dict[str, float]:
    return {"mnist_val_accuracy": self.accuracy(target, self.splits.val_images, self.splits.val_labels,
                                                batch_size),
            "affnist_test_accuracy": self.accuracy(target, *self.affnist_test, batch_size)}


def logits_in_batches(target: ClassifierTarget, images: np.ndarray, batch_size: int) -> np.ndarray:
  """T's logits for images [N, H, W, C] (uint8, or float in [0, 1]), `batch_size` at a time."""
  return np.concatenate([
      target.logits(tf.image.convert_image_dtype(images[start:start + batch_size], tf.float32)).numpy()
      for start in range(0, len(images), batch_size)])
