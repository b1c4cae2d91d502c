"""SSD's box mathematics and multibox loss against brute force and hand computation."""

import numpy as np
import pytest
import tensorflow as tf

from terse_tf import boxes, losses


def random_corner_boxes(rng, count):
  corners = rng.uniform(0, 0.7, (count, 2))
  return np.concatenate([corners, corners + rng.uniform(0.02, 0.3, (count, 2))], axis=1).astype(np.float32)


def test_default_boxes_tile_every_feature_map_with_every_shape():
  spec = boxes.DefaultBoxSpec(feature_sizes=(4, 2), min_scale=0.2, max_scale=0.6, aspect_ratios=(1.0, 2.0))
  anchors = boxes.default_boxes(spec).numpy()
  assert anchors.shape == ((16 + 4) * 3, 4)
  first_cell = anchors[:3]
  np.testing.assert_allclose(first_cell[:, :2], [[0.125, 0.125]] * 3)
  # Ratio 1 at s_0, ratio 2 (wide: w = s sqrt 2, h = s / sqrt 2), ratio 1 at sqrt(s_0 s_1).
  s0, s1 = 0.2, 0.6
  np.testing.assert_allclose(first_cell[:, 2:], [[s0, s0], [s0 / np.sqrt(2), s0 * np.sqrt(2)],
                                                 [np.sqrt(s0 * s1), np.sqrt(s0 * s1)]], rtol=1e-6)
  np.testing.assert_allclose(anchors[-1, :2], [0.75, 0.75])  # The last cell of the 2x2 map.


def test_iou_matches_brute_force():
  rng = np.random.default_rng(0)
  a, b = random_corner_boxes(rng, 7), random_corner_boxes(rng, 5)
  b[0] = a[0]  # Identical boxes: IoU 1.
  expected = np.zeros((7, 5))
  for i, j in np.ndindex(7, 5):
    h = max(0.0, min(a[i, 2], b[j, 2]) - max(a[i, 0], b[j, 0]))
    w = max(0.0, min(a[i, 3], b[j, 3]) - max(a[i, 1], b[j, 1]))
    area = lambda box: (box[2] - box[0]) * (box[3] - box[1])
    expected[i, j] = h * w / (area(a[i]) + area(b[j]) - h * w)
  np.testing.assert_allclose(boxes.iou(tf.constant(a), tf.constant(b)).numpy(), expected, rtol=1e-5, atol=1e-7)
  assert boxes.iou(tf.constant(a[:1]), tf.constant(b[:1])).numpy()[0, 0] == pytest.approx(1.0)


def test_encoding_round_trips_through_decoding():
  rng = np.random.default_rng(1)
  anchors = boxes.corners_to_centres(tf.constant(random_corner_boxes(rng, 50)))
  truth = random_corner_boxes(rng, 50)
  decoded = boxes.decode(boxes.encode(tf.constant(truth), anchors), anchors).numpy()
  np.testing.assert_allclose(decoded, truth, atol=1e-5)


