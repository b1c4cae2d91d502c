"""Target T for classification: the paper's small CNN (Fig. 1 / Fig. 7) and the ITN-style Swish CNN (Table 1).

Both return logits. The layer widths were stripped from our copy of the paper; the small CNN follows its
description (two convolutions with ReLU and dropout, then two fully connected layers), at the widths of the
PyTorch MNIST example it describes (10 and 20 channels, 50 hidden units). The Swish CNN follows the
introspective-network classifiers of [18, 55]: four 5x5 convolutions of 64 channels with BatchNorm and
Swish, then one fully connected layer. Its BatchNorm statistics are synchronised across replicas, so a
step under MirroredStrategy equals the single-device step on the same global batch.
"""

from __future__ import annotations

import keras
from keras import layers

ARCHITECTURES = ("paper", "itn_swish")


def build_paper_classifier(image_shape: tuple[int, int, int], num_classes: int,
                           dropout_rate: float = 0.5) -> keras.Model:
  return keras.Sequential([
      keras.Input(image_shape, name="images"),
      layers.Conv2D(10, 5, name="conv1"), layers.MaxPooling2D(), layers.ReLU(),
      layers.Conv2D(20, 5, name="conv2"), layers.SpatialDropout2D(dropout_rate), layers.MaxPooling2D(),
      layers.ReLU(),
      layers.Flatten(),
      layers.Dense(50, activation="relu", name="fc1"), layers.Dropout(dropout_rate),
      layers.Dense(num_classes, name="logits"),
  ], name="paper_classifier")


def build_itn_swish_classifier(image_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
  model = keras.Sequential([keras.Input(image_shape, name="images")], name="itn_swish_classifier")
  for i, strides in enumerate((1, 2, 2, 2)):
    model.add(layers.Conv2D(64, 5, strides=strides, padding="same", use_bias=False, name=f"conv{i + 1}"))
    model.add(layers.BatchNormalization(synchronized=True))
    model.add(layers.Activation("swish"))
  model.add(layers.Flatten())
  model.add(layers.Dense(num_classes, name="logits"))
  return model


def build_classifier(architecture: str, image_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
  if architecture == "paper":
    return build_paper_classifier(image_shape, num_classes)
  if architecture == "itn_swish":
    return build_itn_swish_classifier(image_shape, num_classes)
  raise ValueError(f"target architecture must be one of {ARCHITECTURES}, got {architecture!r}")
