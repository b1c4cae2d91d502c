"""Tasks: which data, which target, which synthesizer, which ranges, which figures (base.Task)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from terse_tf.tasks import affnist, photo_digits
from terse_tf.tasks.base import Composition, Task, image_grid

if TYPE_CHECKING:
  from terse_tf.trainer import TrainConfig

TASKS = ("affnist", "photo_digits")
# The target architectures each task accepts, its default first.
TARGETS = {"affnist": ("paper", "itn_swish"), "photo_digits": ("ssd_compact", "ssd_vgg16")}
# Each task's random-placement baseline (a --sample_source value).
RANDOM_SOURCES = {"affnist": "random_affine", "photo_digits": "cut_paste"}

__all__ = ["Composition", "Task", "image_grid", "build_task", "TASKS", "TARGETS", "RANDOM_SOURCES"]


def build_task(config: "TrainConfig") -> Task:
  """The task a TrainConfig names, with its settings (loads its data)."""
  if config.task == "affnist":
    return _build(affnist.AffnistTaskConfig(
        data=config.data, affnist=config.affnist, compositor=config.compositor, target=config.target,
        synth_width=config.synth_width, synth_dropout=config.synth_dropout,
        synth_noise_dim=config.synth_noise_dim, jit_compile=config.jit_compile))
  return _build(photo_digits.PhotoDigitsTaskConfig(
      data=config.data, photo_digits=config.photo_digits, compositor=config.compositor, target=config.target,
      synth_width=config.synth_width, synth_dropout=config.synth_dropout, synth_noise_dim=config.synth_noise_dim,
      data_seed=config.data.seed, jit_compile=config.jit_compile))


@functools.lru_cache(maxsize=1)
def _build(task_config: affnist.AffnistTaskConfig | photo_digits.PhotoDigitsTaskConfig) -> Task:
  """One task per process for a given configuration: an experiment's runs (every seed and arm) share the
  loaded and rendered data instead of making it again for each (tens of seconds for photo_digits). Tasks
  hold no training state, and making one draws from no random stream the runs use."""
  if isinstance(task_config, affnist.AffnistTaskConfig):
    return affnist.AffnistTask(task_config)
  return photo_digits.PhotoDigitsTask(task_config)
