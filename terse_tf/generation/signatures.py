"""The exported models a generation runs: the synthesizer's signature, which composites a draw of inputs, and
the target's `hardness` signature, which judges the composites; `composite` runs both on one batch."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from terse_tf import export
from terse_tf.errors import ConfigError, DataError
from terse_tf.generation import inputs as inputs_lib
from terse_tf.generation import records
from terse_tf.targets.classification import ClassifierTarget
from terse_tf.targets.ssd import SSDTarget


class Synthesizer:
  """One signature of an exported synthesizer, and what its inputs say about the task."""

  def __init__(self, path: str, signature: str, jit_compile: bool = False):
    loaded = export.load(path, "--synthesizer")
    self.path = os.path.realpath(export.saved_model_path(path))
    if export.HARDNESS in loaded.signatures:  # What a run's export/target holds, not export/synthesizer.
      raise ConfigError(f"--synthesizer={path}: this is an exported target (it has a `hardness` signature); "
                        "expected a run's export/synthesizer (give a target as --target)")
    if signature not in loaded.signatures:
      raise ConfigError(f"--signature={signature}: {self.path} has only {sorted(loaded.signatures)}")
    self._loaded, self.function = loaded, loaded.signatures[signature]
    self.inputs = self.function.structured_input_signature[1]
    self._call = (tf.function(lambda **inputs: self.function(**inputs), jit_compile=True) if jit_compile
                  else self.function)
    self.seeded = "seed" in self.inputs
    self.detection = "classes" in self.inputs
    self.foreground_shape = tuple(self.inputs["foreground"].shape[1:])  # ([N,] h, w, C + 1)
    self.background_shape = tuple(self.inputs["background"].shape[1:])  # (H, W, C)
    self.slots = self.foreground_shape[0] if self.detection else 1
    self.class_names = export.class_names(self.path)  # None: an export that does not list them.

  def __call__(self, foreground: np.ndarray, background: np.ndarray, classes: np.ndarray | None,
               seed: np.ndarray) -> dict[str, np.ndarray]:
    inputs = {"foreground": tf.constant(foreground), "background": tf.constant(background)}
    if self.detection:
      inputs["classes"] = tf.constant(classes)
    if self.seeded:
      inputs["seed"] = tf.constant(seed, tf.int32)
    return {name: value.numpy() for name, value in self._call(**inputs).items()}


class Target:
  """The `hardness` signature of an exported target, and what the export says about the target."""

  def __init__(self, path: str):
    loaded = export.load(path, "--target")
    self.flag = f"--target={path}"
    if export.HARDNESS not in loaded.signatures:
      raise DataError(f"{self.flag}: no `{export.HARDNESS}` signature (exported before terse_tf had one?)")
    self._loaded, self.function = loaded, loaded.signatures[export.HARDNESS]
    self.path = os.path.realpath(export.saved_model_path(path))
    inputs = self.function.structured_input_signature[1]
    # The hardness signature's labels tell the kind: a detector's boxes, or a classifier's label.
    self.detector = "boxes" in inputs
    self.kind = SSDTarget if self.detector else ClassifierTarget
    self.image_shape = tuple(inputs["images"].shape[1:])
    names = export.class_names(self.path)
    if names is not None:
      self.num_classes: int | None = len(names)
    elif self.detector:  # An export that does not list its classes: a detector's outputs do not tell.
      self.num_classes = None
    else:
      self.num_classes = loaded.signatures[export.SERVING_DEFAULT].structured_outputs["probabilities"].shape[-1]

  def describe(self) -> str:
    return ("a detector (hardness: its confidence at the object)" if self.detector
            else "a classifier (hardness: p_gt - max_other)")

  def hardness(self, images: np.ndarray, labels: dict[str, np.ndarray]) -> np.ndarray:
    return self.function(images=tf.constant(images), **{k: tf.constant(v) for k, v in labels.items()}
                         )["hardness"].numpy()


def composite(synthesizer: Synthesizer, target: Target | None, draw: inputs_lib.Draw, masks: bool
              ) -> records.Batch:
  """The synthesizer's composites of `draw` with their labels (a detector's: the boxes of what stays
  visible, which only the synthesizer knows), the target's hardness of each, and with `masks` the masks."""
  outputs = synthesizer(draw.foreground, draw.background, draw.classes, draw.seed)
  labels = draw.labels
  if synthesizer.detection:
    labels = {"boxes": outputs["boxes"], "classes": outputs["classes"].astype(np.int32),
              "count": outputs["num_objects"].astype(np.int32)}
  hardness = target.hardness(outputs["composite"], labels) if target else None
  mask = outputs["masks" if synthesizer.detection else "warped_mask"] if masks else None
  return records.Batch(outputs["composite"], outputs["params"], labels, mask, hardness)
