"""Export: SavedModels with explicit serving signatures (Model Garden's export_base pattern).

The synthesizer's signature takes a foreground cut-out and a background and returns the clamped affine
parameters, the composite and the warped mask; the target's takes images and returns class probabilities.
Each is a tf.Module with one `tf.function` per signature: plain `tf.saved_model.save` of a Keras 3 model
would rename the inputs.
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from terse_tf import compositor as compositor_lib
from terse_tf.networks import synthesizer as synthesizer_lib

SYNTHESIZER_DIR, TARGET_DIR = "synthesizer", "target"


class SynthesizerServing(tf.Module):
  """serving_default(foreground [B,H,W,C+1] colour + straight alpha, background [B,H,W,C]).

  A synthesizer with a noise input draws its noise inside the signature: every call samples new transforms.
  """

  def __init__(self, synthesizer: keras.Model, config: compositor_lib.CompositorConfig,
               foreground_shape: tuple[int, int, int], background_shape: tuple[int, int, int]):
    super().__init__(name="synthesizer_serving")
    self.synthesizer = synthesizer
    self._config = config
    self.serve = tf.function(self._serve, input_signature=[
        tf.TensorSpec([None, *foreground_shape], tf.float32, name="foreground"),
        tf.TensorSpec([None, *background_shape], tf.float32, name="background")])

  def _serve(self, foreground: tf.Tensor, background: tf.Tensor) -> dict[str, tf.Tensor]:
    raw = synthesizer_lib.raw_params(self.synthesizer, compositor_lib.premultiplied(foreground), background,
                                     training=False)
    params = compositor_lib.place(raw, foreground, tuple(background.shape[1:3]), self._config)
    result = compositor_lib.composite(foreground, background, params, self._config)
    return {"params": params, "composite": result.image, "warped_mask": result.warped_mask}


class TargetServing(tf.Module):
  """serving_default(images [B,H,W,C] in [0, 1]) -> probabilities [B, classes]."""

  def __init__(self, target: keras.Model, image_shape: tuple[int, int, int]):
    super().__init__(name="target_serving")
    self.target = target
    self.serve = tf.function(self._serve, input_signature=[
        tf.TensorSpec([None, *image_shape], tf.float32, name="images")])

  def _serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
    return {"probabilities": tf.nn.softmax(self.target(images, training=False))}


def save(module: tf.Module, path: str) -> str:
  tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
  return path


def export_models(synthesizer: keras.Model, target: keras.Model,
                  compositor_config: compositor_lib.CompositorConfig, foreground_shape: tuple[int, int, int],
                  image_shape: tuple[int, int, int], export_dir: str) -> dict[str, str]:
  """Writes both SavedModels under `export_dir`; returns their paths."""
  return {
      SYNTHESIZER_DIR: save(SynthesizerServing(synthesizer, compositor_config, foreground_shape, image_shape),
                            os.path.join(export_dir, SYNTHESIZER_DIR)),
      TARGET_DIR: save(TargetServing(target, image_shape), os.path.join(export_dir, TARGET_DIR)),
  }
