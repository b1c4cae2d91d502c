"""The compositor against scipy.ndimage, finite differences and its own contracts."""

import dataclasses

import numpy as np
import pytest
import scipy.ndimage
import tensorflow as tf

from terse_tf import compositor
from terse_tf.data import affnist, mnist
from terse_tf.tasks import affnist as affnist_task

# The compositor knows no dataset; these tests use affNIST's ranges.
RANGES = affnist_task.ranges()
CONFIG = compositor.CompositorConfig(ranges=RANGES)
# Wider, for objects at twice their size; with a 40x40 cut-out in a 160x160 frame, a footprint small enough
# for the compositor's window.
WIDE_RANGES = compositor.AffineRanges(max_rotation_deg=180, max_translation_px=90, max_shear=0.3,
                                      min_scale=0.5, max_scale=2.0)

# Both sides compute the same bilinear weights; the tolerance only absorbs float64 rounding.
WARP_TOLERANCE = 1e-9


def random_params(rng: np.random.Generator, batch: int) -> np.ndarray:
  low, high = RANGES.bounds()
  return rng.uniform(low, high, size=(batch, compositor.NUM_PARAMS))


@pytest.mark.parametrize("input_hw,output_hw", [((40, 40), (40, 40)), ((17, 23), (31, 19))])
def test_warp_matches_scipy_affine_transform(input_hw, output_hw):
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(4, *input_hw, 3))
  params = random_params(rng, 4)
  matrix = compositor.params_to_matrix(tf.constant(params), input_hw, output_hw)
  warped = compositor.warp(tf.constant(images), matrix, output_hw).numpy()

  for b in range(4):
    m = matrix[b].numpy()
    # scipy indexes (row, col) = (y, x): swap both axes of the (x, y) matrix.
    rowcol_matrix = np.array([[m[1, 1], m[1, 0]], [m[0, 1], m[0, 0]]])
    rowcol_offset = np.array([m[1, 2], m[0, 2]])
    for c in range(3):
      expected = scipy.ndimage.affine_transform(images[b, ..., c], rowcol_matrix, rowcol_offset,
                                                output_shape=output_hw, order=1, mode="grid-constant")
      np.testing.assert_allclose(warped[b, ..., c], expected, atol=WARP_TOLERANCE)


def test_forward_transform_moves_a_point_where_the_parameters_say():
  # A single bright pixel at offset (3, 0) from the centre, rotated by 90 degrees and shifted by (2, -1),
  # must land at centre + R90 @ (3, 0) + (2, -1) = centre + (0, 3) + (2, -1) = centre + (2, 2).
  image = np.zeros((1, 41, 41, 1))
  image[0, 20, 23, 0] = 1.0
  params = tf.constant([[90.0, 2.0, -1.0, 0.0, 1.0, 1.0]], tf.float64)
  matrix = compositor.params_to_matrix(params, (41, 41))
  warped = compositor.warp(tf.constant(image), matrix).numpy()[0, ..., 0]
  assert np.unravel_index(np.argmax(warped), warped.shape) == (22, 22)
  assert warped.max() == pytest.approx(1.0, abs=1e-9)


def test_identity_parameters_give_the_input_back():
  rng = np.random.default_rng(1)
  foreground = rng.uniform(size=(3, 40, 40, 2)).astype(np.float32)
  background = rng.uniform(size=(3, 40, 40, 1)).astype(np.float32)
  identity = compositor.identity_params(3)
  matrix = compositor.params_to_matrix(identity, (40, 40))
  np.testing.assert_allclose(compositor.warp(tf.constant(foreground), matrix).numpy(), foreground,
                             atol=1e-5)
  result = compositor.composite(tf.constant(foreground), tf.constant(background), identity, CONFIG)
  alpha = foreground[..., 1:]
  expected = foreground[..., :1] * alpha + (1 - alpha) * background
  np.testing.assert_allclose(result.image.numpy(), expected, atol=1e-5)
  np.testing.assert_allclose(result.warped_mask.numpy(), alpha, atol=1e-5)


