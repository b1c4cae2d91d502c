"""The voc_person task: person detection on PASCAL VOC with an SSD (paper §4.2, A.2).

T's real training set is the person boxes of VOC 2007 trainval + VOC 2012 trainval (--voc_train_years), every
image of them, those without a person as negatives (VOC scores T on every test image); the test set is VOC 2007
test. Difficult persons are not scored: ignore boxes in T's real labels, and in evaluation VOC's rule for them
(voc.ground_truth); nor are persons whose box spans fewer than --voc_min_box_area pixels of the full-size image
(0 by default: VOC scores every size), as coco.read_scenes treats small boxes. Other classes' objects are
background.

S pastes person cut-outs recovered from VOC's instance segmentations (data/voc.py recover_instances: A.2's
clean-up drops an instance whose mask and XML box disagree, IoU under --voc_min_mask_box_iou; 0 keeps them,
Table 2's "no annotation clean-up"), VOC 2007 test images left out (VOC 2012's segmentations hold VOC 2007
images again, renamed 2007_<id>). Its backgrounds are images without a person, from one source
(--voc_background_source): COCO (a folder of its images and its instances JSON; the images in which a person
is annotated, crowds included, left out), TFDS's coco/2017 prepared on disk (the same filter), or a folder of
photos you vouch for; --voc_background_photos of them, a random draw by --seed from every source. The VOC
images and the backgrounds are read once per process (load_voc, load_backgrounds) and shared by every task
built from them, the ablation's columns included.

VOC comes from the devkit's folders only: the cut-outs need SegmentationObject and SegmentationClass, which
TFDS's voc does not keep (data/voc.py's load_tfds reads TFDS's voc for boxes, and this task does not use it).

Figures: the scene tasks' COCO AP (test_ap50, test_ap, test_ap75) and beside them VOC 2007's 11-point AP, the
paper's figure, at the IoUs of its Tables 2-4: test_voc07_ap50 (the headline), test_voc07_ap60 ... _ap90
(evaluation.voc07_ap; Table 2's AP0.8 is test_voc07_ap80).

Geometry as the scene tasks' (tasks/scenes.py): every image squashed to --voc_image_size (300 for SSD300, A.2),
the cut-outs and background photos squashed by the training images' median width / height (VOC's are mostly
4:3) so that a person keeps one aspect in every image T sees.

T: ssd_vgg16 (SSD300, A.2; VGG16 from ImageNet with --voc_backbone_weights), ssd_compact for a CPU, or any
registered detector. configs/voc_person.flags is the protocol; terse_tf.experiments.voc_person runs Table 2's
ablation grid with Cut-Paste and Cut-Paste + TERSE's hardness filter beside it (Table 4, Fig. 8).
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np
from absl import flags, logging

from terse_tf import boxes as boxes_lib
from terse_tf import evaluation
from terse_tf.data import coco, photos, voc
from terse_tf.errors import ConfigError, DataError
from terse_tf.targets import registry as target_registry
from terse_tf.tasks import registry
from terse_tf.tasks.base import CommonSettings
from terse_tf.tasks.scenes import SceneDetection, SceneSettings, define_scene_flags, scene_settings_from_flags

README_SECTION = 'README "VOC person (§4.2)"'
CLASS_NAME = "person"
TEST_YEAR, TEST_SPLIT = "2007", "test"
# Where S's backgrounds come from, and the flags each source needs.
BACKGROUND_SOURCES = {"coco": ("coco_dir", "coco_annotations"), "tfds": (), "folder": ("backgrounds_dir",)}


@dataclasses.dataclass(frozen=True)
class VocPersonSettings(SceneSettings):
  """The scene settings (tasks/scenes.py; flags --voc_<name>), VOC's folder and years, the cut-outs' recovery
  and the backgrounds' source."""
  FLAG_PREFIX = "voc_"
  # The VOCdevkit folder (or its parent) holding VOC2007 (trainval and test) and VOC2012 (trainval).
  voc_dir: str = dataclasses.field(default="", metadata={"flag": "voc_dir"})
  train_years: tuple[str, ...] = voc.YEARS
  # recover_instances' settings: Table 2's annotation clean-up is min_mask_box_iou > 0.
  min_mask_box_iou: float = 0.5
  min_instance_size: int = 32
  box_share: float = 0.8
  background_source: str = ""
  coco_dir: str = ""
  coco_annotations: str = ""
  tfds_data_dir: str = ""         # '' TFDS's default folder.
  backgrounds_dir: str = ""
  # Photos read from the source (a random draw of them, by the seed, from every source), num_backgrounds crops
  # taken of them: COCO train2017 has ~54,000 images without a person, more than memory holds at full size.
  background_photos: int = 2000
  # SSD300 (A.2); cut-outs of 128 px, persons 0.25-2x that (the person's longer side 0.8 of it): 26-205 px.
  image_size: int = 300
  cutout_size: int = 128
  min_scale: float = 0.25
  max_scale: float = 2.0

  def __post_init__(self):
    super().__post_init__()
    if not self.train_years or set(self.train_years) - set(voc.YEARS) or len(set(self.train_years)) != len(
        self.train_years):
      raise ConfigError(f"--voc_train_years must be distinct years from {list(voc.YEARS)}, got "
                        f"{list(self.train_years)}")
    if not 0 <= self.min_mask_box_iou <= 1 or not 0 < self.box_share <= 1:
      raise ConfigError(f"--voc_min_mask_box_iou must be in [0, 1] and --voc_box_share in (0, 1], got "
                        f"{self.min_mask_box_iou} and {self.box_share}")
    for name in ("min_instance_size", "background_photos"):
      if getattr(self, name) < 1:
        raise ConfigError(f"--voc_{name} must be >= 1, got {getattr(self, name)}")


