"""The SSD target: shapes, one training step of SSD300-VGG16, decoding + NMS, the compact SSD learning a
tiny fixture well enough to detect it, and its loss under MirroredStrategy."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import keras

from conftest import REPO_ROOT
from terse_tf import boxes, evaluation, losses
from terse_tf.networks import ssd

COMPACT_SPEC = boxes.DefaultBoxSpec(feature_sizes=(32, 16, 8, 4))
# Keras's VGG16 pools with floor: 37, 18, 9 where Caffe's SSD300 has 38, 19, 10 (networks/ssd.py).
SSD300_SPEC = boxes.DefaultBoxSpec(feature_sizes=(37, 18, 9, 5, 3, 1), min_scale=0.1, max_scale=0.9)


def matched_batch(truth_boxes, truth_classes, counts, anchors):
  matches = [boxes.match(tf.constant(b, tf.float32), tf.constant(c), tf.constant(n), anchors)
             for b, c, n in zip(truth_boxes, truth_classes, counts)]
  return tf.stack([m.classes for m in matches]), tf.stack([m.boxes for m in matches])


def train_step(model, optimizer, images, matched_classes, matched_boxes):
  """One step of the multibox loss, normalised by the batch's positive default boxes; returns that loss."""
  with tf.GradientTape() as tape:
    outputs = model(images, training=True)
    loss = losses.ssd_multibox_loss(outputs["class_logits"], outputs["box_regression"], matched_classes,
                                    matched_boxes)
    total = tf.reduce_sum(loss.per_image) / tf.maximum(tf.reduce_sum(loss.positives), 1.0)
  optimizer.apply_gradients(zip(tape.gradient(total, model.trainable_variables), model.trainable_variables))
  return total


def test_compact_ssd_predicts_every_default_box():
  model = ssd.build_ssd("compact", 128, num_classes=10, spec=COMPACT_SPEC)
  outputs = model(tf.zeros([2, 128, 128, 3]), training=False)
  anchors = boxes.default_boxes(COMPACT_SPEC)
  assert outputs["class_logits"].shape == (2, anchors.shape[0], 11)
  assert outputs["box_regression"].shape == (2, anchors.shape[0], 4)
  assert ssd.feature_sizes("compact", 128) == (32, 16, 8, 4)
  assert model.count_params() < 1_000_000


def test_default_boxes_that_do_not_fit_the_backbone_are_refused():
  with pytest.raises(ValueError, match="predicts from feature maps \\(40, 20, 10, 5\\)"):
    ssd.build_ssd("compact", 160, num_classes=1, spec=COMPACT_SPEC)


def test_ssd300_vgg16_builds_and_takes_a_training_step():
  model = ssd.build_ssd("vgg16", 300, num_classes=1, spec=SSD300_SPEC)
  anchors = boxes.default_boxes(SSD300_SPEC)
  assert anchors.shape[0] == (37 ** 2 + 18 ** 2 + 9 ** 2 + 5 ** 2 + 3 ** 2 + 1) * 5
  images = tf.random.uniform([2, 300, 300, 3], seed=0)
  classes, targets = matched_batch([[[0.2, 0.3, 0.8, 0.6]], [[0.1, 0.1, 0.4, 0.9]]], [[0], [0]], [1, 1], anchors)
  optimizer = keras.optimizers.SGD(1e-3, momentum=0.9)
  before = {v.path: v.numpy().copy() for v in model.trainable_variables}
  loss = float(train_step(model, optimizer, images, classes, targets))
  assert np.isfinite(loss) and loss > 0
  moved = {v.path for v in model.trainable_variables if not np.array_equal(before[v.path], v.numpy())}
  # The gradient reaches VGG's first convolution and the heads of the large maps, where the objects' default
  # boxes are. (With random weights the smallest maps' extra layers can start dead, and a map without a
  # positive or mined negative default box gets no gradient on a first step.)
  for path in ("block1_conv1/kernel", "fc7/kernel", "class_head_0/kernel", "class_head_1/kernel",
               "box_head_1/kernel"):
    assert any(p.endswith(path) for p in moved), path


