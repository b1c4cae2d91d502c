"""A generated dataset on disk: its records, shards and sidecars, COCO annotations and preview.

Records (`tf.train.Example`, the TF Object Detection API's keys; `feature_spec` parses them):
  image/encoded (PNG), image/format, image/height, image/width, image/channels, image/source_id,
  synthesizer/params (the clamped affine parameters, 6 per object);
  classification: image/class/label, image/class/text, and with --write_masks image/mask/encoded (PNG of
  the pasted object's alpha);
  detection: image/object/bbox/{ymin,xmin,ymax,xmax} (normalised), image/object/class/label (0-based),
  image/object/class/text; with --write_masks image/object/mask (one PNG per object, 255 where it is
  visible: the TF Object Detection API's PNG instance masks); annotations.json in COCO's format (category
  id = class + 1; with --write_masks each object's visible mask as RLE `segmentation` and its `area`);
  with a target: target/hardness. An object in view below the synthesizer's --min_visible has no box here:
  the ignore boxes T's training loss leaves out (tasks.detection.compact_labels) are not recorded, as the
  synthesizer's signature returns only boxed objects and the TF Object Detection API's keys have none.

A shard (`composites-XXXXX-of-YYYYY.tfrecord`) is written aside and renamed into place after its sidecar
(`.json`: counts, annotations, recipe), so a shard is finished exactly when its `.tfrecord` exists.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import tensorflow as tf
from pycocotools import mask as coco_mask

from terse_tf import evaluation, files

RECORD_SUFFIX, SIDECAR_SUFFIX = ".tfrecord", ".json"
SHARD_NAME = re.compile(r"composites-(\d+)-of-(\d+)" + re.escape(RECORD_SUFFIX) + "$")
ANNOTATIONS, SUMMARY, PREVIEW = "annotations.json", "generation.json", "preview.png"


def shard_name(index: int, count: int) -> str:
  """The file name of shard `index` of `count` (SHARD_NAME matches it)."""
  return f"composites-{index:05d}-of-{count:05d}{RECORD_SUFFIX}"


def sidecar_path(record_path: str) -> str:
  """The sidecar beside a shard's records."""
  return record_path[:-len(RECORD_SUFFIX)] + SIDECAR_SUFFIX


@dataclasses.dataclass
class Batch:
  """One batch of composites and what their records need."""
  images: np.ndarray            # [B, H, W, C] float in [0, 1]
  params: np.ndarray            # [B, 6] or [B, N, 6]
  labels: dict[str, np.ndarray]  # {"label"} or {"boxes", "classes", "count"}
  masks: np.ndarray | None      # --write_masks: [B, H, W, 1] the pasted alpha, or [B, N, H, W, 1] each box's
                                # visible mask (detection)
  hardness: np.ndarray | None   # [B]


def feature_spec(detection: bool, masks: bool = False, hardness: bool = False
                 ) -> dict[str, tf.io.FixedLenFeature | tf.io.VarLenFeature]:
  """The `tf.io.parse_single_example` features of a dataset's records (the module docstring's keys); a
  detector's per-object ones and synthesizer/params (6 per object slot) are variable-length."""
  fixed_bytes, fixed_int = tf.io.FixedLenFeature([], tf.string), tf.io.FixedLenFeature([], tf.int64)
  spec: dict[str, tf.io.FixedLenFeature | tf.io.VarLenFeature] = {
      "image/encoded": fixed_bytes, "image/format": fixed_bytes, "image/source_id": fixed_bytes,
      "image/height": fixed_int, "image/width": fixed_int, "image/channels": fixed_int,
      "synthesizer/params": tf.io.VarLenFeature(tf.float32)}
  if detection:
    for corner in ("ymin", "xmin", "ymax", "xmax"):
      spec[f"image/object/bbox/{corner}"] = tf.io.VarLenFeature(tf.float32)
    spec["image/object/class/label"] = tf.io.VarLenFeature(tf.int64)
    spec["image/object/class/text"] = tf.io.VarLenFeature(tf.string)
    if masks:
      spec["image/object/mask"] = tf.io.VarLenFeature(tf.string)
  else:
    spec.update({"image/class/label": fixed_int, "image/class/text": fixed_bytes})
    if masks:
      spec["image/mask/encoded"] = fixed_bytes
  if hardness:
    spec["target/hardness"] = tf.io.FixedLenFeature([], tf.float32)
  return spec


