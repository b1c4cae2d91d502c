"""Discriminator D: real images vs composites (paper §3.3, A.2), after pix2pixHD's multi-scale PatchGAN.

At each of `num_scales` scales (the image, then average-pooled by 2 each time) a PatchGAN classifies
overlapping patches: 4x4 convolutions with stride 2 (64, 128, 256 channels), one with stride 1 (512), then
a 1-channel 4x4 convolution giving one logit per patch; instance normalisation after all but the first
and last, LeakyReLU(0.2). Weights start from a normal distribution (std 0.02, as pix2pixHD's; the paper's
value was stripped from our copy). Patches at several scales judge both local blending seams and the
object's fit in the scene.
"""

from __future__ import annotations

import keras
from keras import layers

INIT_STDDEV = 0.02


def _patch_discriminator(channels: int, width: int, name: str, seed: int | None) -> keras.Sequential:
  def conv(filters, strides, index):
    initializer = keras.initializers.RandomNormal(stddev=INIT_STDDEV,
                                                  seed=None if seed is None else seed + index)
    return layers.Conv2D(filters, 4, strides=strides, padding="same", kernel_initializer=initializer,
                         name=f"conv{index}")

  stack = [keras.Input((None, None, channels)), conv(width, 2, 0), layers.LeakyReLU(0.2)]
  for index, (multiple, strides) in enumerate(((2, 2), (4, 2), (8, 1)), start=1):
    # groups=-1: one group per channel, i.e. instance normalisation.
    stack += [conv(width * multiple, strides, index), layers.GroupNormalization(groups=-1),
              layers.LeakyReLU(0.2)]
  stack.append(conv(1, 1, 4))
  return keras.Sequential(stack, name=name)


def build_discriminator(image_shape: tuple[int, int, int], num_scales: int = 2, width: int = 64,
                        seed: int | None = None) -> keras.Model:
  """Model: images [B, H, W, C] in [0, 1] -> a list of `num_scales` patch-logit maps [B, h_s, w_s, 1],
  positive for "real"."""
  images = keras.Input(image_shape, name="images")
  outputs, x = [], images
  for scale in range(num_scales):
    if scale:
      x = layers.AveragePooling2D(3, strides=2, padding="same", name=f"downsample{scale}")(x)
    patch_seed = None if seed is None else seed + 10 * scale
    outputs.append(_patch_discriminator(image_shape[-1], width, f"scale{scale}", patch_seed)(x))
  return keras.Model(images, outputs, name="discriminator")
