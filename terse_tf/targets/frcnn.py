"""Faster R-CNN from TF Model Garden (tf-models-official) as target T: the paper's detector for GMU Kitchen
(§4.3, A.3), behind the same interface as the SSD.

Model Garden's models are tf_keras models; that world stays in this module (no TF_USE_LEGACY_KERAS: Keras 3
and tf_keras share one tf.function, and our Keras 3 SGD updates tf_keras variables). The model is Model
Garden's `fasterrcnn_resnetfpn_coco` experiment with our backbone, heads, anchors and input size, built
offline (nothing is downloaded), and trained with Model Garden's own losses (MaskRCNNTask.build_losses: RPN
score and box, Fast R-CNN class and box) inside our loop, with SGD + momentum and the trainer's coupled decay
(§3.4); Model Garden's own L2 is off, so the decay is not counted twice.

What Model Garden wants and our labels are not (the adapter converts; tests/test_frcnn.py checks each):
  - boxes in pixels of the model's input, ymin, xmin, ymax, xmax; classes 1-based (0 is its background);
    padding rows -1. Forgetting the +1 fails silently: every object is background, the box loss 0;
  - RPN targets, made by Model Garden's data parser and not by the model: computed here per image from the
    real rows only (anchor.RpnAnchorLabeler), since padding rows would get forced matches;
  - the model's `training=True` runs the ROI sampler the loss needs but also updates BatchNorm statistics.
    T frozen in S's step calls `model.call(..., training=True)`: the sampler runs, while the layers called
    inside, BatchNorm included, see no training call context and stay in inference mode (T unchanged);
  - its box losses all-reduce their normalisers: the loss must be taken in a replica context (inside
    strategy.run, as the trainer's steps do). Its RPN and ROI samplers are unseeded.
Ignore boxes (objects mostly out of view): an anchor the RPN would learn as background (its IoU with every
object below the unmatched threshold) but that overlaps an ignore box by at least that threshold is left out
of the RPN's score loss, as the SSD leaves out its default boxes on one; the labeler's own "not negative"
band. The Fast R-CNN head's ROI sampler has no such hook: an ROI sampled on an ignore box still trains as
background there.

Hardness (as the SSD's, A.2): each pasted object's score is the best detection score of its class at
IoU >= 0.5 with its box (0 when T misses it); a composite is as hard as its hardest object and counts
towards that object's class quota.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import tensorflow as tf
from absl import flags

from terse_tf import boxes as boxes_lib
from terse_tf.errors import ConfigError
from terse_tf.targets import registry
from terse_tf.targets.base import DetectorTarget, Judgement, Labels

# A detection counts for an object at this IoU with its box (the VOC criterion, as the SSD's hardness).
HARDNESS_IOU = 0.5
# Image sides must divide by the coarsest feature map the FPN merges by upsampling (level 5).
SIDE_MULTIPLE = 32
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenetv2")
CHECKPOINT_MODULES = ("backbone", "decoder")


@dataclasses.dataclass(frozen=True)
class FasterRCNNSettings:
  """A Faster R-CNN's architecture and where its weights start; each --target has its preset (PRESETS), and
  each field its --frcnn_* flag."""
  backbone: str = dataclasses.field(default="resnet50", metadata={"flag": "frcnn_backbone"})
  # FPN and RPN head convolutions' filters.
  fpn_filters: int = dataclasses.field(default=256, metadata={"flag": "frcnn_fpn_filters"})
  # The box head: convolutions (256 filters each), then fully connected layers of head_fc_dims.
  head_convs: int = dataclasses.field(default=4, metadata={"flag": "frcnn_head_convs"})
  head_fcs: int = dataclasses.field(default=1, metadata={"flag": "frcnn_head_fcs"})
  head_fc_dims: int = dataclasses.field(default=1024, metadata={"flag": "frcnn_head_fc_dims"})
  # ROIs the Fast R-CNN head trains on per image.
  sampled_rois: int = dataclasses.field(default=512, metadata={"flag": "frcnn_sampled_rois"})
  # BatchNorm's moving-average momentum. Model Garden's 0.997 suits its 90k-step COCO schedule; a run of a
  # few hundred steps would leave the inference-mode statistics (the verdict's, S's and the evaluation's)
  # near their initial values.
  norm_momentum: float = dataclasses.field(default=0.997, metadata={"flag": "frcnn_norm_momentum"})
  # Anchors: side anchor_size * 2^level pixels at each FPN level, anchor_scales octave steps per level, and
  # these aspect ratios, width over height (as Model Garden's Anchor takes them).
  anchor_size: float = dataclasses.field(default=8.0, metadata={"flag": "frcnn_anchor_size"})
  anchor_scales: int = dataclasses.field(default=1, metadata={"flag": "frcnn_anchor_scales"})
  aspect_ratios: tuple[float, ...] = dataclasses.field(default=(0.5, 1.0, 2.0),
                                                       metadata={"flag": "frcnn_aspect_ratios"})
  # The model's input side in pixels (images are resized to it); 0: the task's image size.
  input_size: int = dataclasses.field(default=0, metadata={"flag": "frcnn_input_size"})
  # A Model Garden checkpoint (a file prefix or a folder) whose `checkpoint_modules` T starts from ("" none).
  init_checkpoint: str = dataclasses.field(default="", metadata={"flag": "frcnn_init_checkpoint"})
  checkpoint_modules: tuple[str, ...] = dataclasses.field(default=CHECKPOINT_MODULES,
                                                          metadata={"flag": "frcnn_init_checkpoint_modules"})

  def __post_init__(self):
    if self.backbone not in BACKBONES:
      raise ConfigError(f"--frcnn_backbone must be one of {BACKBONES}, got {self.backbone!r}")
    for name in ("fpn_filters", "head_fcs", "head_fc_dims", "sampled_rois", "anchor_scales"):
      if getattr(self, name) < 1:
        raise ConfigError(f"--frcnn_{name} must be >= 1, got {getattr(self, name)}")
    if self.head_convs < 0 or self.input_size < 0:
      raise ConfigError(f"--frcnn_head_convs and --frcnn_input_size must be >= 0, got {self.head_convs} and "
                        f"{self.input_size}")
    if not 0 <= self.norm_momentum < 1:
      raise ConfigError(f"--frcnn_norm_momentum must be in [0, 1), got {self.norm_momentum}")
    if not self.anchor_size > 0 or not self.aspect_ratios or not all(r > 0 for r in self.aspect_ratios):
      raise ConfigError(f"--frcnn_anchor_size and every --frcnn_aspect_ratios must be > 0, got "
                        f"{self.anchor_size} and {list(self.aspect_ratios)}")
    if not set(self.checkpoint_modules) <= set(CHECKPOINT_MODULES):
      raise ConfigError(f"--frcnn_init_checkpoint_modules must name some of {CHECKPOINT_MODULES}, got "
                        f"{list(self.checkpoint_modules)}")
    if self.init_checkpoint and not (os.path.isdir(self.init_checkpoint) or tf.io.gfile.glob(
        self.init_checkpoint + ".index")):
      raise ConfigError(f"--frcnn_init_checkpoint={self.init_checkpoint}: neither a checkpoint prefix (no "
                        f"{self.init_checkpoint}.index) nor a folder")

  @property
  def min_level(self) -> int:
    # Model Garden's FPN on MobileNetV2 starts at stride 8 (at stride 4 the build fails).
    return 3 if self.backbone == "mobilenetv2" else 2


# Slim heads for CPUs (about 0.4 s a training step at batch 8 and 128 px on 2 cores, where Model Garden's
# default head takes ~20 s), with anchors from 16 px at the finest level for objects a tenth of a small
# image high; Model Garden's defaults for GPU users.
_SLIM = dict(fpn_filters=64, head_convs=0, head_fcs=2, head_fc_dims=256, sampled_rois=128, anchor_size=4.0,
             norm_momentum=0.99)
PRESETS = {"frcnn_resnet18": FasterRCNNSettings(backbone="resnet18", **_SLIM),
           "frcnn_mobilenetv2": FasterRCNNSettings(backbone="mobilenetv2", **_SLIM),
           "frcnn_resnet50_fpn": FasterRCNNSettings()}


def define_flags(flag_values: flags.FlagValues) -> None:
  """The --frcnn_* flags; unset, each takes --target's preset."""
  for define, field, text in (
      (flags.DEFINE_enum, "backbone", "Faster R-CNN's backbone."),
      (flags.DEFINE_integer, "fpn_filters", "Filters of Faster R-CNN's FPN and RPN head."),
      (flags.DEFINE_integer, "head_convs", "Convolutions of Faster R-CNN's box head."),
      (flags.DEFINE_integer, "head_fcs", "Fully connected layers of Faster R-CNN's box head."),
      (flags.DEFINE_integer, "head_fc_dims", "Width of those layers."),
      (flags.DEFINE_integer, "sampled_rois", "ROIs per image Faster R-CNN's box head trains on."),
      (flags.DEFINE_float, "norm_momentum", "Faster R-CNN's BatchNorm moving-average momentum."),
      (flags.DEFINE_float, "anchor_size", "Anchor side at FPN level l: this x 2^l pixels."),
      (flags.DEFINE_integer, "anchor_scales", "Anchor scales per FPN level (octave steps)."),
      (flags.DEFINE_list, "aspect_ratios", "Anchor aspect ratios (width over height)."),
      (flags.DEFINE_integer, "input_size", "Faster R-CNN's input side in pixels, a multiple of 32 (images are "
       "resized to it); 0: the task's image size."),
      (flags.DEFINE_string, "init_checkpoint", "A Model Garden checkpoint (prefix or folder, e.g. COCO's) T "
       "starts from; a run's own checkpoint, and --init_checkpoint, win over it."),
      (flags.DEFINE_list, "init_checkpoint_modules", "What of it to load: backbone, decoder (the class "
       "heads fit no other class count).")):
    name = f"frcnn_{field}"
    text = f"{text} Unset: --target's preset ({', '.join(PRESETS)})."
    if define is flags.DEFINE_enum:
      define(name, None, BACKBONES, text, flag_values=flag_values)
    else:
      define(name, None, text, flag_values=flag_values)