_DEFAULT = VocPersonSettings()


def define_flags(flag_values: flags.FlagValues) -> None:
  define_scene_flags(flag_values, _DEFAULT)
  flags.DEFINE_string("voc_dir", _DEFAULT.voc_dir, "The VOCdevkit folder (or its parent) with VOC2007/ "
                      "(trainval and test) and VOC2012/ (trainval), as the devkit's tarballs unpack "
                      "(data/voc.py).",
                      flag_values=flag_values)
  for name, text in (
      ("background_source", f"Where S's person-free backgrounds come from: {', '.join(BACKGROUND_SOURCES)} "
       "(COCO images without a person: a COCO folder + instances JSON, or TFDS coco/2017 prepared on disk; or "
       "a folder of photos without people)."),
      ("coco_dir", "With --voc_background_source=coco: COCO's image folder (train2017/, say)."),
      ("coco_annotations", "With --voc_background_source=coco: its instances JSON "
       "(annotations/instances_train2017.json)."),
      ("tfds_data_dir", "With --voc_background_source=tfds: the TFDS data_dir where coco/2017 is prepared "
       "('' TFDS's default); never downloads."),
      ("backgrounds_dir", "With --voc_background_source=folder: a folder of photos without people.")):
    flags.DEFINE_string(f"voc_{name}", getattr(_DEFAULT, name), text, flag_values=flag_values)
  flags.DEFINE_list("voc_train_years", list(_DEFAULT.train_years), "VOC years whose trainval sets train T and "
                    "give the person cut-outs.", flag_values=flag_values)
  for name, text in (
      ("min_mask_box_iou", "A.2's annotation clean-up: a person instance whose mask's tight box has a lower IoU "
       "with its XML box is dropped (0: no clean-up, every matched instance kept)."),
      ("box_share", "Share of its cut-out's side a person's longer side takes (A.2's normalisation).")):
    flags.DEFINE_float(f"voc_{name}", getattr(_DEFAULT, name), text, lower_bound=0, upper_bound=1,
                       flag_values=flag_values)
  for name, text in (
      ("min_instance_size", "Person instances whose mask's box is shorter on its longer side (pixels) are "
       "dropped."),
      ("background_photos", "Photos read from the background source, a random draw by --seed where it has "
       "more (tfds: one pass over coco/2017's train split, only the drawn images decoded); those with a side "
       "under half --voc_image_size are skipped. --voc_num_backgrounds crops are taken of them.")):
    flags.DEFINE_integer(f"voc_{name}", getattr(_DEFAULT, name), text, lower_bound=1, flag_values=flag_values)


def settings_from_flags(f: flags.FlagValues) -> VocPersonSettings:
  return VocPersonSettings(**scene_settings_from_flags(f, VocPersonSettings.FLAG_PREFIX), voc_dir=f.voc_dir,
                           train_years=tuple(f.voc_train_years),
                           **{name: f[f"voc_{name}"].value for name in (
                               "min_mask_box_iou", "min_instance_size", "box_share", "background_source",
                               "coco_dir", "coco_annotations", "tfds_data_dir", "backgrounds_dir",
                               "background_photos")})


