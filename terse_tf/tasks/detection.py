"""What the detection tasks share: several cut-outs per scene, placed by S and pasted by the compositor with
occlusion, each visible object's box tight on its visible mask (paper §3.1, §3.2, A.2); an object in view
below min_visible gets an ignore box there instead (compact_labels), which T's loss learns as neither object
nor background.

A subclass supplies the data (cut-outs of one size [h, w, 4], colour + straight alpha; uint8 backgrounds;
test images with their true boxes) and the networks; this class composes scenes for S's steps, renders
scenes for data sets, pastes background regions shaped like random training masks into a share of S's
backgrounds, the baselines' and any images the trainer asks (§3.1, so that a blending edge is no sign of an
object), makes Cut-Paste-Learn's random-placement baseline, evaluates COCO AP and serves S.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import tensorflow as tf

from terse_tf import augment as augment_lib
from terse_tf import compositor as compositor_lib
from terse_tf import evaluation
from terse_tf.data import photos
from terse_tf.networks import synthesizer
from terse_tf.targets.base import DetectorTarget
from terse_tf.tasks.base import Composition, RawParamsFn, Task, image_grid

FOREGROUND_CHANNELS = 4  # RGB + straight alpha.
# Cut-Paste-Learn's blend modes (Dwibedi et al. 2017), applied to the pasted mask's edge. Its Poisson blend
# needs OpenCV, which terse_tf does not depend on.
BLEND_MODES = ("none", "gaussian", "box", "motion")
# The random-placement sources: Cut-Paste-Learn's placement pasted as every other arm pastes (hard edges, on
# the same backgrounds with the same §3.1 regions), and the same with its own blend-mode mix.
CUT_PASTE, CUT_PASTE_BLEND_MODES = "cut_paste", "cut_paste_blend_modes"
# Training masks in the bank §3.1's background regions are shaped from.
ARTIFACT_MASKS = 1024


def compact_labels(boxes: tf.Tensor, classes: tf.Tensor, valid: tf.Tensor, slots: int | None = None,
                   masks: tf.Tensor | None = None, ignore: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
  """Per-object boxes [B, N, 4], classes [B, N] and validity [B, N] -> detection labels with the valid
  objects first: {"boxes", "classes" (int32), "count" (int32), "ignore_boxes"}, and with `masks` [B, N, H, W,
  1] theirs in the same order ("masks"); padding rows are zero. "ignore_boxes" [B, N, 4] holds the boxes of
  the objects `ignore` [B, N] marks (those in view below min_visible: MultiComposite.partly_visible), in
  object order, zero rows elsewhere (a zero box overlaps nothing), so T's loss neither learns them as
  objects nor as background (boxes.match). `slots` > N pads the rows to that many (to match a real set with
  more objects per image)."""
  order = tf.argsort(tf.cast(~valid, tf.int32), axis=1, stable=True)
  valid = tf.gather(valid, order, batch_dims=1)
  keep = tf.cast(valid, tf.float32)
  ignored = tf.zeros_like(keep) if ignore is None else tf.cast(ignore, tf.float32)
  labels = {"boxes": tf.gather(boxes, order, batch_dims=1) * keep[..., None],
            "classes": tf.gather(tf.cast(classes, tf.int32), order, batch_dims=1) * tf.cast(valid, tf.int32),
            "count": tf.reduce_sum(tf.cast(valid, tf.int32), axis=1),
            "ignore_boxes": boxes * ignored[..., None]}
  if masks is not None:
    labels["masks"] = tf.gather(masks, order, batch_dims=1) * keep[..., None, None, None]
  extra = (slots or 0) - boxes.shape[1]
  if extra > 0:
    for key in ("boxes", "ignore_boxes"):
      labels[key] = tf.pad(labels[key], [[0, 0], [0, extra], [0, 0]])
    labels["classes"] = tf.pad(labels["classes"], [[0, 0], [0, extra]])
  return labels


def feather_alpha(cutouts: np.ndarray, sigma: float) -> np.ndarray:
  """Cut-outs [..., h, w, 4] with the alpha blurred by a Gaussian of `sigma` pixels (a 5x5 kernel): an
  anti-aliased edge, as a camera's lens gives a real object."""
  taps = np.exp(-0.5 * (np.arange(-2, 3) / sigma) ** 2)
  kernel = np.outer(taps, taps) / np.outer(taps, taps).sum()
  flat = cutouts.reshape(-1, *cutouts.shape[-3:])
  alpha = tf.nn.conv2d(tf.constant(flat[..., 3:], tf.float32), kernel[..., None, None].astype(np.float32), 1,
                       "SAME").numpy()
  return np.concatenate([flat[..., :3], alpha], axis=-1).reshape(cutouts.shape)


