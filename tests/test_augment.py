"""SSD's data augmentation against images whose content tells the geometry: painted objects, coordinate ramps."""

import functools

import numpy as np
import pytest
import tensorflow as tf

from terse_tf import augment
from terse_tf import boxes as boxes_lib

SIZE = 64
GEOMETRY_OFF = dict(expand_prob=0.0, crop=False, flip_prob=0.0)


@functools.lru_cache(maxsize=None)
def compiled(config):
  """augment_example traced once per config (graph mode, as in tf.data)."""
  return tf.function(lambda image, labels, seed: augment.augment_example(image, labels, seed, config))


def run(image, labels, seed, config):
  image, labels = compiled(config)(tf.constant(image), {k: tf.constant(v) for k, v in labels.items()},
                                   tf.constant([seed, 17], tf.int32))
  return image.numpy(), {k: v.numpy() for k, v in labels.items()}


def make_labels(boxes, classes, rows):
  padded = np.zeros([rows, 4], np.float32)
  padded[:len(boxes)] = boxes
  return {"boxes": padded, "classes": np.pad(np.asarray(classes, np.int32), [0, rows - len(classes)]),
          "count": np.int32(len(boxes))}


def assert_label_invariants(labels, original):
  count = int(labels["count"])
  assert 0 <= count <= original["count"]
  assert not labels["boxes"][count:].any() and not labels["classes"][count:].any()
  kept = labels["boxes"][:count]
  assert (kept >= 0).all() and (kept <= 1).all()
  assert (kept[:, 0] <= kept[:, 2]).all() and (kept[:, 1] <= kept[:, 3]).all()
  remaining = list(original["classes"][:original["count"]])
  for cls in labels["classes"][:count]:  # Kept classes are some of the originals (a sub-multiset).
    remaining.remove(cls)


def test_flip_only_mirrors_image_and_boxes_or_leaves_both():
  rng = np.random.default_rng(0)
  image = rng.uniform(size=(SIZE, SIZE + 8, 3)).astype(np.float32)
  labels = make_labels([[0.1, 0.2, 0.5, 0.3], [0.4, 0.6, 0.9, 0.95]], [3, 1], rows=4)
  config = augment.AugmentConfig(photometric=False, expand_prob=0.0, crop=False)
  flips = []
  for seed in range(12):
    out, out_labels = run(image, labels, seed, config)
    flips.append(np.array_equal(out, image[:, ::-1]))
    if flips[-1]:
      ymin, xmin, ymax, xmax = labels["boxes"][:2].T
      mirrored = np.stack([ymin, 1 - xmax, ymax, 1 - xmin], axis=1)
      np.testing.assert_allclose(out_labels["boxes"][:2], mirrored, atol=1e-6)
    else:
      np.testing.assert_array_equal(out, image)
      np.testing.assert_array_equal(out_labels["boxes"], labels["boxes"])
    assert not out_labels["boxes"][2:].any()  # Padding stays zero, flipped or not.
    np.testing.assert_array_equal(out_labels["classes"], labels["classes"])
    assert out_labels["count"] == 2
  assert 0 < sum(flips) < len(flips)


def test_flip_mirrors_the_ignore_boxes_with_the_image():
  rng = np.random.default_rng(5)
  image = rng.uniform(size=(SIZE, SIZE, 3)).astype(np.float32)
  ignore = np.array([[0.0, 0.7, 0.3, 1.0], [0.5, 0.1, 0.6, 0.45], [0, 0, 0, 0]], np.float32)
  labels = {**make_labels([[0.1, 0.2, 0.5, 0.3]], [1], rows=3), "ignore_boxes": ignore}
  config = augment.AugmentConfig(photometric=False, expand_prob=0.0, crop=False)
  flips = []
  for seed in range(12):
    out, out_labels = run(image, labels, seed, config)
    flips.append(np.array_equal(out, image[:, ::-1]))
    ymin, xmin, ymax, xmax = ignore[:2].T
    expected = np.stack([ymin, 1 - xmax, ymax, 1 - xmin], axis=1) if flips[-1] else ignore[:2]
    np.testing.assert_allclose(out_labels["ignore_boxes"][:2], expected, atol=1e-6)
    assert not out_labels["ignore_boxes"][2].any()  # No ignore box stays none.
  assert 0 < sum(flips) < len(flips)