def read_split(records: list[voc.Record], image_size: int, source: str, min_box_area: float = 0.0
               ) -> coco.Scenes:
  """VOC records as person scenes (coco.Scenes): their images squashed to image_size, the persons' boxes
  scored, the difficult ones and those of fewer than `min_box_area` pixels in the full-size image ignored
  (voc.ground_truth). An image that cannot be read, or whose size is not its annotation's, is skipped with a
  warning naming it and counted; none left is a DataError naming `source`."""
  images, names, aspects, parts, skipped = [], [], [], [], 0
  for record in records:
    try:
      image = photos.read_rgb(record.image_path)
      if image.shape[:2] != (record.height, record.width):
        raise DataError(f"{record.image_path}: {image.shape[1]}x{image.shape[0]} pixels, where its annotation "
                        f"says {record.width}x{record.height}")
    except DataError as e:
      logging.warning("skipping %s", e)
      skipped += 1
      continue
    truth = voc.ground_truth(record, (CLASS_NAME,), min_box_area)
    images.append(photos.resized(image, image_size, image_size))
    names.append(record.image_id)
    aspects.append(record.width / record.height)
    parts.append((truth.boxes, truth.classes, truth.ignore_boxes, truth.ignore_classes))
  if skipped:
    logging.warning("%d of %d images of %s skipped (see the warnings above)", skipped, len(records), source)
  if not images:
    raise DataError(f"{source}: none of its {len(records)} images could be read")
  boxes, classes, ignore_boxes, ignore_classes = (list(column) for column in zip(*parts))
  return coco.Scenes(np.stack(images), boxes, classes, ignore_boxes, ignore_classes, names, np.array(aspects),
                     skipped)


# The loaders below keep their last result for the process: an experiment's arms build a task each where their
# task settings differ (Table 2's clean-up and blending columns), and the VOC images and the background photos,
# which none of those settings touch, are decoded once and shared (~6 GB of VOC images at 300 px). A changed
# folder on disk is not read again within the process.
@functools.lru_cache(maxsize=1)
def load_voc(voc_dir: str, train_years: tuple[str, ...], image_size: int, min_box_area: float
             ) -> tuple[dict[str, coco.Scenes], frozenset[str]]:
  """({"train": VOC `train_years` trainval, "test": VOC 2007 test} as person scenes (read_split), the VOC2007
  test ids). Training holds each image once: a VOC 2012 copy of a VOC 2007 image read already, or of a VOC
  2007 test image, is left out and counted (voc.left_out)."""
  test_folder = voc.year_folder(voc_dir, TEST_YEAR)
  test_records = [voc.read_record(test_folder, image_id) for image_id in voc.read_image_ids(test_folder,
                                                                                            TEST_SPLIT)]
  test_ids = frozenset(record.image_id for record in test_records)
  records, seen, left_out = [], set(), 0
  for year in train_years:
    for record in voc.load_records(voc_dir, year, "trainval"):
      if voc.left_out(year, record.image_id, seen, test_ids):
        left_out += 1
        continue
      seen.add(voc.voc2007_id(year, record.image_id))
      records.append(record)
  if left_out:
    logging.info("VOC trainval: %d copies of VOC2007 images (trainval read already, or test) left out",
                 left_out)
  splits = {"train": read_split(records, image_size, f"VOC {'+'.join(train_years)} trainval", min_box_area),
            "test": read_split(test_records, image_size, f"VOC{TEST_YEAR} {TEST_SPLIT}", min_box_area)}
  return splits, test_ids


@functools.lru_cache(maxsize=1)
def load_backgrounds(source: str, coco_dir: str, coco_annotations: str, tfds_data_dir: str,
                     backgrounds_dir: str, count: int, seed: int, min_side: int) -> photos.Photos:
  """Photos without a person from `source` (a BACKGROUND_SOURCES key, read from the paths of its flags), at
  most `count` of them, a random draw by `seed` wherever there are more, those under `min_side` pixels skipped
  (photos.read_photos)."""
  rng = np.random.default_rng([seed, 23])
  if source == "tfds":
    try:
      found, excluded = coco.load_tfds_backgrounds(tfds_data_dir, CLASS_NAME, count, rng, min_side)
    except DataError as e:
      raise DataError(f"--voc_background_source=tfds --voc_tfds_data_dir={tfds_data_dir}: {e}") from e
    logging.info("TFDS %s: %d images without a person drawn (%d with one left out)", coco.TFDS_NAME, len(found),
                 excluded)
    return found
  if source == "coco":
    found = coco.backgrounds_without(coco_dir, coco_annotations, CLASS_NAME)
    logging.info("backgrounds: %s", found.report(CLASS_NAME))
    paths, where = found.paths, f"--voc_coco_dir={coco_dir}"
  else:
    where = f"--voc_backgrounds_dir={backgrounds_dir}"
    paths = photos.image_paths(backgrounds_dir)
    if not paths:
      raise DataError(f"{where}: no image files (expected PNG, JPEG, BMP or GIF photos without people)")
  if len(paths) > count:
    paths = [paths[i] for i in np.sort(rng.choice(len(paths), count, replace=False))]
  return photos.read_photos(paths, where, min_side)