def settings_from_flags(target: str, f: flags.FlagValues) -> FasterRCNNSettings:
  """--target's preset with the --frcnn_* flags given."""
  given = {}
  for field in dataclasses.fields(FasterRCNNSettings):
    value = f[field.metadata["flag"]].value
    if value is None:
      continue
    if field.name == "aspect_ratios":
      try:
        value = tuple(float(v) for v in value)
      except ValueError:
        raise ConfigError(f"--frcnn_aspect_ratios expects comma-separated numbers, got {','.join(value)!r}"
                          ) from None
    given[field.name] = tuple(value) if isinstance(value, list) else value
  return dataclasses.replace(PRESETS[target], **given)


def input_side(settings: FasterRCNNSettings, image_shape: tuple[int, int, int], size_flag: str) -> int:
  """The model's input side: --frcnn_input_size, or the task's square images' (`size_flag` names the task's
  flag for it); a ConfigError naming the flag when it is no multiple of SIDE_MULTIPLE."""
  if settings.input_size:
    if settings.input_size % SIDE_MULTIPLE:
      raise ConfigError(f"--frcnn_input_size must be a multiple of {SIDE_MULTIPLE} (Faster R-CNN's FPN), got "
                        f"{settings.input_size}")
    return settings.input_size
  height, width, _ = image_shape
  if height != width or height % SIDE_MULTIPLE:
    raise ConfigError(f"Faster R-CNN takes square images whose side is a multiple of {SIDE_MULTIPLE} (its FPN); "
                      f"the task's are {height}x{width} (--{size_flag}): set --{size_flag} to a multiple of "
                      f"{SIDE_MULTIPLE}, or --frcnn_input_size to one to resize them")
  return height


