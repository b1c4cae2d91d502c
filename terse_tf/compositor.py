"""The differentiable compositor: 6 affine parameters -> spatial transformer -> alpha blend (paper §3.1).

Everything here is core TensorFlow. `tf.raw_ops.ImageProjectiveTransformV3` (the op behind the retired
`tfa.image.transform`) has no gradient with respect to the transform, so it could never train the
synthesizer; this module's bilinear sampler is differentiable with respect to both the image and the
parameters.

Conventions. Images are NHWC floats. Pixel coordinates are (x = column, y = row) with pixel centres at
integer positions, as in `scipy.ndimage`. A foreground is an RGBA-style cut-out: colour channels followed by
one straight (not premultiplied) alpha channel, so an MNIST digit is white ink whose alpha is the digit.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import numpy as np
import tensorflow as tf

PARAM_NAMES = ("rotation_deg", "translate_x_px", "translate_y_px", "shear", "scale_x", "scale_y")
NUM_PARAMS = len(PARAM_NAMES)
CLAMP_MODES = ("tanh", "clip")


@dataclasses.dataclass(frozen=True)
class AffineRanges:
  """Bounds of the affine parameters: rotation and shear symmetric about 0, translation symmetric about the
  centred placement, each axis scaled within [min_scale, max_scale]. The task supplies them (affNIST's
  recipe, or a detection task's placement range); the compositor knows no dataset."""

  max_rotation_deg: float
  max_translation_px: float
  max_shear: float
  min_scale: float
  max_scale: float

  def __post_init__(self):
    if not (0 < self.min_scale <= self.max_scale):
      raise ValueError(f"expected 0 < min_scale <= max_scale, got {self.min_scale}, {self.max_scale}")
    for name in ("max_rotation_deg", "max_translation_px", "max_shear"):
      if getattr(self, name) < 0:
        raise ValueError(f"expected {name} >= 0, got {getattr(self, name)}")

  def bounds(self) -> tuple[list[float], list[float]]:
    """(low, high), each a list ordered as PARAM_NAMES."""
    t, r, s = self.max_translation_px, self.max_rotation_deg, self.max_shear
    low = [-r, -t, -t, -s, self.min_scale, self.min_scale]
    high = [r, t, t, s, self.max_scale, self.max_scale]
    return low, high


def clamp_params(raw: tf.Tensor, ranges: AffineRanges, mode: str = "tanh") -> tf.Tensor:
  """Maps the synthesizer's raw outputs [B, 6] into `ranges`.

  "clip" is a hard clamp: exact inside the range, but its gradient is zero outside, so a synthesizer that
  overshoots stops learning in that coordinate. "tanh" squashes smoothly: raw 0 is the centre of each range
  (the identity transform for the default ranges) and the gradient never vanishes exactly.
  """
  low, high = (tf.constant(b, raw.dtype) for b in ranges.bounds())
  if mode == "clip":
    return tf.clip_by_value(raw, low, high)
  if mode == "tanh":
    centre, half_width = (high + low) / 2, (high - low) / 2
    return centre + half_width * tf.tanh(raw)
  raise ValueError(f"clamp mode must be one of {CLAMP_MODES}, got {mode!r}")


def normalize_params(params: tf.Tensor, ranges: AffineRanges) -> tf.Tensor:
  """Clamped parameters [B, 6] -> their place in `ranges`, each in [-1, 1] (0 at the centre of a range).

  A coordinate whose range is a single value maps to 0.
  """
  low, high = (tf.constant(b, params.dtype) for b in ranges.bounds())
  centre, half_width = (high + low) / 2, (high - low) / 2
  return tf.math.divide_no_nan(params - centre, half_width)


def identity_params(batch_size: int, dtype: tf.DType = tf.float32) -> tf.Tensor:
  """Parameters of the identity transform, [batch_size, 6]."""
  return tf.tile(tf.constant([[0.0, 0.0, 0.0, 0.0, 1.0, 1.0]], dtype), [batch_size, 1])


def forward_matrix(params: tf.Tensor) -> tf.Tensor:
  """The 2x2 linear part A = R(rotation) @ Shear(shear) @ diag(scale_x, scale_y), [B, 2, 2].

  A maps foreground offsets from its centre to output offsets from the output centre; shear moves x by
  shear * y before rotation.
  """
  rotation_deg, _, _, shear, scale_x, scale_y = tf.unstack(params, axis=-1)
  angle = rotation_deg * (math.pi / 180.0)
  cos, sin = tf.cos(angle), tf.sin(angle)
  # R @ [[1, shear], [0, 1]] @ diag(sx, sy), multiplied out.
  a00 = cos * scale_x
  a01 = (cos * shear - sin) * scale_y
  a10 = sin * scale_x
  a11 = (sin * shear + cos) * scale_y
  return tf.reshape(tf.stack([a00, a01, a10, a11], axis=-1), [-1, 2, 2])


def _occupied_range(occupied: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """First and last index along the last axis where `occupied` [..., n] is True (int64; 0 and n - 1 when
  nothing is)."""
  size = tf.cast(tf.shape(occupied)[-1], tf.int64)
  first = tf.argmax(tf.cast(occupied, tf.int32), axis=-1)
  last = size - 1 - tf.argmax(tf.cast(tf.reverse(occupied, [-1]), tf.int32), axis=-1)
  return first, last


def keep_in_frame(params: tf.Tensor, alpha: tf.Tensor, output_hw: tuple[int, int],
                  ranges: AffineRanges) -> tf.Tensor:
  """affNIST's translation rule: clamped `params` [B, 6] -> the same with each translation moved so that
  the foreground's transformed ink stays inside the output frame.

  A fixed translation clamp either crops digits (the synthesizer then learns that a half-visible digit fools
  T every time: a hard example nobody can label) or forbids shifts small digits could take. Here the
  translation's place in its clamp range, u = t / max_translation_px in [-1, 1], picks the same place in
  the interval of shifts that keep the bounding box of `alpha` [B, h, w, 1] > 0, transformed by the linear
  part about the centre, inside `output_hw`: uniform u gives affNIST's uniform feasible shift. A foreground
  too large to fit at any shift is centred, as affNIST does. Differentiable in the parameters.
  """
  dtype = params.dtype
  input_hw = alpha.shape[1:3]
  ink = alpha[..., 0] > 0
  columns, rows = tf.reduce_any(ink, axis=1), tf.reduce_any(ink, axis=2)  # [B, w], [B, h]

  def extent(occupied):  # First and last occupied index, minus/plus half a pixel.
    first, last = _occupied_range(occupied)
    return tf.cast(first, dtype) - 0.5, tf.cast(last, dtype) + 0.5

  (x0, x1), (y0, y1) = extent(columns), extent(rows)
  c_in = tf.constant([(input_hw[1] - 1) / 2, (input_hw[0] - 1) / 2], dtype)
  corners = tf.stack([tf.stack([x, y], axis=-1) for x in (x0, x1) for y in (y0, y1)], axis=1) - c_in
  moved = tf.einsum("bij,bkj->bki", forward_matrix(params), corners)  # [B, 4, 2]
  c_out = tf.constant([(output_hw[1] - 1) / 2, (output_hw[0] - 1) / 2], dtype)
  frame = tf.constant([output_hw[1], output_hw[0]], dtype)
  low = -0.5 - c_out - tf.reduce_min(moved, axis=1)
  high = frame - 0.5 - c_out - tf.reduce_max(moved, axis=1)
  place = tf.math.divide_no_nan(params[:, 1:3], tf.constant(ranges.max_translation_px, dtype))
  translation = tf.where(low <= high, (low + high) / 2 + (high - low) / 2 * place, tf.zeros_like(low))
  return tf.concat([params[:, :1], translation, params[:, 3:]], axis=1)


def params_to_matrix(params: tf.Tensor, input_hw: tuple[int, int],
                     output_hw: tuple[int, int] | None = None) -> tf.Tensor:
  """The sampling matrix [B, 2, 3] that maps an output pixel (x, y, 1) to the input pixel it reads.

  The forward transform is out = A (in - c_in) + c_out + t, with c the image centres and t the translation;
  a spatial transformer samples with its inverse, in = A^-1 (out - c_out - t) + c_in.
  """
  output_hw = output_hw or input_hw
  dtype = params.dtype
  c_in = tf.constant([(input_hw[1] - 1) / 2, (input_hw[0] - 1) / 2], dtype)
  c_out = tf.constant([(output_hw[1] - 1) / 2, (output_hw[0] - 1) / 2], dtype)
  inverse = tf.linalg.inv(forward_matrix(params))
  translation = params[:, 1:3]
  offset = c_in - tf.linalg.matvec(inverse, c_out + translation)
  return tf.concat([inverse, offset[:, :, None]], axis=2)


def sample_grid(matrix: tf.Tensor, output_hw: tuple[int, int]) -> tf.Tensor:
  """Source coordinates [B, H, W, 2] (x, y) read by each output pixel under `matrix` [B, 2, 3]."""
  height, width = output_hw
  ys, xs = tf.meshgrid(tf.range(height, dtype=matrix.dtype), tf.range(width, dtype=matrix.dtype),
                       indexing="ij")
  homogeneous = tf.stack([xs, ys, tf.ones_like(xs)], axis=-1)  # [H, W, 3]
  return tf.einsum("bij,hwj->bhwi", matrix, homogeneous)


def bilinear_sample(images: tf.Tensor, coords: tf.Tensor) -> tf.Tensor:
  """Reads `images` [B, h, w, C] at real-valued `coords` [B, H, W, 2], zero outside the image.

  Matches `scipy.ndimage.map_coordinates(order=1, mode="grid-constant")`. The bilinear weights are
  differentiable in the coordinates, so gradients reach the affine parameters; the gather's gradient reaches
  the image.

  Two layout choices make it fast (bench/compositor.py): the image is padded with a ring of zeros, so every
  index can be clipped instead of masked (a coordinate far outside lands on the zero ring); and each pixel's
  2x2 neighbourhood is laid out as one [4C] vector, so one gather per output pixel reads all four corners.
  """
  batch, height, width = tf.shape(images)[0], tf.shape(images)[1], tf.shape(images)[2]
  channels = images.shape[-1]
  # One zero ring before, two after: the neighbourhood of the last padded pixel still exists.
  padded = tf.pad(images, [[0, 0], [1, 2], [1, 2], [0, 0]])
  neighbourhoods = tf.concat([padded[:, :-1, :-1], padded[:, :-1, 1:], padded[:, 1:, :-1], padded[:, 1:, 1:]],
                             axis=-1)  # [B, h + 2, w + 2, 4C]: (top-left, top-right, bottom-left, bottom-right)
  padded_h, padded_w = height + 2, width + 2
  flat = tf.reshape(neighbourhoods, [-1, 4 * channels])

  dtype = coords.dtype
  x = tf.clip_by_value(coords[..., 0] + 1, 0, tf.cast(padded_w - 1, dtype))
  y = tf.clip_by_value(coords[..., 1] + 1, 0, tf.cast(padded_h - 1, dtype))
  x0, y0 = tf.floor(x), tf.floor(y)
  wx, wy = (x - x0)[..., None], (y - y0)[..., None]
  index = (tf.range(batch)[:, None, None] * (padded_h * padded_w) + tf.cast(y0, tf.int32) * padded_w +
           tf.cast(x0, tf.int32))
  top_left, top_right, bottom_left, bottom_right = tf.split(
      tf.cast(tf.gather(flat, index), dtype), 4, axis=-1)
  top = top_left + wx * (top_right - top_left)
  bottom = bottom_left + wx * (bottom_right - bottom_left)
  return top + wy * (bottom - top)


def warp(images: tf.Tensor, matrix: tf.Tensor, output_hw: tuple[int, int] | None = None) -> tf.Tensor:
  """Spatial transformer: resamples `images` [B, h, w, C] through the sampling `matrix` [B, 2, 3]."""
  output_hw = output_hw or tuple(images.shape[1:3])
  return bilinear_sample(images, sample_grid(matrix, output_hw))


def _blur_radius(sigma: float) -> int:
  return max(1, int(math.ceil(3 * sigma))) if sigma > 0 else 0


def gaussian_blur(images: tf.Tensor, sigma: float) -> tf.Tensor:
  """Separable Gaussian blur (kernel radius 3 sigma), zero-padded at the border.

  Each pass is a weighted sum of the padded image shifted by each tap: elementwise work that XLA fuses. With
  depthwise convolutions instead, photo_digits' S step with the mask clean-up took 1.36 s, with this 0.44 s
  (0.31 s without the clean-up; batch 32 at 128 px, XLA, 2-core AMD EPYC, 2026-12-05)."""
  radius = _blur_radius(sigma)
  taps = np.arange(-radius, radius + 1)
  kernel = np.exp(-0.5 * np.square(taps / sigma))
  kernel /= kernel.sum()
  height, width = images.shape[1], images.shape[2]
  padded = tf.pad(images, [[0, 0], [0, 0], [radius, radius], [0, 0]])
  images = tf.add_n([float(weight) * padded[:, :, k:k + width] for k, weight in enumerate(kernel)])
  padded = tf.pad(images, [[0, 0], [radius, radius], [0, 0], [0, 0]])
  return tf.add_n([float(weight) * padded[:, k:k + height] for k, weight in enumerate(kernel)])


def clean_mask(mask: tf.Tensor, threshold: float, blur_sigma: float) -> tf.Tensor:
  """The supplementary's mask clean-up (A.2, "Custom Spatial Transformer").

  Bilinear resampling smears a binary mask into a faint halo; subtracting `threshold` and a ReLU remove it,
  dividing by (1 - threshold) brings the interior back to 1, and a Gaussian blur gives a smooth edge for
  the alpha blend.
  """
  if not 0 <= threshold < 1:
    raise ValueError(f"mask threshold must be in [0, 1), got {threshold}")
  cleaned = tf.minimum(tf.nn.relu(mask - threshold) / (1 - threshold), 1)
  return gaussian_blur(cleaned, blur_sigma) if blur_sigma > 0 else cleaned


@dataclasses.dataclass(frozen=True)
class CompositorConfig:
  # None until a task fills in its ranges (the flags set how to blend; the task, where objects may go).
  ranges: AffineRanges | None = None
  clamp_mode: str = dataclasses.field(default="tanh", metadata={"flag": "param_clamp"})
  # Translations follow affNIST's rule (keep_in_frame) instead of the fixed +-max_translation_px clamp.
  keep_in_frame: bool = True
  mask_cleanup: bool = False
  mask_threshold: float = 0.1
  mask_blur_sigma: float = 0.5

  def __post_init__(self):
    if self.clamp_mode not in CLAMP_MODES:
      raise ValueError(f"clamp mode must be one of {CLAMP_MODES}, got {self.clamp_mode!r}")

  def with_ranges(self, ranges: AffineRanges) -> CompositorConfig:
    return dataclasses.replace(self, ranges=ranges)


class Composite(NamedTuple):
  image: tf.Tensor        # [B, H, W, C] the blended composite.
  warped_mask: tf.Tensor  # [B, H, W, 1] the foreground's alpha after the transform (and clean-up).


def place(raw: tf.Tensor, foreground: tf.Tensor, output_hw: tuple[int, int],
          config: CompositorConfig) -> tf.Tensor:
  """The synthesizer's raw outputs [B, 6] -> the parameters the composite uses: clamped into the ranges,
  then, with `config.keep_in_frame`, translated so `foreground` [B, h, w, C+1] stays in the frame."""
  params = clamp_params(raw, config.ranges, config.clamp_mode)
  if config.keep_in_frame:
    params = keep_in_frame(params, foreground[..., -1:], output_hw, config.ranges)
  return params


def premultiplied(foreground: tf.Tensor) -> tf.Tensor:
  """Colour times alpha of an RGBA-style cut-out: what the synthesizer sees of the foreground."""
  return foreground[..., :-1] * foreground[..., -1:]


def _largest_stretch(ranges: AffineRanges) -> float:
  """The largest spectral norm of a linear part within `ranges`: max_scale times that of the widest shear
  (rotation keeps lengths)."""
  shear = ranges.max_shear
  return ranges.max_scale * math.sqrt((2 + shear * shear + shear * math.sqrt(4 + shear * shear)) / 2)


def footprint_side(foreground_hw: tuple[int, int], output_hw: tuple[int, int], ranges: AffineRanges,
                   blur_sigma: float = 0.0) -> int | None:
  """Side of the square output window that holds every pixel a `foreground_hw` cut-out can reach under any
  linear part in `ranges` (wherever it is translated), or None when that window is not smaller than the
  output, so there is nothing to save.

  An output pixel reads something only where its source lies within a pixel of the foreground, i.e. within
  hypot(h + 1, w + 1) / 2 of the foreground's centre; the linear part stretches that by at most its spectral
  norm (`_largest_stretch`); the clean-up's blur adds its radius.
  """
  radius = (math.hypot(foreground_hw[0] + 1, foreground_hw[1] + 1) / 2 * _largest_stretch(ranges) +
            _blur_radius(blur_sigma))
  side = math.ceil(2 * radius) + 2
  return side if side < min(output_hw) else None


def _spectral_norm(linear: tf.Tensor) -> tf.Tensor:
  """Largest singular value of each 2x2 matrix in `linear` [B, 2, 2], in closed form."""
  squares = tf.reduce_sum(tf.square(linear), axis=[1, 2])
  det = linear[:, 0, 0] * linear[:, 1, 1] - linear[:, 0, 1] * linear[:, 1, 0]
  return tf.sqrt((squares + tf.sqrt(tf.maximum(tf.square(squares) - 4 * tf.square(det), 0))) / 2)


def _window_origin(params: tf.Tensor, output_hw: tuple[int, int], side: int) -> tf.Tensor:
  """Top-left output pixel (x, y) [B, 2] int32 of each foreground's window: the window centred on where the
  foreground's centre lands, moved inside the frame (which keeps every in-frame pixel of the footprint in it:
  the footprint is at most side - 2 wide). Integer positions carry no gradient; the sampling inside does."""
  height, width = output_hw
  centre = tf.stop_gradient(params[:, 1:3]) + tf.constant([(width - 1) / 2, (height - 1) / 2], params.dtype)
  origin = tf.floor(centre - (side - 2) / 2)
  return tf.cast(tf.clip_by_value(origin, 0, tf.constant([width - side, height - side], params.dtype)), tf.int32)


def _window_grid(matrix: tf.Tensor, origin: tf.Tensor, side: int) -> tf.Tensor:
  """Source coordinates [B, side, side, 2] read by the output pixels of each window under `matrix`."""
  steps = tf.range(side, dtype=matrix.dtype)
  origin = tf.cast(origin, matrix.dtype)
  xs = (origin[:, 0, None] + steps)[:, None, :]  # [B, 1, side]
  ys = (origin[:, 1, None] + steps)[:, :, None]  # [B, side, 1]
  return tf.stack([matrix[:, i, 0, None, None] * xs + matrix[:, i, 1, None, None] * ys + matrix[:, i, 2, None, None]
                   for i in range(2)], axis=-1)


def _place_windows(windows: tf.Tensor, origin: tf.Tensor, output_hw: tuple[int, int]) -> tf.Tensor:
  """Windows [B, side, side, C] at `origin` [B, 2] (x, y) in an otherwise zero [B, H, W, C] canvas."""
  batch, side = tf.shape(windows)[0], windows.shape[1]
  steps = tf.range(side)
  rows = tf.broadcast_to((origin[:, 1, None] + steps)[:, :, None], [batch, side, side])
  columns = tf.broadcast_to((origin[:, 0, None] + steps)[:, None, :], [batch, side, side])
  examples = tf.broadcast_to(tf.range(batch)[:, None, None], [batch, side, side])
  indices = tf.stack([examples, rows, columns], axis=-1)
  return tf.scatter_nd(indices, windows, [batch, *output_hw, windows.shape[-1]])


def warp_footprint(images: tf.Tensor, params: tf.Tensor, output_hw: tuple[int, int],
                   ranges: AffineRanges | None, blur_sigma: float = 0.0,
                   layer: Callable[[tf.Tensor], tf.Tensor] = lambda warped: warped) -> tf.Tensor:
  """`layer(warp(images, params))` [B, H, W, C'] for a cut-out `images` [B, h, w, C] placed by `params`
  [B, 6], where `layer` is a per-pixel function that keeps zero at zero up to a blur of `blur_sigma` (the
  mask clean-up).

  A cut-out pasted into a large image covers a small part of it, and everywhere else the warp reads zeros.
  So, when `ranges` bound the linear part (`footprint_side`), the sampler runs only in a window around each
  cut-out and the windows are scattered into the frame: at 300x300 and a 40x40 digit at up to twice its size,
  about a fifth of the pixels (bench/compositor.py).

  `params` must then lie within `ranges` (as `clamp_params` leaves them): a larger linear part would be
  cropped to the window. Outside XLA an assertion says so; XLA drops assertions, and a `tf.cond` falling back
  to the full frame made XLA's backward pass 3x slower (it keeps both branches' intermediates), so compiled
  callers rely on the clamp.
  """
  matrix = params_to_matrix(params, tuple(images.shape[1:3]), output_hw)
  side = footprint_side(tuple(images.shape[1:3]), output_hw, ranges, blur_sigma) if ranges else None
  if side is None:
    return layer(warp(images, matrix, output_hw))
  stretch = _spectral_norm(forward_matrix(tf.stop_gradient(params)))
  bound = _largest_stretch(ranges) * (1 + 1e-5)
  with tf.control_dependencies([tf.debugging.assert_less_equal(
      stretch, tf.cast(bound, stretch.dtype),
      message="warp_footprint: parameters scale or shear beyond the ranges the window was sized for")]):
    origin = _window_origin(params, output_hw, side)
  return _place_windows(layer(bilinear_sample(images, _window_grid(matrix, origin, side))), origin, output_hw)


def _paste_layer(foreground: tf.Tensor, params: tf.Tensor, output_hw: tuple[int, int],
                 config: CompositorConfig) -> tuple[tf.Tensor, tf.Tensor]:
  """`foreground` [B, h, w, C+1] warped under `params` [B, 6] into an `output_hw` layer: (premultiplied
  colour [B, H, W, C], alpha [B, H, W, 1]), after the mask clean-up when the config asks for it."""
  def cleaned(warped):
    if not config.mask_cleanup:
      return warped
    alpha = clean_mask(warped[..., -1:], config.mask_threshold, config.mask_blur_sigma)
    colour = _straight_colour(warped, config.mask_threshold, config.mask_blur_sigma) * alpha
    return tf.concat([colour, alpha], axis=-1)

  layer = warp_footprint(tf.concat([premultiplied(foreground), foreground[..., -1:]], axis=-1), params,
                         output_hw, config.ranges, config.mask_blur_sigma if config.mask_cleanup else 0.0,
                         cleaned)
  return layer[..., :-1], layer[..., -1:]


def composite(foreground: tf.Tensor, background: tf.Tensor, params: tf.Tensor,
              config: CompositorConfig) -> Composite:
  """Pastes `foreground` [B, h, w, C+1] onto `background` [B, H, W, C] under clamped `params` [B, 6].

  Colour is warped premultiplied by alpha, so bilinear resampling never drags the undefined colour outside
  the mask into the edge (no dark fringe); the blend is warped_colour + (1 - warped_alpha) * background.
  """
  colour, alpha = _paste_layer(foreground, params, tuple(background.shape[1:3]), config)
  return Composite(image=colour + (1 - alpha) * background, warped_mask=alpha)


class MultiComposite(NamedTuple):
  image: tf.Tensor             # [B, H, W, C] the background with every valid object pasted in order.
  visible_masks: tf.Tensor     # [B, N, H, W, 1] each object's alpha times what later objects leave of it.
  boxes: tf.Tensor             # [B, N, 4] normalised ymin, xmin, ymax, xmax of each visible mask.
  visible_fraction: tf.Tensor  # [B, N] share of each object's area in view: not cropped, not covered.
  box_valid: tf.Tensor         # [B, N] bool: a valid object with at least min_visible of it in view.
  # [B, N] bool: an object in view (its visible mask non-empty) below min_visible: no box, but not background
  # either (its box is an ignore region of T's loss).
  partly_visible: tf.Tensor


def boxes_from_masks(masks: tf.Tensor, threshold: float = 0.5) -> tuple[tf.Tensor, tf.Tensor]:
  """Tight boxes of the pixels where `masks` [..., H, W, 1] > threshold: (normalised ymin, xmin, ymax, xmax
  [..., 4] on pixel edges, so a single pixel (r, c) gives (r/H, c/W, (r+1)/H, (c+1)/W); non-empty [...])."""
  height, width = masks.shape[-3], masks.shape[-2]
  inside = masks[..., 0] > threshold
  rows, columns = tf.reduce_any(inside, axis=-1), tf.reduce_any(inside, axis=-2)  # [..., H], [..., W]

  def extent(occupied, size):
    first, last = _occupied_range(occupied)
    return tf.cast(first, tf.float32) / size, tf.cast(last + 1, tf.float32) / size

  (ymin, ymax), (xmin, xmax) = extent(rows, height), extent(columns, width)
  non_empty = tf.reduce_any(rows, axis=-1)
  boxes = tf.stack([ymin, xmin, ymax, xmax], axis=-1) * tf.cast(non_empty, tf.float32)[..., None]
  return boxes, non_empty


def composite_objects(foregrounds: tf.Tensor, background: tf.Tensor, params: tf.Tensor,
                      object_valid: tf.Tensor, config: CompositorConfig,
                      min_visible: float = 0.25, box_threshold: float = 0.5) -> MultiComposite:
  """Pastes up to N objects per image: `foregrounds` [B, N, h, w, C+1] under `params` [B, N, 6] onto
  `background` [B, H, W, C], object 0 first, each later one over the earlier ones; objects whose
  `object_valid` [B, N] is False (padding) are left out.

  Each object's box is the tight box of its visible mask (> `box_threshold`), as a detection dataset
  annotates the visible extent; it is valid when at least `min_visible` of the object's area stays in view,
  so an object hidden behind later ones, or pasted almost entirely outside the frame, yields no box (one
  still partly in view is `partly_visible`: its box marks a region T should not learn as background). The
  area is the foreground's alpha mass times the transform's area change |det A|, so the part the frame
  crops counts as hidden.
  """
  batch, count = tf.shape(foregrounds)[0], foregrounds.shape[1]
  output_hw = tuple(background.shape[1:3])
  flat = tf.reshape(foregrounds, [-1, *foregrounds.shape[2:]])
  flat_params = tf.reshape(params, [-1, NUM_PARAMS])
  colour, alpha = _paste_layer(flat, flat_params, output_hw, config)
  linear = forward_matrix(flat_params)
  area_change = tf.abs(linear[:, 0, 0] * linear[:, 1, 1] - linear[:, 0, 1] * linear[:, 1, 0])  # |det A|
  area = tf.reshape(tf.reduce_sum(flat[..., -1], axis=[1, 2]) * area_change, [batch, count])
  valid = tf.cast(object_valid, alpha.dtype)[:, :, None, None, None]
  colour = tf.reshape(colour, [batch, count, *output_hw, colour.shape[-1]]) * valid
  alpha = tf.reshape(alpha, [batch, count, *output_hw, 1]) * valid

  image = background
  for i in range(count):
    image = colour[:, i] + (1 - alpha[:, i]) * image
  # What reaches the eye of object i: its alpha, times the transparency of every object pasted after it.
  transparency_after = tf.math.cumprod(1 - alpha, axis=1, exclusive=True, reverse=True)
  visible = alpha * transparency_after
  fraction = tf.minimum(tf.math.divide_no_nan(tf.reduce_sum(visible, axis=[2, 3, 4]), area), 1.0)
  boxes, non_empty = boxes_from_masks(visible, box_threshold)
  in_view = tf.cast(object_valid, tf.bool) & non_empty
  box_valid = in_view & (fraction >= min_visible)
  return MultiComposite(image=image, visible_masks=visible, boxes=boxes, visible_fraction=fraction,
                        box_valid=box_valid, partly_visible=in_view & ~box_valid)


def compiled_composite_objects(config: CompositorConfig, min_visible: float = 0.25,
                               box_threshold: float = 0.5) -> Callable[..., MultiComposite]:
  """`composite_objects` with `config` and the thresholds fixed, its forward pass and its image's gradient
  with respect to `params` each compiled by XLA (the parameters are what S trains; foregrounds and
  backgrounds are data and get no gradient).

  A jit-compiled function called under a GradientTape compiles only its forward pass; its gradient runs op
  by op. Here the backward pass is a compiled function of its own, recomputing the forward pass inside it
  (cheaper than keeping the sampler's intermediates): on CPU the forward and backward pass together take
  about a third of the uncompiled time (bench/detection_step.py).
  """
  def run(foregrounds, background, params, object_valid):
    return composite_objects(foregrounds, background, params, object_valid, config, min_visible, box_threshold)

  forward = tf.function(run, jit_compile=True)

  @tf.function(jit_compile=True)
  def image_gradient(foregrounds, background, params, object_valid, upstream):
    with tf.GradientTape() as tape:
      tape.watch(params)
      image = run(foregrounds, background, params, object_valid).image
    return tape.gradient(image, params, output_gradients=upstream)

  def composite(foregrounds: tf.Tensor, background: tf.Tensor, params: tf.Tensor,
                object_valid: tf.Tensor) -> MultiComposite:
    result = forward(foregrounds, background, tf.stop_gradient(params), object_valid)

    @tf.custom_gradient
    def image(differentiable_params):
      def gradient(upstream):
        return image_gradient(foregrounds, background, differentiable_params, object_valid, upstream)
      return tf.identity(result.image), gradient

    return result._replace(image=image(params))

  return composite


def _straight_colour(warped: tf.Tensor, threshold: float, blur_sigma: float) -> tf.Tensor:
  """The object's straight (un-premultiplied) colour [B, H, W, C] wherever the cleaned mask can reach, from
  the warped premultiplied colour + alpha `warped` [B, H, W, C+1].

  The clean-up blurs alpha past the warped mask, where colour / alpha is 0 / 0: blending that as black puts
  a dark fringe around every object. Inside the mask (alpha > threshold, where the cleaned mask starts) the
  colour is exact; outside it is filled from the neighbouring object colour by a normalised convolution,
  blur(colour * alpha) / blur(alpha) with the clean-up's own blur, which is the object's colour wherever the
  blurred mask is non-zero (exactly so for a uniform colour). The cleaned mask never exceeds the warped one,
  so where the fill's denominator is below its floor the cleaned alpha is too, and the error is that small.
  """
  floor = 1e-6
  colour, alpha = warped[..., :-1], warped[..., -1:]
  exact = colour / tf.maximum(alpha, floor)
  if blur_sigma <= 0:
    return exact
  blurred = gaussian_blur(warped, blur_sigma)
  filled = blurred[..., :-1] / tf.maximum(blurred[..., -1:], floor)
  return tf.where(alpha > threshold, exact, filled)


class PastedRegion(NamedTuple):
  image: tf.Tensor    # [B, H, W, C] the backgrounds with the region pasted where asked.
  region: tf.Tensor   # [B, H, W, 1] the region's alpha: the mask warped and cleaned up as S's objects are.
  offsets: tf.Tensor  # [B, 2] int32 (x, y): output pixel p shows donor pixel p + offset.


def _shifted(images: tf.Tensor, offsets: tf.Tensor) -> tf.Tensor:
  """`images` [B, H, W, C] moved so that pixel p shows pixel p + `offsets` [B, 2] (x, y), the border
  repeated beyond the frame."""
  height, width = images.shape[1:3]
  rows = tf.clip_by_value(tf.range(height)[None, :] + offsets[:, 1:], 0, height - 1)  # [B, H]
  columns = tf.clip_by_value(tf.range(width)[None, :] + offsets[:, :1], 0, width - 1)  # [B, W]
  return tf.gather(tf.gather(images, rows, axis=1, batch_dims=1), columns, axis=2, batch_dims=1)


def _offsets_inside(region: tf.Tensor, source: tf.Tensor) -> tf.Tensor:
  """Integer shifts (x, y) [B, 2] that keep the non-zero part of `region` [B, H, W, 1] inside the frame,
  `source` [B, 2] in [0, 1] picking each one's place between the smallest (0) and the largest (1)."""
  occupied = region[..., 0] > 0
  extents = []
  for axis, size in ((1, region.shape[2]), (2, region.shape[1])):  # Columns (x), then rows (y).
    first, last = _occupied_range(tf.reduce_any(occupied, axis=axis))
    extents.append((-first, size - 1 - last))
  low, high = (tf.cast(tf.stack(bound, axis=-1), source.dtype) for bound in zip(*extents))
  return tf.cast(tf.floor(low + (high - low + 1) * tf.minimum(source, 1 - 1e-6)), tf.int32)


def paste_background_region(backgrounds: tf.Tensor, donors: tf.Tensor, masks: tf.Tensor, params: tf.Tensor,
                            source: tf.Tensor, apply: tf.Tensor, config: CompositorConfig) -> PastedRegion:
  """Blending artefacts in backgrounds (paper §3.1): into each background [B, H, W, C] where `apply` [B] is
  True, a region of another image, `donors` [B, H, W, C], shaped like a foreground mask `masks`
  [B, h, w, 1] placed by `params` [B, 6], blended exactly as S's composites are (the same warp, clean-up,
  blur and alpha blend). A blended region then marks background as often as object, so neither T nor D can
  use the blending itself as the sign of a pasted object.

  The region's colour is the donor's own pixels at their native scale (a texture resampled to the mask's
  size would be a second cue: blurred or aliased content inside a blending edge), copied from a place drawn
  independently of where the region lands: `source` [B, 2] in [0, 1] picks the shift among those that keep
  the whole region inside the donor (so no pixel of it is padding). Pixels outside the region are untouched.
  """
  output_hw = tuple(backgrounds.shape[1:3])

  def cleaned(warped):
    return clean_mask(warped, config.mask_threshold, config.mask_blur_sigma) if config.mask_cleanup else warped

  blur_sigma = config.mask_blur_sigma if config.mask_cleanup else 0.0
  region = warp_footprint(masks, params, output_hw, config.ranges, blur_sigma, cleaned)
  offsets = _offsets_inside(region, source)
  pasted = region * _shifted(donors, offsets) + (1 - region) * backgrounds
  apply = tf.reshape(tf.cast(apply, tf.bool), [-1, 1, 1, 1])
  return PastedRegion(image=tf.where(apply, pasted, backgrounds), region=region, offsets=offsets)
