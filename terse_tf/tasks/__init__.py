"""Tasks: which data, which target, which synthesizer, which ranges, which figures (base.Task)."""

from __future__ import annotations

import functools

from terse_tf.tasks import affnist, photo_digits
from terse_tf.tasks.base import Composition, SynthesizerSettings, Task, image_grid

TASKS = ("affnist", "photo_digits")
# Tasks built in Python around the user's own classifier or detector and data (terse_tf.api), not named by
# flags.
CUSTOM = "custom"
CUSTOM_DETECTION = "custom_detection"
CUSTOM_TASKS = (CUSTOM, CUSTOM_DETECTION)
# The target architectures each task accepts, its default first.
TARGETS = {"affnist": ("paper", "itn_swish"), "photo_digits": ("ssd_compact", "ssd_vgg16"), CUSTOM: ("yours",),
           CUSTOM_DETECTION: ("yours",)}
# Each task's random-placement baseline (a --sample_source value).
RANDOM_SOURCES = {"affnist": "random_affine", "photo_digits": "cut_paste", CUSTOM: "random_placement",
                  CUSTOM_DETECTION: "cut_paste"}

__all__ = ["Composition", "SynthesizerSettings", "Task", "image_grid", "build", "TASKS", "CUSTOM", "CUSTOM_DETECTION", "CUSTOM_TASKS",
           "TARGETS", "RANDOM_SOURCES"]


@functools.lru_cache(maxsize=1)
def build(task_config: affnist.AffnistTaskConfig | photo_digits.PhotoDigitsTaskConfig) -> Task:
  """The task a config describes, with its data loaded. One task per process for a given configuration: an
  experiment's runs (every seed and arm) share the loaded and rendered data instead of making it again for
  each (tens of seconds for photo_digits). Tasks hold no training state, and making one draws from no
  random stream the runs use."""
  if isinstance(task_config, affnist.AffnistTaskConfig):
    return affnist.AffnistTask(task_config)
  return photo_digits.PhotoDigitsTask(task_config)