def test_ignore_boxes_move_exactly_as_boxes_under_the_full_augmentation():
  """An ignore box on the one object (which every crop keeps) comes out as its box, through expand, crop
  and flip."""
  rng = np.random.default_rng(6)
  image = rng.uniform(size=(SIZE, SIZE, 3)).astype(np.float32)
  labels = make_labels([[0.3, 0.2, 0.6, 0.7]], [2], rows=2)
  labels["ignore_boxes"] = labels["boxes"].copy()
  moved = 0
  for seed in range(20):
    _, out_labels = run(image, labels, seed, augment.AugmentConfig(photometric=False))
    assert out_labels["count"] == 1
    np.testing.assert_array_equal(out_labels["ignore_boxes"], out_labels["boxes"])
    moved += not np.allclose(out_labels["boxes"], labels["boxes"])
  assert moved >= 10


OBJECTS = [((8, 6, 30, 26), (1.0, 0.0, 0.0)), ((12, 36, 28, 58), (0.0, 1.0, 0.0)),
           ((36, 14, 58, 50), (0.0, 0.0, 1.0))]  # (top, left, bottom, right) pixels, colour.


def painted_scene():
  """Grey image with solid rectangles; object k is class k, coloured OBJECTS[k][1]."""
  image = np.full((SIZE, SIZE, 3), 0.5, np.float32)
  for (top, left, bottom, right), colour in OBJECTS:
    image[top:bottom, left:right] = colour
  boxes = [np.array(corners, np.float32) / SIZE for corners, _ in OBJECTS]
  return image, make_labels(boxes, range(len(OBJECTS)), rows=5)


def test_every_box_stays_tight_on_its_objects_pixels():
  image, labels = painted_scene()
  config = augment.AugmentConfig(photometric=False)
  grey = np.full(3, 0.5)
  scales, counts = [], []
  for seed in range(20):
    out, out_labels = run(image, labels, seed, config)
    assert_label_invariants(out_labels, labels)
    counts.append(out_labels["count"])
    for box, cls in zip(out_labels["boxes"][:out_labels["count"]], out_labels["classes"]):
      direction = np.asarray(OBJECTS[cls][1]) - grey
      # How much of the object a pixel shows, 0 (grey) .. 1: over 1/2 exactly where a pixel's sample point
      # falls inside the object, for bilinear resampling of an edge on a pixel boundary; so the extent of
      # those pixels is the box's to within half a pixel (a half-pixel misalignment would show).
      coverage = (out - grey) @ direction / (direction @ direction)
      rows, cols = np.nonzero(coverage > 0.5)
      found = [rows.min(), cols.min(), rows.max() + 1, cols.max() + 1]
      np.testing.assert_allclose(found, box * SIZE, atol=0.75, err_msg=f"seed {seed}, class {cls}")
      height = OBJECTS[cls][0][2] - OBJECTS[cls][0][0]
      scales.append((box[2] - box[0]) * SIZE / height)
  # The seeds went through zoom out (expand), zoom in (crop) and dropped objects, not just the identity.
  assert min(scales) < 0.6 and max(scales) > 1.5 and min(counts) < len(OBJECTS)


def ramp_image(height, width):
  """Channel 0 the normalised row coordinate, channel 1 the column: linear, so bilinear resampling keeps it
  exact and the output tells which window of the input it shows."""
  rows = (np.arange(height) + 0.5) / height
  cols = (np.arange(width) + 0.5) / width
  return np.stack([np.repeat(rows[:, None], width, 1), np.repeat(cols[None, :], height, 0),
                   np.full((height, width), 0.5)], axis=-1).astype(np.float32)