def test_tanh_clamp_maps_zero_to_identity():
  identity = compositor.clamp_params(tf.zeros([2, 6]), RANGES, "tanh")
  np.testing.assert_allclose(identity.numpy(), compositor.identity_params(2).numpy(), atol=1e-7)


@pytest.mark.parametrize("mode", compositor.CLAMP_MODES)
def test_clamping_keeps_parameters_in_affnist_ranges(mode):
  ranges = RANGES
  low, high = (np.array(b) for b in ranges.bounds())
  raw = tf.constant(np.random.default_rng(2).normal(scale=100.0, size=(256, 6)), tf.float32)
  clamped = compositor.clamp_params(raw, ranges, mode).numpy()
  assert np.all(clamped >= low - 1e-5) and np.all(clamped <= high + 1e-5)
  assert np.allclose(clamped.min(axis=0), low, atol=1e-3)  # large raw values reach the bounds
  assert np.allclose(clamped.max(axis=0), high, atol=1e-3)


def test_normalized_parameters_are_the_tanh_of_the_raw_outputs_and_map_bounds_to_plus_minus_one():
  ranges = RANGES
  raw = tf.constant(np.random.default_rng(4).normal(size=(32, 6)), tf.float32)
  normalized = compositor.normalize_params(compositor.clamp_params(raw, ranges, "tanh"), ranges)
  np.testing.assert_allclose(normalized.numpy(), np.tanh(raw.numpy()), atol=1e-5)
  low, high = ranges.bounds()
  np.testing.assert_allclose(compositor.normalize_params(tf.constant([low, high]), ranges).numpy(),
                             [[-1.0] * 6, [1.0] * 6], atol=1e-6)
  no_shear = dataclasses.replace(RANGES, max_shear=0.0)
  assert np.all(compositor.normalize_params(tf.constant([low]), no_shear).numpy()[:, 3] == 0.0)


def test_keep_in_frame_spans_exactly_affnists_feasible_shifts_and_keeps_the_ink_in_the_frame():
  digits = mnist.load_splits(mnist.DataConfig(num_train=64, num_val=8, num_heldout_test=8)).train_images[:16]
  foreground = tf.concat([tf.ones([16, 40, 40, 1]), tf.constant(digits[..., None] / 255.0, tf.float32)], -1)
  ranges = RANGES
  rng = np.random.default_rng(5)
  clamped = compositor.clamp_params(tf.constant(rng.normal(size=(16, 6)), tf.float32), ranges, "tanh")
  for extreme in (-1.0, 1.0):  # Translations at a bound of their range land on a bound of the interval.
    at_bound = tf.concat([clamped[:, :1], tf.fill([16, 2], extreme * ranges.max_translation_px),
                          clamped[:, 3:]], axis=1)
    framed = compositor.keep_in_frame(at_bound, foreground[..., 1:], (40, 40), ranges).numpy()
    for digit, params, expected in zip(digits, framed, at_bound.numpy()):
      low, high = affnist.translation_bounds(digit, compositor.forward_matrix(params[None]).numpy()[0])
      np.testing.assert_allclose(params[1:3], low if extreme < 0 else high, atol=1e-4)
      np.testing.assert_array_equal(np.delete(params, [1, 2]), np.delete(expected, [1, 2]))
  # Anywhere in the range, no ink is cropped: the composite holds all of the foreground's ink, scaled by
  # the area change |det A|.
  framed = compositor.keep_in_frame(clamped, foreground[..., 1:], (40, 40), ranges)
  result = compositor.composite(foreground, tf.zeros([16, 40, 40, 1]), framed, CONFIG)
  area = np.abs(np.linalg.det(compositor.forward_matrix(framed).numpy()))
  np.testing.assert_allclose(result.warped_mask.numpy().sum(axis=(1, 2, 3)),
                             area * digits.sum(axis=(1, 2)) / 255.0, rtol=0.02)


def test_place_uses_the_fixed_clamp_without_keep_in_frame():
  raw = tf.constant(np.random.default_rng(6).normal(size=(4, 6)), tf.float32)
  foreground = tf.ones([4, 40, 40, 2])
  config = compositor.CompositorConfig(ranges=RANGES, keep_in_frame=False)
  np.testing.assert_array_equal(compositor.place(raw, foreground, (40, 40), config).numpy(),
                                compositor.clamp_params(raw, config.ranges, config.clamp_mode).numpy())