def test_detect_decodes_the_confident_default_box_and_pads_the_rest():
  anchors = boxes.default_boxes(COMPACT_SPEC)
  count = anchors.shape[0]
  logits = np.zeros((1, count, 3), np.float32)
  logits[0, :, 0] = 10.0           # Background everywhere...
  logits[0, 100] = [0.0, 0.0, 10.0]  # ...but default box 100 is class 1 (0-based), confidently.
  regression = np.zeros((1, count, 4), np.float32)
  regression[0, 100] = [1.0, -1.0, 0.5, 0.0]
  found = ssd.detect({"class_logits": tf.constant(logits), "box_regression": tf.constant(regression)}, anchors,
                     max_detections=5, score_threshold=0.5)
  assert found.num_detections.numpy().tolist() == [1]
  expected = np.clip(boxes.decode(tf.constant(regression[0, 100:101]), anchors[100:101]).numpy()[0], 0, 1)
  np.testing.assert_allclose(found.boxes.numpy()[0, 0], expected, atol=1e-6)
  assert found.classes.numpy()[0, 0] == 1.0 and found.scores.numpy()[0, 0] > 0.99
  np.testing.assert_array_equal(found.boxes.numpy()[0, 1:], 0.0)


def rectangles_fixture(count=8, size=128, seed=0):
  """Noise images with 1-2 solid rectangles each: class 0 wide and yellow, class 1 tall and cyan; the first
  in the left half, the second in the right, so they never overlap. Boxes are the drawn pixels exactly."""
  rng = np.random.default_rng(seed)
  images = rng.uniform(0, 0.4, (count, size, size, 3)).astype(np.float32)
  truth_boxes, truth_classes = np.zeros((count, 2, 4), np.float32), np.zeros((count, 2), np.int32)
  counts = rng.integers(1, 3, count)
  for i in range(count):
    for j in range(counts[i]):
      label = int(rng.integers(0, 2))
      height, width = (0.25, 0.4) if label == 0 else (0.4, 0.2)
      top, left = rng.uniform(0.05, 0.95 - height), 0.5 * j + rng.uniform(0.03, 0.47 - width)
      y0, x0, y1, x1 = np.round(np.array([top, left, top + height, left + width]) * size).astype(int)
      images[i, y0:y1, x0:x1] = [0.9, 0.8, 0.2] if label == 0 else [0.2, 0.8, 0.9]
      truth_boxes[i, j], truth_classes[i, j] = np.array([y0, x0, y1, x1]) / size, label
  return images, truth_boxes, truth_classes, counts


def test_the_compact_ssd_learns_to_detect_a_tiny_fixture():
  images, truth_boxes, truth_classes, counts = rectangles_fixture()
  keras.utils.set_random_seed(0)
  model = ssd.build_ssd("compact", 128, num_classes=2, spec=COMPACT_SPEC)
  anchors = boxes.default_boxes(COMPACT_SPEC)
  classes, targets = matched_batch(truth_boxes, truth_classes, counts, anchors)
  optimizer = keras.optimizers.Adam(3e-3)
  step = tf.function(lambda: train_step(model, optimizer, tf.constant(images), classes, targets))
  losses_seen = [float(step()) for _ in range(120)]
  assert losses_seen[-1] < 0.2 * losses_seen[0]
  found = ssd.detect(model(images, training=False), anchors, score_threshold=0.05)
  groundtruth = [evaluation.ImageBoxes(b[:n], c[:n]) for b, c, n in zip(truth_boxes, truth_classes, counts)]
  detections = [evaluation.ImageBoxes(b[:n], c[:n].astype(int), s[:n]) for b, c, s, n in zip(
      found.boxes.numpy(), found.classes.numpy(), found.scores.numpy(), found.num_detections.numpy())]
  metrics = evaluation.evaluate_detections(groundtruth, detections, (128, 128), ["wide", "tall"])
  assert metrics["ap50"] > 0.9, metrics