@tf.function(input_signature=[tf.TensorSpec([None, None, None, None], tf.float32)])
def _pngs(images: tf.Tensor) -> tf.Tensor:
  """PNG bytes [B] of float images [B, H, W, C] in [0, 1]: one graph call per batch instead of one eager
  op per image (which dominated encoding at 40x40)."""
  pixels = tf.cast(tf.round(tf.clip_by_value(images, 0, 1) * 255), tf.uint8)
  # zlib level 1: 3x faster than the default 6 at 300x300, for files about a fifth larger.
  return tf.map_fn(lambda image: tf.io.encode_png(image, compression=1), pixels, fn_output_signature=tf.string,
                   parallel_iterations=16)


_VALUE_LISTS = {"bytes": "bytes_list", "float": "float_list", "int": "int64_list"}


def _put(features, key: str, values, kind: str) -> None:
  """Appends `values` (bytes, or numbers as a list or an array) to the feature `key` of an Example's
  feature map, in place: twice as fast per record as building each Feature and copying it in."""
  if isinstance(values, np.ndarray):
    values = values.tolist()
  getattr(features[key], _VALUE_LISTS[kind]).value.extend(values)


class RecordEncoder:
  """Batches of composites -> serialised records and their sidecar annotations. Thread-safe: the generator
  encodes batch k on worker threads while the synthesizer composites batch k + 1."""

  def __init__(self, class_names: list[str], detection: bool):
    self.class_names, self.detection = class_names, detection

  def encode(self, batch: Batch, rows: np.ndarray, first: int, shard: int) -> list[tuple[bytes, dict]]:
    """(record, annotation) of composites `rows` of `batch`, the first of them record `first` of `shard`."""
    if not len(rows):
      return []
    pngs = _pngs(tf.constant(batch.images[rows])).numpy()
    masks = [None] * len(rows)
    if batch.masks is not None and self.detection:  # Binary, as boxes are of mask > 0.5.
      slots = batch.masks.shape[1]
      binary = (batch.masks[rows] > 0.5).astype(np.float32).reshape(-1, *batch.masks.shape[2:])
      masks = _pngs(tf.constant(binary)).numpy().reshape(len(rows), slots)
    elif batch.masks is not None:
      masks = _pngs(tf.constant(batch.masks[rows])).numpy()
    return [self.example(batch, i, f"{shard:05d}-{first + n:06d}", png, mask)
            for n, (i, png, mask) in enumerate(zip(rows, pngs, masks))]

  def example(self, batch: Batch, i: int, source_id: str, png: bytes, mask_pngs: bytes | np.ndarray | None
              ) -> tuple[bytes, dict]:
    """(serialised tf.train.Example, its annotation for the sidecar) of composite `i` of `batch`, whose
    image (and masks: one, or one per object slot) are already encoded."""
    height, width, channels = batch.images[i].shape
    example = tf.train.Example()
    features = example.features.feature
    _put(features, "image/encoded", [png], "bytes")
    _put(features, "image/format", [b"png"], "bytes")
    _put(features, "image/height", [height], "int")
    _put(features, "image/width", [width], "int")
    _put(features, "image/channels", [channels], "int")
    _put(features, "image/source_id", [source_id.encode()], "bytes")
    _put(features, "synthesizer/params", batch.params[i].reshape(-1), "float")
    annotation: dict = {"source_id": source_id}
    if self.detection:
      count = int(batch.labels["count"][i])
      boxes, classes = batch.labels["boxes"][i, :count], batch.labels["classes"][i, :count]
      for k, name in enumerate(("ymin", "xmin", "ymax", "xmax")):
        _put(features, f"image/object/bbox/{name}", boxes[:, k], "float")
      _put(features, "image/object/class/label", classes, "int")
      _put(features, "image/object/class/text", [self.class_names[c].encode() for c in classes], "bytes")
      annotation.update(boxes=boxes.tolist(), classes=classes.tolist())
      if mask_pngs is not None:
        _put(features, "image/object/mask", list(mask_pngs[:count]), "bytes")
        visible = np.asfortranarray(np.moveaxis(batch.masks[i, :count, ..., 0] > 0.5, 0, -1).astype(np.uint8))
        annotation["segmentation"] = [{"size": rle["size"], "counts": rle["counts"].decode("ascii")}
                                      for rle in coco_mask.encode(visible)]
    else:
      label = int(batch.labels["label"][i])
      _put(features, "image/class/label", [label], "int")
      _put(features, "image/class/text", [self.class_names[label].encode()], "bytes")
      annotation["label"] = label
      if mask_pngs is not None:
        _put(features, "image/mask/encoded", [mask_pngs], "bytes")
    if batch.hardness is not None:
      _put(features, "target/hardness", [float(batch.hardness[i])], "float")
      annotation["hardness"] = float(batch.hardness[i])
    return example.SerializeToString(deterministic=True), annotation  # Map order fixed: same bytes per run.