def test_clip_clamp_is_exact_inside_the_range():
  inside = tf.constant(random_params(np.random.default_rng(3), 16), tf.float32)
  clamped = compositor.clamp_params(inside, RANGES, "clip")
  np.testing.assert_array_equal(clamped.numpy(), inside.numpy())


def test_unknown_clamp_mode_is_rejected():
  with pytest.raises(ValueError, match="clamp mode"):
    compositor.CompositorConfig(ranges=RANGES, clamp_mode="sigmoid")


@pytest.mark.parametrize("mask_cleanup, framed", [(False, False), (True, False), (False, True)])
def test_gradients_wrt_parameters_match_finite_differences(mask_cleanup, framed):
  rng = np.random.default_rng(4)
  # Smooth inputs keep the bilinear kinks small relative to the step; float64 keeps rounding out of it.
  foreground = scipy.ndimage.gaussian_filter(rng.uniform(size=(2, 24, 24, 2)), sigma=(0, 2, 2, 0))
  foreground[:, :, :, 1] *= np.pad(np.ones([10, 8]), [[7, 7], [8, 8]])  # Ink in a box, room to move.
  background = rng.uniform(size=(2, 24, 24, 1))
  params = random_params(rng, 2)
  projection = rng.normal(size=(2, 24, 24, 1))
  config = compositor.CompositorConfig(ranges=RANGES, mask_cleanup=mask_cleanup, mask_threshold=0.05)

  def objective(p):
    if framed:  # The translation then depends on every parameter through the transformed ink box.
      p = compositor.keep_in_frame(p, tf.constant(foreground[..., 1:]), (24, 24), config.ranges)
    result = compositor.composite(tf.constant(foreground), tf.constant(background), p, config)
    return tf.reduce_sum(result.image * projection)

  params_t = tf.constant(params)
  with tf.GradientTape() as tape:
    tape.watch(params_t)
    value = objective(params_t)
  analytic = tape.gradient(value, params_t).numpy()

  eps = 1e-6
  numeric = np.zeros_like(params)
  for index in np.ndindex(params.shape):
    step = np.zeros_like(params)
    step[index] = eps
    numeric[index] = (objective(tf.constant(params + step)) -
                      objective(tf.constant(params - step))).numpy() / (2 * eps)
  np.testing.assert_allclose(analytic, numeric, rtol=1e-4, atol=1e-6)


def test_gradient_wrt_image_matches_finite_differences():
  rng = np.random.default_rng(5)
  image = rng.uniform(size=(1, 8, 8, 1))
  projection = tf.constant(rng.normal(size=(1, 8, 8, 1)))
  matrix = compositor.params_to_matrix(tf.constant([[10.0, 0.5, 0.3, 0.1, 1.1, 0.9]], tf.float64), (8, 8))

  def objective(x):
    return tf.reduce_sum(compositor.warp(x, matrix) * projection)

  image_t = tf.constant(image)
  with tf.GradientTape() as tape:
    tape.watch(image_t)
    value = objective(image_t)
  analytic = tape.gradient(value, image_t).numpy()
  # The warp is linear in the image, so a unit step gives the exact directional derivative.
  numeric = np.zeros_like(image)
  for index in np.ndindex(image.shape):
    basis = np.zeros_like(image)
    basis[index] = 1.0
    numeric[index] = objective(tf.constant(basis)).numpy()
  np.testing.assert_allclose(analytic, numeric, atol=1e-12)
  assert np.abs(analytic).sum() > 0


