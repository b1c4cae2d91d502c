"""Bring your own target: TERSE against your Keras classifier, on your cut-outs and backgrounds, from Python.

    import terse_tf.api

    results = terse_tf.api.train_classifier(
        model=lambda: my_keras_classifier(),     # images [H, W, C] floats in [0, 1] -> logits [num_classes]
        cutouts="my_cutouts/",                   # <class>/<name>.png with alpha (or + <name>.mask.png)
        backgrounds="my_photos/",                # photos to crop backgrounds from
        real=(x_train, y_train),                 # uint8 [N, H, W, C] and int labels: T's real training set
        test=(x_test, y_test),                   # what test_accuracy is measured on
        run_dir="runs/mine", cycles=2)

The class sub-folders, sorted by name, are the classifier's classes 0, 1, ... Everything else is the
trainer's own: S against your T in lockstep, the hard-example cache, checkpoints (call again to resume),
TensorBoard under run_dir, and SavedModel exports of S (serve it, or generate a dataset with
`python -m terse_tf.generate`) and of your fine-tuned T. Keyword arguments set TrainConfig's fields
(cycles, hard_per_class, synth_max_steps, baseline_epochs, batch_size, ...; trainer.py documents them).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import keras
import numpy as np

from terse_tf import compositor, tasks, train_lib
from terse_tf.data import cutouts as cutouts_lib
from terse_tf.data import photos
from terse_tf.errors import ConfigError
from terse_tf.tasks.custom import DEFAULT_RANGES, CustomClassificationTask, CustomTaskConfig
from terse_tf.trainer import TrainConfig


def train_classifier(model: keras.Model | Callable[[], keras.Model], cutouts: str, backgrounds: str,
                     real: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], run_dir: str,
                     ranges: compositor.AffineRanges = DEFAULT_RANGES, num_backgrounds: int = 500,
                     **train_options) -> dict:
  """Runs TERSE against `model` (a Keras classifier, or a function that builds one: pass a function to
  train under a multi-device strategy, whose variables must be made inside its scope). Returns the run's
  results (results.json), with `test_accuracy_before` and `test_accuracy_after`."""
  model_fn = model if callable(model) and not isinstance(model, keras.Model) else (lambda: model)
  probe = model_fn()
  if not isinstance(probe, keras.Model):
    raise ConfigError(f"model must be a keras.Model or a function returning one, got {type(probe).__name__}")
  fields = {field.name for field in dataclasses.fields(TrainConfig)}
  unknown = sorted(set(train_options) - fields)
  if unknown:
    raise ConfigError(f"unknown training options {unknown}; TrainConfig has {sorted(fields)}")
  for name in ("hard_per_class", "eval_after_cycles"):  # One number for every cycle, as the flags take it.
    if isinstance(train_options.get(name), int):
      train_options[name] = (train_options[name],)
  synth = {k: train_options[k] for k in ("synth_width", "synth_dropout", "synth_noise_dim", "jit_compile")
           if k in train_options}
  config = TrainConfig(run_dir=run_dir, task=tasks.CUSTOM, **train_options)
  loaded = cutouts_lib.load_cutouts(cutouts, tuple(probe.input_shape[1:3]), flag="cutouts")
  photos_list = photos.read_photos(photos.image_paths(backgrounds), f"backgrounds={backgrounds}",
                                   min_side=min(probe.input_shape[1:3]))
  task = CustomClassificationTask(model_fn, loaded, photos_list, real, test,
                                  CustomTaskConfig(ranges=ranges, num_backgrounds=num_backgrounds, **synth),
                                  seed=config.seed)
  return train_lib.run(config, task=task)