class ShardWriter:
  """Writes one shard: its records to `<path>.writing`, then (`finish`) its sidecar, then the records renamed
  to `path`. A shard cut short leaves only the staging file, which the next writer of it overwrites."""

  def __init__(self, path: str):
    self.path, self._staging = path, path + ".writing"
    self.annotations: list[dict] = []
    self._writer = tf.io.TFRecordWriter(self._staging)

  def __enter__(self) -> ShardWriter:
    return self

  def __exit__(self, *exception) -> None:
    self._writer.close()

  def write(self, encoded: list[tuple[bytes, dict]]) -> None:
    """Appends RecordEncoder.encode's records, keeping their annotations for the sidecar."""
    for record, annotation in encoded:
      self._writer.write(record)
      self.annotations.append(annotation)

  def finish(self, shard: int, drawn: int, recipe: dict) -> dict:
    """Writes the sidecar and moves the records into place; returns the sidecar. `drawn`: the composites
    made for the shard (more than its records with --hard_only)."""
    self._writer.close()
    sidecar = {"shard": shard, "records": len(self.annotations), "drawn": drawn, "recipe": recipe,
               "annotations": self.annotations}
    files.write_json(sidecar_path(self.path), sidecar)
    os.replace(self._staging, self.path)
    return sidecar


def write_coco(path: str, shards: list[tuple[str, dict]], image_hw: tuple[int, int], class_names: list[str],
               masks: bool) -> None:
  """annotations.json at `path` from the (shard file name, sidecar) of every shard, in order: every composite
  as a COCO image (file_name = <shard file>:<record index>); with `masks` each object's RLE mask and area."""
  truth, names = [], []
  for shard_file, sidecar in shards:
    for index, annotation in enumerate(sidecar["annotations"]):
      truth.append(evaluation.ImageBoxes(np.array(annotation["boxes"], np.float32).reshape(-1, 4),
                                         np.array(annotation["classes"], np.int64)))
      names.append(f"{shard_file}:{index}")
  dataset, _ = evaluation.to_coco(truth, [], image_hw, class_names)
  for image, name in zip(dataset["images"], names):
    image["file_name"] = name
  if masks:  # to_coco lists the objects in the sidecars' order.
    segmentations = [rle for _, sidecar in shards for annotation in sidecar["annotations"]
                     for rle in annotation["segmentation"]]
    for annotation, rle in zip(dataset["annotations"], segmentations, strict=True):
      annotation["segmentation"] = rle
      annotation["area"] = float(coco_mask.area({"size": rle["size"], "counts": rle["counts"].encode()}))
  files.write_json(path, dataset)


def write_preview(path: str, records_path: str, count: int = 16) -> None:
  """A PNG grid at `path` of the first `count` composites of the shard `records_path`, with their boxes, read
  back from the records as a reader of the dataset gets them."""
  from terse_tf.tasks.base import image_grid  # The grid helper only; no task is built.
  images, boxes = [], []
  for record in tf.data.TFRecordDataset(records_path).take(count):
    example = tf.train.Example.FromString(record.numpy())
    features = example.features.feature
    image = tf.io.decode_png(features["image/encoded"].bytes_list.value[0])
    images.append(tf.image.convert_image_dtype(image, tf.float32))
    corners = [features[f"image/object/bbox/{k}"].float_list.value for k in ("ymin", "xmin", "ymax", "xmax")]
    boxes.append(np.stack(corners, axis=-1).reshape(-1, 4) if corners[0] else np.zeros([0, 4], np.float32))
  grid_images = tf.stack(images)
  if grid_images.shape[-1] == 1:
    grid_images = tf.image.grayscale_to_rgb(grid_images)
  width = max(1, max(len(b) for b in boxes))
  padded = np.stack([np.pad(b, [[0, width - len(b)], [0, 0]]) for b in boxes]).astype(np.float32)
  drawn = tf.image.draw_bounding_boxes(grid_images, padded, tf.constant([[1.0, 0.0, 0.0]]))
  png = _pngs(image_grid(drawn)).numpy()[0]
  files.atomic_write(path, lambda f: f.write(png))