def test_mask_cleanup_removes_the_halo_and_keeps_the_interior():
  mask = np.zeros((1, 20, 20, 1), np.float32)
  mask[0, 5:15, 5:15] = 1.0
  mask[0, 4, 5:15] = 0.05  # the faint halo bilinear resampling leaves
  cleaned = compositor.clean_mask(tf.constant(mask), threshold=0.1, blur_sigma=0.0).numpy()
  assert cleaned[0, 4, 5:15].max() == 0.0
  np.testing.assert_allclose(cleaned[0, 5:15, 5:15], 1.0)
  blurred = compositor.clean_mask(tf.constant(mask), threshold=0.1, blur_sigma=1.0).numpy()
  assert 0 < blurred[0, 4, 10, 0] < 0.5 and blurred[0, 10, 10, 0] == pytest.approx(1.0, abs=1e-3)


def blob(size, centre_xy, sigma=2.0):
  ys, xs = np.mgrid[0:size, 0:size]
  return np.exp(-((xs - centre_xy[0]) ** 2 + (ys - centre_xy[1]) ** 2) / (2 * sigma ** 2))


def centroid_xy(image):
  ys, xs = np.mgrid[0:image.shape[0], 0:image.shape[1]]
  return np.array([(xs * image).sum(), (ys * image).sum()]) / image.sum()


def rotate(p, degrees):
  a = np.deg2rad(degrees)
  return np.array([p[0] * np.cos(a) - p[1] * np.sin(a), p[0] * np.sin(a) + p[1] * np.cos(a)])


# Each parameter's meaning, written out independently of compositor.forward_matrix: where a point at offset p
# from the foreground's centre lands, as an offset from the output's centre. x is the column, y the row.
PARAMETER_MEANINGS = [
    ("rotation", [25.0, 0, 0, 0, 1, 1], lambda p: rotate(p, 25.0)),
    ("translate_x", [0, 4.5, 0, 0, 1, 1], lambda p: p + [4.5, 0]),
    ("translate_y", [0, 0, -3.25, 0, 1, 1], lambda p: p + [0, -3.25]),
    ("shear", [0, 0, 0, 0.2, 1, 1], lambda p: np.array([p[0] + 0.2 * p[1], p[1]])),
    ("scale_x", [0, 0, 0, 0, 1.2, 1], lambda p: np.array([1.2 * p[0], p[1]])),
    ("scale_y", [0, 0, 0, 0, 1, 0.8], lambda p: np.array([p[0], 0.8 * p[1]])),
    # Together: scale first, then shear, then rotate, then translate.
    ("all", [-15.0, 2.0, 1.0, -0.15, 0.9, 1.1],
     lambda p: rotate(np.array([0.9 * p[0] - 0.15 * 1.1 * p[1], 1.1 * p[1]]), -15.0) + [2.0, 1.0]),
]


@pytest.mark.parametrize("name,params,where", PARAMETER_MEANINGS, ids=[m[0] for m in PARAMETER_MEANINGS])
def test_each_affine_parameter_moves_a_point_where_an_independent_formula_says(name, params, where):
  size, centre = 48, (48 - 1) / 2
  for offset in ([6.0, -4.0], [-5.0, 7.0]):
    image = blob(size, centre + np.array(offset))[None, ..., None]
    matrix = compositor.params_to_matrix(tf.constant([params], tf.float64), (size, size))
    warped = compositor.warp(tf.constant(image), matrix).numpy()[0, ..., 0]
    np.testing.assert_allclose(centroid_xy(warped) - centre, where(np.array(offset)), atol=0.02)


@pytest.mark.parametrize("cleanup", [False, True])
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_a_uniform_colour_object_keeps_its_colour_everywhere_it_is_blended(cleanup, sigma):
  """A red square on white: wherever any of it is blended in, red stays 1 and green/blue are 1 - alpha.
  A black fringe (straight colour 0 where the blur spreads alpha past the warped mask) lowers red."""
  foreground = np.zeros((2, 40, 40, 4), np.float32)
  foreground[:, 12:28, 14:26] = [1.0, 0.0, 0.0, 1.0]
  background = np.ones((2, 40, 40, 3), np.float32)
  params = tf.constant([[13.0, 2.0, -3.0, 0.1, 1.1, 0.9], [-20.0, -4.0, 1.5, -0.2, 0.8, 1.2]])
  config = compositor.CompositorConfig(ranges=RANGES, mask_cleanup=cleanup, mask_blur_sigma=sigma)
  result = compositor.composite(tf.constant(foreground), tf.constant(background), params, config)
  image, alpha = result.image.numpy(), result.warped_mask.numpy()
  blended = alpha[..., 0] > 1e-4
  assert blended.sum() > 200 and (alpha[..., 0] < 0.999)[blended].sum() > 50  # Edges are in the test.
  np.testing.assert_allclose(image[..., 0][blended], 1.0, atol=1e-4)
  np.testing.assert_allclose(image[..., 1:], np.broadcast_to(1 - alpha, image[..., 1:].shape), atol=1e-5)