def model_garden_task(settings: FasterRCNNSettings, side: int, num_classes: int):
  """Model Garden's MaskRCNNTask of the `fasterrcnn_resnetfpn_coco` experiment with our architecture."""
  # Imported here: Model Garden takes seconds to import, and only this target needs it.
  from official.core import exp_factory  # pylint: disable=import-outside-toplevel
  from official.vision.configs import maskrcnn as _  # pylint: disable=import-outside-toplevel  (registers it)
  from official.vision.tasks import maskrcnn  # pylint: disable=import-outside-toplevel

  experiment = exp_factory.get_exp_config("fasterrcnn_resnetfpn_coco")
  task = experiment.task
  task.init_checkpoint = None  # Ours is read by `build`, from a local path, after the model is built.
  task.losses.l2_weight_decay = 0.0  # The trainer's coupled decay instead: not counted twice.
  model = task.model
  model.num_classes = num_classes + 1  # Model Garden counts its background class.
  model.input_size = [side, side, 3]
  model.min_level = settings.min_level
  model.norm_activation.norm_momentum = settings.norm_momentum
  if settings.backbone == "mobilenetv2":
    model.backbone.type = "mobilenet"
    model.backbone.mobilenet.model_id = "MobileNetV2"
  else:
    model.backbone.resnet.model_id = int(settings.backbone.removeprefix("resnet"))
  model.decoder.fpn.num_filters = model.rpn_head.num_filters = settings.fpn_filters
  head = model.detection_head
  head.num_convs, head.num_fcs, head.fc_dims = settings.head_convs, settings.head_fcs, settings.head_fc_dims
  model.roi_sampler.num_sampled_rois = settings.sampled_rois
  model.anchor.anchor_size, model.anchor.num_scales = settings.anchor_size, settings.anchor_scales
  model.anchor.aspect_ratios = list(settings.aspect_ratios)
  return maskrcnn.MaskRCNNTask(task)


