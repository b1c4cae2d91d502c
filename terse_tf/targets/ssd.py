"""An SSD detector as target T (paper §3.2, §4.2, A.2).

Loss: SSD's multibox loss (losses.ssd_multibox_loss) over IoU-0.5 matches (boxes.match), normalised by the
positive default boxes of the whole global batch (summed over replicas first, so the loss does not depend on
how the batch is split); default boxes on an ignore box (an object mostly out of view) are left out of it.
Hardness (A.2): T's confidence for each pasted object's class at its box, the highest class probability
among the default boxes matched to the object; a composite is as hard as its hardest object, and counts
towards that object's class quota.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from terse_tf import boxes as boxes_lib
from terse_tf import losses
from terse_tf.networks import ssd
from terse_tf.targets.base import DetectorTarget, Judgement, Labels, SinglePassTarget

# Matching threshold of SSD's training, reused to find the default boxes that "see" an object.
MATCH_IOU = 0.5


class SSDTarget(SinglePassTarget, DetectorTarget):
  """A single-shot detector over default boxes (anchors). Labels: {"boxes": [B, G, 4], "classes": [B, G],
  "count": [B]} and optionally "ignore_boxes" [B, I, 4] (the loss only; hardness does not read them, and the
  exported `hardness` signature does not take them).

  Any Keras model can be T here (ours from `build`, or a user's): images [B, H, W, 3] floats in [0, 1] ->
  {"class_logits": [B, A, C + 1] (index 0 the background), "box_regression": [B, A, 4] SSD's offsets
  (boxes.encode) from the A `anchors` [A, 4] in centre form (cy, cx, h, w), normalised}."""

  hardness_range = (0.0, 1.0)  # a probability
  # T gives the object's class under even odds at its box. A.2 picks composites below a probability whose
  # value our copy of the paper lost; 0.5 is our choice.
  default_hard_threshold = 0.5

  def __init__(self, model: keras.Model, anchors: tf.Tensor, max_detections: int = 100):
    self.model = model
    self.anchors = tf.convert_to_tensor(anchors, tf.float32)
    self.max_detections = max_detections

  @classmethod
  def build(cls, backbone: str, image_size: int, num_classes: int, spec: boxes_lib.DefaultBoxSpec,
            weights: str | None = None) -> SSDTarget:
    """One of terse_tf's SSDs (networks/ssd.py) over `spec`'s default boxes."""
    return cls(ssd.build_ssd(backbone, image_size, num_classes, spec, weights=weights),
               boxes_lib.default_boxes(spec))

  def _matches(self, labels: Labels) -> boxes_lib.Matches:
    boxes = tf.cast(labels["boxes"], tf.float32)
    # A missing key means no ignore boxes (labels written before the key existed, or by hand).
    ignore_boxes = (tf.cast(labels["ignore_boxes"], tf.float32) if "ignore_boxes" in labels
                    else tf.zeros([tf.shape(boxes)[0], 0, 4]))
    # map_fn, not vectorized_map: matching has data-dependent shapes (the real boxes of each image).
    return tf.map_fn(
        lambda x: boxes_lib.match(x[0], x[1], x[2], self.anchors, MATCH_IOU, ignore_boxes=x[3]),
        (boxes, tf.cast(labels["classes"], tf.int32), tf.cast(labels["count"], tf.int32), ignore_boxes),
        fn_output_signature=boxes_lib.Matches(classes=tf.TensorSpec([None], tf.int32),
                                              boxes=tf.TensorSpec([None, 4], tf.float32)))

  def replica_loss(self, outputs: dict[str, tf.Tensor], labels: Labels) -> tf.Tensor:
    matches = self._matches(labels)
    multibox = losses.ssd_multibox_loss(outputs["class_logits"], outputs["box_regression"], matches.classes,
                                        matches.boxes)
    positives = tf.reduce_sum(multibox.positives)
    context = tf.distribute.get_replica_context()
    if context is not None:
      positives = context.all_reduce(tf.distribute.ReduceOp.SUM, positives)
    return tf.reduce_sum(multibox.per_image) / tf.maximum(positives, 1.0)

  def object_confidence(self, outputs: dict[str, tf.Tensor], labels: Labels) -> tf.Tensor:
    """[B, G] T's probability of each object's class at its box (1 for padding rows)."""
    probabilities = tf.nn.softmax(outputs["class_logits"])  # [B, A, C+1]
    corners = boxes_lib.centres_to_corners(self.anchors)
    classes = tf.cast(labels["classes"], tf.int32)
    real = tf.range(tf.shape(classes)[1])[None, :] < tf.cast(labels["count"], tf.int32)[:, None]

    def per_image(x):
      image_probabilities, image_boxes, image_classes = x
      overlaps = boxes_lib.iou(corners, image_boxes)                       # [A, G]
      best = tf.one_hot(tf.argmax(overlaps, axis=0), tf.shape(overlaps)[0], axis=0) > 0
      sees = (overlaps > MATCH_IOU) | best                                 # Each object keeps its best box.
      class_probability = tf.gather(image_probabilities, image_classes + 1, axis=1)  # [A, G]
      return tf.reduce_max(tf.where(sees, class_probability, 0.0), axis=0)

    confidence = tf.map_fn(per_image, (probabilities, tf.cast(labels["boxes"], tf.float32), classes),
                           fn_output_signature=tf.float32)
    return tf.where(real, confidence, 1.0)

  def judge(self, outputs: dict[str, tf.Tensor], labels: Labels) -> Judgement:
    """A composite is as hard as its hardest object and counts under that object's class."""
    confidence = self.object_confidence(outputs, labels)
    hardest = tf.argmin(confidence, axis=1)
    return Judgement(hardness=tf.reduce_min(confidence, axis=1),
                     quota_class=tf.cast(tf.gather(labels["classes"], hardest, batch_dims=1), tf.int64))

  def detect(self, images: tf.Tensor) -> boxes_lib.Detections:
    return ssd.detect(self.model(images, training=False), self.anchors, max_detections=self.max_detections)