def brute_force_box(mask, threshold=0.5):
  """(ymin, xmin, ymax, xmax) normalised, on pixel edges, by looking at every pixel; None if empty."""
  rows, columns = np.nonzero(mask > threshold)
  if not len(rows):
    return None
  height, width = mask.shape
  return np.array([rows.min() / height, columns.min() / width, (rows.max() + 1) / height,
                   (columns.max() + 1) / width])


def test_boxes_from_masks_match_a_brute_force_box():
  rng = np.random.default_rng(7)
  masks = np.zeros((6, 30, 50, 1), np.float32)
  for mask in masks[:5]:
    y, x = rng.integers(0, 30), rng.integers(0, 50)
    mask[y:y + rng.integers(1, 12), x:x + rng.integers(1, 20)] = rng.uniform(0.51, 1.0)
    mask += rng.uniform(0, 0.5, mask.shape)  # Faint halo below the threshold: not part of the box.
  boxes, non_empty = compositor.boxes_from_masks(tf.constant(masks))
  for mask, box, present in zip(masks, boxes.numpy(), non_empty.numpy()):
    expected = brute_force_box(mask[..., 0])
    assert present == (expected is not None)
    np.testing.assert_allclose(box, expected if present else np.zeros(4), atol=1e-7)


def square_foreground(colour, size=20, side=10):
  foreground = np.zeros((size, size, len(colour) + 1), np.float32)
  start = (size - side) // 2
  foreground[start:start + side, start:start + side] = [*colour, 1.0]
  return foreground


def test_a_single_object_composites_as_composite_does_with_its_box():
  rng = np.random.default_rng(8)
  foreground = np.stack([square_foreground([0.2, 0.8, 0.4])] * 3)
  background = rng.uniform(size=(3, 64, 48, 3)).astype(np.float32)
  params = tf.constant([[10.0, 5.0, -8.0, 0.1, 1.5, 0.8], [0, 0, 0, 0, 1, 1], [-30.0, -10.0, 12.0, 0, 2, 2]])
  config = compositor.CompositorConfig(ranges=WIDE_RANGES, mask_cleanup=True)
  single = compositor.composite(tf.constant(foreground), tf.constant(background), params, config)
  multi = compositor.composite_objects(tf.constant(foreground[:, None]), tf.constant(background),
                                       params[:, None], tf.ones([3, 1], tf.bool), config)
  np.testing.assert_allclose(multi.image.numpy(), single.image.numpy(), atol=1e-6)
  np.testing.assert_allclose(multi.visible_masks.numpy()[:, 0], single.warped_mask.numpy(), atol=1e-6)
  for box, mask in zip(multi.boxes.numpy()[:, 0], single.warped_mask.numpy()):
    np.testing.assert_allclose(box, brute_force_box(mask[..., 0]), atol=1e-7)
  # Nothing cropped or covered: all of each square is in view, less the sliver of resampled edge that the
  # clean-up's threshold trims.
  np.testing.assert_allclose(multi.visible_fraction.numpy(), 1.0, atol=0.05)
  assert multi.box_valid.numpy().all()


