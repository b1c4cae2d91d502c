"""Foreground cut-outs from a folder: what a user brings to paste (the dataset generator, bring-your-own
targets).

Layout, one sub-folder per class:
    <dir>/<class>/<name>.png            an image with an alpha channel (RGBA, or grey + alpha), or
    <dir>/<class>/<name>.<png|jpg|...>  an image without one, beside
    <dir>/<class>/<name>.mask.png       its mask (the object where the mask is bright);
    <dir>/classes.txt                   optional: the class folders' names, one a line, in class-id order.
Without classes.txt the sorted folder names are the class ids 0, 1, ... (so "10" comes before "2"; write
the file when that order is not yours: `write_cutouts` always does).
Each cut-out is scaled to fit the synthesizer's cut-out size (aspect kept, centred, transparent padding).
A file that cannot be read, a mask whose size differs from its image, an image with neither alpha nor
mask, or one with nothing visible (alpha or mask 0 everywhere) is skipped with a warning naming it, and the
count is logged; a folder with no usable cut-out is an error naming it, and a class sub-folder with none a
warning.

`bundled_digits` makes cut-outs of the MNIST digits that ship with terse_tf, for `--foregrounds=bundled`.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf
from absl import logging

from terse_tf import files
from terse_tf.data import mnist
from terse_tf.data.photos import IMAGE_EXTENSIONS, luminance, resized, to_uint8
from terse_tf.errors import ConfigError, DataError

MASK_SUFFIX = ".mask.png"
CLASSES_FILE = "classes.txt"
BUNDLED = "bundled"  # --foregrounds value for bundled_digits.
# Digits --foregrounds=bundled pastes: variety enough for any dataset size, 25 MB of float cut-outs at 40x40.
BUNDLED_DIGITS = 1000


@dataclasses.dataclass(frozen=True)
class Cutouts:
  images: np.ndarray     # float32 [N, h, w, 4]: straight RGB + alpha, in [0, 1].
  classes: np.ndarray    # int32 [N]
  class_names: list[str]

  def with_channels(self, channels: int) -> np.ndarray:
    """The cut-outs as colour + alpha with `channels` in all: 4 (RGB + alpha) or 2 (luminance + alpha)."""
    if channels == 4:
      return self.images
    if channels == 2:
      return np.concatenate([luminance(self.images[..., :3]), self.images[..., 3:]], axis=-1)
    raise ValueError(f"cut-outs have 2 (grey + alpha) or 4 (RGB + alpha) channels, not {channels}")


def _decode(path: str) -> np.ndarray:
  with open(path, "rb") as f:
    image = tf.io.decode_image(f.read(), expand_animations=False, dtype=tf.float32).numpy()
  return image


def read_cutout(path: str) -> np.ndarray:
  """float32 [H, W, 4] straight RGB + alpha of one cut-out file (with its .mask.png when it has no alpha);
  DataError naming the file when it cannot be used."""
  try:
    image = _decode(path)
  except (OSError, tf.errors.OpError) as e:
    raise DataError(f"{path}: cannot read this image ({type(e).__name__})") from e
  colour = np.repeat(image[..., :1], 3, axis=-1) if image.shape[-1] in (1, 2) else image[..., :3]
  if image.shape[-1] in (2, 4):
    alpha, alpha_source = image[..., -1:], path
  else:
    alpha_source = os.path.splitext(path)[0] + MASK_SUFFIX
    if not os.path.exists(alpha_source):
      raise DataError(f"{path}: no alpha channel and no mask {os.path.basename(alpha_source)} beside it")
    try:
      mask = _decode(alpha_source)
    except (OSError, tf.errors.OpError) as e:
      raise DataError(f"{alpha_source}: cannot read this mask ({type(e).__name__})") from e
    if mask.shape[:2] != image.shape[:2]:
      raise DataError(f"{alpha_source}: mask is {mask.shape[1]}x{mask.shape[0]} pixels, its image "
                      f"{os.path.basename(path)} is {image.shape[1]}x{image.shape[0]}")
    alpha = mask[..., :1]
  # Pasted, it would leave the background as it was while its label claims an object.
  if not np.any(alpha > 0):
    raise DataError(f"{alpha_source}: fully transparent ({'alpha' if alpha_source == path else 'mask'} 0 "
                    "everywhere): nothing to paste")
  return np.concatenate([colour, alpha], axis=-1)


def _resample(cutout: np.ndarray, size: tuple[int, int], frame: tuple[int, int], keep_aspect: bool
              ) -> np.ndarray:
  """Cut-outs [..., H, W, 4] resized to `size` (to fit it, with `keep_aspect`), antialiased and
  premultiplied while resampling so no colour bleeds from transparent pixels, centred in a transparent
  `frame`."""
  premultiplied = np.concatenate([cutout[..., :3] * cutout[..., 3:], cutout[..., 3:]], axis=-1)
  resized = tf.image.resize(premultiplied, size, preserve_aspect_ratio=keep_aspect, antialias=True)
  padded = tf.image.resize_with_crop_or_pad(resized, *frame).numpy()
  alpha = np.clip(padded[..., 3:], 0, 1)
  colour = np.clip(np.where(alpha > 0, padded[..., :3] / np.maximum(alpha, 1e-6), 0), 0, 1)
  return np.concatenate([colour, alpha], axis=-1).astype(np.float32)


def fit(cutout: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """A cut-out [H, W, 4] scaled to fit `size` (aspect kept), centred with transparent padding."""
  return _resample(cutout, size, size, keep_aspect=True)


def squashed_size(height: int, width: int, frame_aspect: float) -> tuple[int, int]:
  """An image's size once squashed as a frame of width / height `frame_aspect` is when it is resized to a
  square: its width divided by the aspect (a wide frame), or its height multiplied by it (a tall one)."""
  return max(1, round(height * min(1.0, frame_aspect))), max(1, round(width * min(1.0, 1 / frame_aspect)))


def squash(cutouts: np.ndarray, frame_aspect: float) -> np.ndarray:
  """Cut-outs [..., h, w, 4] squashed as squashed_size says, centred in their h x w with transparent
  padding: shaped as objects are in frames of `frame_aspect` resized to a square."""
  frame = cutouts.shape[-3:-1]
  return _resample(cutouts, squashed_size(*frame, frame_aspect), frame, keep_aspect=False)


def squash_photos(photos: list[np.ndarray], frame_aspect: float) -> list[np.ndarray]:
  """uint8 photos squashed (squashed_size) as frames of `frame_aspect` are when resized to a square, so that
  square crops of them show a scene as the squashed frames T sees do."""
  return [resized(photo, *squashed_size(*photo.shape[:2], frame_aspect)) for photo in photos]


def load_cutouts(directory: str, size: tuple[int, int], flag: str = "--foregrounds") -> Cutouts:
  """Every cut-out under `directory` (the module's layout), fitted to `size`."""
  if not os.path.isdir(directory):
    raise DataError(f"{flag}={directory}: not a directory; expected one sub-folder of cut-outs per class")
  class_names = class_order(directory, flag)
  images, classes, skipped, seen = [], [], 0, 0
  for class_id, name in enumerate(class_names):
    folder = os.path.join(directory, name)
    for file_name in sorted(os.listdir(folder)):
      if not file_name.lower().endswith(IMAGE_EXTENSIONS) or file_name.endswith(MASK_SUFFIX):
        continue
      seen += 1
      try:
        images.append(fit(read_cutout(os.path.join(folder, file_name)), size))
      except DataError as e:
        logging.warning("skipping %s", e)
        skipped += 1
        continue
      classes.append(class_id)
  if skipped:
    logging.warning("%d of %d cut-outs in %s=%s skipped (see the warnings above)", skipped, seen, flag, directory)
  if not images:
    raise DataError(f"{flag}={directory}: no usable cut-out; expected <class>/<name>.png with an alpha channel, "
                    f"or an image with a <name>{MASK_SUFFIX} beside it")
  empty = [name for class_id, name in enumerate(class_names) if class_id not in classes]
  if empty:  # Still a class (ids follow the folders), but nothing of it will be pasted.
    logging.warning("%s=%s: no usable cut-out of class %s", flag, directory, ", ".join(empty))
  return Cutouts(np.stack(images), np.array(classes, np.int32), class_names)


def class_order(directory: str, flag: str = "--foregrounds") -> list[str]:
  """The class folders of a cut-out directory in class-id order: as its CLASSES_FILE lists them, else
  sorted by name."""
  folders = sorted(name for name in os.listdir(directory) if os.path.isdir(os.path.join(directory, name)))
  listing = os.path.join(directory, CLASSES_FILE)
  if not os.path.exists(listing):
    return folders
  with open(listing) as f:
    names = [line.strip() for line in f if line.strip()]
  if sorted(names) != folders:
    raise DataError(f"{flag}={directory}: {CLASSES_FILE} lists {names}, but the class folders are {folders}; "
                    "expected each folder named once, in class-id order")
  return names


def write_cutouts(images: np.ndarray, classes: np.ndarray, class_names: list[str], directory: str) -> None:
  """Writes cut-outs [N, h, w, 4] (straight RGB + alpha in [0, 1]) of `classes` [N] as RGBA PNGs in the
  module's layout, with CLASSES_FILE keeping `class_names`' order: how to turn your own (or the bundled)
  objects into a --foregrounds folder."""
  for class_id, name in enumerate(class_names):
    os.makedirs(os.path.join(directory, name), exist_ok=True)
  files.atomic_write(os.path.join(directory, CLASSES_FILE),
                     lambda f: f.write("".join(f"{name}\n" for name in class_names).encode()))
  for index, (image, class_id) in enumerate(zip(images, classes)):
    encoded = tf.io.encode_png(to_uint8(image)).numpy()
    with open(os.path.join(directory, class_names[class_id], f"{index:06d}.png"), "wb") as f:
      f.write(encoded)


def bundled_digits(size: tuple[int, int], class_names: list[str], coloured: bool, count: int = BUNDLED_DIGITS,
                   seed: int = 0) -> Cutouts:
  """`count` of the MNIST digits bundled with terse_tf (data/mnist10k.npz), fitted to `size`, as the cut-outs
  of `--foregrounds=bundled`: the ink is the alpha, white (what the affNIST task pastes) or, `coloured`, one
  random colour per digit (as the photo_digits task paints them). `class_names` are the synthesizer's: ten
  (digit d is class d) or one (every digit is that class, photo_digits' "digit")."""
  if len(class_names) not in (1, mnist.NUM_CLASSES):
    raise ConfigError(f"--foregrounds={BUNDLED}: the bundled digits make {mnist.NUM_CLASSES} classes or one, "
                      f"the synthesizer's task has {len(class_names)} ({class_names}); give a folder of your "
                      "own cut-outs")
  images, labels = mnist.load_bundled()
  rng = np.random.default_rng(seed)
  pick = np.sort(rng.choice(len(images), count, replace=False))
  alpha = mnist.pad_to(images[pick]).astype(np.float32)[..., None] / 255
  colour = rng.uniform(size=(count, 1, 1, 3)) if coloured else np.ones((count, 1, 1, 3))
  digits = np.concatenate([np.broadcast_to(colour, (*alpha.shape[:-1], 3)), alpha], axis=-1).astype(np.float32)
  if digits.shape[1:3] != tuple(size):
    digits = fit(digits, size)  # fit works on a batch as on one cut-out.
  classes = labels[pick] if len(class_names) == mnist.NUM_CLASSES else np.zeros(count, np.int32)
  return Cutouts(digits, classes.astype(np.int32), list(class_names))