def test_matching_claims_an_anchor_for_every_real_box_and_none_for_padding():
  anchors = boxes.default_boxes(boxes.DefaultBoxSpec(feature_sizes=(8, 4)))
  truth = np.array([[0.1, 0.1, 0.5, 0.3], [0.6, 0.55, 0.95, 0.7], [0.02, 0.9, 0.05, 0.93], [0, 0, 1, 1]],
                   np.float32)  # The tiny third box overlaps no anchor by 0.5; the fourth is padding.
  classes = np.array([2, 0, 1, 1])
  matches = boxes.match(tf.constant(truth), tf.constant(classes), tf.constant(3), anchors)
  matched = matches.classes.numpy()
  assert set(np.unique(matched)) == {0, 1, 2, 3}
  overlaps = boxes.iou(boxes.centres_to_corners(anchors), tf.constant(truth)).numpy()
  positive = matched > 0
  decoded = boxes.decode(matches.boxes, anchors).numpy()
  for g in range(3):  # Each real box: its best anchor, and every anchor above 0.5, decode back to it.
    claimed = np.all(np.abs(decoded - truth[g]) < 1e-5, axis=1) & positive
    assert claimed[np.argmax(overlaps[:, g])]
    assert np.all(claimed[(overlaps[:, g] > 0.5) & (overlaps[:, g] == overlaps[:, :3].max(axis=1))])
    np.testing.assert_array_equal(matched[claimed], classes[g] + 1)
  assert not np.any(np.all(np.abs(decoded - truth[3]) < 1e-5, axis=1) & positive)  # Padding: never.
  # Positives: the anchors above 0.5, and each real box's best anchor (the tiny box's is below 0.5).
  expected = set(np.flatnonzero(overlaps[:, :3].max(axis=1) > 0.5)) | set(np.argmax(overlaps[:, :3], axis=0))
  assert set(np.flatnonzero(positive)) == expected and overlaps[:, 2].max() < 0.5
  np.testing.assert_array_equal(matches.boxes.numpy()[~positive], 0.0)


def test_multibox_loss_mines_three_negatives_per_positive_and_adds_smooth_l1():
  # 1 image, 8 default boxes, 2 classes + background; anchor 0 is the one positive (class 1).
  logits = np.zeros((1, 8, 3), np.float32)
  logits[0, 1:, 0] = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]  # Background logit: higher is an easier negative.
  matched_classes = np.array([[1, 0, 0, 0, 0, 0, 0, 0]])
  regression = np.zeros((1, 8, 4), np.float32)
  regression[0, 0] = [0.5, -2.0, 0.0, 0.1]
  result = losses.ssd_multibox_loss(tf.constant(logits), tf.constant(regression), tf.constant(matched_classes),
                                    tf.zeros([1, 8, 4]))

  def cross_entropy(row, label):
    return np.log(np.exp(row).sum()) - row[label]

  positive = cross_entropy(logits[0, 0], 1)
  hardest = sorted((cross_entropy(logits[0, a], 0) for a in range(1, 8)), reverse=True)[:3]
  smooth_l1 = 0.5 * 0.5 ** 2 + (2.0 - 0.5) + 0 + 0.5 * 0.1 ** 2
  assert result.positives.numpy().tolist() == [1.0]
  assert result.per_image.numpy()[0] == pytest.approx(positive + sum(hardest) + smooth_l1, rel=1e-5)


def test_an_image_without_objects_still_counts_its_hardest_negatives():
  logits = tf.constant(np.random.default_rng(2).normal(size=(2, 10, 3)), tf.float32)
  result = losses.ssd_multibox_loss(logits, tf.zeros([2, 10, 4]), tf.zeros([2, 10], tf.int32),
                                    tf.zeros([2, 10, 4]), min_negatives=4)
  background = -tf.nn.log_softmax(logits)[..., 0].numpy()
  np.testing.assert_allclose(result.per_image.numpy(), np.sort(background, axis=1)[:, ::-1][:, :4].sum(axis=1),
                             rtol=1e-5)
  assert result.positives.numpy().tolist() == [0.0, 0.0]


def test_two_boxes_that_share_their_best_default_box_give_it_to_the_later_one():
  """The forced match of a box to its best default box: where two boxes share it the later wins, every time
  (a scatter-update's order between duplicate indices is undefined)."""
  anchors = boxes.default_boxes(boxes.DefaultBoxSpec(feature_sizes=(4,), aspect_ratios=(1.0,)))
  # Two identical small boxes no default box reaches at IoU 0.5: only the forced match makes a positive.
  truth = tf.constant([[0.40, 0.40, 0.45, 0.45], [0.40, 0.40, 0.45, 0.45]], tf.float32)
  for _ in range(5):
    matches = boxes.match(truth, tf.constant([3, 7]), tf.constant(2), anchors)
    assert sorted(set(matches.classes.numpy().tolist())) == [0, 8]  # Class 7, 1-based: the later box's.