def test_later_objects_occlude_earlier_ones_and_hidden_boxes_are_dropped():
  red, blue = square_foreground([1.0, 0.0, 0.0]), square_foreground([0.0, 0.0, 1.0])
  foregrounds = tf.constant(np.stack([[red, blue]] * 3))
  background = tf.zeros([3, 40, 40, 3])
  params = tf.constant([
      [[0, -3, 0, 0, 1, 1], [0, 3, 0, 0, 1, 1]],    # Red: columns 12-21; blue, on top: 18-27.
      [[0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1.2, 1.2]],  # Blue, larger, on top of red: red is hidden.
      [[0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1.2, 1.2]],  # The same, but blue is padding: red is whole.
  ], tf.float32)
  valid = tf.constant([[True, True], [True, True], [True, False]])
  result = compositor.composite_objects(foregrounds, background, params, valid, CONFIG, min_visible=0.25)
  image, fraction = result.image.numpy(), result.visible_fraction.numpy()
  # Wherever they overlap the later (blue) object is what shows.
  np.testing.assert_allclose(image[0, 15:25, 18:28], [[[0, 0, 1]] * 10] * 10, atol=1e-6)
  np.testing.assert_allclose(image[0, 15:25, 12:18], [[[1, 0, 0]] * 6] * 10, atol=1e-6)
  assert fraction[0, 0] == pytest.approx(0.6, abs=1e-5) and fraction[0, 1] == pytest.approx(1.0, abs=1e-5)
  np.testing.assert_allclose(result.boxes.numpy()[0, 0], [15 / 40, 12 / 40, 25 / 40, 18 / 40], atol=1e-7)
  assert fraction[1, 0] == pytest.approx(0.0, abs=1e-6)
  assert result.box_valid.numpy().tolist() == [[True, True], [False, True], [True, False]]
  # Padding is pasted nowhere: the third image holds red alone.
  np.testing.assert_allclose(image[2, ..., 2], 0.0)
  assert fraction[2, 0] == pytest.approx(1.0, abs=1e-5)


def test_an_object_pushed_mostly_out_of_the_frame_loses_its_box():
  foregrounds = tf.constant(square_foreground([1.0, 1.0, 1.0])[None, None])
  # The 10x10 square, shifted 22 px right, covers columns 37-46: 3 of its 10 stay inside the 40-pixel frame.
  params = tf.constant([[[0, 22.0, 0, 0, 1, 1]]])
  result = compositor.composite_objects(foregrounds, tf.zeros([1, 40, 40, 3]), params,
                                        tf.ones([1, 1], tf.bool), CONFIG, min_visible=0.5)
  in_view = result.visible_masks.numpy().sum() / 100.0
  assert result.visible_fraction.numpy()[0, 0] == pytest.approx(in_view, abs=1e-5) == pytest.approx(0.3)
  assert not result.box_valid.numpy()[0, 0]


def test_every_objects_parameters_get_a_gradient_through_the_multi_object_composite():
  foregrounds = tf.constant(np.stack([[square_foreground([1, 0, 0]), square_foreground([0, 1, 0])]]))
  params = tf.Variable([[[5.0, -4, 2, 0.1, 1.1, 0.9], [-5.0, 4, -2, -0.1, 0.9, 1.1]]])
  weights = tf.constant(np.random.default_rng(9).uniform(size=(1, 40, 40, 3)), tf.float32)
  with tf.GradientTape() as tape:
    result = compositor.composite_objects(foregrounds, tf.fill([1, 40, 40, 3], 0.5), params,
                                          tf.ones([1, 2], tf.bool), CONFIG)
    loss = tf.reduce_sum(result.image * weights)
  gradient = tape.gradient(loss, params).numpy()
  assert np.all(np.abs(gradient[0]).max(axis=1) > 1e-3)