@registry.register("voc_person", settings=VocPersonSettings, define_flags=define_flags,
                   settings_from_flags=settings_from_flags,
                   summary="person detection on PASCAL VOC 2007 test (§4.2, A.2; your copy of VOC and COCO)")
class VocPersonTask(SceneDetection):
  # A.2's SSD300 first, a CPU's SSD, then the registered detectors.
  targets = ("ssd_vgg16", "ssd_compact", *target_registry.names())
  headline = "test_voc07_ap50"
  per_class_figures = False  # One class: its AP@0.5 is test_ap50.

  def __init__(self, settings: VocPersonSettings, common: CommonSettings):
    if not settings.voc_dir:
      raise ConfigError(f"--task=voc_person needs --voc_dir, the VOCdevkit folder ({README_SECTION})")
    if settings.background_source not in BACKGROUND_SOURCES:
      raise ConfigError(f"--task=voc_person needs --voc_background_source, one of {list(BACKGROUND_SOURCES)} "
                        f"(got {settings.background_source!r}; {README_SECTION})")
    missing = [f"--voc_{name}" for name in BACKGROUND_SOURCES[settings.background_source]
               if not getattr(settings, name)]
    if missing:
      raise ConfigError(f"--voc_background_source={settings.background_source} needs {', '.join(missing)}")
    for flag, path, exists in (("coco_dir", settings.coco_dir, os.path.isdir),
                               ("coco_annotations", settings.coco_annotations, os.path.isfile),
                               ("backgrounds_dir", settings.backgrounds_dir, os.path.isdir)):
      if flag in BACKGROUND_SOURCES[settings.background_source] and not exists(path):
        raise ConfigError(f"--voc_{flag}={path}: no such {'folder' if exists is os.path.isdir else 'file'}")
    self._set_scene(settings, common, [CLASS_NAME])
    for year in sorted({*settings.train_years, TEST_YEAR}):
      try:
        voc.year_folder(settings.voc_dir, year)
      except DataError as e:
        raise DataError(f"{e}. --voc_train_years={','.join(settings.train_years)} names the trainval years "
                        f"read (VOC {TEST_YEAR}'s test set is always needed)") from e
    # The backgrounds first: a wrong background source fails in seconds, not after VOC's minutes of reading.
    backgrounds = load_backgrounds(settings.background_source, settings.coco_dir, settings.coco_annotations,
                                   settings.tfds_data_dir, settings.backgrounds_dir, settings.background_photos,
                                   settings.seed, self.min_background_side)
    splits, test_ids = load_voc(settings.voc_dir, settings.train_years, settings.image_size,
                                settings.min_box_area)
    self.person_instances = voc.recover_instances(
        settings.voc_dir, settings.cutout_size, settings.train_years, "trainval", CLASS_NAME,
        settings.min_mask_box_iou, settings.min_instance_size, settings.box_share, exclude=test_ids)
    self._set_data(splits, self.person_instances.cutouts, backgrounds, float(np.median(splits["train"].aspects)))

  def describe(self) -> str:
    sets = ", ".join(f"{len(split.images)} {name} images ({sum(map(len, split.boxes))} persons)"
                     for name, split in self.splits.items())
    return (f"VOC person at {self.image_shape[0]} px, squashed from {self.frame_aspect:.2f}:1: {sets}; "
            f"{len(self.cutouts)} person cut-outs at {self.cutout_shape[0]} px "
            f"({self.person_instances.report.summary()}), "
            f"up to {self.max_objects} per scene, {len(self.backgrounds)} backgrounds "
            f"({self.settings.background_source})")

  def identity(self) -> dict:
    return {"task": self.name, "voc_person": dataclasses.asdict(self.settings), "target": self.common.target}

  def set_figures(self, name: str, truth: list[evaluation.ImageBoxes], found: list[evaluation.ImageBoxes]
                  ) -> dict[str, float]:
    """The COCO figures and VOC 2007's 11-point AP at each IoU of Table 4: <name>_voc07_ap50 ... _ap90."""
    figures = super().set_figures(name, truth, found)
    for iou in evaluation.TABLE4_IOUS:
      figures[f"{name}_voc07_ap{round(100 * iou)}"] = evaluation.voc07_ap(truth, found, self.class_names,
                                                                         iou)["map"]
    return figures

  def default_boxes(self, feature_sizes: tuple[int, ...]) -> boxes_lib.DefaultBoxSpec:
    # SSD300's VOC scales (0.1 .. 0.9 of the side) with tall boxes for standing persons and wide ones for
    # lying or seated ones.
    return boxes_lib.DefaultBoxSpec(feature_sizes=feature_sizes, min_scale=0.1, max_scale=0.9,
                                    aspect_ratios=(1.0, 2.0, 0.5, 3.0, 1 / 3))
