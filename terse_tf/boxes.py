"""Box mathematics for single-shot detection (SSD, Liu et al. 2016), as small pure functions of tensors.

One box format crosses module boundaries: normalised corners (ymin, xmin, ymax, xmax) in [0, 1], the format
of `tf.image.combined_non_max_suppression` and `tf.image.draw_bounding_boxes`. Default (anchor) boxes are
kept in centre form (cy, cx, h, w), normalised, the form SSD's regression targets are written in.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import NamedTuple

import tensorflow as tf

# SSD's encoding variances: centre offsets are divided by 0.1, log size ratios by 0.2, so both regression
# targets have about unit spread.
CENTRE_VARIANCE, SIZE_VARIANCE = 0.1, 0.2


class Detections(NamedTuple):
  """A detector's detections on a batch, padded to N per image (every detector's, SSD or not)."""
  boxes: tf.Tensor           # [B, N, 4] normalised ymin, xmin, ymax, xmax; zeros past num_detections.
  scores: tf.Tensor          # [B, N]
  classes: tf.Tensor         # [B, N] 0-based class (float, as NMS returns it); 0 past num_detections.
  num_detections: tf.Tensor  # [B] int32: how many of the N are real.


@dataclasses.dataclass(frozen=True)
class DefaultBoxSpec:
  """Default boxes over several square feature maps (SSD §2.2).

  Feature map k (of `feature_sizes`) gets scale s_k, spaced linearly from `min_scale` to `max_scale`; each
  of its cells holds one box per aspect ratio r (width s_k sqrt(r), height s_k / sqrt(r)) and one more of
  ratio 1 at scale sqrt(s_k s_{k+1}). Ratios below 1 are tall boxes: a "1" or a standing person needs
  ~0.4-0.5 to reach IoU 0.5 with any default box.
  """
  feature_sizes: tuple[int, ...] = (32, 16, 8, 4)
  min_scale: float = 0.1
  max_scale: float = 0.6
  aspect_ratios: tuple[float, ...] = (1.0, 2.0, 0.5, 0.4)

  def scales(self) -> list[float]:
    count = len(self.feature_sizes)
    step = (self.max_scale - self.min_scale) / max(count - 1, 1)
    return [self.min_scale + step * k for k in range(count + 1)]

  def boxes_per_cell(self) -> int:
    return len(self.aspect_ratios) + 1


def default_boxes(spec: DefaultBoxSpec) -> tf.Tensor:
  """[A, 4] default boxes in centre form (cy, cx, h, w), feature map by feature map, row-major cells, then
  the boxes of one cell; A = sum over maps of size^2 * boxes_per_cell."""
  scales = spec.scales()
  rows = []
  for k, size in enumerate(spec.feature_sizes):
    scale, between = scales[k], math.sqrt(scales[k] * scales[k + 1])
    shapes = [(scale / math.sqrt(r), scale * math.sqrt(r)) for r in spec.aspect_ratios] + [(between, between)]
    for i, j in itertools.product(range(size), range(size)):
      rows.extend([((i + 0.5) / size, (j + 0.5) / size, h, w) for h, w in shapes])
  return tf.constant(rows, tf.float32)


def corners_to_centres(boxes: tf.Tensor) -> tf.Tensor:
  ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
  return tf.stack([(ymin + ymax) / 2, (xmin + xmax) / 2, ymax - ymin, xmax - xmin], axis=-1)


def centres_to_corners(boxes: tf.Tensor) -> tf.Tensor:
  cy, cx, h, w = tf.unstack(boxes, axis=-1)
  return tf.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)


def iou(boxes_a: tf.Tensor, boxes_b: tf.Tensor) -> tf.Tensor:
  """Intersection over union [..., N, M] of corner boxes [..., N, 4] and [..., M, 4] (leading axes alike, a
  batch's say); 0 where both are empty."""
  a, b = boxes_a[..., :, None, :], boxes_b[..., None, :, :]
  height = tf.maximum(tf.minimum(a[..., 2], b[..., 2]) - tf.maximum(a[..., 0], b[..., 0]), 0.0)
  width = tf.maximum(tf.minimum(a[..., 3], b[..., 3]) - tf.maximum(a[..., 1], b[..., 1]), 0.0)
  intersection = height * width

  def area(box):
    return tf.maximum(box[..., 2] - box[..., 0], 0.0) * tf.maximum(box[..., 3] - box[..., 1], 0.0)

  return tf.math.divide_no_nan(intersection, area(a) + area(b) - intersection)


def encode(boxes: tf.Tensor, anchors: tf.Tensor) -> tf.Tensor:
  """Regression targets [..., A, 4] of corner `boxes` [..., A, 4] relative to centre-form `anchors` [A, 4]."""
  centres = corners_to_centres(boxes)
  offset = (centres[..., :2] - anchors[..., :2]) / anchors[..., 2:] / CENTRE_VARIANCE
  # A zero-sized box (unmatched padding) would give log 0; its target is never used, so keep it finite.
  size = tf.math.log(tf.maximum(centres[..., 2:], 1e-8) / anchors[..., 2:]) / SIZE_VARIANCE
  return tf.concat([offset, size], axis=-1)


def decode(regression: tf.Tensor, anchors: tf.Tensor) -> tf.Tensor:
  """Corner boxes [..., A, 4] from regression outputs [..., A, 4] and centre-form `anchors` [A, 4]."""
  centre = regression[..., :2] * CENTRE_VARIANCE * anchors[..., 2:] + anchors[..., :2]
  size = tf.exp(regression[..., 2:] * SIZE_VARIANCE) * anchors[..., 2:]
  return centres_to_corners(tf.concat([centre, size], axis=-1))


# Matches.classes of a default box left out of the confidence loss (neither object nor background).
IGNORED = -1


class Matches(NamedTuple):
  classes: tf.Tensor  # [A] int32: 0 for background, 1 + class of the matched ground truth, IGNORED.
  boxes: tf.Tensor    # [A, 4] regression targets (encode() of the matched box; zeros for background).


def match(boxes: tf.Tensor, classes: tf.Tensor, count: tf.Tensor, anchors: tf.Tensor,
          threshold: float = 0.5, ignore_boxes: tf.Tensor | None = None) -> Matches:
  """SSD's matching for one image: padded ground truth `boxes` [G, 4] (corners), `classes` [G] (0-based),
  of which the first `count` are real, against centre-form `anchors` [A, 4].

  An anchor is positive when its IoU with some real box exceeds `threshold` (it takes the box it overlaps
  most); besides, every real box claims the anchor it overlaps most, so no object goes unmatched however
  odd its shape. An anchor that is not positive but overlaps one of `ignore_boxes` [I, 4] (corners; zero
  rows overlap nothing) at IoU >= `threshold` is IGNORED: it looks at an object too little of which is in
  view to be labelled one, which is no background either.
  """
  real = tf.range(tf.shape(boxes)[0]) < tf.cast(count, tf.int32)
  corners = centres_to_corners(anchors)
  overlaps = iou(corners, boxes)                                          # [A, G]
  overlaps = tf.where(real[None, :], overlaps, -1.0)
  best_box = tf.argmax(overlaps, axis=1, output_type=tf.int32)            # [A]
  best_overlap = tf.reduce_max(overlaps, axis=1)
  # Each real box's best anchor is forced onto that box. Where two boxes share their best anchor the later
  # box wins, by a max over box indices: a scatter-update's order between duplicates is undefined.
  best_anchor = tf.argmax(overlaps, axis=0, output_type=tf.int32)         # [G]
  forced_box = tf.tensor_scatter_nd_max(
      tf.fill(tf.shape(best_box), -1), tf.boolean_mask(best_anchor, real)[:, None],
      tf.boolean_mask(tf.range(tf.shape(boxes)[0]), real))                 # [A], -1 where none forced
  best_box = tf.where(forced_box >= 0, forced_box, best_box)
  positive = (best_overlap > threshold) | (forced_box >= 0)
  matched_classes = tf.where(positive, tf.gather(tf.cast(classes, tf.int32), best_box) + 1, 0)
  if ignore_boxes is not None:
    ignored = tf.reduce_any(iou(corners, tf.cast(ignore_boxes, tf.float32)) >= threshold, axis=1) & ~positive
    matched_classes = tf.where(ignored, IGNORED, matched_classes)
  targets = tf.where(positive[:, None], encode(tf.gather(boxes, best_box), anchors), 0.0)
  return Matches(classes=matched_classes, boxes=targets)