def test_background_regions_are_the_donors_own_pixels_inside_the_warped_training_mask():
  """§3.1's region: the mask warped and cleaned up exactly as S's objects are, filled with the donor's
  pixels at their native scale (a 1-pixel checkerboard survives no resampling), shifted so all of it lies in
  the donor, alpha-blended; nothing outside it changes, nor any background not asked for."""
  rng = np.random.default_rng(10)
  size = 48
  backgrounds = rng.uniform(size=(3, size, size, 3)).astype(np.float32)
  rows, columns = np.mgrid[:size, :size]
  # A 1-pixel checkerboard on a ramp that tells every pixel apart, so only the right shift matches.
  donor = 0.5 * ((rows + columns) % 2) + 0.5 * (rows * size + columns) / size ** 2
  donors = np.stack([donor, 1 - donor, donor ** 2], axis=-1)[None].repeat(3, axis=0).astype(np.float32)
  masks = np.zeros((3, 24, 24, 1), np.float32)
  masks[:, 2:22, 4:20] = 1.0
  masks[:, 8:16, 8:14] = 0.0  # A hole: the region takes the mask's shape, not its box.
  params = tf.constant([[15.0, 6, -4, 0.1, 1.1, 1.2], [0, 0, 0, 0, 1, 1], [-10.0, -8, 3, 0, 0.9, 0.9]])
  source = tf.constant([[0.0, 0.0], [0.999, 0.999], [0.5, 0.3]])
  config = compositor.CompositorConfig(ranges=RANGES, mask_cleanup=True, mask_blur_sigma=1.0)
  result = compositor.paste_background_region(tf.constant(backgrounds), tf.constant(donors), tf.constant(masks),
                                              params, source, tf.constant([True, True, False]), config)
  image, region, offsets = result.image.numpy(), result.region.numpy(), result.offsets.numpy()
  # The region is the compositor's own warp (and clean-up) of the mask.
  warped = compositor.composite(tf.constant(np.concatenate([np.zeros_like(masks), masks], -1)),
                                tf.zeros([3, size, size, 1]), params, config).warped_mask.numpy()
  np.testing.assert_array_equal(region, warped)
  # Under identity parameters output (r, c) shows mask (r - 12, c - 12): the hole is left as it was.
  assert region[1, 24, 23, 0] < 0.05 and region[1, 17, 24, 0] > 0.9
  for b in range(2):
    inside_y, inside_x = np.nonzero(region[b, ..., 0] > 0)
    source_y, source_x = inside_y + offsets[b, 1], inside_x + offsets[b, 0]
    assert source_y.min() >= 0 and source_x.min() >= 0 and source_y.max() < size and source_x.max() < size
    alpha = region[b, inside_y, inside_x]
    blended = alpha * donors[b, source_y, source_x] + (1 - alpha) * backgrounds[b, inside_y, inside_x]
    np.testing.assert_allclose(image[b, inside_y, inside_x], blended, atol=1e-6)
    outside = region[b, ..., 0] == 0
    np.testing.assert_array_equal(image[b][outside], backgrounds[b][outside])
  # Source 0 copies from the donor's top-left-most place, source 1 from its bottom-right-most.
  first_y, first_x = (np.nonzero(region[0, ..., 0] > 0)[i].min() for i in (0, 1))
  assert (first_x + offsets[0, 0], first_y + offsets[0, 1]) == (0, 0)
  last_y, last_x = (np.nonzero(region[1, ..., 0] > 0)[i].max() for i in (0, 1))
  assert (last_x + offsets[1, 0], last_y + offsets[1, 1]) == (size - 1, size - 1)
  np.testing.assert_array_equal(image[2], backgrounds[2])


def test_the_xla_compiled_multi_object_composite_and_its_gradient_equal_the_plain_ones():
  rng = np.random.default_rng(11)
  foregrounds = tf.constant(rng.uniform(size=(2, 3, 24, 24, 4)), tf.float32)
  background = tf.constant(rng.uniform(size=(2, 48, 48, 3)), tf.float32)
  params = tf.Variable(compositor.clamp_params(tf.constant(rng.normal(size=(2, 3, 6)), tf.float32), RANGES))
  valid = tf.constant([[True, True, False], [True, False, False]])
  weights = tf.constant(rng.uniform(size=(2, 48, 48, 3)), tf.float32)
  config = compositor.CompositorConfig(ranges=RANGES, mask_cleanup=True)
  compiled = compositor.compiled_composite_objects(config, min_visible=0.25)
  results, gradients = [], []
  for composite in (compiled, lambda *args: compositor.composite_objects(*args, config, 0.25)):
    with tf.GradientTape() as tape:
      result = composite(foregrounds, background, params, valid)
      loss = tf.reduce_sum(result.image * weights)
    results.append(result)
    gradients.append(tape.gradient(loss, params).numpy())
  for a, b in zip(*results):
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
  np.testing.assert_allclose(gradients[0], gradients[1], rtol=1e-4, atol=1e-4)
  assert np.abs(gradients[0][valid.numpy()]).max(axis=-1).min() > 1e-3  # Every pasted object's parameters.



