"""Dataset generation: an exported synthesizer -> a synthetic dataset of its composites, as sharded TFRecords
(plus COCO-format annotations for detection) that any model can train on.

A shard is a pure function of (seed, shard index): its cut-outs, backgrounds and the synthesizer's dropout
and noise (the SavedModel's `generate` signature takes the seed) are all drawn from that key. So a killed run
resumes by redoing only the shards it had not finished, and the result equals an uninterrupted run's. Each
shard is written aside and renamed into place, its sidecar (`.json`: counts, boxes, yield) first, its
records last, so a shard is finished exactly when its `.tfrecord` exists. A resume keeps a finished shard
only when its sidecar's recipe is this run's: the models and folders are compared by content (a synthesizer
retrained into the same path is another one; `dir/` and `./dir` are the same folder), and an --out that holds
a shard set of another size (another --num or --shard_size) is refused, since both sets would be globbed.

While the synthesizer composites batch k + 1, worker threads encode batch k as PNGs and serialise its
examples, so the generator's rate stays close to the compositor's (bench/generate.py).

Records (`tf.train.Example`, the TF Object Detection API's keys):
  image/encoded (PNG), image/format, image/height, image/width, image/channels, image/source_id,
  synthesizer/params (the clamped affine parameters, 6 per object);
  classification: image/class/label, image/class/text, and with --write_masks image/mask/encoded (PNG of
  the pasted object's alpha);
  detection: image/object/bbox/{ymin,xmin,ymax,xmax} (normalised), image/object/class/label (0-based),
  image/object/class/text; with --write_masks image/object/mask (one PNG per object, 255 where it is
  visible: the TF Object Detection API's PNG instance masks); annotations.json in COCO's format (category
  id = class + 1; with --write_masks each object's visible mask as RLE `segmentation` and its `area`);
  with a target: target/hardness.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import math
import os
import re
import time
from typing import Iterator

import numpy as np
import tensorflow as tf
from absl import logging
from pycocotools import mask as coco_mask

from terse_tf import evaluation, export, files
from terse_tf.data import cutouts as cutouts_lib
from terse_tf.data import photos as photos_lib
from terse_tf.errors import ConfigError, DataError
from terse_tf.targets.classification import ClassifierTarget
from terse_tf.targets.ssd import SSDTarget

RECORD_SUFFIX, SIDECAR_SUFFIX = ".tfrecord", ".json"
SHARD_NAME = re.compile(r"composites-(\d+)-of-(\d+)" + re.escape(RECORD_SUFFIX) + "$")
# --backgrounds value for the photos bundled with scikit-image and matplotlib (data/photos.py's train split).
BUNDLED_PHOTOS = "bundled"
ANNOTATIONS, SUMMARY, PREVIEW = "annotations.json", "generation.json", "preview.png"
# A --hard_only shard gives up after this many batches per batch it needs: the target finds (almost) nothing
# hard, and the run says so instead of spinning.
MAX_BATCHES_PER_NEEDED_BATCH = 50


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
  synthesizer: str               # Exported synthesizer: a SavedModel, or a TF Serving model directory.
  foregrounds: str               # Folder of cut-outs (data/cutouts.py's layout), or "bundled": MNIST digits.
  out: str
  num: int
  backgrounds: str = ""          # Folder of photos to crop backgrounds from; "bundled" the sample photos
                                 # data/photos.py finds; "" black (as affNIST).
  shard_size: int = 1000
  batch_size: int = 64
  seed: int = 0
  signature: str = export.GENERATE
  target: str = ""               # Exported target; its `hardness` is recorded, and --hard_only filters on it.
  hard_only: bool = False
  # Hard below this hardness; None: the target's own default, as the trainer's (0.0 on a classifier's
  # p_gt - max_other in [-1, 1], 0.5 on a detector's confidence in [0, 1]).
  hard_threshold: float | None = None
  max_objects: int = 0           # Detection: objects per image drawn from 1..max_objects (0: every slot).
  write_masks: bool = False
  # Run the synthesizer's signature compiled by XLA: 1.8x the composites per second at 300x300 on CPU
  # (BENCHMARKS.md, dataset generation: 45 a second against 25.6). XLA draws other random numbers for the
  # same seed than the uncompiled graph does (both are deterministic), so a dataset made with it differs
  # from one made without, and a resume keeps to the setting the shards were made with.
  jit_compile: bool = True
  encode_threads: int = 2

  def __post_init__(self):
    for name in ("synthesizer", "foregrounds", "out"):
      if not getattr(self, name):
        raise ConfigError(f"--{name} is required")
    for name in ("num", "shard_size", "batch_size"):
      if getattr(self, name) < 1:
        raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")
    if self.hard_only and not self.target:
      raise ConfigError("--hard_only needs --target: the exported target whose hardness picks the composites")
    if self.hard_threshold is not None and not self.target:
      raise ConfigError("--hard_threshold needs --target: the exported target whose hardness it compares")
    if self.max_objects < 0:
      raise ConfigError(f"--max_objects must be >= 0, got {self.max_objects}")

  @property
  def num_shards(self) -> int:
    return math.ceil(self.num / self.shard_size)

  def shard_length(self, index: int) -> int:
    return min(self.shard_size, self.num - index * self.shard_size)

  def shard_path(self, index: int) -> str:
    return os.path.join(self.out, f"composites-{index:05d}-of-{self.num_shards:05d}{RECORD_SUFFIX}")


class Synthesizer:
  """One signature of an exported synthesizer, and what its inputs say about the task."""

  def __init__(self, path: str, signature: str, jit_compile: bool = False):
    loaded = export.load(path, "--synthesizer")
    self.path = os.path.realpath(export.saved_model_path(path))
    if export.HARDNESS in loaded.signatures:  # What a run's export/target holds, not export/synthesizer.
      raise ConfigError(f"--synthesizer={path}: this is an exported target (it has a `hardness` signature); "
                        "expected a run's export/synthesizer (give a target as --target)")
    if signature not in loaded.signatures:
      raise ConfigError(f"--signature={signature}: {self.path} has only {sorted(loaded.signatures)}")
    self._loaded, self.function = loaded, loaded.signatures[signature]
    self.inputs = self.function.structured_input_signature[1]
    self._call = (tf.function(lambda **inputs: self.function(**inputs), jit_compile=True) if jit_compile
                  else self.function)
    self.seeded = "seed" in self.inputs
    self.detection = "classes" in self.inputs
    self.foreground_shape = tuple(self.inputs["foreground"].shape[1:])  # ([N,] h, w, C + 1)
    self.background_shape = tuple(self.inputs["background"].shape[1:])  # (H, W, C)
    self.slots = self.foreground_shape[0] if self.detection else 1
    self.class_names = export.class_names(self.path)  # None: an export that does not list them.

  def __call__(self, foreground: np.ndarray, background: np.ndarray, classes: np.ndarray | None,
               seed: np.ndarray) -> dict[str, np.ndarray]:
    inputs = {"foreground": tf.constant(foreground), "background": tf.constant(background)}
    if self.detection:
      inputs["classes"] = tf.constant(classes)
    if self.seeded:
      inputs["seed"] = tf.constant(seed, tf.int32)
    return {name: value.numpy() for name, value in self._call(**inputs).items()}


class Target:
  """The `hardness` signature of an exported target, and what the export says about the target."""

  def __init__(self, path: str):
    loaded = export.load(path, "--target")
    self.flag = f"--target={path}"
    if export.HARDNESS not in loaded.signatures:
      raise DataError(f"{self.flag}: no `{export.HARDNESS}` signature (exported before terse_tf had one?)")
    self._loaded, self.function = loaded, loaded.signatures[export.HARDNESS]
    self.path = os.path.realpath(export.saved_model_path(path))
    inputs = self.function.structured_input_signature[1]
    # The hardness signature's labels tell the kind: a detector's boxes, or a classifier's label.
    self.detector = "boxes" in inputs
    self.kind = SSDTarget if self.detector else ClassifierTarget
    self.image_shape = tuple(inputs["images"].shape[1:])
    names = export.class_names(self.path)
    if names is not None:
      self.num_classes: int | None = len(names)
    elif self.detector:  # An export that does not list its classes: a detector's outputs do not tell.
      self.num_classes = None
    else:
      self.num_classes = loaded.signatures[export.SERVING_DEFAULT].structured_outputs["probabilities"].shape[-1]

  def describe(self) -> str:
    return ("a detector (hardness: its confidence at the object)" if self.detector
            else "a classifier (hardness: p_gt - max_other)")

  def hardness(self, images: np.ndarray, labels: dict[str, np.ndarray]) -> np.ndarray:
    return self.function(images=tf.constant(images), **{k: tf.constant(v) for k, v in labels.items()}
                         )["hardness"].numpy()


@dataclasses.dataclass
class Batch:
  """One batch of composites and what their records need."""
  images: np.ndarray            # [B, H, W, C] float in [0, 1]
  params: np.ndarray            # [B, 6] or [B, N, 6]
  labels: dict[str, np.ndarray]  # {"label"} or {"boxes", "classes", "count"}
  masks: np.ndarray | None      # --write_masks: [B, H, W, 1] the pasted alpha, or [B, N, H, W, 1] each box's
                                # visible mask (detection)
  hardness: np.ndarray | None   # [B]


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


class Generator:
  """Writes `config.num` composites of the synthesizer under `config.out` (module docstring)."""

  def __init__(self, config: GenerateConfig):
    self.config = config
    self._check_out()  # Before loading anything: a refusal comes at once.
    self.synthesizer = Synthesizer(config.synthesizer, config.signature, config.jit_compile)
    if not self.synthesizer.seeded:
      logging.warning("--signature=%s takes no seed: its dropout or noise differs from run to run, so the "
                      "dataset is not reproducible and a resumed shard differs from the lost one",
                      config.signature)
    self.target = Target(config.target) if config.target else None
    self.hard_threshold = self._check_target() if self.target else None
    cutout_shape = self.synthesizer.foreground_shape[-3:]
    if config.foregrounds == cutouts_lib.BUNDLED:
      # Without a list of the synthesizer's classes, the ten digits (as affNIST's).
      names = self.synthesizer.class_names or [str(digit) for digit in range(10)]
      loaded = cutouts_lib.bundled_digits(cutout_shape[:2], names, coloured=cutout_shape[-1] == 4)
    else:
      loaded = cutouts_lib.load_cutouts(config.foregrounds, cutout_shape[:2])
    self.cutouts, self.cutout_classes = loaded.with_channels(cutout_shape[-1]), loaded.classes
    self.class_names = loaded.class_names
    if self.target and self.target.num_classes is not None and len(self.class_names) > self.target.num_classes:
      raise ConfigError(f"--foregrounds={config.foregrounds} has {len(self.class_names)} classes "
                        f"({self.class_names}); {self.target.flag} tells {self.target.num_classes} apart: give "
                        "cut-outs of its classes, one sub-folder each in its class order")
    slots = self.synthesizer.slots
    if config.max_objects > slots:
      raise ConfigError(f"--max_objects={config.max_objects}: the synthesizer pastes at most {slots} objects")
    self.max_objects = config.max_objects or slots
    height, width, channels = self.synthesizer.background_shape
    if config.backgrounds == BUNDLED_PHOTOS:
      self.photos = photos_lib.load_photos("train", min_side=min(height, width))
    elif config.backgrounds:
      self.photos = photos_lib.read_photos(photos_lib.image_paths(config.backgrounds),
                                           f"--backgrounds={config.backgrounds}", min_side=min(height, width))
    else:
      self.photos = None
    self._recipe = self._make_recipe()
    # Two batches in flight: enough to overlap with the synthesizer, which takes the cores' threads.
    self.encoder = concurrent.futures.ThreadPoolExecutor(config.encode_threads)
    self.drawer = concurrent.futures.ThreadPoolExecutor(1)

  def _check_out(self) -> None:
    """--out must be a folder, and hold no shards of a dataset of another size: their names differ from this
    run's, so they would stay beside the new set (and be read with it) while annotations.json and
    generation.json describe the new one only."""
    out, config = self.config.out, self.config
    if os.path.exists(out) and not os.path.isdir(out):
      raise ConfigError(f"--out={out} is a file; give a folder (a new one, or one this command wrote to resume "
                        "it)")
    if not os.path.isdir(out):
      return
    other_sets: dict[int, str] = {}
    for name in sorted(os.listdir(out)):
      match = SHARD_NAME.match(name)
      if match and int(match.group(2)) != config.num_shards:
        other_sets.setdefault(int(match.group(2)), name)
    if not other_sets:
      return
    total, name = next(iter(other_sets.items()))
    try:  # Its sidecar names the --num and --shard_size that set was made with.
      with open(os.path.join(out, name[:-len(RECORD_SUFFIX)] + SIDECAR_SUFFIX)) as f:
        earlier = json.load(f)["recipe"]
      made_with = f"--num={earlier['num']} --shard_size={earlier['shard_size']}"
    except (OSError, ValueError, KeyError, TypeError):
      made_with = "another --num or --shard_size"
    raise ConfigError(
        f"--out={out} holds a dataset of {total} shards (composites-*-of-{total:05d}{RECORD_SUFFIX}, made with "
        f"{made_with}); --num={config.num} --shard_size={config.shard_size} make {config.num_shards}. Rerun with "
        "the --num and --shard_size it was made with, or write to a new --out; nothing was changed")

  def _check_target(self) -> float:
    """That the target judges what the synthesizer makes; its --hard_threshold."""
    target, synthesizer, config = self.target, self.synthesizer, self.config
    if target.detector != synthesizer.detection:
      makes = "detection scenes" if synthesizer.detection else "classification composites"
      raise ConfigError(f"{target.flag} is {target.describe()}, but --synthesizer={config.synthesizer} makes "
                        f"{makes}: give the target exported with this synthesizer (its run's export/target)")
    if target.image_shape != synthesizer.background_shape:
      raise ConfigError(f"{target.flag} takes {target.image_shape} images, but --synthesizer="
                        f"{config.synthesizer} makes {synthesizer.background_shape} composites: give the target "
                        "exported with this synthesizer (its run's export/target)")
    return target.kind.resolve_hard_threshold(config.hard_threshold, f"{target.flag}, {target.describe()}")

  # ------------------------------------------------------------------------------------ inputs
  def _backgrounds(self, count: int, rng: np.random.Generator) -> np.ndarray:
    if self.photos is None:
      return np.zeros([count, *self.synthesizer.background_shape], np.float32)
    return photos_lib.random_backgrounds(self.photos, count, self.synthesizer.background_shape, rng)

  def _inputs(self, count: int, rng: np.random.Generator):
    """(foreground, background, classes or None, labels) for `count` composites."""
    picks = rng.integers(len(self.cutouts), size=(count, self.synthesizer.slots))
    background = self._backgrounds(count, rng)
    if not self.synthesizer.detection:
      return self.cutouts[picks[:, 0]], background, None, {"label": self.cutout_classes[picks[:, 0]]}
    objects = rng.integers(1, self.max_objects + 1, size=count)
    filled = np.arange(self.synthesizer.slots)[None, :] < objects[:, None]
    classes = np.where(filled, self.cutout_classes[picks], -1).astype(np.int32)
    foreground = self.cutouts[picks] * filled[:, :, None, None, None]
    return foreground, background, classes, None

  def _draw(self, count: int, rng: np.random.Generator) -> tuple:
    """Everything random about a batch: its inputs and the synthesizer's seed."""
    return (*self._inputs(count, rng), rng.integers(2 ** 31 - 1, size=2))

  def _batch(self, draw: tuple) -> Batch:
    foreground, background, classes, labels, seed = draw
    outputs = self.synthesizer(foreground, background, classes, seed)
    if self.synthesizer.detection:
      labels = {"boxes": outputs["boxes"], "classes": outputs["classes"].astype(np.int32),
                "count": outputs["num_objects"].astype(np.int32)}
    hardness = self.target.hardness(outputs["composite"], labels) if self.target else None
    masks = outputs["masks" if self.synthesizer.detection else "warped_mask"] if self.config.write_masks else None
    return Batch(outputs["composite"], outputs["params"], labels, masks, hardness)

  # ------------------------------------------------------------------------------------ records
  def _example(self, batch: Batch, i: int, source_id: str, png: bytes, mask_pngs: bytes | np.ndarray | None
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
    if self.synthesizer.detection:
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

  def _encode(self, batch: Batch, rows: np.ndarray, first: int, shard: int) -> list[tuple[bytes, dict]]:
    if not len(rows):
      return []
    pngs = _pngs(tf.constant(batch.images[rows])).numpy()
    masks = [None] * len(rows)
    if batch.masks is not None and self.synthesizer.detection:  # Binary, as boxes are of mask > 0.5.
      slots = batch.masks.shape[1]
      binary = (batch.masks[rows] > 0.5).astype(np.float32).reshape(-1, *batch.masks.shape[2:])
      masks = _pngs(tf.constant(binary)).numpy().reshape(len(rows), slots)
    elif batch.masks is not None:
      masks = _pngs(tf.constant(batch.masks[rows])).numpy()
    return [self._example(batch, i, f"{shard:05d}-{first + n:06d}", png, mask)
            for n, (i, png, mask) in enumerate(zip(rows, pngs, masks))]

  # ------------------------------------------------------------------------------------ shards
  def _shard_batches(self, shard: int) -> Iterator[tuple[Batch, np.ndarray, int]]:
    """(batch, indices of its composites to keep, how many of it were looked at) until the shard is full;
    its seed fixes everything."""
    rng = np.random.default_rng([self.config.seed, shard])
    # The next batch's inputs (photo crops above all) are drawn while the synthesizer runs this one; one
    # thread draws them in order, so the shard stays a function of its seed.
    draw = lambda: self._draw(self.config.batch_size, rng)
    upcoming = self.drawer.submit(draw)
    needed, kept, batches = self.config.shard_length(shard), 0, 0
    limit = MAX_BATCHES_PER_NEEDED_BATCH * math.ceil(needed / self.config.batch_size)
    while kept < needed:
      if batches >= limit:
        raise DataError(f"--hard_only: after {batches} batches shard {shard} holds {kept} of {needed} hard "
                        f"composites; the target finds almost nothing hard below --hard_threshold="
                        f"{self.hard_threshold}. Raise the threshold or drop --hard_only.")
      inputs = upcoming.result()
      # Without --hard_only every composite is kept, so the batch that fills the shard needs no successor.
      if self.config.hard_only or kept + self.config.batch_size < needed:
        upcoming = self.drawer.submit(draw)
      batch = self._batch(inputs)
      batches += 1
      rows = np.arange(self.config.batch_size)
      if self.config.hard_only:
        rows = rows[batch.hardness < self.hard_threshold]
      full = len(rows) >= needed - kept
      rows = rows[:needed - kept]
      kept += len(rows)
      yield batch, rows, int(rows[-1]) + 1 if full else self.config.batch_size

  def _write_shard(self, shard: int, progress: "Progress") -> dict:
    path = self.config.shard_path(shard)
    staging = path + ".writing"
    annotations, drawn, queued = [], 0, 0
    pending: collections.deque = collections.deque()
    with tf.io.TFRecordWriter(staging) as writer:
      def drain(keep: int):
        while len(pending) > keep:
          for record, annotation in pending.popleft().result():
            writer.write(record)
            annotations.append(annotation)
      for batch, rows, looked_at in self._shard_batches(shard):
        drawn += looked_at
        pending.append(self.encoder.submit(self._encode, batch, rows, queued, shard))
        queued += len(rows)
        progress.add(len(rows), looked_at)
        drain(keep=2)  # Encoding overlaps the next batches' compositing.
      drain(keep=0)
    sidecar = {"shard": shard, "records": len(annotations), "drawn": drawn, "recipe": self.recipe(),
               "annotations": annotations}
    files.write_json(path[:-len(RECORD_SUFFIX)] + SIDECAR_SUFFIX, sidecar)
    os.replace(staging, path)
    return sidecar

  def _make_recipe(self) -> dict:
    """What a shard's contents depend on. The models and folders enter by their content, not their path."""
    config = self.config
    fields = ("num", "shard_size", "batch_size", "seed", "signature", "hard_only", "max_objects", "write_masks",
              "jit_compile")
    return {"synthesizer": export.digest(self.synthesizer.path),
            "target": export.digest(self.target.path) if self.target else "",
            "hard_threshold": self.hard_threshold,
            "foregrounds": (cutouts_lib.BUNDLED if config.foregrounds == cutouts_lib.BUNDLED else
                            files.content_digest(config.foregrounds, _files_under(config.foregrounds))),
            "backgrounds": (config.backgrounds if config.backgrounds in ("", BUNDLED_PHOTOS) else
                            files.content_digest(config.backgrounds, photos_lib.image_paths(config.backgrounds))),
            **{k: getattr(config, k) for k in fields}}

  def recipe(self) -> dict:
    """What a shard's contents depend on: a resumed run may keep a finished shard only if these agree."""
    return self._recipe

  def finished(self, shard: int) -> dict | None:
    """The sidecar of a finished shard, None for one still to write; a DataError for a shard made with
    other settings (mixing two recipes in one dataset would go unnoticed) or whose sidecar is lost."""
    path = self.config.shard_path(shard)
    if not os.path.exists(path):
      return None
    sidecar_path = path[:-len(RECORD_SUFFIX)] + SIDECAR_SUFFIX
    redo = f"delete {os.path.basename(path)} (and its sidecar) to have the shard written again"
    try:
      with open(sidecar_path) as f:
        sidecar = json.load(f)
    except FileNotFoundError:
      raise DataError(f"{sidecar_path}: missing, so the finished shard {os.path.basename(path)} has no "
                      f"annotations to resume with; {redo}") from None
    except (OSError, ValueError) as e:
      raise DataError(f"{sidecar_path}: unreadable ({e}); {redo}") from e
    if (not isinstance(sidecar, dict) or not {"records", "drawn", "annotations", "recipe"} <= set(sidecar) or
        not isinstance(sidecar["recipe"], dict) or set(sidecar["recipe"]) != set(self.recipe())):
      # A damaged or foreign file, not one with other settings (those are compared next).
      raise DataError(f"{sidecar_path}: not a shard's sidecar (records, drawn, annotations and a recipe of "
                      f"{', '.join(sorted(self.recipe()))}); {redo}")
    differences = _differences(sidecar.get("recipe"), self.recipe())
    if differences:
      raise DataError(f"--out={self.config.out}: {os.path.basename(path)} was written with other settings "
                      f"({'; '.join(differences)}); resume with those, or write to a new --out")
    return sidecar

  def run(self) -> dict:
    config = self.config
    try:
      os.makedirs(config.out, exist_ok=True)
    except OSError as e:
      raise DataError(f"--out={config.out}: cannot make this folder ({e})") from e
    # One generator writes a dataset at a time: two would write the same shards' staging files.
    lock = files.DirectoryLock(config.out)
    try:
      lock.acquire()
    except files.DirectoryInUseError as e:
      raise ConfigError(f"--out={config.out} is {e}, a generation still going: wait for it to end (or stop "
                        "it), or use another --out") from None
    try:
      return self._run()
    finally:
      self.encoder.shutdown()
      self.drawer.shutdown()
      lock.release()

  def _run(self) -> dict:
    config = self.config
    sidecars, todo = {}, []
    for shard in range(config.num_shards):
      done = self.finished(shard)
      if done is None:
        todo.append(shard)
      else:
        sidecars[shard] = done
    summary_path = os.path.join(config.out, SUMMARY)
    if not todo and os.path.exists(summary_path):
      logging.info("%s holds the whole dataset (%d shards): nothing to do", config.out, config.num_shards)
      with open(summary_path) as f:
        return json.load(f)
    if sidecars:
      logging.info("resuming: %d of %d shards already written", len(sidecars), config.num_shards)
    progress = Progress(sum(config.shard_length(s) for s in todo))
    start = time.perf_counter()
    try:
      for shard in todo:
        sidecars[shard] = self._write_shard(shard, progress)
    except (MemoryError, tf.errors.ResourceExhaustedError) as e:
      # numpy's MemoryError drawing a batch's inputs, TensorFlow's ResourceExhaustedError running S on it.
      raise ConfigError(f"--batch_size={config.batch_size}: out of memory compositing one batch "
                        f"({type(e).__name__}); lower --batch_size. Finished shards are kept") from e
    seconds = time.perf_counter() - start
    records = sum(s["records"] for s in sidecars.values())
    drawn = sum(s["drawn"] for s in sidecars.values())
    summary = {"num": records, "shards": config.num_shards, "drawn": drawn, "yield": records / max(drawn, 1),
               "seconds_this_run": round(seconds, 2), "written_this_run": progress.kept,
               "composites_per_second": round(progress.kept / seconds, 2) if seconds else None,
               "synthesizer": self.synthesizer.path, "class_names": self.class_names,
               "hard_threshold": self.hard_threshold,
               "detection": self.synthesizer.detection, "config": dataclasses.asdict(config)}
    if self.synthesizer.detection:
      summary["annotations"] = self._write_coco(sidecars)
    summary["preview"] = self._write_preview()
    files.write_json(summary_path, summary)
    if config.hard_only:
      logging.info("--hard_only: %d of %d composites were hard (yield %.1f%%)", records, drawn,
                   100 * summary["yield"])
    logging.info("%d composites in %d shards under %s", records, config.num_shards, config.out)
    return summary

  def _write_coco(self, sidecars: dict[int, dict]) -> str:
    """annotations.json: every composite as a COCO image (file_name = <shard file>:<record index>)."""
    truth, names = [], []
    for shard in sorted(sidecars):
      shard_file = os.path.basename(self.config.shard_path(shard))
      for index, annotation in enumerate(sidecars[shard]["annotations"]):
        truth.append(evaluation.ImageBoxes(np.array(annotation["boxes"], np.float32).reshape(-1, 4),
                                           np.array(annotation["classes"], np.int64)))
        names.append(f"{shard_file}:{index}")
    dataset, _ = evaluation.to_coco(truth, [], tuple(self.synthesizer.background_shape[:2]), self.class_names)
    for image, name in zip(dataset["images"], names):
      image["file_name"] = name
    if self.config.write_masks:  # to_coco lists the objects in the sidecars' order.
      segmentations = [rle for shard in sorted(sidecars) for annotation in sidecars[shard]["annotations"]
                       for rle in annotation["segmentation"]]
      for annotation, rle in zip(dataset["annotations"], segmentations, strict=True):
        annotation["segmentation"] = rle
        annotation["area"] = float(coco_mask.area({"size": rle["size"], "counts": rle["counts"].encode()}))
    path = os.path.join(self.config.out, ANNOTATIONS)
    files.write_json(path, dataset)
    return path

  def _write_preview(self, count: int = 16) -> str:
    """preview.png: the first shard's first composites (with their boxes), read back from the records."""
    from terse_tf.tasks.base import image_grid  # The grid helper only; no task is built.
    records = tf.data.TFRecordDataset(self.config.shard_path(0)).take(count)
    images, boxes = [], []
    for record in records:
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
    path = os.path.join(self.config.out, PREVIEW)
    files.atomic_write(path, lambda f: f.write(png))
    return path


def _files_under(folder: str) -> list[str]:
  """Every file under `folder`, in a fixed order."""
  return [os.path.join(directory, name) for directory, _, names in sorted(os.walk(folder))
          for name in sorted(names)]


def _differences(earlier: dict | None, now: dict) -> list[str]:
  """The settings in which a shard's recipe differs from this run's, each named by its flag."""
  earlier = earlier if isinstance(earlier, dict) else {}
  differences = []
  for key, value in now.items():
    if earlier.get(key) == value:
      continue
    if key in ("synthesizer", "target", "foregrounds", "backgrounds"):  # Compared by content.
      differences.append(f"--{key}: other contents than this run's (another model or other files)")
    else:
      differences.append(f"--{key}={earlier.get(key)}, this run {value}")
  return differences


class Progress:
  """Logs composites written, the rate and the time left, at most every few seconds."""

  def __init__(self, total: int, every_s: float = 5.0):
    self.total, self.every_s = total, every_s
    self.kept = self.drawn = 0
    self.start = self.last = time.perf_counter()

  def add(self, kept: int, drawn: int) -> None:
    self.kept += kept
    self.drawn += drawn
    now = time.perf_counter()
    if now - self.last >= self.every_s or self.kept >= self.total:
      self.last = now
      rate = self.kept / max(now - self.start, 1e-9)
      eta = (self.total - self.kept) / rate if rate else float("inf")
      logging.info("%d / %d composites (%.1f%%), %.1f per second, %s left%s", self.kept, self.total,
                   100 * self.kept / max(self.total, 1), rate, _duration(eta),
                   f", yield {self.kept / self.drawn:.1%}" if self.drawn != self.kept else "")


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "unknown time"
  minutes, seconds = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"