MIRRORED_LOSS_SCRIPT = textwrap.dedent("""
    import json
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from terse_tf import boxes, losses
    from terse_tf.targets.ssd import SSDTarget

    # The loss takes the model's outputs: no model is needed.
    target = SSDTarget(model=None, anchors=boxes.default_boxes(boxes.DefaultBoxSpec(feature_sizes=(8, 4, 2))))
    rng = np.random.default_rng(0)
    anchors = target.anchors.shape[0]
    outputs = {"class_logits": tf.constant(rng.normal(size=(8, anchors, 3)), tf.float32),
               "box_regression": tf.constant(rng.normal(0, 0.5, size=(8, anchors, 4)), tf.float32)}
    # Replica 0's half: four large objects per image (many matched default boxes); replica 1's: one small
    # object or none.
    count = np.array([4, 4, 4, 4, 1, 0, 1, 0], np.int32)
    centres = rng.uniform(0.3, 0.7, size=(8, 4, 2))
    sides = np.where(np.arange(8)[:, None, None] < 4, rng.uniform(0.3, 0.5, (8, 4, 1)), 0.15)
    object_boxes = np.concatenate([centres - sides / 2, centres + sides / 2], -1)
    object_boxes *= (np.arange(4)[None, :] < count[:, None])[..., None]
    labels = {"boxes": tf.constant(object_boxes, tf.float32),
              "classes": tf.constant(rng.integers(0, 2, (8, 4)), tf.int32), "count": tf.constant(count)}
    half = lambda tree, r: {k: v[4 * r:4 * r + 4] for k, v in tree.items()}

    report = {"single": float(target.replica_loss(outputs, labels))}
    # By hand: each half's summed per-image loss, and its positive default boxes.
    matches = [boxes.match(b, c, n, target.anchors, 0.5) for b, c, n in zip(
        labels["boxes"], labels["classes"], labels["count"])]
    multibox = losses.ssd_multibox_loss(outputs["class_logits"], outputs["box_regression"],
                                        tf.stack([m.classes for m in matches]),
                                        tf.stack([m.boxes for m in matches]))
    report["half_sums"] = [float(tf.reduce_sum(multibox.per_image[4 * r:4 * r + 4])) for r in (0, 1)]
    report["half_positives"] = [float(tf.reduce_sum(multibox.positives[4 * r:4 * r + 4])) for r in (0, 1)]

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    inputs = strategy.experimental_distribute_values_from_function(
        lambda context: (half(outputs, context.replica_id_in_sync_group),
                         half(labels, context.replica_id_in_sync_group)))
    shares = strategy.run(tf.function(target.replica_loss), args=inputs)
    report["replicas"] = strategy.num_replicas_in_sync
    report["shares"] = [float(x) for x in strategy.experimental_local_results(shares)]
    report["mirrored"] = float(strategy.reduce(tf.distribute.ReduceOp.SUM, shares, axis=None))
    print(json.dumps(report))
""")


def test_the_ssd_loss_under_mirrored_strategy_equals_the_single_device_loss():
  """Two logical CPUs, a global batch split unevenly (one replica's images have 17 times the other's positive
  default boxes): each replica's share is its images' loss over the positives of the whole batch (summed
  across replicas), so the shares add up to the single-device loss. Normalising by each replica's own
  positives would give a very different sum."""
  result = subprocess.run([sys.executable, "-c", MIRRORED_LOSS_SCRIPT], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["replicas"] == 2
  sums, positives = np.array(report["half_sums"]), np.array(report["half_positives"])
  assert positives[0] > 10 * positives[1] > 0  # Uneven enough for a per-replica normalisation to show...
  per_replica_normalised = (sums / positives).sum()
  assert abs(per_replica_normalised - report["single"]) > 0.5 * report["single"]  # ...by far.
  np.testing.assert_allclose(report["single"], sums.sum() / positives.sum(), rtol=1e-5)
  np.testing.assert_allclose(report["shares"], sums / positives.sum(), rtol=1e-5)
  np.testing.assert_allclose(report["mirrored"], report["single"], rtol=1e-5)
