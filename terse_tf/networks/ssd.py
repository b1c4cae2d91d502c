"""Target T for detection: SSD (Liu et al. 2016), the paper's detector (§4.2, A.2), in Keras 3.

Two backbones behind one builder:
  "vgg16": SSD300 as in the paper: VGG16's convolutions (`keras.applications.VGG16`, weights by argument:
      None offline, "imagenet" or a local file) with pool5 at stride 1, fc6/fc7 as a dilated 3x3 and a 1x1
      convolution, and SSD's extra layers, predicting from feature maps of 37, 18, 9, 5, 3 and 1 cells at
      300 px. (The original Caffe SSD300 rounds pool3's output up and gets 38, 19, 10; Keras's VGG16 pools
      with floor, as PyTorch's does without ceil_mode, so the default boxes are laid out for 37, 18, 9.)
  "compact": a small conv backbone (feature maps at 1/4, 1/8, 1/16 and 1/32 of the input; the 1/4 map gives
      objects a tenth of the image wide a default box at IoU >= 0.5, which a stride of 1/8 missed for ~20% of
      photo_digits' test boxes) that trains on 2 CPU cores in minutes.
Each prediction map gets a 3x3 convolution to (classes + background) logits and 4 box offsets per default
box (`boxes.DefaultBoxSpec`). The model returns {"class_logits": [B, A, C+1], "box_regression": [B, A, 4]};
`detect` turns those into padded, non-max-suppressed detections.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

from terse_tf import boxes
from terse_tf.networks import vgg16

BACKBONES = ("vgg16", "compact")


def _vgg16_features(images: keras.KerasTensor, weights: str | None) -> list[keras.KerasTensor]:
  vgg = vgg16.vgg16(weights, input_tensor=images)
  conv4_3 = vgg.get_layer("block4_conv3").output                       # 37x37 at 300 px
  x = layers.MaxPooling2D(3, strides=1, padding="same", name="pool5")(vgg.get_layer("block5_conv3").output)
  x = layers.Conv2D(1024, 3, dilation_rate=6, padding="same", activation="relu", name="fc6")(x)
  fc7 = layers.Conv2D(1024, 1, activation="relu", name="fc7")(x)       # 18x18
  # conv4_3's activations are an order of magnitude larger than the others' (SSD's L2 normalisation layer
  # addresses the same); a BatchNorm keeps its head's inputs on the same scale as the rest.
  features = [layers.BatchNormalization(name="conv4_3_norm")(conv4_3), fc7]
  x = fc7
  for name, filters, stride, padding in (("conv8", 512, 2, "same"), ("conv9", 256, 2, "same"),
                                         ("conv10", 256, 1, "valid"), ("conv11", 256, 1, "valid")):
    x = layers.Conv2D(filters // 2, 1, activation="relu", name=f"{name}_1")(x)
    x = layers.Conv2D(filters, 3, strides=stride, padding=padding, activation="relu", name=f"{name}_2")(x)
    features.append(x)                                                 # 9, 5, 3, 1
  return features


def _compact_features(images: keras.KerasTensor) -> list[keras.KerasTensor]:
  x = images
  features = []
  for i, filters in enumerate((16, 32, 64, 128, 128)):
    x = layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False, name=f"block{i + 1}_conv")(x)
    # Momentum 0.9, not Keras's 0.99: this backbone is for runs of a few hundred to a few thousand steps,
    # and with 0.99 its inference-mode statistics lagged the weights for ~400 steps (tests/test_ssd.py).
    x = layers.BatchNormalization(momentum=0.9, synchronized=True, name=f"block{i + 1}_norm")(x)
    x = layers.ReLU(name=f"block{i + 1}_relu")(x)
    if i >= 1:  # Strides 4, 8, 16 and 32.
      x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"block{i + 1}_mix")(x)
      features.append(x)
  return features


def feature_sizes(backbone: str, image_size: int) -> tuple[int, ...]:
  """The prediction maps' sizes for a square input of `image_size` pixels."""
  model = keras.Model(*_backbone_io(backbone, image_size, weights=None))
  return tuple(int(output.shape[1]) for output in model.outputs)


def _backbone_io(backbone: str, image_size: int, weights: str | None):
  images = keras.Input((image_size, image_size, 3), name="images")
  if backbone == "vgg16":
    return images, _vgg16_features(images, weights)
  if backbone == "compact":
    return images, _compact_features(images)
  raise ValueError(f"SSD backbone must be one of {BACKBONES}, got {backbone!r}")


def build_ssd(backbone: str, image_size: int, num_classes: int, spec: boxes.DefaultBoxSpec,
              weights: str | None = None) -> keras.Model:
  """SSD over `spec`'s default boxes, whose feature_sizes must be the backbone's at `image_size`.

  Inputs: images [B, image_size, image_size, 3] in [0, 1] (VGG16's own preprocessing is applied inside).
  """
  images, features = _backbone_io(backbone, image_size, weights)
  sizes = tuple(int(f.shape[1]) for f in features)
  if sizes != tuple(spec.feature_sizes):
    raise ValueError(f"the {backbone} backbone at {image_size} px predicts from feature maps {sizes}; the "
                     f"default boxes are laid out for {tuple(spec.feature_sizes)}")
  per_cell = spec.boxes_per_cell()
  logits, regressions = [], []
  for k, feature in enumerate(features):
    logits.append(layers.Reshape((-1, num_classes + 1), name=f"class_logits_{k}")(
        layers.Conv2D(per_cell * (num_classes + 1), 3, padding="same", name=f"class_head_{k}")(feature)))
    regressions.append(layers.Reshape((-1, 4), name=f"box_regression_{k}")(
        layers.Conv2D(per_cell * 4, 3, padding="same", name=f"box_head_{k}")(feature)))
  outputs = {"class_logits": layers.Concatenate(axis=1, name="class_logits")(logits),
             "box_regression": layers.Concatenate(axis=1, name="box_regression")(regressions)}
  model = keras.Model(images, outputs, name=f"ssd_{backbone}")
  if backbone == "vgg16":  # VGG16 expects caffe-style BGR minus the ImageNet mean, on 0..255.
    inputs = keras.Input((image_size, image_size, 3), name="images")
    preprocessed = keras.applications.vgg16.preprocess_input(inputs * 255.0)
    model = keras.Model(inputs, model(preprocessed), name="ssd300_vgg16")
  return model


def detect(outputs: dict[str, tf.Tensor], anchors: tf.Tensor, max_detections: int = 100,
           score_threshold: float = 0.01, iou_threshold: float = 0.45) -> boxes.Detections:
  """Decoded, per-class non-max-suppressed detections from SSD's outputs and its default boxes [A, 4]."""
  scores = tf.nn.softmax(outputs["class_logits"])[..., 1:]  # Background dropped: [B, A, C].
  decoded = tf.clip_by_value(boxes.decode(outputs["box_regression"], anchors), 0.0, 1.0)
  result = tf.image.combined_non_max_suppression(
      decoded[:, :, None, :], scores, max_output_size_per_class=max_detections, max_total_size=max_detections,
      iou_threshold=iou_threshold, score_threshold=score_threshold, clip_boxes=False)
  return boxes.Detections(boxes=result.nmsed_boxes, scores=result.nmsed_scores, classes=result.nmsed_classes,
                          num_detections=result.valid_detections)
