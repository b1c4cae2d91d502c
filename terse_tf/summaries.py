"""What TensorBoard gets: train/ scalars per step, image grids of composites every N steps, the hard
examples and their parameters and hardness per cycle (Fig. 8's histogram), eval/ figures per evaluation."""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

from terse_tf import compositor as compositor_lib
from terse_tf.steps import SynthStepOutputs

# Hard composites per cycle shown in TensorBoard's grid.
PREVIEW_COUNT = 64
# A task's grid of float composites with what their labels show (Task.preview).
Preview = Callable[[tf.Tensor, dict], tf.Tensor]


def target_epoch(writer: tf.summary.SummaryWriter, step: int, mean_loss: float) -> None:
  with writer.as_default(step=step):
    tf.summary.scalar("train/target_loss", mean_loss)


def synth_step(writer: tf.summary.SummaryWriter, step: int, outputs: SynthStepOutputs,
               discriminator: tuple[tf.Tensor, tf.Tensor] | None, hard: np.ndarray, added: int, cache_size: int,
               preview: Preview | None) -> None:
  """One S step's scalars (and D's, when it stepped in lockstep); with `preview`, its composites' grid."""
  with writer.as_default(step=step):
    tf.summary.scalar("train/synth_loss", float(outputs.loss.numpy()))
    tf.summary.scalar("train/synth_target_loss", float(outputs.target_loss.numpy()))
    tf.summary.scalar("train/synth_diversity_energy_distance", float(outputs.diversity.numpy()))
    if discriminator is not None:
      tf.summary.scalar("train/synth_adversarial_loss", float(outputs.adversarial.numpy()))
      tf.summary.scalar("train/discriminator_loss", float(discriminator[0].numpy()))
      tf.summary.scalar("train/discriminator_accuracy", float(discriminator[1].numpy()))
    tf.summary.scalar("train/hard_yield", float(hard.mean()))
    tf.summary.scalar("train/hard_added", added)
    tf.summary.scalar("cache/size", cache_size)
    if preview is not None:
      tf.summary.image("composites/during_synthesis", preview(outputs.composites, outputs.labels))


def hardness(source: str, scores: np.ndarray, hardness_range: tuple[float, float]) -> None:
  """The hardness histogram of Fig. 8 for one sample source: the share of its samples per bin of T's score
  (written inside a writer's default step)."""
  tf.summary.histogram(f"synth/hardness/{source}", scores)
  shares, _ = np.histogram(scores, bins=10, range=hardness_range)
  for index, share in enumerate(shares / max(len(scores), 1)):
    tf.summary.scalar(f"hardness_share/{source}/bin{index}", share)


class HardExamples:
  """A cycle's hard composites as S finds them: the first PREVIEW_COUNT with their labels for the grid, and
  every one's hardness and parameters for the histograms."""

  def __init__(self):
    self.examples: list[tuple[np.ndarray, dict]] = []
    self.hardness: list[np.ndarray] = []
    self.params: list[np.ndarray] = []

  def add(self, composites: np.ndarray, labels: dict, hardness_all: np.ndarray, object_params: np.ndarray) -> None:
    """`composites` and `labels` the step's hard ones; `hardness_all` every composite's score; `object_params`
    the hard composites' parameter rows that are objects (not empty slots)."""
    room = PREVIEW_COUNT - sum(len(images) for images, _ in self.examples)
    if room > 0 and len(composites):
      self.examples.append((composites[:room], {key: value[:room] for key, value in labels.items()}))
    self.hardness.append(hardness_all)
    self.params.append(object_params)

  def write(self, writer: tf.summary.SummaryWriter, cycle: int, steps: int, preview: Preview,
            hardness_range: tuple[float, float]) -> None:
    with writer.as_default(step=cycle):
      tf.summary.scalar("synth/steps_to_fill_cache", steps)
      if self.examples:
        composites = np.concatenate([images for images, _ in self.examples])
        labels = {key: np.concatenate([example_labels[key] for _, example_labels in self.examples])
                  for key in self.examples[0][1]}
        tf.summary.image("composites/hard_examples_by_cycle", preview(composites, labels))
      if self.hardness:
        hardness("terse", np.concatenate(self.hardness), hardness_range)
        # One mode per cycle (every digit sent to the same corner) shows up as a narrow histogram here.
        params = np.concatenate(self.params).reshape([-1, compositor_lib.NUM_PARAMS])
        for name, values in zip(compositor_lib.PARAM_NAMES, params.T):
          tf.summary.histogram(f"synth/hard_params/{name}", values)


def random_samples(writer: tf.summary.SummaryWriter, cycle: int, source: str, images: np.ndarray, labels: dict,
                   scores: np.ndarray, cache_size: int, preview: Preview,
                   hardness_range: tuple[float, float]) -> None:
  """A random-placement baseline's cycle: the cache's size, its samples' hardness and a grid of them."""
  with writer.as_default(step=cycle):
    tf.summary.scalar("cache/size", cache_size)
    hardness(source, scores, hardness_range)
    if len(images):
      tf.summary.image("composites/added_by_cycle", preview(
          tf.constant(images[:PREVIEW_COUNT], tf.float32), {k: v[:PREVIEW_COUNT] for k, v in labels.items()}))


def evaluation(writer: tf.summary.SummaryWriter, cycle: int, metrics: dict[str, float], cache_size: int) -> None:
  with writer.as_default(step=cycle):
    for key, value in metrics.items():
      tf.summary.scalar(f"eval/{key}", value)
    tf.summary.scalar("eval/cache_size", cache_size)
