"""Bring your own target: TERSE against your Keras classifier or detector, on your cut-outs and
backgrounds, from Python.

    import terse_tf.api

    results = terse_tf.api.train_classifier(
        model=lambda: my_keras_classifier(),     # images [H, W, C] floats in [0, 1] -> logits [num_classes]
        cutouts="my_cutouts/",                   # <class>/<name>.png with alpha (or + <name>.mask.png)
        backgrounds="my_photos/",                # photos to crop backgrounds from
        real=(x_train, y_train),                 # uint8 [N, H, W, C] and int labels: T's real training set
        test=(x_test, y_test),                   # what test_accuracy is measured on
        run_dir="runs/mine", cycles=2)

    results = terse_tf.api.train_detector(
        model=lambda: my_keras_detector(),       # images [H, W, 3] in [0, 1] -> {"class_logits": [A, C + 1],
        anchors=my_anchors,                      #   "box_regression": [A, 4]} over anchors [A, 4] (cy, cx, h, w)
        cutouts="my_cutouts/", backgrounds="my_photos/",
        real=(images, boxes, classes),           # uint8 [N, H, W, 3]; per image boxes [n, 4] and classes [n]
        test=(test_images, test_boxes, test_classes),
        run_dir="runs/my_detector", cycles=2)

The class sub-folders, sorted by name, are the target's classes 0, 1, ... Everything else is the
trainer's own: S against your T in lockstep, the hard-example cache, checkpoints (call again to resume),
TensorBoard under run_dir, and SavedModel exports of S (serve it, or generate a dataset with
`python -m terse_tf.generate`) and of your fine-tuned T. Keyword arguments set TrainConfig's fields
(cycles, hard_per_class, synth_max_steps, baseline_epochs, batch_size, ...; config.py documents them).
Progress goes to the log as the command line's does (each phase's lines with their ETA, the results);
`verbose=False` keeps to warnings and errors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
from typing import Callable

import keras
import numpy as np
from absl import logging

from terse_tf import compositor, distribute, train_lib
from terse_tf.config import TrainConfig, common_settings
from terse_tf.data import cutouts as cutouts_lib
from terse_tf.data import photos
from terse_tf.errors import ConfigError, TerseError
from terse_tf.tasks.custom import (DEFAULT_RANGES, BoxesPerImage, CustomClassificationTask,
                                   CustomDetectionConfig, CustomDetectionTask, CustomTaskConfig)


def _in_keyword_terms(error: TerseError) -> TerseError:
  """The trainer's errors name flags (`--fresh`, `--run_dir=x`); from Python they are keyword arguments
  (`fresh=True`, `run_dir=x`)."""
  message = str(error).replace("--fresh", "fresh=True")
  return type(error)(re.sub(r"(?<![\w/.-])--(\w+)", r"\1", message))  # A flag, not a "--" in a path.


def _api_run(function: Callable) -> Callable:
  """The API's conventions around a run: progress in the log unless verbose=False (the command line's
  lines: each phase's progress and ETA, the evaluations, the results), and errors in keyword terms."""
  @functools.wraps(function)
  def run(*args, verbose: bool = True, **kwargs) -> dict:
    previous = logging.get_verbosity()
    wanted = max(previous, logging.INFO) if verbose else min(previous, logging.WARNING)
    with contextlib.ExitStack() as restore:
      if wanted != previous:
        logging.set_verbosity(wanted)
        restore.callback(logging.set_verbosity, previous)
      try:
        return function(*args, **kwargs)
      except TerseError as e:
        raise _in_keyword_terms(e) from e
  return run


def _model_fn(model: keras.Model | Callable[[], keras.Model], train_options: dict
              ) -> tuple[Callable[[], keras.Model], keras.Model]:
  """(a function that builds the user's model, one model it built, to read its shapes from)."""
  if train_options.get("strategy") == "multi_worker":  # Before the first op: the probe below makes some.
    distribute.build_strategy("multi_worker")
  model_fn = model if callable(model) and not isinstance(model, keras.Model) else (lambda: model)
  probe = model_fn()
  if not isinstance(probe, keras.Model):
    raise ConfigError(f"model must be a keras.Model or a function returning one, got {type(probe).__name__}")
  shape = getattr(probe, "input_shape", None)  # A subclassed model that was never built has none.
  if not isinstance(shape, tuple) or len(shape) != 4 or None in shape[1:]:
    # Checked first: cut-outs and backgrounds are fitted to this size before the task is built.
    raise ConfigError(f"model must take one batch of images of a fixed size [B, H, W, C], e.g. "
                      f"keras.Input((64, 64, 3)); its input is {shape}")
  return model_fn, probe