def blur_alpha(cutout: tf.Tensor, mode: tf.Tensor) -> tf.Tensor:
  """Cut-Paste-Learn's edge blending on cut-outs [B, h, w, 4]: the alpha blurred by `mode` [B] (an index
  into BLEND_MODES): none, Gaussian (sigma 1), 3x3 box, or 5-pixel horizontal motion blur."""
  gaussian = np.exp(-0.5 * np.arange(-2, 3) ** 2)
  kernels = np.zeros([len(BLEND_MODES), 5, 5], np.float32)
  kernels[0, 2, 2] = 1.0
  kernels[1] = np.outer(gaussian, gaussian) / np.outer(gaussian, gaussian).sum()
  kernels[2, 1:4, 1:4] = 1.0 / 9
  kernels[3, 2, :] = 1.0 / 5
  alpha = cutout[..., 3:]
  blurred = tf.stack([tf.nn.conv2d(alpha, kernel[..., None, None], 1, "SAME") for kernel in kernels], axis=1)
  chosen = tf.gather(blurred, tf.cast(mode, tf.int32), batch_dims=1)
  return tf.concat([cutout[..., :3], chosen], axis=-1)


class PastedObjectDetection(Task):
  """Scenes of up to `max_objects` cut-outs [cutout_shape, 4] on backgrounds; T a detector (DetectorTarget).

  Subclasses call `_set_compositing` and set, before any method here runs: image_shape, num_classes,
  class_names, cutout_shape (h, w), max_objects, label_slots (>= max_objects: the rows of every label),
  min_visible, background_artifact_fraction, backgrounds (uint8 [M, H, W, 3]), test_images (uint8) and
  test_truth (evaluation.ImageBoxes per test image), and call `_set_artifact_masks` with their training
  cut-outs' alphas."""

  random_source = CUT_PASTE
  extra_random_sources = (CUT_PASTE_BLEND_MODES,)
  headline = "test_ap50"
  cutout_shape: tuple[int, int]
  max_objects: int
  label_slots: int
  min_visible: float
  background_artifact_fraction: float
  backgrounds: np.ndarray
  artifact_masks: np.ndarray  # [M, h, w, 1] training masks §3.1's regions are shaped like.
  test_images: np.ndarray
  test_truth: list[evaluation.ImageBoxes]
  # SSD's training augmentation of T's batches (real and added scenes); None: none.
  augmentation: augment_lib.AugmentConfig | None = None
  # Also report each class's AP@0.5 (<set>_ap50_<class>), for per-class tables (the paper's GMU results).
  per_class_figures = False

  def _set_compositing(self, compositor: compositor_lib.CompositorConfig, jit_compile: bool) -> None:
    """S's compositor (objects may be cropped by the frame, where the visibility rule drops their box, so
    no keep_in_frame), and the one data sets are rendered with: hard-edged objects, as a photo's are."""
    self.compositor = dataclasses.replace(compositor, keep_in_frame=False)
    self._render_config = dataclasses.replace(self.compositor, mask_cleanup=False)
    self._composite_for_synthesis = self._compositing(self.compositor, jit_compile)
    self._composite_for_data = self._compositing(self._render_config, jit_compile)

  def _compositing(self, config: compositor_lib.CompositorConfig, compiled: bool) -> Callable:
    """composite_objects with `config`, forward and backward compiled by XLA when `compiled`."""
    if compiled:
      return compositor_lib.compiled_composite_objects(config, self.min_visible)
    return lambda *args: compositor_lib.composite_objects(*args, config, self.min_visible)

  # ------------------------------------------------------------------------------------ data
  def _random_params(self, shape: tuple[int, ...], upright: bool, rng: np.random.Generator) -> np.ndarray:
    """Uniform parameters [*shape, 6] over the ranges; upright: the canonical size, no rotation or shear,
    anywhere in the frame."""
    low, high = (np.array(b, np.float32) for b in self.compositor.ranges.bounds())
    params = rng.uniform(low, high, size=(*shape, 6)).astype(np.float32)
    if upright:
      params[..., [0, 3]] = 0.0
      params[..., 4:] = 1.0
    return params

  def _paste(self, composite: Callable, foreground, background, params, classes, valid):
    """(composites, labels) of objects pasted with `composite` (one of the two _compositing functions)."""
    result = composite(foreground, background, params, valid)
    return result.image, compact_labels(result.boxes, classes, result.box_valid, self.label_slots,
                                        ignore=result.partly_visible)

  def _render_scenes(self, objects: np.ndarray, classes: np.ndarray, valid: np.ndarray, backgrounds: np.ndarray,
                     params: np.ndarray, batch: int = 100) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Cut-outs [N, n, h, w, 4] pasted hard-edged at `params` [N, n, 6] on uint8 `backgrounds`: (uint8
    images, labels)."""
    images, parts = [], []
    for start in range(0, len(backgrounds), batch):
      part = slice(start, start + batch)
      image, labels = self._paste(self._composite_for_data, tf.constant(objects[part]),
                                  tf.constant(backgrounds[part], tf.float32) / 255.0, tf.constant(params[part]),
                                  classes[part], tf.constant(valid[part]))
      images.append(photos.to_uint8(image.numpy()))
      parts.append({k: v.numpy() for k, v in labels.items()})
    return np.concatenate(images), {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def padded_labels(self, boxes: list[np.ndarray], classes: list[np.ndarray],
                    ignore_boxes: list[np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Real images' boxes [n, 4] and classes [n], one pair per image, and optionally each image's ignore
    boxes [m, 4] (objects not to be learnt as objects nor as background), as detection labels of
    label_slots rows. Without ignore boxes the key holds zero rows (a zero box overlaps nothing): the cache's
    composites have it, and T's batches mix both."""
    count = len(boxes)
    ignore_boxes = [np.zeros([0, 4], np.float32)] * count if ignore_boxes is None else ignore_boxes
    if len(ignore_boxes) != count:
      raise ValueError(f"padded_labels: boxes of {count} images, ignore boxes of {len(ignore_boxes)}; expected "
                       "one array of each per image")
    busiest = max([len(b) for b in (*boxes, *ignore_boxes)], default=0)
    if busiest > self.label_slots:
      raise ValueError(f"padded_labels: an image has {busiest} boxes or ignore boxes, more than the "
                       f"{self.label_slots} label rows (label_slots)")
    labels = {"boxes": np.zeros([count, self.label_slots, 4], np.float32),
              "classes": np.zeros([count, self.label_slots], np.int32),
              "count": np.array([len(b) for b in boxes], np.int32),
              "ignore_boxes": np.zeros([count, self.label_slots, 4], np.float32)}
    for index, (b, c, ignored) in enumerate(zip(boxes, classes, ignore_boxes)):
      labels["boxes"][index, :len(b)], labels["classes"][index, :len(c)] = b, c
      labels["ignore_boxes"][index, :len(ignored)] = ignored
    return labels

  def _cut_paste(self, objects: np.ndarray, classes: np.ndarray, valid: np.ndarray, rng: np.random.Generator,
                 source: str | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Cut-Paste-Learn's random placement of cut-outs [N, n, h, w, 4]: uniform parameters over the ranges, on
    random backgrounds given §3.1's pasted regions as S's are, pasted by S's compositor; with
    CUT_PASTE_BLEND_MODES each edge is first blended by a blend mode drawn uniformly from BLEND_MODES. Float
    images in [0, 1] and labels."""
    if source not in (None, CUT_PASTE, CUT_PASTE_BLEND_MODES):
      raise ValueError(f"unknown random source {source!r}; expected {CUT_PASTE} or {CUT_PASTE_BLEND_MODES}")
    count, n = objects.shape[:2]
    if source == CUT_PASTE_BLEND_MODES:
      modes = rng.integers(len(BLEND_MODES), size=count * n)
      objects = blur_alpha(tf.constant(objects.reshape(-1, *objects.shape[2:])), modes).numpy().reshape(
          objects.shape)
    params = self._random_params((count, n), upright=False, rng=rng)
    backgrounds = self.backgrounds[rng.integers(len(self.backgrounds), size=count)]
    artifact_seeds = rng.integers(2**31, size=(count // 100 + 1, 2))
    images, labels = [], []
    for index, start in enumerate(range(0, count, 100)):
      part = slice(start, start + 100)
      foreground = tf.constant(objects[part], tf.float32)
      background = self.background_artifacts(tf.constant(backgrounds[part], tf.float32) / 255.0,
                                              tf.constant(artifact_seeds[index]))
      image, label = self._paste(self._composite_for_synthesis, foreground, background,
                                 tf.constant(params[part]), classes[part], tf.constant(valid[part]))
      images.append(image.numpy())
      labels.append({k: v.numpy() for k, v in label.items()})
    return np.concatenate(images), {k: np.concatenate([p[k] for p in labels]) for k in labels[0]}

  def _set_artifact_masks(self, alphas: np.ndarray, rng: np.random.Generator) -> None:
    """The bank §3.1's regions take their shapes from: up to ARTIFACT_MASKS of the training cut-outs' alphas
    [M, h, w] (floats in [0, 1], or uint8 with 255 opaque), drawn by `rng`. A bank, not every mask: it
    travels into each tf.data map and tf.function as a constant."""
    bank = alphas[np.sort(rng.choice(len(alphas), min(len(alphas), ARTIFACT_MASKS), replace=False))]
    scale = 255.0 if bank.dtype == np.uint8 else 1.0
    self.artifact_masks = (bank.astype(np.float32) / scale)[..., None]

  def background_artifacts(self, images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """§3.1: into a share (background_artifact_fraction) of float images [B, H, W, 3], a region of another
    image of the batch shaped like a random training mask placed anywhere in the ranges, pasted with the
    blending S's composites get; the same for S's backgrounds, the Cut-Paste arms' and D's real images.
    A batch of one is its own donor, the region copied from another place of it."""
    batch = tf.shape(images)[0]
    mask_seed, params_seed, source_seed, apply_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    masks = tf.gather(tf.constant(self.artifact_masks), tf.random.stateless_uniform(
        [batch], mask_seed, 0, len(self.artifact_masks), dtype=tf.int32))
    low, high = (tf.constant(b, tf.float32) for b in self.compositor.ranges.bounds())
    params = low + (high - low) * tf.random.stateless_uniform([batch, 6], params_seed)
    source = tf.random.stateless_uniform([batch, 2], source_seed)
    apply = tf.random.stateless_uniform([batch], apply_seed) < self.background_artifact_fraction
    donors = tf.roll(images, 1, axis=0)
    return compositor_lib.paste_background_region(images, donors, masks, params, source, apply,
                                                  self.compositor).image

  def _scenes_dataset(self, objects: tf.data.Dataset, to_cutouts: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
                      batch_size: int, seed: int, context: tf.distribute.InputContext) -> tf.data.Dataset:
    """S's batches: groups of max_objects elements of `objects` ((object, class) pairs, this pipeline's
    share, endless), 1..max_objects of each group present, made cut-outs [B, n, h, w, 4] by
    `to_cutouts(objects, seed pair)`, on shuffled backgrounds with background regions pasted in a share."""
    n = self.max_objects
    backgrounds = tf.data.Dataset.from_tensor_slices(self.backgrounds).shard(
        context.num_input_pipelines, context.input_pipeline_id).shuffle(len(self.backgrounds), seed=seed + 1)
    seeds = tf.data.Dataset.random(seed=seed + 2).batch(2)
    ds = tf.data.Dataset.zip((objects.batch(n, drop_remainder=True), backgrounds.repeat(), seeds))
    ds = ds.batch(batch_size, drop_remainder=True)

    def assemble(group, background, seed_pair):
      group_objects, group_classes = group
      seed_pair = seed_pair[0]
      cutout = to_cutouts(group_objects, seed_pair)
      present = tf.random.stateless_uniform([batch_size, 1], seed_pair + 3, 1, n + 1, dtype=tf.int32)
      valid = tf.range(n)[None, :] < present
      background = tf.cast(background, tf.float32) / 255.0
      background = self.background_artifacts(background, seed_pair + 5)
      return {"foreground": cutout, "background": background, "classes": group_classes, "valid": valid}

    return ds.map(assemble).prefetch(2)

  # ------------------------------------------------------------------------------------ compositing
  def _place(self, raw_params: RawParamsFn, foreground: tf.Tensor, background: tf.Tensor) -> tf.Tensor:
    """S's parameters [B, N, 6] for each object of `foreground` [B, N, h, w, 4] in its scene."""
    raw = raw_params(compositor_lib.premultiplied(foreground), background)
    return compositor_lib.clamp_params(raw, self.compositor.ranges, self.compositor.clamp_mode)

  def compose(self, raw_params: RawParamsFn, batch: dict[str, tf.Tensor]) -> Composition:
    params = self._place(raw_params, batch["foreground"], batch["background"])
    images, labels = self._paste(self._composite_for_synthesis, batch["foreground"], batch["background"], params,
                                 batch["classes"], batch["valid"])
    valid = tf.reshape(batch["valid"], [-1])
    normalized = compositor_lib.normalize_params(tf.reshape(params, [-1, compositor_lib.NUM_PARAMS]),
                                                 self.compositor.ranges)
    return Composition(images=images, labels=labels, params=params, pasted=tf.cast(batch["valid"], tf.bool),
                       normalized=tf.boolean_mask(normalized, valid),
                       object_classes=tf.boolean_mask(tf.reshape(batch["classes"], [-1]), valid))

  # ------------------------------------------------------------------------------------ evaluation
  def detect(self, target: DetectorTarget, images: np.ndarray, batch_size: int) -> list[evaluation.ImageBoxes]:
    """T's detections on uint8 `images`, one entry per image."""
    found = []
    for start in range(0, len(images), batch_size):
      detections = target.detections(tf.image.convert_image_dtype(images[start:start + batch_size], tf.float32))
      for b, s, c, n in zip(*(x.numpy() for x in detections)):
        found.append(evaluation.ImageBoxes(boxes=b[:n], classes=c[:n].astype(np.int32), scores=s[:n]))
    return found

  def evaluation_sets(self) -> dict[str, tuple[np.ndarray, list[evaluation.ImageBoxes]]]:
    """name -> (uint8 images, true boxes per image) of every set T is scored on: the test set, and any
    others a subclass adds (validation sets, another photo source)."""
    return {"test": (self.test_images, self.test_truth)}

  def evaluate(self, target: DetectorTarget, batch_size: int) -> dict[str, float]:
    """T's figures on each evaluation set (set_figures), T detecting once per set."""
    figures = {}
    for name, (images, truth) in self.evaluation_sets().items():
      figures.update(self.set_figures(name, truth, self.detect(target, images, batch_size)))
    return figures

  def set_figures(self, name: str, truth: list[evaluation.ImageBoxes], found: list[evaluation.ImageBoxes]
                  ) -> dict[str, float]:
    """COCO AP of detections `found` on the evaluation set `name`: <name>_ap50 (test_ap50 the headline),
    <name>_ap (AP@[.5:.95]) and <name>_ap75; with per_class_figures, <name>_ap50_<class> too (-1 for a class
    without a box in the set, as pycocotools marks it). A task adds figures of its own by extending it."""
    ap = evaluation.evaluate_detections(truth, found, self.image_shape[:2], self.class_names)
    figures = {f"{name}_ap50": ap["ap50"], f"{name}_ap": ap["ap"], f"{name}_ap75": ap["ap75"]}
    if self.per_class_figures:
      figures.update({f"{name}_ap50_{label}": value for label, value in ap["per_class_ap50"].items()})
    return figures

  def instances(self, labels: dict[str, np.ndarray]) -> np.ndarray:
    return np.asarray(labels["count"], np.int64)

  def augment(self, images: tf.Tensor, labels: dict[str, tf.Tensor], seed: tf.Tensor
              ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    if self.augmentation is None:
      return images, labels
    return augment_lib.augment_batch(images, labels, seed, self.augmentation)

  def preview(self, images: tf.Tensor, labels: dict[str, tf.Tensor]) -> tf.Tensor:
    """Composites with their boxes drawn (padding boxes are zero-sized and draw nothing)."""
    drawn = tf.image.draw_bounding_boxes(tf.convert_to_tensor(images, tf.float32),
                                         tf.cast(labels["boxes"], tf.float32), tf.constant([[1.0, 0.0, 0.0]]))
    return image_grid(drawn)

  # ------------------------------------------------------------------------------------ export
  def synthesizer_endpoints(self, synthesizer_model) -> dict[str, tuple[Callable, list]]:
    """N = max_objects. (foreground [B, N, h, w, 4] colour + straight alpha, background [B, H, W, 3],
    classes [B, N] int32, -1 for an empty slot) -> {params [B, N, 6], composite [B, H, W, 3], boxes
    [B, N, 4] normalised ymin, xmin, ymax, xmax of the visible objects first, classes [B, N] (-1 past
    num_objects), num_objects
    [B], masks [B, N, H, W, 1] what is visible of each of those objects (its box is the tight box of
    mask > 0.5)}."""
    n = self.max_objects
    signature = [tf.TensorSpec([None, n, *self.cutout_shape, FOREGROUND_CHANNELS], tf.float32, name="foreground"),
                 tf.TensorSpec([None, *self.image_shape], tf.float32, name="background"),
                 tf.TensorSpec([None, n], tf.int32, name="classes")]

    # Served without XLA: a serving binary need not have the JIT compiler.
    composite = self._compositing(self.compositor, compiled=False)

    def endpoint(raw_params: RawParamsFn) -> Callable:
      def serve(foreground: tf.Tensor, background: tf.Tensor, classes: tf.Tensor) -> dict[str, tf.Tensor]:
        valid = classes >= 0
        params = self._place(raw_params, foreground, background)
        result = composite(foreground, background, params, valid)
        labels = compact_labels(result.boxes, tf.maximum(classes, 0), result.box_valid,
                                masks=result.visible_masks)
        # Rows past num_objects are padding: class -1, as in the input, since 0 is a real class.
        padding = tf.range(n)[None, :] >= labels["count"][:, None]
        return {"params": params, "composite": result.image, "boxes": labels["boxes"],
                "classes": tf.where(padding, -1, labels["classes"]), "num_objects": labels["count"],
                "masks": labels["masks"]}
      return serve

    return synthesizer.serving_endpoints(synthesizer_model, endpoint, signature)


class StoredCutoutDetection(PastedObjectDetection):
  """A detection task whose cut-outs are one array, `cutouts` [M, h, w, 4] with `cutout_classes` [M] (set
  before any method here runs): S's groups and Cut-Paste's scenes are drawn from it."""

  cutouts: np.ndarray
  cutout_classes: np.ndarray

  def synth_dataset(self, batch_size: int, seed: int, context: tf.distribute.InputContext) -> tf.data.Dataset:
    """Groups of max_objects cut-outs (1..max_objects of them present) on backgrounds, a share with pasted
    background regions."""
    objects = tf.data.Dataset.from_tensor_slices((self.cutouts, self.cutout_classes)).shard(
        context.num_input_pipelines, context.input_pipeline_id).shuffle(len(self.cutouts), seed=seed).repeat()
    return self._scenes_dataset(objects, lambda cutouts, _: cutouts, batch_size, seed, context)

  def random_samples(self, per_class: int, seed, source: str | None = None
                     ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Cut-Paste-Learn's random placement of `per_class` x classes scenes of random cut-outs."""
    rng = np.random.default_rng(seed)
    count, n = per_class * self.num_classes, self.max_objects
    picks = rng.integers(len(self.cutouts), size=(count, n))
    valid = np.arange(n)[None, :] < rng.integers(1, n + 1, size=(count, 1))
    return self._cut_paste(self.cutouts[picks], self.cutout_classes[picks], valid, rng, source)