def extreme_params(rng: np.random.Generator, batch: int) -> np.ndarray:
  """Parameters at the corners of WIDE_RANGES (largest scale and shear, any rotation) and at translations
  past the frame's edge, where the window is moved inside the frame: the cases that need all of it."""
  low, high = WIDE_RANGES.bounds()
  params = rng.uniform(low, high, size=(batch, compositor.NUM_PARAMS))
  corner = rng.integers(0, 2, size=(batch, compositor.NUM_PARAMS)).astype(bool)
  return np.where(corner, np.where(rng.integers(0, 2, size=corner.shape), high, low), params)


@pytest.mark.parametrize("mask_cleanup", [False, True])
def test_sampling_only_the_footprint_gives_the_full_frame_composite_and_gradient(mask_cleanup):
  rng = np.random.default_rng(12)
  foreground = rng.uniform(size=(16, 40, 40, 4))
  foreground[..., 3] *= rng.uniform(size=(16, 40, 40)) > 0.2  # Ink to the cut-out's edges.
  background = rng.uniform(size=(16, 160, 160, 3))
  params = tf.constant(extreme_params(rng, 16))
  projection = rng.normal(size=(16, 160, 160, 3))
  windowed = compositor.CompositorConfig(ranges=WIDE_RANGES, mask_cleanup=mask_cleanup)
  blur = windowed.mask_blur_sigma if mask_cleanup else 0.0
  assert compositor.footprint_side((40, 40), (160, 160), WIDE_RANGES, blur) < 160
  full_frame = dataclasses.replace(windowed, ranges=None)  # No ranges: nothing bounds the footprint.
  images, gradients = [], []
  for config in (windowed, full_frame):
    with tf.GradientTape() as tape:
      tape.watch(params)
      image = compositor.composite(tf.constant(foreground), tf.constant(background), params, config).image
      objective = tf.reduce_sum(image * projection)
    images.append(image.numpy())
    gradients.append(tape.gradient(objective, params).numpy())
  np.testing.assert_allclose(images[0], images[1], atol=1e-12)
  np.testing.assert_allclose(gradients[0], gradients[1], rtol=1e-9, atol=1e-9)
  # Objects pushed past the edge may leave the frame; most do not, so the comparison covers pasted pixels.
  assert (np.abs(images[1] - background).max(axis=(1, 2, 3)) > 0.1).sum() >= 8


def test_the_footprint_window_holds_the_widest_footprint_and_is_used_only_where_it_saves_pixels():
  # The widest footprint, searched: the reachable square (-0.5..40.5)^2 about the centre, at the largest
  # scale and shear, over every rotation.
  corners = np.array([[x, y] for x in (-20.5, 20.5) for y in (-20.5, 20.5)])
  widest = 0.0
  for rotation in np.linspace(0, 180, 721):
    for shear in (-0.3, 0.3):
      params = tf.constant([[rotation, 0, 0, shear, 2.0, 2.0]], tf.float64)
      moved = corners @ compositor.forward_matrix(params).numpy()[0].T
      widest = max(widest, np.ptp(moved, axis=0).max())
  side = compositor.footprint_side((40, 40), (300, 300), WIDE_RANGES)
  assert widest + 2 <= side <= widest + 2 + 0.1 * widest
  assert compositor.footprint_side((40, 40), (128, 128), WIDE_RANGES) is None
  assert compositor.footprint_side((40, 40), (40, 40), RANGES) is None


def test_parameters_beyond_the_window_s_ranges_are_refused_outside_xla():
  params = compositor.identity_params(1) * tf.constant([[1, 1, 1, 1, 3, 1.0]])  # Three times the width.
  with pytest.raises(tf.errors.InvalidArgumentError, match="beyond the ranges"):
    compositor.warp_footprint(tf.ones([1, 40, 40, 2]), params, (300, 300), WIDE_RANGES)
