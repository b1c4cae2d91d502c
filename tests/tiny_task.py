"""A task defined outside the package, the way a user adds one: one module that declares its settings, its
flags, its targets and its random baseline, and registers itself. Bars: a horizontal or a vertical white bar
(two classes) on black 24x24 images; the real set has them upright at the centre, the test set anywhere in
the ranges; S places them. Importing this module before terse_tf.train.run() adds --task=tiny_bars."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf
from absl import flags

from terse_tf import compositor as compositor_lib
from terse_tf.networks import synthesizer
from terse_tf.targets.classification import ClassifierTarget
from terse_tf.tasks import CommonSettings, registry
from terse_tf.tasks.base import PastedObjectClassification

SIZE = 24
RANGES = compositor_lib.AffineRanges(max_rotation_deg=30.0, max_translation_px=6.0, max_shear=0.2, min_scale=0.6,
                                     max_scale=1.2)


@dataclasses.dataclass(frozen=True)
class TinyBarsSettings:
  num_real: int = dataclasses.field(default=256, metadata={"flag": "tiny_num_real"})  # Its flag's name.
  num_test: int = dataclasses.field(default=128, metadata={"flag": "tiny_num_test"})
  seed: int = 0


def define_flags(flag_values: flags.FlagValues) -> None:
  flags.DEFINE_integer("tiny_num_real", 256, "Real (upright, centred) bars.", lower_bound=2,
                       flag_values=flag_values)
  flags.DEFINE_integer("tiny_num_test", 128, "Test bars, placed anywhere in the ranges.", lower_bound=2,
                       flag_values=flag_values)


def settings_from_flags(f: flags.FlagValues) -> TinyBarsSettings:
  return TinyBarsSettings(num_real=f.tiny_num_real, num_test=f.tiny_num_test, seed=f.seed)


def bars() -> np.ndarray:
  """The two cut-outs [2, SIZE, SIZE, 2] (white ink, alpha): a horizontal bar and a vertical one."""
  alpha = np.zeros([2, SIZE, SIZE], np.float32)
  alpha[0, 10:14, 4:20] = 1.0
  alpha[1, 4:20, 10:14] = 1.0
  return np.stack([np.ones_like(alpha), alpha], axis=-1)


@registry.register("tiny_bars", settings=TinyBarsSettings, define_flags=define_flags,
                   settings_from_flags=settings_from_flags, summary="bars, a test's task")
class TinyBarsTask(PastedObjectClassification):
  targets = ("paper",)
  random_source = "random_bars"
  headline = "test_accuracy"
  image_shape = (SIZE, SIZE, 1)
  num_classes = 2
  class_names = ["horizontal", "vertical"]

  def __init__(self, settings: TinyBarsSettings, common: CommonSettings):
    self.settings, self.common = settings, common
    self._set_compositing(common, RANGES)
    rng = np.random.default_rng(settings.seed)
    self.real_labels = rng.integers(2, size=settings.num_real).astype(np.int32)
    self.real_images = (bars()[self.real_labels, ..., 1:] * 255).astype(np.uint8)
    self.test_images, self.test_labels = self._random(rng.integers(2, size=settings.num_test, dtype=np.int32), rng)

  def _random(self, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Bars of these classes at uniform parameters over the ranges: float images, labels."""
    count = len(labels)
    raw = tf.atanh(tf.constant(rng.uniform(-1, 1, size=(count, 6)).astype(np.float32)) * 0.999)
    _, result = self.place_and_paste(raw, tf.constant(bars()[labels]), tf.zeros([count, *self.image_shape]))
    return result.image.numpy(), labels

  def describe(self) -> str:
    return f"{len(self.real_labels)} upright bars, {len(self.test_labels)} test bars"

  def identity(self) -> dict:
    return {"task": self.name, **dataclasses.asdict(self.settings), "target": self.common.target}

  def build_target(self) -> ClassifierTarget:
    return ClassifierTarget.build(self.common.target, self.image_shape, self.num_classes)

  def build_synthesizer(self, seed: int | None) -> keras.Model:
    settings = self.common.synthesizer
    return synthesizer.build_synthesizer(self.image_shape, settings.width, settings.dropout, settings.noise_dim,
                                         seed=seed)

  def real_examples(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    return self.real_images, {"label": self.real_labels}

  def synth_dataset(self, batch_size: int, seed: int, context: tf.distribute.InputContext) -> tf.data.Dataset:
    labels = tf.data.Dataset.random(seed=seed).map(lambda x: tf.cast(x % 2, tf.int32))
    return labels.batch(batch_size).map(lambda y: {
        "foreground": tf.gather(tf.constant(bars()), y), "background": tf.zeros([batch_size, *self.image_shape]),
        "label": y})

  def random_samples(self, per_class: int, seed, source: str | None = None
                     ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    del source  # One random source: random_bars.
    images, labels = self._random(np.repeat(np.arange(2, dtype=np.int32), per_class), np.random.default_rng(seed))
    return images, {"label": labels}

  def evaluate(self, target: ClassifierTarget, batch_size: int) -> dict[str, float]:
    logits = target.logits(tf.constant(self.test_images)).numpy()
    return {"test_accuracy": float(np.mean(logits.argmax(-1) == self.test_labels))}