def _train_config(run_dir: str, task: str, settings: CustomTaskConfig, train_options: dict) -> TrainConfig:
  fields = {field.name for field in dataclasses.fields(TrainConfig)} - {"task", "task_settings"}
  unknown = sorted(set(train_options) - fields)
  if unknown:
    raise ConfigError(f"unknown training options {unknown}; TrainConfig has {sorted(fields)}")
  for name in ("hard_per_class", "eval_after_cycles"):  # One number for every cycle, as the flags take it.
    if isinstance(train_options.get(name), int):
      train_options[name] = (train_options[name],)
  return TrainConfig(run_dir=run_dir, task=task, task_settings=settings, **train_options)


@_api_run
def train_classifier(model: keras.Model | Callable[[], keras.Model], cutouts: str, backgrounds: str,
                     real: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], run_dir: str,
                     ranges: compositor.AffineRanges = DEFAULT_RANGES, num_backgrounds: int = 500,
                     **train_options) -> dict:
  """Runs TERSE against `model` (a Keras classifier, or a function that builds one: pass a function to
  train under a multi-device strategy, whose variables must be made inside its scope). Returns the run's
  results (results.json), with `test_accuracy_before` and `test_accuracy_after`."""
  model_fn, probe = _model_fn(model, train_options)
  config = _train_config(run_dir, CustomClassificationTask.name,
                         CustomTaskConfig(ranges=ranges, num_backgrounds=num_backgrounds), train_options)
  loaded = cutouts_lib.load_cutouts(cutouts, tuple(probe.input_shape[1:3]), flag="cutouts")
  photos_list = photos.read_photos(photos.image_paths(backgrounds), f"backgrounds={backgrounds}",
                                   min_side=min(probe.input_shape[1:3]))
  task = CustomClassificationTask(config.task_settings, common_settings(config), model_fn=model_fn,
                                  cutouts=loaded, backgrounds=photos_list, real=real, test=test, seed=config.seed)
  return train_lib.run(config, task=task)


@_api_run
def train_detector(model: keras.Model | Callable[[], keras.Model], anchors: np.ndarray, cutouts: str,
                   backgrounds: str, real: BoxesPerImage, test: BoxesPerImage, run_dir: str,
                   ranges: compositor.AffineRanges | None = None, cutout_size: int = 0, max_objects: int = 3,
                   min_visible: float = 0.25, background_artifact_fraction: float = 0.3,
                   num_backgrounds: int = 500, **train_options) -> dict:
  """Runs TERSE against `model`, a single-shot detector over `anchors` (targets.ssd.SSDTarget states the
  contract; a function that builds it, to train under a multi-device strategy). S places up to
  `max_objects` cut-outs per scene, fitted to `cutout_size` pixels (0: a third of the image) and placed
  within `ranges` (None: tasks.custom.detection_ranges). Returns the run's results (results.json), with
  `test_ap50_before` and `test_ap50_after` (COCO AP@0.5 on `test`)."""
  model_fn, probe = _model_fn(model, train_options)
  height, width = probe.input_shape[1:3]
  side = cutout_size or min(height, width) // 3
  config = _train_config(run_dir, CustomDetectionTask.name, CustomDetectionConfig(
      ranges=ranges, cutout_size=side, max_objects=max_objects, min_visible=min_visible,
      background_artifact_fraction=background_artifact_fraction, num_backgrounds=num_backgrounds), train_options)
  loaded = cutouts_lib.load_cutouts(cutouts, (side, side), flag="cutouts")
  photos_list = photos.read_photos(photos.image_paths(backgrounds), f"backgrounds={backgrounds}",
                                   min_side=min(height, width))
  task = CustomDetectionTask(config.task_settings, common_settings(config), model_fn=model_fn, anchors=anchors,
                             cutouts=loaded, backgrounds=photos_list, real=real, test=test, seed=config.seed)
  return train_lib.run(config, task=task)
