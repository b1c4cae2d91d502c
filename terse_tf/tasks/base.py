"""The interface every task presents to the trainer: which data, which target, which synthesizer, which
placement ranges, and how its results are measured. A task is the only place that knows a dataset's shapes
and classes; the trainer runs the same three-player sleep cycles for all of them.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Callable, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from terse_tf import compositor as compositor_lib
from terse_tf.networks import synthesizer
from terse_tf.targets.base import Labels, Target

# S as a function: (premultiplied foregrounds, backgrounds) -> raw parameters [B, 6]. The trainer passes S in
# training mode; the export passes S in inference mode, or with only its dropout on.
RawParamsFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def image_grid(images: tf.Tensor, columns: int = 8) -> tf.Tensor:
  """[N, H, W, C] (N >= 1) -> one [1, rows*H, columns*W, C] grid for TensorBoard; fewer than `columns`
  images make one row of them all, more drop the last incomplete row."""
  columns = min(columns, images.shape[0])
  count = (images.shape[0] // columns) * columns
  images = images[:count]
  _, height, width, channels = images.shape
  grid = tf.reshape(images, [count // columns, columns, height, width, channels])
  grid = tf.transpose(grid, [0, 2, 1, 3, 4])
  return tf.reshape(grid, [1, count // columns * height, columns * width, channels])



@dataclasses.dataclass(frozen=True)
class SynthesizerSettings:
  """How every task builds S and composites for it (the trainer's synth_* and jit_compile options)."""
  width: int = 32
  dropout: float = 0.3
  noise_dim: int = 0      # Length of the noise vector S takes beside the images (0: none).
  jit_compile: bool = True  # Compile the compositor with XLA.


@dataclasses.dataclass(frozen=True)
class CommonSettings:
  """What every task is built with besides its own settings: the trainer's choice of T, its compositor
  options (each task sets the placement ranges) and how to build S."""
  target: str
  compositor: compositor_lib.CompositorConfig = compositor_lib.CompositorConfig()
  synthesizer: SynthesizerSettings = SynthesizerSettings()


class Composition(NamedTuple):
  """What S's parameters become: composites with their labels, and the parameters themselves."""
  images: tf.Tensor      # [B, H, W, C] composites in [0, 1].
  labels: Labels         # As the task's target takes them.
  params: tf.Tensor      # [B, 6] or [B, N, 6]: the clamped parameters the compositor used.
  pasted: tf.Tensor      # [B] or [B, N] bool: which rows of `params` are objects (not empty slots).
  normalized: tf.Tensor  # [M, 6] each pasted object's clamped parameters placed in the ranges, in [-1, 1].
  object_classes: tf.Tensor  # [M] the class of each of those objects (for the per-class diversity term).


class Task(abc.ABC):
  """Data, networks and evaluation of one TERSE problem."""

  # The name it is registered under (tasks.registry.register sets it).
  name: str
  # T's architectures it accepts (--target), its default first.
  targets: tuple[str, ...]
  # The name of this task's random-placement baseline source (the trainer's --sample_source).
  random_source: str
  # Other random sources it offers (variants of the baseline, as --sample_source values).
  extra_random_sources: tuple[str, ...] = ()
  image_shape: tuple[int, int, int]
  num_classes: int
  class_names: list[str]
  # The evaluation key the launcher reports before and after TERSE.
  headline: str
  compositor: compositor_lib.CompositorConfig

  @abc.abstractmethod
  def describe(self) -> str:
    """One line on what data the task loaded, for the log and results.json."""

  @abc.abstractmethod
  def identity(self) -> dict:
    """The settings a checkpoint must share to be resumed (the task, its data and test set, the target)."""

  @abc.abstractmethod
  def build_target(self) -> Target:
    """A new T (inside the trainer's strategy scope)."""

  @abc.abstractmethod
  def build_synthesizer(self, seed: int | None) -> keras.Model:
    """A new S with inputs (premultiplied foreground, background) and raw parameters [B, 6] out."""

  @abc.abstractmethod
  def real_examples(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """T's real training set: uint8 images [N, H, W, C] and labels {key: [N, ...]}."""

  @abc.abstractmethod
  def synth_dataset(self, batch_size: int, seed: int, context: tf.distribute.InputContext) -> tf.data.Dataset:
    """Endless batches (dicts of tensors) of what S composes from: foregrounds, backgrounds, classes."""

  @abc.abstractmethod
  def compose(self, raw_params: RawParamsFn, batch: dict[str, tf.Tensor]) -> Composition:
    """S's composites of a synth_dataset batch, with their labels."""

  @abc.abstractmethod
  def random_samples(self, per_class: int, seed, source: str | None = None
                     ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The task's random-placement baseline (`source`: one of random_source, the default, and
    extra_random_sources): float images [N, H, W, C] in [0, 1] and their labels, about `per_class` per
    class."""

  def instances(self, labels: dict[str, np.ndarray]) -> np.ndarray:
    """The object instances in each sample [N] int64, from its labels: 1 unless the task has several."""
    return np.ones(len(next(iter(labels.values()))), np.int64)

  def augment(self, images: tf.Tensor, labels: Labels, seed: tf.Tensor) -> tuple[tf.Tensor, Labels]:
    """T's training augmentation of a batch of float images (real or cached) and their labels, stateless
    in `seed` [2]; none unless the task has one."""
    del seed
    return images, labels

  def background_artifacts(self, images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """§3.1's blending artefacts pasted into a share of float images [B, H, W, C] (real ones, for D's real
    side: artefacts on both of D's sides are no cue to it), stateless in `seed` [2]; none unless the task
    pastes them into S's backgrounds."""
    del seed
    return images

  @abc.abstractmethod
  def evaluate(self, target: Target, batch_size: int) -> dict[str, float]:
    """T's figures on the task's validation and test sets, the headline among them."""

  def preview(self, images: tf.Tensor, labels: Labels) -> tf.Tensor:
    """A TensorBoard grid [1, rows*H, 8*W, C] of float composites with what their labels show."""
    del labels  # A class label has nothing to draw.
    return image_grid(images)

  @abc.abstractmethod
  def synthesizer_endpoints(self, synthesizer: keras.Model) -> dict[str, tuple[Callable, list[tf.TensorSpec]]]:
    """The exported S's signatures: name -> (function, input signature)."""


class PastedObjectClassification(Task):
  """What the classification tasks share: one cut-out per image, as large as the image (colour + straight
  alpha), placed by S through the compositor's `place` (the clamp, then keep-in-frame) and labelled with its
  class (batch["label"]). Subclasses call `_set_compositing` with their ranges before any method here runs."""

  _composite: Callable[..., compositor_lib.Composite]

  def _set_compositing(self, common: CommonSettings, ranges: compositor_lib.AffineRanges) -> None:
    """The compositor's settings with the task's placement ranges, and the compositor: XLA pays for its
    gathers (about 15% of a synthesizer step on CPU) but not for the whole step, whose convolutions it makes
    slower (bench/compositor.py has the compositor's own figures), so only it is compiled."""
    self.compositor = common.compositor.with_ranges(ranges)
    self._composite = tf.function(compositor_lib.composite, jit_compile=common.synthesizer.jit_compile)

  def place_and_paste(self, raw: tf.Tensor, foreground: tf.Tensor, background: tf.Tensor
                      ) -> tuple[tf.Tensor, compositor_lib.Composite]:
    """(clamped and framed parameters, composite) of raw parameters [B, 6]."""
    params = compositor_lib.place(raw, foreground, self.image_shape[:2], self.compositor)
    return params, self._composite(foreground, background, params, self.compositor)

  def compose(self, raw_params: RawParamsFn, batch: dict[str, tf.Tensor]) -> Composition:
    foreground, background = batch["foreground"], batch["background"]
    raw = raw_params(compositor_lib.premultiplied(foreground), background)
    params, result = self.place_and_paste(raw, foreground, background)
    ranges = self.compositor.ranges
    # Diversity is measured where the placement is uniform: the clamp box, before framing.
    normalized = compositor_lib.normalize_params(
        compositor_lib.clamp_params(raw, ranges, self.compositor.clamp_mode), ranges)
    return Composition(images=result.image, labels={"label": batch["label"]}, params=params,
                       pasted=tf.ones(tf.shape(params)[:1], tf.bool), normalized=normalized,
                       object_classes=batch["label"])

  def synthesizer_endpoints(self, synthesizer_model: keras.Model) -> dict[str, tuple[Callable, list]]:
    """(foreground [B, H, W, C + 1] colour + straight alpha, background [B, H, W, C]) -> {params,
    composite, warped_mask}."""
    height, width, channels = self.image_shape
    signature = [tf.TensorSpec([None, height, width, channels + 1], tf.float32, name="foreground"),
                 tf.TensorSpec([None, *self.image_shape], tf.float32, name="background")]

    def endpoint(raw_params: RawParamsFn) -> Callable:
      def serve(foreground: tf.Tensor, background: tf.Tensor) -> dict[str, tf.Tensor]:
        raw = raw_params(compositor_lib.premultiplied(foreground), background)
        params, result = self.place_and_paste(raw, foreground, background)
        return {"params": params, "composite": result.image, "warped_mask": result.warped_mask}
      return serve

    return synthesizer.serving_endpoints(synthesizer_model, endpoint, signature)