# Default boxes dense enough that an object-sized box overlaps several at IoU >= 0.5.
DENSE_SPEC = boxes.DefaultBoxSpec(feature_sizes=(16, 8), min_scale=0.2, max_scale=0.4,
                                  aspect_ratios=(1.0, 2.0, 0.5))


def numpy_iou(a, b):
  """IoU [N, M] of corner boxes by hand (no terse_tf code)."""
  height = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
  width = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
  area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
  union = area(a)[:, None] + area(b)[None, :] - height * width
  return np.divide(height * width, union, out=np.zeros_like(union), where=union > 0)


def test_default_boxes_on_an_ignore_box_leave_the_loss_as_if_they_were_not_there():
  """The multibox loss with an ignore box equals the loss over the default boxes that remain once those on
  it (IoU >= 0.5, not positive) are removed by hand; the positives are those matched without it."""
  anchors = boxes.default_boxes(DENSE_SPEC)
  corners = boxes.centres_to_corners(anchors).numpy()
  truth = np.array([[0.1, 0.1, 0.4, 0.35], [0, 0, 0, 0]], np.float32)
  classes, count = np.array([1, 0]), 1
  # One ignore box elsewhere, one on the object (its positives stay), and a padding row.
  ignore = np.array([[0.55, 0.5, 0.85, 0.8], [0.1, 0.1, 0.4, 0.35], [0, 0, 0, 0]], np.float32)
  plain = boxes.match(tf.constant(truth), tf.constant(classes), tf.constant(count), anchors)
  matches = boxes.match(tf.constant(truth), tf.constant(classes), tf.constant(count), anchors,
                        ignore_boxes=tf.constant(ignore))
  positive = plain.classes.numpy() > 0
  removed = ~positive & (numpy_iou(corners, ignore).max(axis=1) >= 0.5)
  assert removed.sum() >= 4 and positive.sum() >= 2
  np.testing.assert_array_equal(matches.classes.numpy(), np.where(removed, boxes.IGNORED, plain.classes))
  np.testing.assert_array_equal(matches.boxes.numpy(), plain.boxes.numpy())

  rng = np.random.default_rng(3)
  logits = rng.normal(size=(1, len(corners), 3)).astype(np.float32)
  logits[0, removed, 0] = -5.0  # The removed boxes would be the hardest negatives: their absence shows.
  regression = rng.normal(size=(1, len(corners), 4)).astype(np.float32)
  result = losses.ssd_multibox_loss(logits, regression, matches.classes[None], matches.boxes[None])
  kept = ~removed
  by_hand = losses.ssd_multibox_loss(logits[:, kept], regression[:, kept], plain.classes.numpy()[None, kept],
                                     plain.boxes.numpy()[None, kept])
  unignored = losses.ssd_multibox_loss(logits, regression, plain.classes[None], plain.boxes[None])
  assert result.per_image.numpy()[0] == pytest.approx(by_hand.per_image.numpy()[0], rel=1e-6)
  assert result.positives.numpy().tolist() == by_hand.positives.numpy().tolist() == [positive.sum()]
  assert unignored.per_image.numpy()[0] > result.per_image.numpy()[0] + 1.0


def test_an_ignore_box_no_default_box_reaches_changes_nothing():
  anchors = boxes.default_boxes(DENSE_SPEC)
  truth, classes = tf.constant([[0.1, 0.1, 0.45, 0.4]]), tf.constant([2])
  tiny = np.array([[0.7, 0.7, 0.72, 0.72], [0, 0, 0, 0]], np.float32)
  assert numpy_iou(boxes.centres_to_corners(anchors).numpy(), tiny).max() < 0.5
  plain = boxes.match(truth, classes, tf.constant(1), anchors)
  matches = boxes.match(truth, classes, tf.constant(1), anchors, ignore_boxes=tf.constant(tiny))
  np.testing.assert_array_equal(matches.classes.numpy(), plain.classes.numpy())
  np.testing.assert_array_equal(matches.boxes.numpy(), plain.boxes.numpy())