def window_shown(out):
  """(ymin, xmin, ymax, xmax) of the input that the output of a ramp image shows, from interior pixels."""
  height, width = out.shape[:2]
  corners = []
  for channel, size, line in ((0, height, out[:, width // 2, 0]), (1, width, out[height // 2, :, 1])):
    a, b = size // 4, 3 * size // 4
    extent = (line[b] - line[a]) * size / (b - a)
    corners.append((line[a] - (a + 0.5) / size * extent, extent))
  (top, h), (left, w) = corners
  return np.array([top, left, top + h, left + w])


def test_crop_keeps_exactly_the_objects_whose_centre_is_inside_the_patch():
  height, width = SIZE, SIZE + 16
  image = ramp_image(height, width)
  boxes = np.array([[0.05, 0.05, 0.3, 0.25], [0.2, 0.5, 0.7, 0.9], [0.6, 0.1, 0.95, 0.45],
                    [0.4, 0.4, 0.5, 0.55]], np.float32)
  labels = make_labels(boxes, [4, 2, 7, 2], rows=6)
  config = augment.AugmentConfig(photometric=False, expand_prob=0.0, flip_prob=0.0)
  crops, dropped = 0, 0
  for seed in range(40):
    out, out_labels = run(image, labels, seed, config)
    assert_label_invariants(out_labels, labels)
    window = window_shown(out)
    if np.allclose(window, [0, 0, 1, 1], atol=1e-4):
      np.testing.assert_allclose(out, image, atol=1e-4)
      for key in labels:
        np.testing.assert_array_equal(out_labels[key], labels[key])
      continue
    crops += 1
    side = window[2:] - window[:2]
    assert (window >= -1e-4).all() and (window <= 1 + 1e-4).all() and (side >= 0.3 - 1e-4).all()
    assert 0.5 - 1e-3 <= side[0] * height / (side[1] * width) <= 2 + 1e-3
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    inside = ((centres > window[:2]) & (centres < window[2:])).all(axis=1)
    assert inside.any()
    assert boxes_lib.iou(tf.constant(window[None], tf.float32), tf.constant(boxes)).numpy().max() >= 0.1 - 1e-4
    expected = np.clip((boxes[inside] - np.tile(window[:2], 2)) / np.tile(side, 2), 0, 1)
    assert out_labels["count"] == inside.sum()
    np.testing.assert_allclose(out_labels["boxes"][:inside.sum()], expected, atol=1e-4)
    np.testing.assert_array_equal(out_labels["classes"][:inside.sum()], labels["classes"][:4][inside])
    dropped += int(not inside.all())
  assert 5 <= crops < 40 and dropped > 0


def test_a_crop_keeps_an_ignore_box_it_cuts_clipped_and_drops_one_wholly_outside():
  """Unlike a box, an ignore box the crop cuts stays whatever its centre: the part of it in view is still
  no background."""
  height, width = SIZE, SIZE + 16
  image = ramp_image(height, width)
  labels = make_labels([[0.4, 0.4, 0.6, 0.6]], [1], rows=4)
  labels["ignore_boxes"] = np.array([[0.0, 0.0, 0.2, 0.2], [0.0, 0.7, 0.5, 1.0], [0.8, 0.05, 1.0, 0.6],
                                     [0, 0, 0, 0]], np.float32)
  config = augment.AugmentConfig(photometric=False, expand_prob=0.0, flip_prob=0.0)
  cut_off_centre = dropped = 0
  for seed in range(40):
    out, out_labels = run(image, labels, seed, config)
    window = window_shown(out)
    side = window[2:] - window[:2]
    expected = np.clip((labels["ignore_boxes"] - np.tile(window[:2], 2)) / np.tile(side, 2), 0, 1)
    outside = (expected[:, 2] <= expected[:, 0] + 1e-4) | (expected[:, 3] <= expected[:, 1] + 1e-4)
    expected[outside] = 0
    np.testing.assert_allclose(out_labels["ignore_boxes"], expected, atol=1e-4)
    np.testing.assert_array_equal(out_labels["ignore_boxes"][outside], 0)
    centres = (labels["ignore_boxes"][:3, :2] + labels["ignore_boxes"][:3, 2:]) / 2
    centre_out = ~((centres > window[:2]) & (centres < window[2:])).all(axis=1)
    cut_off_centre += int((centre_out & ~outside[:3]).any())
    dropped += int(outside[:3].any())
  assert cut_off_centre > 0 and dropped > 0


def test_invariants_hold_under_the_full_augmentation():
  rng = np.random.default_rng(1)
  corners = rng.uniform(0, 0.7, (6, 2))
  boxes = np.concatenate([corners, corners + rng.uniform(0.05, 0.3, (6, 2))], 1).astype(np.float32)
  labels = make_labels(boxes, rng.integers(0, 5, 6), rows=8)
  image = rng.uniform(size=(SIZE, SIZE, 3)).astype(np.float32)
  batch = 48
  images, out_labels = augment.augment_batch(
      np.repeat(image[None], batch, 0), {k: np.repeat(v[None], batch, 0) for k, v in labels.items()},
      tf.constant([3, 4]), augment.AugmentConfig())
  images = images.numpy()
  assert images.shape == (batch, SIZE, SIZE, 3) and images.dtype == np.float32
  assert images.min() >= 0 and images.max() <= 1
  counts = out_labels["count"].numpy()
  for b in range(batch):
    assert_label_invariants({k: v[b].numpy() for k, v in out_labels.items()}, labels)
  assert counts.min() < 6 and counts.max() == 6  # Some crops drop objects, some keep all.


def test_photometric_only_changes_colours_not_geometry():
  rng = np.random.default_rng(2)
  image = rng.uniform(size=(SIZE, SIZE, 3)).astype(np.float32)
  image[:8] = 0.0
  image[-8:] = 1.0  # Extremes: brightness and contrast push them outside [0, 1] unless clipped.
  labels = make_labels([[0.1, 0.2, 0.5, 0.3]], [3], rows=3)
  config = augment.AugmentConfig(**GEOMETRY_OFF)
  outputs = []
  for seed in range(8):
    out, out_labels = run(image, labels, seed, config)
    for key in labels:
      np.testing.assert_array_equal(out_labels[key], labels[key])
    assert out.min() >= 0 and out.max() <= 1
    outputs.append(out)
  changes = [np.abs(out - image).max() for out in outputs]
  assert sum(change > 0.02 for change in changes) >= 4
  unchanged, _ = run(image, labels, 0, augment.AugmentConfig(photometric_prob=0.0, **GEOMETRY_OFF))
  np.testing.assert_allclose(unchanged, image, atol=1e-4)  # Every step skipped: colours kept.


def test_same_seed_same_output_and_different_seeds_differ():
  image, labels = painted_scene()
  config = augment.AugmentConfig()
  first = [run(image, labels, seed, config) for seed in range(4)]
  again = [run(image, labels, seed, config) for seed in range(4)]
  for (image_a, labels_a), (image_b, labels_b) in zip(first, again):
    np.testing.assert_array_equal(image_a, image_b)
    for key in labels_a:
      np.testing.assert_array_equal(labels_a[key], labels_b[key])
  for i in range(4):
    for j in range(i):
      assert not np.array_equal(first[i][0], first[j][0])


def test_augment_batch_runs_in_a_dataset_map_with_a_seed_per_example():
  image, labels = painted_scene()
  total = 5
  data = tf.data.Dataset.from_tensor_slices((np.repeat(image[None], total, 0),
                                             {k: np.repeat(v[None], total, 0) for k, v in labels.items()}))
  config = augment.AugmentConfig()
  data = data.batch(3).enumerate().map(lambda step, batch: augment.augment_batch(
      batch[0], batch[1], tf.stack([tf.constant(9, tf.int64), step]), config))
  assert data.element_spec[0].shape.as_list() == [None, SIZE, SIZE, 3]
  assert data.element_spec[1]["boxes"].shape.as_list() == [None, 5, 4]
  passes = [list(data.as_numpy_iterator()) for _ in range(2)]
  assert [len(images) for images, _ in passes[0]] == [3, 2]  # The last, partial batch too.
  for (images_a, labels_a), (images_b, _) in zip(*passes):
    np.testing.assert_array_equal(images_a, images_b)  # Reproducible through tf.data.
    assert labels_a["classes"].dtype == np.int32 and labels_a["count"].dtype == np.int32
    assert images_a.min() >= 0 and images_a.max() <= 1
    for b in range(len(images_a)):
      assert_label_invariants({k: v[b] for k, v in labels_a.items()}, labels)
  images = np.concatenate([images for images, _ in passes[0]])
  # Identical inputs, distinct per-example seeds (across batches too): all outputs differ.
  assert all(not np.array_equal(images[i], images[j]) for i in range(total) for j in range(i))


@pytest.mark.parametrize("settings, message", [
    (dict(photometric_prob=1.5), "photometric_prob"), (dict(flip_prob=-0.1), "flip_prob"),
    (dict(expand_prob=2.0), "expand_prob"), (dict(max_expand=0.5), "max_expand"),
    (dict(contrast_range=(1.5, 0.5)), "contrast_range"), (dict(saturation_range=(-1.0, 1.0)), "saturation"),
    (dict(hue_delta=0.7), "hue_delta"), (dict(crop_min_ious=(0.1, 1.2)), "crop_min_ious"),
    (dict(crop_trials=0), "crop_trials"), (dict(crop_min_scale=0.0), "crop_min_scale"),
    (dict(crop_aspect_range=(2.0, 0.5)), "crop_aspect_range")])
def test_config_refuses_out_of_range_settings(settings, message):
  with pytest.raises(ValueError, match=message):
    augment.AugmentConfig(**settings)


def test_defaults_are_ssds_and_other_label_keys_are_refused():
  config = augment.AugmentConfig()
  assert config.hue_delta == pytest.approx(0.05) and config.brightness_delta == pytest.approx(32 / 255)
  assert (config.max_expand, config.crop_trials, config.crop_min_ious) == (4.0, 50, (0.1, 0.3, 0.5, 0.7, 0.9))
  image, labels = painted_scene()
  with pytest.raises(ValueError, match="masks"):
    augment.augment_example(image, {**labels, "masks": np.zeros([5, SIZE, SIZE, 1])}, tf.constant([1, 2]))
