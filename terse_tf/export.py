"""Export: SavedModels with explicit serving signatures that `saved_model_cli run` and TF Serving run.

Each export is a `keras.export.ExportArchive` that tracks the network and registers one function per
signature. A plain `tf.Module` holding a Keras 3 model is not enough: `tf.saved_model.load` in Python finds
its variables through the functions that capture them, but the TF1-style loader that `saved_model_cli run`
and TF Serving use restores only the variables in the object graph's saver and fails with "Could not find
variable ...". The archive lists the model's variables on the exported object, so they are restored
everywhere. (Plain `tf.saved_model.save` of a Keras 3 model would also rename the inputs.)

Each task names its synthesizer's signatures (Task.synthesizer_endpoints), always two:
  serving_default: S in inference mode (dropout off, BatchNorm moving averages). A synthesizer with a noise
      input draws its noise inside the signature, so every call samples new transforms.
  sample: S with its dropout on, as it ran while it filled the hard-example cache (dropout is S's source of
      variety, paper Table 2); BatchNorm still uses its moving averages, since a served batch need not look
      like a training batch.
affNIST: (foreground [B,40,40,2] colour + straight alpha, background [B,40,40,1]) -> {params, composite,
warped_mask}. Detection tasks: (foreground [B,N,h,w,4], background [B,H,W,3]) -> {params, composite, boxes,
classes, num_objects}. The target's serving_default is Target.serving_outputs: {probabilities} for a
classifier; {boxes, scores, classes, num_detections} for a detector.
"""

from __future__ import annotations

import os
import shutil

import keras
import tensorflow as tf

from terse_tf.targets.base import Target
from terse_tf.tasks.base import Task

SYNTHESIZER_DIR, TARGET_DIR = "synthesizer", "target"
SERVING_DEFAULT, SAMPLE = "serving_default", "sample"


def synthesizer_archive(synthesizer: keras.Model, task: Task) -> keras.export.ExportArchive:
  archive = keras.export.ExportArchive()
  archive.track(synthesizer)
  for name, (function, input_signature) in task.synthesizer_endpoints(synthesizer).items():
    archive.add_endpoint(name, function, input_signature=input_signature)
  return archive


def target_archive(target: Target, image_shape: tuple[int, int, int]) -> keras.export.ExportArchive:
  """serving_default(images [B, H, W, C] float in [0, 1]) -> Target.serving_outputs."""
  archive = keras.export.ExportArchive()
  archive.track(target.model)
  archive.add_endpoint(SERVING_DEFAULT, target.serving_outputs,
                       input_signature=[tf.TensorSpec([None, *image_shape], tf.float32, name="images")])
  return archive


def write(archive: keras.export.ExportArchive, path: str) -> str:
  """Writes the SavedModel next to `path`, then swaps it in: a crash mid-export leaves the previous export
  (if any) in place, never a half-written one."""
  path = os.path.normpath(path)
  staging, previous = path + ".writing", path + ".previous"
  for leftover in (staging, previous):
    shutil.rmtree(leftover, ignore_errors=True)
  archive.write_out(staging, verbose=False)
  if os.path.exists(path):
    os.replace(path, previous)
  os.replace(staging, path)
  shutil.rmtree(previous, ignore_errors=True)
  return path


def export_models(task: Task, synthesizer: keras.Model, target: Target, export_dir: str) -> dict[str, str]:
  """Writes both SavedModels under `export_dir`; returns their paths."""
  return {
      SYNTHESIZER_DIR: write(synthesizer_archive(synthesizer, task), os.path.join(export_dir, SYNTHESIZER_DIR)),
      TARGET_DIR: write(target_archive(target, task.image_shape), os.path.join(export_dir, TARGET_DIR)),
  }
