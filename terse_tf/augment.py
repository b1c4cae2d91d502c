"""SSD's training data augmentation (Liu et al. 2016, §2.2 "Data augmentation"; Caffe's and ssd.pytorch's
`SSDAugmentation`) for detection labels {"boxes", "classes", "count"}, optionally with "ignore_boxes"
(terse_tf.boxes' corner format).

The steps, in SSD's order: photometric distortion, expand (zoom out onto a mean-filled canvas), an
IoU-constrained random crop (zoom in), horizontal flip. Expand and crop compose into one window of the input
image, resampled once back to H x W: one resampling blurs less than two, and the crop keeps the expanded
canvas's full resolution, as in SSD, which crops the canvas before its final resize.

Every draw is stateless (a shape-[2] seed), so the same seed gives the same output and a resumed run replays
its input stream exactly; no Python control flow touches tensor values, so it runs in `tf.data.Dataset.map`.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from terse_tf import boxes as boxes_lib

LABEL_KEYS = ("boxes", "classes", "count")
IGNORE_KEY = "ignore_boxes"
_NO_CROP = 2.0  # A minimum IoU no patch reaches: the "keep the whole image" option of SSD's patch sampler.


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """SSD's augmentation knobs, SSD's defaults. Turn a step off with photometric=False, expand_prob=0,
  crop=False or flip_prob=0.

  Photometric steps (ssd.pytorch's PhotometricDistort) each apply with probability `photometric_prob`:
  brightness +- `brightness_delta` (32/255: SSD's 32 on 8-bit pixels), contrast and saturation factors
  uniform over their ranges, hue +- `hue_delta` turns (18 degrees). Expand zooms out by a ratio uniform in
  [1, `max_expand`]. The crop picks uniformly among "no crop" and each minimum IoU of `crop_min_ious` (0
  means any patch holding an object's centre), then takes the first of `crop_trials` candidate patches
  (sides `crop_min_scale`..1 of the image's, height / width in pixels within `crop_aspect_range`) that
  reaches that IoU with some object and holds some object's centre; none does: no crop.
  """
  photometric: bool = True
  photometric_prob: float = 0.5
  brightness_delta: float = 32 / 255
  contrast_range: tuple[float, float] = (0.5, 1.5)
  saturation_range: tuple[float, float] = (0.5, 1.5)
  hue_delta: float = 18 / 360
  expand_prob: float = 0.5
  max_expand: float = 4.0
  crop: bool = True
  crop_min_ious: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
  crop_trials: int = 50
  crop_min_scale: float = 0.3
  crop_aspect_range: tuple[float, float] = (0.5, 2.0)
  flip_prob: float = 0.5

  def __post_init__(self):
    unit_names = ("photometric_prob", "expand_prob", "flip_prob", "brightness_delta")
    problems = [f"{name} must be in [0, 1]" for name in unit_names if not 0 <= getattr(self, name) <= 1]
    for name in ("contrast_range", "saturation_range", "crop_aspect_range"):
      value = getattr(self, name)
      if len(value) != 2 or not 0 <= value[0] <= value[1] or value[1] <= 0:
        problems.append(f"{name} must be (low, high) with 0 <= low <= high, high > 0; got {value}")
    if not 0 <= self.hue_delta <= 0.5:
      problems.append(f"hue_delta is in turns and must be in [0, 0.5]; got {self.hue_delta}")
    if not self.max_expand >= 1:
      problems.append(f"max_expand must be >= 1 (1: no zoom out); got {self.max_expand}")
    if not all(0 <= iou <= 1 for iou in self.crop_min_ious):
      problems.append(f"crop_min_ious must lie in [0, 1]; got {self.crop_min_ious}")
    if not (isinstance(self.crop_trials, int) and self.crop_trials >= 1):
      problems.append(f"crop_trials must be an int >= 1; got {self.crop_trials!r}")
    if not 0 < self.crop_min_scale <= 1:
      problems.append(f"crop_min_scale must be in (0, 1]; got {self.crop_min_scale}")
    if problems:
      raise ValueError("AugmentConfig: " + "; ".join(problems))


# The named recipes a detection task offers for T (photo_digits' --ssd_augment, gmu's --gmu_augment): SSD's
# photometric distortion alone; SSD's whole recipe, zooming out at most 2x rather than 4x (4x would take our
# tasks' small objects, digits 9-40 pixels high at 128 px, GMU products of a few tens of pixels at 300, below
# the smallest default box); or none.
RECIPES = {"photometric": AugmentConfig(expand_prob=0.0, crop=False, flip_prob=0.0),
           "ssd": AugmentConfig(max_expand=2.0),
           "none": None}
RECIPES_HELP = ("photometric (SSD's photometric distortion), ssd (SSD's whole recipe: photometric distortion, "
                "expand up to 2x, IoU-constrained crop, flip) or none")


def _between(unit: tf.Tensor, low: float, high: float) -> tf.Tensor:
  return low + unit * (high - low)


def _photometric(image: tf.Tensor, seed: tf.Tensor, config: AugmentConfig) -> tf.Tensor:
  """Brightness, then contrast either before or after saturation and hue (a coin decides, as ssd.pytorch
  does); a step that does not apply gets its identity value. Clipped to [0, 1] after each step, as SSD's
  8-bit images are, so hue and saturation see valid colours."""
  on_seed, value_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  on = tf.random.stateless_uniform([4], on_seed) < config.photometric_prob
  unit = tf.random.stateless_uniform([5], value_seed)
  brightness = tf.where(on[0], _between(unit[0], -config.brightness_delta, config.brightness_delta), 0.0)
  contrast = tf.where(on[1], _between(unit[1], *config.contrast_range), 1.0)
  saturation = tf.where(on[2], _between(unit[2], *config.saturation_range), 1.0)
  hue = tf.where(on[3], _between(unit[3], -config.hue_delta, config.hue_delta), 0.0)
  contrast_first = unit[4] < 0.5
  clip = lambda x: tf.clip_by_value(x, 0.0, 1.0)
  image = clip(tf.image.adjust_brightness(image, brightness))
  image = clip(tf.image.adjust_contrast(image, tf.where(contrast_first, contrast, 1.0)))
  image = clip(tf.image.adjust_hue(clip(tf.image.adjust_saturation(image, saturation)), hue))
  return clip(tf.image.adjust_contrast(image, tf.where(contrast_first, 1.0, contrast)))


def _centres_inside(boxes: tf.Tensor, patches: tf.Tensor) -> tf.Tensor:
  """[P, G]: box g's centre lies strictly inside patch p (ssd.pytorch's test)."""
  centre = (boxes[None, :, :2] + boxes[None, :, 2:]) / 2
  return tf.reduce_all((centre > patches[:, None, :2]) & (centre < patches[:, None, 2:]), axis=-1)


def _sample_patch(boxes: tf.Tensor, real: tf.Tensor, seed: tf.Tensor, aspect: float, config: AugmentConfig
                  ) -> tuple[tf.Tensor, tf.Tensor]:
  """SSD's "sample a patch" over `boxes` [G, 4] (of which `real` [G] are objects), with all trials drawn at
  once: (patch [4] in the boxes' coordinates, whether it crops). `aspect` = H / W turns the patch's
  normalised sides into its shape in pixels."""
  mode_seed, size_seed, corner_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  mode = tf.random.stateless_uniform([], mode_seed, 0, len(config.crop_min_ious) + 1, tf.int32)
  min_iou = tf.gather(tf.constant((_NO_CROP, *config.crop_min_ious), tf.float32), mode)
  size = _between(tf.random.stateless_uniform([config.crop_trials, 2], size_seed), config.crop_min_scale, 1.0)
  corner = tf.random.stateless_uniform([config.crop_trials, 2], corner_seed) * (1.0 - size)
  patches = tf.concat([corner, corner + size], axis=-1)
  shape = size[:, 0] / size[:, 1] * aspect
  low, high = config.crop_aspect_range
  overlapping = tf.reduce_any(real & (boxes_lib.iou(patches, boxes) >= min_iou), axis=1)
  holding = tf.reduce_any(real & _centres_inside(boxes, patches), axis=1)
  accepted = (shape >= low) & (shape <= high) & overlapping & holding
  crops = tf.reduce_any(accepted)
  first = tf.argmax(tf.cast(accepted, tf.int32), output_type=tf.int32)
  return tf.where(crops, patches[first], tf.constant([0.0, 0.0, 1.0, 1.0])), crops


def _resample(image: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
  """`window` (corners in the image's normalised coordinates; it may reach past the image) of `image`
  [H, W, C] resampled bilinearly to H x W, pixel centres mapped exactly (the identity window is the identity);
  outside the image, its per-channel mean: SSD's expand canvas."""
  height, width = image.shape[0], image.shape[1]
  mean = tf.reduce_mean(image, axis=[0, 1])
  # One replicated pixel all round: samples in the image's outer half-pixel take its edge, not the mean.
  padded = tf.pad(image - mean, [[1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")

  def span(low, high, size):  # crop_and_resize samples the box's ends at pixel centres of `padded`.
    start = (low * size + (high - low) / 2 + 0.5) / (size + 1)
    return start, start + (high - low) * (size - 1) / (size + 1)

  (top, bottom), (left, right) = span(window[0], window[2], height), span(window[1], window[3], width)
  sampled = tf.image.crop_and_resize(padded[None], [[top, left, bottom, right]], [0], [height, width])
  return tf.clip_by_value(sampled[0] + mean, 0.0, 1.0)


def augment_example(image: tf.Tensor, labels: dict[str, tf.Tensor], seed: tf.Tensor,
                    config: AugmentConfig = AugmentConfig()) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
  """One image [H, W, 3] (float in [0, 1], H and W static) and its labels {"boxes" [G, 4], "classes" [G],
  "count" []} and optionally "ignore_boxes" [I, 4], augmented with the shape-[2] int `seed`: same shapes,
  boxes kept (centre inside the crop) first, padding rows zero. Ignore boxes move as boxes do; one the crop
  cuts stays an ignore box, clipped to the crop, and only one wholly outside it goes (a zero row). Labels
  with other keys (e.g. "masks") are refused: per-object data the geometry does not transform would
  silently stop matching the image."""
  if not set(LABEL_KEYS) <= set(labels) <= {*LABEL_KEYS, IGNORE_KEY}:
    raise ValueError(f"augment_example takes labels with keys {LABEL_KEYS} and optionally {IGNORE_KEY!r} only; "
                     f"got {sorted(labels)}")
  image = tf.convert_to_tensor(image, tf.float32)
  height, width = image.shape[0], image.shape[1]
  if height is None or width is None:
    raise ValueError(f"augment_example needs a static image height and width; got shape {image.shape}")
  photo_seed, expand_seed, crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
  boxes = tf.convert_to_tensor(labels["boxes"], tf.float32)
  rows = boxes.shape[0]
  classes = tf.cast(labels["classes"], tf.int32)
  real = tf.range(rows) < tf.cast(labels["count"], tf.int32)
  with_ignore = IGNORE_KEY in labels
  if with_ignore:  # Transformed in one tensor with the boxes, so both move exactly alike.
    boxes = tf.concat([boxes, tf.convert_to_tensor(labels[IGNORE_KEY], tf.float32)], axis=0)
  if config.photometric:
    image = _photometric(image, photo_seed, config)

  # Expand: the image is a 1/ratio-sized block at `offset` (top, left) of the canvas, in canvas units.
  draw = tf.random.stateless_uniform([4], expand_seed)
  ratio = tf.where(draw[0] < config.expand_prob, _between(draw[1], 1.0, config.max_expand), 1.0)
  offset = tf.tile(draw[2:] * (1.0 - 1.0 / ratio), [2])
  boxes = offset + boxes / ratio
  patch, crops = tf.constant([0.0, 0.0, 1.0, 1.0]), tf.constant(False)
  if config.crop:  # The patch is sampled around the objects only.
    patch, crops = _sample_patch(boxes[:rows], real[None, :], crop_seed, height / width, config)
  keep = real & (_centres_inside(boxes[:rows], patch[None])[0] | ~crops)
  boxes = tf.clip_by_value((boxes - tf.tile(patch[:2], [2])) / tf.tile(patch[2:] - patch[:2], [2]), 0.0, 1.0)
  if config.expand_prob > 0 or config.crop:
    image = _resample(image, (patch - offset) * ratio)  # The patch in the input image's coordinates.

  flip = tf.random.stateless_uniform([], flip_seed) < config.flip_prob
  image = tf.where(flip, image[:, ::-1], image)
  ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
  boxes = tf.where(flip, tf.stack([ymin, 1.0 - xmax, ymax, 1.0 - xmin], axis=-1), boxes)

  order = tf.argsort(tf.cast(~keep, tf.int32), stable=True)  # Kept rows first, in their original order.
  keep = tf.gather(keep, order)
  result = {"boxes": tf.where(keep[:, None], tf.gather(boxes[:rows], order), 0.0),
            "classes": tf.where(keep, tf.gather(classes, order), 0),
            "count": tf.reduce_sum(tf.cast(keep, tf.int32))}
  if with_ignore:
    # Clipped to the crop, an ignore box keeps an area while any of it is in the crop; a zero row (none) or
    # a box wholly outside has none and becomes a zero row.
    ignore_boxes = boxes[rows:]
    inside = (ignore_boxes[:, 2] > ignore_boxes[:, 0]) & (ignore_boxes[:, 3] > ignore_boxes[:, 1])
    result[IGNORE_KEY] = tf.where(inside[:, None], ignore_boxes, 0.0)
  return image, result


def augment_batch(images: tf.Tensor, labels: dict[str, tf.Tensor], seed: tf.Tensor,
                  config: AugmentConfig = AugmentConfig()) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
  """`augment_example` over a batch [B, H, W, 3] and labels [B, ...]; example b gets its own seed, drawn
  from `seed`, so the examples of a batch are augmented independently and the batch reproducibly."""
  images = tf.convert_to_tensor(images, tf.float32)
  seeds = tf.random.stateless_uniform([tf.shape(images)[0], 2], seed, minval=None, maxval=None, dtype=tf.int64)
  rows = labels["boxes"].shape[1]
  label_signature = {"boxes": tf.TensorSpec([rows, 4], tf.float32), "classes": tf.TensorSpec([rows], tf.int32),
                     "count": tf.TensorSpec([], tf.int32)}
  if IGNORE_KEY in labels:
    label_signature[IGNORE_KEY] = tf.TensorSpec([labels[IGNORE_KEY].shape[1], 4], tf.float32)
  return tf.map_fn(lambda example: augment_example(*example, config), (images, labels, seeds),
                   fn_output_signature=(tf.TensorSpec(images.shape[1:], tf.float32), label_signature))