class FasterRCNNTarget(DetectorTarget):
  """Model Garden's Faster R-CNN on square images. Labels as the SSD's (targets/base.py), "ignore_boxes" for
  the RPN only (module doc); `model` is the tf_keras MaskRCNNModel."""

  hardness_range = (0.0, 1.0)  # A detection score.
  default_hard_threshold = 0.5  # As the SSD's: T finds the object at even odds at best.

  def __init__(self, task, image_size: tuple[int, int]):
    """`task`: model_garden_task's; `image_size`: (height, width) of the images T is handed (resized to the
    model's square input where they differ)."""
    from official.vision.ops import anchor  # pylint: disable=import-outside-toplevel
    self._task = task
    config = task.task_config
    self.model = task.build_model()
    model_config, parser = config.model, config.train_data.parser
    self.side, self.image_size = model_config.input_size[0], tuple(image_size)
    self._anchors = anchor.Anchor(
        min_level=model_config.min_level, max_level=model_config.max_level,
        num_scales=model_config.anchor.num_scales, aspect_ratios=model_config.anchor.aspect_ratios,
        anchor_size=model_config.anchor.anchor_size, image_size=(self.side, self.side)).multilevel_boxes
    self._anchors_per_cell = model_config.anchor.num_scales * len(model_config.anchor.aspect_ratios)
    self._labeler = anchor.RpnAnchorLabeler(parser.rpn_match_threshold, parser.rpn_unmatched_threshold,
                                            parser.rpn_batch_size_per_im, parser.rpn_fg_fraction)
    self._rpn_unmatched_threshold = parser.rpn_unmatched_threshold

  @classmethod
  def build(cls, target: str, settings: FasterRCNNSettings, image_shape: tuple[int, int, int],
            num_classes: int, size_flag: str) -> FasterRCNNTarget:
    """`target`'s Faster R-CNN as `settings` say for square images of `image_shape`, its backbone and
    decoder (as settings.checkpoint_modules say) from settings.init_checkpoint if set."""
    del target  # The preset is already in `settings`.
    side = input_side(settings, image_shape, size_flag)
    built = cls(model_garden_task(settings, side, num_classes), image_shape[:2])
    if settings.init_checkpoint:
      built.load_model_garden_checkpoint(settings.init_checkpoint, settings.checkpoint_modules)
    return built

  def load_model_garden_checkpoint(self, path: str, modules: tuple[str, ...]) -> None:
    """The `modules` of a Model Garden checkpoint (e.g. COCO's): every variable of each must be there. The
    class-specific heads are never read (they fit only its own class count); the RPN head, which is
    class-agnostic, rides with the decoder in Model Garden's checkpoints."""
    prefix = tf.train.latest_checkpoint(path) if os.path.isdir(path) else path
    if prefix is None:
      raise ConfigError(f"--frcnn_init_checkpoint={path}: a folder without a checkpoint")
    try:
      status = tf.train.Checkpoint(**{m: getattr(self.model, m) for m in modules}).read(prefix)
      status.expect_partial().assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
      first_line = str(e).splitlines()[0][:300]
      raise ConfigError(f"--frcnn_init_checkpoint={path}: its {', '.join(modules)} do not fit this model "
                        f"({first_line}); check --frcnn_backbone and --frcnn_fpn_filters") from e

  # ------------------------------------------------------------------------------------ Model Garden's form
  def _resized(self, images: tf.Tensor) -> tf.Tensor:
    images = tf.cast(images, tf.float32)
    return images if self.image_size == (self.side, self.side) else tf.image.resize(images, [self.side] * 2)

  def _model_inputs(self, images: tf.Tensor) -> dict[str, Any]:
    batch = tf.shape(images)[0]
    return {"image_shape": tf.tile(tf.constant([[self.side, self.side]], tf.float32), [batch, 1]),
            "anchor_boxes": {level: tf.tile(boxes[None], [batch, 1, 1, 1])
                             for level, boxes in self._anchors.items()}}

  def model_garden_labels(self, labels: Labels) -> tuple[tf.Tensor, tf.Tensor]:
    """Our labels -> Model Garden's gt_boxes [B, G, 4] in pixels of the input and gt_classes [B, G]
    1-based, padding rows -1."""
    boxes = tf.cast(labels["boxes"], tf.float32) * float(self.side)
    classes = tf.cast(labels["classes"], tf.int32)
    real = tf.range(tf.shape(classes)[1])[None, :] < tf.cast(labels["count"], tf.int32)[:, None]
    return tf.where(real[..., None], boxes, -1.0), tf.where(real, classes + 1, -1)

  def _rpn_targets(self, gt_boxes: tf.Tensor, gt_classes: tf.Tensor, count: tf.Tensor, ignore_boxes: tf.Tensor):
    """RPN score and box targets per level, as Model Garden's parser makes them, from each image's real
    rows only; negatives on an ignore box (pixels, zero rows for none) are made "don't care" (-1)."""
    def per_image(x):
      image_boxes, image_classes, n, image_ignore_boxes = x
      scores, box_targets = self._labeler.label_anchors(self._anchors, image_boxes[:n],
                                                        tf.cast(image_classes[:n, None], tf.float32))
      for level, anchors in self._anchors.items():
        shape = tf.shape(scores[level])
        overlap = boxes_lib.iou(tf.reshape(anchors, [-1, 4]), image_ignore_boxes)  # [H * W * A, I]
        on_ignore_box = tf.reshape(tf.reduce_max(overlap, axis=1) >= self._rpn_unmatched_threshold,
                                   shape)
        scores[level] = tf.where(on_ignore_box & tf.equal(scores[level], 0), -1, scores[level])
      return scores, box_targets

    shapes = {level: boxes.shape[:2] for level, boxes in self._anchors.items()}
    per_cell = self._anchors_per_cell
    signature = ({level: tf.TensorSpec([*shape, per_cell], tf.int32) for level, shape in shapes.items()},
                 {level: tf.TensorSpec([*shape, 4 * per_cell], tf.float32) for level, shape in shapes.items()})
    return tf.map_fn(per_image, (gt_boxes, gt_classes, tf.cast(count, tf.int32), ignore_boxes),
                     fn_output_signature=signature)

  # ------------------------------------------------------------------------------------ Target
  def loss(self, images: tf.Tensor, labels: Labels, training: bool) -> tf.Tensor:
    """Model Garden's model_loss (RPN + Fast R-CNN) on this replica's images, over the replicas."""
    return self.model_garden_losses(images, labels, training)["model_loss"] / (
        tf.distribute.get_strategy().num_replicas_in_sync)

  def model_garden_losses(self, images: tf.Tensor, labels: Labels, training: bool) -> dict[str, tf.Tensor]:
    """MaskRCNNTask.build_losses on this replica's images, as Model Garden's train_step takes them:
    rpn_score_loss, rpn_box_loss, frcnn_cls_loss, frcnn_box_loss and their sum model_loss."""
    images = self._resized(images)
    gt_boxes, gt_classes = self.model_garden_labels(labels)
    # A missing key means no ignore boxes (labels written before the key existed, or by hand), as the SSD's.
    ignore_boxes = (tf.cast(labels["ignore_boxes"], tf.float32) * float(self.side) if "ignore_boxes" in labels
                    else tf.zeros([tf.shape(gt_boxes)[0], 0, 4]))
    score_targets, box_targets = self._rpn_targets(gt_boxes, gt_classes, labels["count"], ignore_boxes)
    inputs = dict(self._model_inputs(images), gt_boxes=gt_boxes, gt_classes=gt_classes, training=True)
    # Frozen: `call` sets no training context, so BatchNorm stays in inference mode while the ROI sampler,
    # which the loss needs, runs.
    outputs = self.model(images, **inputs) if training else self.model.call(images, **inputs)
    outputs = tf.nest.map_structure(lambda x: tf.cast(x, tf.float32), outputs)
    return self._task.build_losses(outputs, {"rpn_score_targets": score_targets, "rpn_box_targets": box_targets})

  def _model_detections(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """(boxes normalised, scores, classes 0-based, valid) [B, N, ...] in inference mode; rows past
    num_detections (which Model Garden does not zero) zeroed."""
    outputs = self.model(self._resized(images), **self._model_inputs(images), training=False)
    valid = (tf.range(tf.shape(outputs["detection_scores"])[1])[None, :] <
             tf.cast(outputs["num_detections"], tf.int32)[:, None])
    boxes = tf.where(valid[..., None], tf.cast(outputs["detection_boxes"], tf.float32) / float(self.side), 0.0)
    scores = tf.where(valid, tf.cast(outputs["detection_scores"], tf.float32), 0.0)
    classes = tf.where(valid, tf.cast(outputs["detection_classes"], tf.int32) - 1, 0)
    return tf.clip_by_value(boxes, 0.0, 1.0), scores, classes, valid

  def detect(self, images: tf.Tensor) -> boxes_lib.Detections:
    boxes, scores, classes, valid = self._model_detections(images)
    return boxes_lib.Detections(boxes=boxes, scores=scores, classes=tf.cast(classes, tf.float32),
                                num_detections=tf.reduce_sum(tf.cast(valid, tf.int32), axis=1))

  def object_confidence(self, images: tf.Tensor, labels: Labels) -> tf.Tensor:
    """[B, G] the best score of each object's class among the detections at IoU >= HARDNESS_IOU with its box,
    0 when there is none (1 for padding rows)."""
    boxes, scores, classes, valid = self._model_detections(images)
    truth = tf.cast(labels["classes"], tf.int32)
    overlaps = boxes_lib.iou(tf.cast(labels["boxes"], tf.float32), boxes)                   # [B, G, N]
    found = (overlaps >= HARDNESS_IOU) & (truth[:, :, None] == classes[:, None, :]) & valid[:, None, :]
    confidence = tf.reduce_max(tf.where(found, scores[:, None, :], 0.0), axis=2)
    real = tf.range(tf.shape(truth)[1])[None, :] < tf.cast(labels["count"], tf.int32)[:, None]
    return tf.where(real, confidence, 1.0)

  def verdict(self, images: tf.Tensor, labels: Labels) -> Judgement:
    """A composite is as hard as its hardest object and counts under that object's class."""
    confidence = self.object_confidence(images, labels)
    hardest = tf.argmin(confidence, axis=1)
    return Judgement(hardness=tf.reduce_min(confidence, axis=1),
                     quota_class=tf.cast(tf.gather(labels["classes"], hardest, batch_dims=1), tf.int64))


registry.register_detectors(registry.DetectorFamily(
    names=tuple(PRESETS), define_flags=define_flags, settings_from_flags=settings_from_flags,
    default_settings=PRESETS.__getitem__, build=FasterRCNNTarget.build, flag_prefix="frcnn_"))
