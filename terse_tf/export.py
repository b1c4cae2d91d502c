"""Export: SavedModels with explicit serving signatures that `saved_model_cli run` and TF Serving run.

Each export is a `keras.export.ExportArchive` that tracks the network and registers one function per
signature. A plain `tf.Module` holding a Keras 3 model is not enough: `tf.saved_model.load` in Python finds
its variables through the functions that capture them, but the TF1-style loader that `saved_model_cli run`
and TF Serving use restores only the variables in the object graph's saver and fails with "Could not find
variable ...". The archive lists the model's variables on the exported object, so they are restored
everywhere. (Plain `tf.saved_model.save` of a Keras 3 model would also rename the inputs.)

The synthesizer export has two signatures:
  serving_default(foreground, background) -> {params, composite, warped_mask}: S in inference mode
      (dropout off, BatchNorm moving averages). A synthesizer with a noise input draws its noise inside the
      signature, so every call samples new transforms.
  sample(foreground, background) -> the same keys: S with its dropout on, as it ran while it filled the
      hard-example cache (dropout is S's source of variety, paper Table 2); BatchNorm still uses its moving
      averages, since a served batch need not look like a training batch.
The target export has serving_default(images [B,H,W,C] in [0, 1]) -> {probabilities [B, classes]}.
"""

from __future__ import annotations

import os
import shutil

import keras
import tensorflow as tf

from terse_tf import compositor as compositor_lib
from terse_tf.networks import synthesizer as synthesizer_lib

SYNTHESIZER_DIR, TARGET_DIR = "synthesizer", "target"
SERVING_DEFAULT, SAMPLE = "serving_default", "sample"


def synthesizer_archive(synthesizer: keras.Model, config: compositor_lib.CompositorConfig,
                        foreground_shape: tuple[int, int, int],
                        background_shape: tuple[int, int, int]) -> keras.export.ExportArchive:
  """The synthesizer's archive: foreground [B,H,W,C+1] colour + straight alpha, background [B,H,W,C]."""
  sample_raw_params = synthesizer_lib.sampler(synthesizer)
  input_signature = [tf.TensorSpec([None, *foreground_shape], tf.float32, name="foreground"),
                     tf.TensorSpec([None, *background_shape], tf.float32, name="background")]

  def compose(raw: tf.Tensor, foreground: tf.Tensor, background: tf.Tensor) -> dict[str, tf.Tensor]:
    params = compositor_lib.place(raw, foreground, tuple(background.shape[1:3]), config)
    result = compositor_lib.composite(foreground, background, params, config)
    return {"params": params, "composite": result.image, "warped_mask": result.warped_mask}

  def serve(foreground: tf.Tensor, background: tf.Tensor) -> dict[str, tf.Tensor]:
    raw = synthesizer_lib.raw_params(synthesizer, compositor_lib.premultiplied(foreground), background,
                                     training=False)
    return compose(raw, foreground, background)

  def sample(foreground: tf.Tensor, background: tf.Tensor) -> dict[str, tf.Tensor]:
    return compose(sample_raw_params(compositor_lib.premultiplied(foreground), background), foreground,
                   background)

  archive = keras.export.ExportArchive()
  archive.track(synthesizer)
  archive.add_endpoint(SERVING_DEFAULT, serve, input_signature=input_signature)
  archive.add_endpoint(SAMPLE, sample, input_signature=input_signature)
  return archive


def target_archive(target: keras.Model, image_shape: tuple[int, int, int]) -> keras.export.ExportArchive:
  def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
    return {"probabilities": tf.nn.softmax(target(images, training=False))}

  archive = keras.export.ExportArchive()
  archive.track(target)
  archive.add_endpoint(SERVING_DEFAULT, serve,
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


def export_models(synthesizer: keras.Model, target: keras.Model,
                  compositor_config: compositor_lib.CompositorConfig, foreground_shape: tuple[int, int, int],
                  image_shape: tuple[int, int, int], export_dir: str) -> dict[str, str]:
  """Writes both SavedModels under `export_dir`; returns their paths."""
  return {
      SYNTHESIZER_DIR: write(synthesizer_archive(synthesizer, compositor_config, foreground_shape, image_shape),
                             os.path.join(export_dir, SYNTHESIZER_DIR)),
      TARGET_DIR: write(target_archive(target, image_shape), os.path.join(export_dir, TARGET_DIR)),
  }
