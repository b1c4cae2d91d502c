"""VGG16's convolutions (`keras.applications.VGG16`), the backbone of SSD300 and of A.2's synthesizer, with
its weights' failures as one clear error: Keras downloads "imagenet" weights on first use (a long traceback
without a network) and rejects a missing file with a message about the argument's allowed values."""

from __future__ import annotations

import os

import keras

from terse_tf.errors import ConfigError

WEIGHTS_HELP = ("the task's --*backbone_weights: '' (none), 'imagenet' (Keras downloads them once into "
                "~/.keras/models) or a local weights file")


def vgg16(weights: str | None, **kwargs) -> keras.Model:
  """keras.applications.VGG16 without its top, `weights` None, "imagenet" or a file; `kwargs` its input."""
  if weights not in (None, "imagenet") and not os.path.isfile(weights):
    raise ConfigError(f"VGG16 weights {weights}: no such file; expected {WEIGHTS_HELP}")
  try:
    return keras.applications.VGG16(include_top=False, weights=weights, **kwargs)
  except Exception as e:  # Keras raises a bare Exception for a failed download. pylint: disable=broad-except
    if weights != "imagenet" or "URL fetch failure" not in str(e):
      raise
    raise ConfigError(f"VGG16's ImageNet weights could not be downloaded ({str(e).splitlines()[0][:200]}); "
                      f"without a network give a local weights file: {WEIGHTS_HELP}") from e
