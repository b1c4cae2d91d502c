"""What a generated dataset's composites are made of: the cut-outs and background photos, and the random draw
of one batch's inputs (which cut-outs, how many objects, which crops, the synthesizer's seed).

A draw takes all its randomness from the generator it is given, and a shard's generator is seeded by (seed,
shard index) (`shard_rng`), so a shard's inputs are a function of the run's --seed and the shard's index:
what lets a killed run redo only its unfinished shards (generator.py).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from terse_tf import files
from terse_tf.data import cutouts as cutouts_lib
from terse_tf.data import photos as photos_lib

# --backgrounds value for the photos bundled with scikit-image and matplotlib (data/photos.py's train split).
BUNDLED_PHOTOS = "bundled"


def shard_rng(seed: int, shard: int) -> np.random.Generator:
  """The random generator every draw of shard `shard` of a run with `seed` comes from."""
  return np.random.default_rng([seed, shard])


def load_cutouts(foregrounds: str, cutout_shape: tuple[int, int, int], class_names: list[str] | None
                 ) -> cutouts_lib.Cutouts:
  """The --foregrounds cut-outs fitted to the synthesizer's `cutout_shape` (h, w, C + 1). "bundled": MNIST
  digits in the synthesizer's `class_names` (None: it does not list them, and the ten digits are taken, as
  affNIST's)."""
  if foregrounds == cutouts_lib.BUNDLED:
    names = class_names or [str(digit) for digit in range(10)]
    return cutouts_lib.bundled_digits(cutout_shape[:2], names, coloured=cutout_shape[-1] == 4)
  return cutouts_lib.load_cutouts(foregrounds, cutout_shape[:2])


def load_photos(backgrounds: str, background_shape: tuple[int, int, int]) -> list[np.ndarray] | None:
  """The --backgrounds photos to crop from, each at least as large as a background; None for black ones."""
  min_side = min(background_shape[:2])
  if backgrounds == BUNDLED_PHOTOS:
    return photos_lib.load_photos("train", min_side=min_side)
  if backgrounds:
    return photos_lib.read_photos(photos_lib.image_paths(backgrounds), f"--backgrounds={backgrounds}",
                                  min_side=min_side)
  return None


@dataclasses.dataclass(frozen=True)
class Draw:
  """Everything random about one batch: the synthesizer's inputs and its seed."""
  foreground: np.ndarray                # [B, h, w, C + 1], or [B, N, h, w, C + 1] with empty slots all zero
  background: np.ndarray                # [B, H, W, C] in [0, 1]
  classes: np.ndarray | None            # Detection: [B, N] int32, -1 in an empty slot.
  labels: dict[str, np.ndarray] | None  # Classification: {"label": [B]}; a detector's come from the synthesizer.
  seed: np.ndarray                      # [2]: the seeded signature's dropout and noise.


class Inputs:
  """Draws batches of synthesizer inputs from the cut-outs and photos."""

  def __init__(self, cutouts: np.ndarray, cutout_classes: np.ndarray, photos: list[np.ndarray] | None,
               background_shape: tuple[int, int, int], detection: bool, slots: int, max_objects: int):
    """`cutouts` [K, h, w, C + 1] as the synthesizer takes them, `cutout_classes` [K]; `slots`: the objects
    the synthesizer pastes at most (1 for classification); a detection composite's objects are drawn from
    1..`max_objects` (<= slots)."""
    self.cutouts, self.cutout_classes = cutouts, cutout_classes
    self.photos, self.background_shape = photos, background_shape
    self.detection, self.slots, self.max_objects = detection, slots, max_objects

  def draw(self, count: int, rng: np.random.Generator) -> Draw:
    """The inputs of `count` composites. The order of the draws from `rng` fixes the dataset: changing it
    changes every shard, which a resume would not notice (a shard's recipe covers its inputs, not code)."""
    picks = rng.integers(len(self.cutouts), size=(count, self.slots))
    background = self._backgrounds(count, rng)
    if not self.detection:
      return Draw(self.cutouts[picks[:, 0]], background, None, {"label": self.cutout_classes[picks[:, 0]]},
                  _signature_seed(rng))
    objects = rng.integers(1, self.max_objects + 1, size=count)
    filled = np.arange(self.slots)[None, :] < objects[:, None]
    classes = np.where(filled, self.cutout_classes[picks], -1).astype(np.int32)
    foreground = self.cutouts[picks] * filled[:, :, None, None, None]
    return Draw(foreground, background, classes, None, _signature_seed(rng))

  def _backgrounds(self, count: int, rng: np.random.Generator) -> np.ndarray:
    if self.photos is None:
      return np.zeros([count, *self.background_shape], np.float32)
    return photos_lib.random_backgrounds(self.photos, count, self.background_shape, rng)


def _signature_seed(rng: np.random.Generator) -> np.ndarray:
  """The seed the `generate` signature takes, drawn last, after the batch's inputs."""
  return rng.integers(2 ** 31 - 1, size=2)


def foregrounds_identity(foregrounds: str) -> str:
  """What a shard's recipe records of --foregrounds: "bundled", or a digest of the folder's contents (so a
  folder is the same whatever spelling of its path names it)."""
  if foregrounds == cutouts_lib.BUNDLED:
    return cutouts_lib.BUNDLED
  return files.content_digest(foregrounds, _files_under(foregrounds))


def backgrounds_identity(backgrounds: str) -> str:
  """What a shard's recipe records of --backgrounds: "" (black), "bundled", or a digest of the photos."""
  if backgrounds in ("", BUNDLED_PHOTOS):
    return backgrounds
  return files.content_digest(backgrounds, photos_lib.image_paths(backgrounds))


def _files_under(folder: str) -> list[str]:
  """Every file under `folder`, in a fixed order."""
  return [os.path.join(directory, name) for directory, _, names in sorted(os.walk(folder))
          for name in sorted(names)]
