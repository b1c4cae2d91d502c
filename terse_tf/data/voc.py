"""PASCAL VOC 2007 / 2012 (Everingham et al., IJCV 2010; http://host.robots.ox.ac.uk/pascal/VOC/) on disk as the
devkit unpacks it, or as TFDS's `voc/2007` and `voc/2012` hold it: per-image boxes with their difficult and
truncated flags, and the person cut-outs of the paper's §4.2 / A.2, recovered from the instance segmentations.

Layout (`voc_dir` is the VOCdevkit folder or its parent):
    VOCdevkit/VOC<year>/JPEGImages/<id>.jpg
    VOCdevkit/VOC<year>/Annotations/<id>.xml           one PASCAL VOC annotation per image (parse_annotation)
    VOCdevkit/VOC<year>/ImageSets/Main/<split>.txt      the ids of a detection split (train, val, trainval, test)
    VOCdevkit/VOC<year>/ImageSets/Segmentation/<split>.txt   the ids that have segmentations
    VOCdevkit/VOC<year>/SegmentationClass/<id>.png     palette PNG: 0 background, 1..20 CLASS_NAMES, 255 void
    VOCdevkit/VOC<year>/SegmentationObject/<id>.png    palette PNG: 0 background, i the i-th <object> of the XML,
                                                       255 void
The palette PNGs are read as their indices (PIL, mode 'P'); decoding them as RGB (tf.io.decode_png) would give
the palette's colours instead. VOC marks a 5-pixel band along every object's outline, and regions it could
not label, as void (255).

Boxes. VOC's <bndbox> is in 1-based inclusive pixels: pixel i covers [i - 1, i] of the frame, so a box xmin..xmax
spans xmax - xmin + 1 pixels (the devkit's "+1" widths). A record's box is that span over the frame, normalised:
(ymin - 1) / H, (xmin - 1) / W, ymax / H, xmax / W. The continuous IoU of two boxes so normalised is the
devkit's IoU of the pixel boxes (the normalisation scales every area by one factor) up to float32 rounding,
which is what evaluation.voc07_ap relies on. TFDS writes ymin / H, xmin / W, ymax / H, xmax / W (no -1);
record_from_tfds undoes that, so both sources give equal records for an image.

Difficult objects stay in the records with their flag: VOC's evaluation neither rewards nor penalises a
detection of one (a task passes them as evaluation.ImageBoxes' ignore boxes). An image whose XML has no object
is a record without boxes (an all-background image is still a training image; VOC's test set has none). A
class name outside CLASS_NAMES is a DataError naming the file and the name.

Person cut-outs (recover_instances) follow A.2: instance masks from SegmentationObject, the class of each from
SegmentationClass, each matched to its XML box; an instance whose mask and box disagree is dropped and counted,
as are the other reasons in InstanceReport. The A.2 mask clean-up (threshold, ReLU, blur) is not done here: the
compositor applies it at paste time (compositor.clean_mask, CompositorConfig.mask_cleanup).
"""

from __future__ import annotations

import dataclasses
import math
import os
import xml.etree.ElementTree as ElementTree
from typing import Iterator, Mapping

import numpy as np
from absl import logging
from PIL import Image

from terse_tf import evaluation
from terse_tf.data import cutouts as cutouts_lib
from terse_tf.data.photos import read_rgb
from terse_tf.errors import DataError

# VOC's 20 classes in the devkit's order: a SegmentationClass index is its position here + 1, and TFDS's voc
# labels are these positions.
CLASS_NAMES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
PERSON = CLASS_NAMES.index("person")
VOID = 255  # Segmentation PNG index of VOC's object outlines and unlabelled regions.
YEARS = ("2007", "2012")
JPEGS, ANNOTATIONS, MAIN_SETS = "JPEGImages", "Annotations", os.path.join("ImageSets", "Main")
OBJECT_PNGS, CLASS_PNGS = "SegmentationObject", "SegmentationClass"
SEGMENTATION_SETS = os.path.join("ImageSets", "Segmentation")
DETECTION_FOLDERS = (JPEGS, ANNOTATIONS, MAIN_SETS)
SEGMENTATION_FOLDERS = DETECTION_FOLDERS + (OBJECT_PNGS, CLASS_PNGS, SEGMENTATION_SETS)
LAYOUT = ("<voc_dir>/VOCdevkit/VOC<year>/ (or <voc_dir>/VOC<year>/) with JPEGImages/, Annotations/, "
          "ImageSets/Main/ and, for person cut-outs, SegmentationObject/, SegmentationClass/ and "
          "ImageSets/Segmentation/, as the VOC devkit unpacks")
# The TFDS split of each VOC image set: TFDS's voc builder names VOC's val "validation" and has no trainval.
TFDS_SPLITS = {"train": "train", "val": "validation", "trainval": "train+validation", "test": "test"}
TFDS_NAMES = ("voc/2007", "voc/2012")


# ------------------------------------------------------------------------------------ PASCAL VOC XML
@dataclasses.dataclass(frozen=True)
class XmlObject:
  """One <object> as written: its name, <bndbox> in VOC pixels (xmin, ymin, xmax, ymax; 1-based, inclusive) and
  flags (an absent <difficult> or <truncated> is 0, as the devkit reads it)."""
  name: str
  box: tuple[float, float, float, float]
  difficult: bool
  truncated: bool


@dataclasses.dataclass(frozen=True)
class Annotation:
  """One PASCAL VOC annotation file: <filename> ("" when absent), <size>, and its objects in file order (the
  order SegmentationObject's indices follow)."""
  filename: str
  height: int
  width: int
  objects: tuple[XmlObject, ...]


def _text(node: ElementTree.Element, path: str, where: str) -> str:
  found = node.findtext(path)
  if found is None or not found.strip():
    raise DataError(f"{where}: no <{path}> (expected a PASCAL VOC annotation: filename, size/width, "
                    "size/height, object/name, object/bndbox/xmin..ymax)")
  return found.strip()


def _number(node: ElementTree.Element, path: str, where: str, kind: type = float) -> float:
  """The number at `path` (an int or float by `kind`); DataError naming the file when it is not one."""
  text = _text(node, path, where)
  try:
    return kind(text)
  except ValueError as e:
    raise DataError(f"{where}: <{path}> is {text!r}, not {'an integer' if kind is int else 'a number'}") from e


def _flag(node: ElementTree.Element, path: str, where: str) -> bool:
  return node.findtext(path) is not None and _number(node, path, where, int) != 0


def parse_annotation(path: str) -> Annotation:
  """A PASCAL VOC annotation file (VOC's own and GMU Kitchen's); DataError naming the file when it cannot be
  parsed or a size or coordinate is missing or no number. Boxes are not checked here (box_to_normalised is)."""
  try:
    root = ElementTree.parse(path).getroot()
  except (ElementTree.ParseError, OSError) as e:
    raise DataError(f"{path}: cannot parse this annotation ({e})") from e
  width, height = _number(root, "size/width", path, int), _number(root, "size/height", path, int)
  corners = ("xmin", "ymin", "xmax", "ymax")
  objects = tuple(XmlObject(_text(node, "name", path),
                            tuple(_number(node, f"bndbox/{key}", path) for key in corners),
                            _flag(node, "difficult", path), _flag(node, "truncated", path))
                  for node in root.findall("object"))
  return Annotation((root.findtext("filename") or "").strip(), height, width, objects)


def box_to_normalised(name: str, box: tuple[float, float, float, float], height: int, width: int,
                      where: str) -> list[float]:
  """A VOC pixel box (xmin, ymin, xmax, ymax; 1-based, inclusive) -> normalised (ymin, xmin, ymax, xmax) of the
  pixels it spans (the module docstring); DataError naming `where` when it is not inside the frame."""
  xmin, ymin, xmax, ymax = box
  if not (1 <= xmin <= xmax <= width and 1 <= ymin <= ymax <= height):
    raise DataError(f"{where}: box of {name} ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) is not inside the "
                    f"{width}x{height} frame (VOC pixels, 1-based, xmin <= xmax, ymin <= ymax)")
  return [(ymin - 1) / height, (xmin - 1) / width, ymax / height, xmax / width]


# ------------------------------------------------------------------------------------ records
@dataclasses.dataclass(frozen=True)
class Record:
  """One image of a VOC image set: its id, file (`image_path`, "" for a TFDS example, whose pixels come with
  it), size, and its objects in annotation order: boxes [n, 4] float32 (normalised ymin, xmin, ymax, xmax),
  classes [n] int32 (indices into CLASS_NAMES), difficult [n] and truncated [n] bool."""
  image_id: str
  image_path: str
  height: int
  width: int
  boxes: np.ndarray
  classes: np.ndarray
  difficult: np.ndarray
  truncated: np.ndarray


def _record(image_id: str, image_path: str, height: int, width: int, objects: list[XmlObject], where: str
            ) -> Record:
  unknown = [obj.name for obj in objects if obj.name not in CLASS_NAMES]
  if unknown:
    raise DataError(f"{where}: unknown class {unknown[0]!r}; expected one of VOC's 20 classes "
                    f"{list(CLASS_NAMES)}")
  boxes = [box_to_normalised(obj.name, obj.box, height, width, where) for obj in objects]
  return Record(image_id, image_path, height, width, np.array(boxes, np.float32).reshape(-1, 4),
                np.array([CLASS_NAMES.index(obj.name) for obj in objects], np.int32),
                np.array([obj.difficult for obj in objects], bool),
                np.array([obj.truncated for obj in objects], bool))


def year_folder(voc_dir: str, year: str, folders: tuple[str, ...] = DETECTION_FOLDERS) -> str:
  """VOC<year>/ under `voc_dir` (a VOCdevkit folder or its parent), which must hold `folders`; one DataError
  naming every missing path and the layout expected."""
  if year not in YEARS:
    raise ValueError(f"VOC year must be one of {YEARS}, got {year!r}")
  candidates = [os.path.join(voc_dir, f"VOC{year}"), os.path.join(voc_dir, "VOCdevkit", f"VOC{year}")]
  folder = next((path for path in candidates if os.path.isdir(path)), None)
  if folder is None:
    raise DataError(f"{voc_dir}: neither {candidates[0]} nor {candidates[1]} exists; expected {LAYOUT}")
  missing = [os.path.join(folder, name) for name in folders if not os.path.isdir(os.path.join(folder, name))]
  if missing:
    raise DataError(f"{folder}: missing {', '.join(missing)}; expected {LAYOUT}")
  return folder


def read_image_ids(folder: str, split: str, image_sets: str = MAIN_SETS) -> list[str]:
  """The image ids of `split` in `folder`/`image_sets`/<split>.txt (one a line, in file order)."""
  path = os.path.join(folder, image_sets, f"{split}.txt")
  if not os.path.exists(path):
    listed = sorted(name[:-4] for name in os.listdir(os.path.join(folder, image_sets)) if name.endswith(".txt")
                    and "_" not in name)
    raise DataError(f"{path}: no such image set; {os.path.join(folder, image_sets)} lists {listed}")
  with open(path) as f:
    return [line.split()[0] for line in f if line.strip()]


def read_record(folder: str, image_id: str) -> Record:
  """The record of `image_id` in a VOC<year>/ folder; DataError naming the file when its annotation is
  malformed or its JPEG is missing."""
  path = os.path.join(folder, ANNOTATIONS, f"{image_id}.xml")
  annotation = parse_annotation(path)
  image_path = os.path.join(folder, JPEGS, f"{image_id}.jpg")
  if not os.path.exists(image_path):
    raise DataError(f"{path}: its image {image_path} is missing")
  return _record(image_id, image_path, annotation.height, annotation.width, list(annotation.objects), path)


def load_records(voc_dir: str, year: str, split: str) -> list[Record]:
  """The records of VOC<year>'s detection image set `split` (ImageSets/Main/<split>.txt), in its order."""
  folder = year_folder(voc_dir, year)
  records = [read_record(folder, image_id) for image_id in read_image_ids(folder, split)]
  empty = sum(not len(record.classes) for record in records)
  if empty:  # Kept: an image without objects is background to train on, and a test image to find nothing in.
    logging.info("VOC%s %s: %d of %d images have no annotated object", year, split, empty, len(records))
  return records


def ground_truth(record: Record, class_names: tuple[str, ...] = CLASS_NAMES, min_box_area: float = 0.0
                 ) -> evaluation.ImageBoxes:
  """A record's objects of `class_names` as evaluation ground truth, classes re-indexed in that order (say
  ("person",) for the person protocol; other classes' objects are left out): the difficult ones, and those
  whose box spans fewer than `min_box_area` pixels of the full-size image (VOC's +1 widths, rounded to a
  thousandth of a pixel against float32's noise; coco.read_scenes' rule), as ignore boxes, which
  evaluation.voc07_ap treats by VOC's rule for difficult objects and evaluate_detections as COCO crowd
  regions."""
  unknown = [name for name in class_names if name not in CLASS_NAMES]
  if unknown:
    raise ValueError(f"{unknown} are not VOC classes; expected names from {CLASS_NAMES}")
  order = np.full(len(CLASS_NAMES), -1, np.int32)
  order[[CLASS_NAMES.index(name) for name in class_names]] = np.arange(len(class_names))
  classes = order[record.classes]
  sides = np.round((record.boxes[:, 2:] - record.boxes[:, :2]).astype(np.float64) * [record.height,
                                                                                      record.width], 3)
  unscored = record.difficult | (sides.prod(axis=1) < min_box_area)
  scored, ignored = (classes >= 0) & ~unscored, (classes >= 0) & unscored
  return evaluation.ImageBoxes(record.boxes[scored], classes[scored], ignore_boxes=record.boxes[ignored],
                               ignore_classes=classes[ignored])


# ------------------------------------------------------------------------------------ TFDS
def record_from_tfds(example: Mapping) -> tuple[Record, np.ndarray]:
  """(record, uint8 image [H, W, 3]) of one example of TFDS's voc/2007 or voc/2012, as tfds.as_numpy yields it:
  {"image", "image/filename", "objects": {"bbox", "label", "is_difficult", "is_truncated", ...}}. TFDS keeps no
  segmentation (no SegmentationObject / SegmentationClass): person cut-outs need the devkit folders.

  TFDS's bbox is VOC's pixel box divided by the size, with no -1 (the module docstring): back in pixels it is
  rounded to a thousandth of a pixel, which removes TFDS's float32 storage noise and keeps VOC's whole-pixel
  coordinates (and any with decimals) as the XML has them, then normalised as the XML path does. The size is
  the image's (TFDS keeps no <size>; in VOC the two agree)."""
  image = np.asarray(example["image"])
  height, width = image.shape[:2]
  filename = example["image/filename"]
  filename = filename.decode() if isinstance(filename, bytes) else str(filename)
  objects = example["objects"]
  scaled = np.round(np.asarray(objects["bbox"], np.float64).reshape(-1, 4) * [height, width, height, width], 3)
  labels = np.asarray(objects["label"]).reshape(-1)
  if labels.size and not (0 <= labels.min() and labels.max() < len(CLASS_NAMES)):
    raise DataError(f"TFDS voc example {filename}: label {labels.max()} outside VOC's 20 classes")
  xml_like = [XmlObject(CLASS_NAMES[label], (xmin, ymin, xmax, ymax), bool(difficult), bool(truncated))
              for label, (ymin, xmin, ymax, xmax), difficult, truncated in zip(
                  labels, scaled, np.asarray(objects["is_difficult"]).reshape(-1),
                  np.asarray(objects["is_truncated"]).reshape(-1))]
  record = _record(os.path.splitext(filename)[0], "", height, width, xml_like, f"TFDS voc example {filename}")
  return record, image


def load_tfds(name: str, split: str, data_dir: str) -> Iterator[tuple[Record, np.ndarray]]:
  """(record, image) of every example of a prepared TFDS `name` (voc/2007 or voc/2012) image set `split`
  (train, val, trainval or test) under `data_dir`, lazily, in TFDS's order. Never downloads (download=False):
  a dataset not prepared there is a DataError. tensorflow_datasets is imported only here; offline, tfds.load
  may wait minutes on its network look-ups before it answers."""
  if name not in TFDS_NAMES or split not in TFDS_SPLITS:
    raise DataError(f"TFDS VOC: expected a dataset in {TFDS_NAMES} and a split in {list(TFDS_SPLITS)}, got "
                    f"{name!r} and {split!r}")
  if not os.path.isdir(data_dir):
    raise DataError(f"{data_dir}: not a directory; expected a TFDS data_dir where {name} is prepared")
  import tensorflow_datasets as tfds  # Imported only on this path: it is slow to import and touches the network.
  try:
    dataset = tfds.load(name, split=TFDS_SPLITS[split], data_dir=data_dir, download=False)
  except (AssertionError, ValueError) as e:  # Not prepared (AssertionError); unknown name or split (ValueError).
    raise DataError(f"{data_dir}: cannot load TFDS {name} split {TFDS_SPLITS[split]} ({e}); prepare it there "
                    f"first (tfds build {name} --data_dir={data_dir} where the network allows)") from e
  return (record_from_tfds(example) for example in tfds.as_numpy(dataset))


# ------------------------------------------------------------------------------------ person cut-outs
@dataclasses.dataclass(frozen=True)
class InstanceReport:
  """What recover_instances kept and why it dropped the rest. Counts are of instances of the class (an XML
  object of it, or a mask its SegmentationClass labels so), except the image-level ones: `skipped` (one line
  naming the file and why per image left out: an unreadable XML, JPEG or PNG, or sizes of JPEG, XML and PNGs
  that disagree), `duplicates` (a VOC2012 copy of a VOC2007 image already read) and `excluded` (images the
  caller left out)."""
  images: int = 0
  kept: int = 0
  box_mismatch: int = 0     # The mask's tight box has IoU < min_iou with its XML box.
  no_mask: int = 0          # An XML object of the class without a pixel in SegmentationObject.
  class_mismatch: int = 0   # XML and SegmentationClass disagree on whether the instance is of the class.
  too_small: int = 0        # The mask's tight box's longer side is under min_size pixels.
  unannotated: int = 0      # Mask pixels of the class under an index with no <object> in the XML.
  duplicates: int = 0
  excluded: int = 0
  skipped: tuple[str, ...] = ()
  min_iou: float = 0.5
  min_size: int = 0

  @property
  def dropped(self) -> int:
    return self.box_mismatch + self.no_mask + self.class_mismatch + self.too_small + self.unannotated

  def summary(self) -> str:
    """One paragraph for the log: kept and dropped instances by reason, and the images left out."""
    reasons = [(self.box_mismatch, f"mask's box and XML box disagree (IoU < {self.min_iou:g})"),
               (self.no_mask, "no mask pixel"),
               (self.class_mismatch, "XML and SegmentationClass disagree on the class"),
               (self.too_small, f"mask under {self.min_size} pixels"),
               (self.unannotated, "mask without an XML object")]
    dropped = "; ".join(f"{count} {why}" for count, why in reasons if count) or "none"
    text = (f"VOC instances: kept {self.kept} of {self.kept + self.dropped} from {self.images} images "
            f"(dropped: {dropped})")
    for count, what in ((self.duplicates, "VOC2012 copies of VOC2007 images already read"),
                        (self.excluded, "images excluded by the caller")):
      if count:
        text += f"; {count} {what} left out"
    if self.skipped:
      text += f"; {len(self.skipped)} images skipped: " + "; ".join(self.skipped)
    return text


@dataclasses.dataclass(frozen=True)
class Instances:
  """The kept cut-outs (one class, the recovered one) and where each came from: (VOC year, image id, 1-based
  object index in its XML) per cut-out, for inspecting them as the paper did."""
  cutouts: cutouts_lib.Cutouts
  sources: tuple[tuple[str, str, int], ...]
  report: InstanceReport


def read_indices(path: str) -> np.ndarray:
  """uint8 [H, W] palette indices of a VOC segmentation PNG; DataError naming the file when it cannot be read or
  has no palette (an RGB PNG holds colours, not VOC's indices)."""
  try:
    with Image.open(path) as image:
      if image.mode not in ("P", "L"):
        raise DataError(f"{path}: a {image.mode} PNG; expected a palette (mode P) PNG whose values are VOC's "
                        "indices")
      return np.array(image)
  except OSError as e:
    raise DataError(f"{path}: cannot read this PNG ({type(e).__name__}: {e})") from e


def voc2007_id(year: str, image_id: str) -> str:
  """The VOC2007 id of an image: VOC2012 ships VOC2007's segmented images again as 2007_<VOC2007 id>."""
  return image_id[len("2007_"):] if year != "2007" and image_id.startswith("2007_") else image_id


def left_out(year: str, image_id: str, seen: set[str], exclude: frozenset[str] | set[str]) -> str:
  """Why an image of VOC `year` stays out of a set that holds each image once and none of `exclude`:
  "excluded" when its VOC2007 id (voc2007_id) is in `exclude`, "duplicates" when it is in `seen`, else "".
  `seen` is the VOC2007 ids of the images read so far: a caller adds an id only once its image is read, so
  that a copy it could not read leaves the other year's copy in."""
  canonical = voc2007_id(year, image_id)
  return "excluded" if canonical in exclude else "duplicates" if canonical in seen else ""


def normalised_cutout(image: np.ndarray, mask: np.ndarray, size: int, box_share: float) -> np.ndarray:
  """float32 [size, size, 4]: the colour of uint8 `image` [H, W, 3] under bool `mask` [H, W] (alpha 1 on the
  mask, 0 elsewhere), cropped to the mask's tight box, centred in a square frame whose side is that box's longer
  side / `box_share` (transparent padding), and resampled to `size` (cutouts.fit: antialiased, premultiplied).

  A.2 centres each segmentation so that its box occupies "at least" a share of the frame's height and width
  (the number did not survive in the paper's text). A square frame, as the synthesizer takes cut-outs, can
  give that share to both sides only by squashing the person; the aspect is kept instead, so the longer side
  occupies `box_share` of the frame and the shorter side its own proportion of it."""
  rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
  crop = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
  height, width = rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0]
  side = max(height, width, math.ceil(max(height, width) / box_share))
  top, left = (side - height) // 2, (side - width) // 2
  frame = np.zeros([side, side, 4], np.float32)
  frame[top:top + height, left:left + width, :3] = image[crop] / 255
  frame[top:top + height, left:left + width, 3] = mask[crop]
  return cutouts_lib.fit(frame, (size, size))


def recover_instances(voc_dir: str, size: int, years: tuple[str, ...] = YEARS, split: str = "trainval",
                      class_name: str = "person", min_iou: float = 0.5, min_size: int = 32,
                      box_share: float = 0.8, exclude: frozenset[str] | set[str] = frozenset()) -> Instances:
  """Cut-outs of every instance of `class_name` in the segmented images (ImageSets/Segmentation/<split>.txt)
  of VOC `years`, normalised (normalised_cutout) to `size` x `size`, with a report of what was dropped.

  Instance i of an image is the pixels of value i in SegmentationObject, the i-th <object> of its XML (the
  devkit's convention); its class is the most common SegmentationClass index under it. An instance is dropped,
  and counted by reason (InstanceReport), when: the XML object is of the class but has no pixel (an object VOC
  left unsegmented, or void); XML and SegmentationClass disagree on whether it is of the class;
  the IoU of its mask's tight box with its XML box is under `min_iou`; the longer side of that tight box is
  under `min_size` pixels. Void pixels (255) are never object: the void band straddles the outline, so it
  holds the old background as much as the person, and pasted it would carry that background into a new scene
  as a halo (the artefact a discriminator or target learns to spot); leaving it out costs at most the outer
  2-3 pixels of the person, which the compositor's A.2 clean-up blurs at paste time anyway.

  min_iou 0.5 by default, VOC's own criterion for a box to be the object: the void band shrinks a mask's tight
  box by about 2 pixels on each side, which alone puts a correct small person (20 x 40 pixels) near IoU 0.7, so
  a stricter threshold trades correct small persons for fewer wrong masks (the paper inspected them by eye).
  min_size 32 (an upsampling of at most about 3x to cut-outs of 100 pixels) and box_share 0.8 (a margin for the
  STN's bilinear sampling and the clean-up's blur) are our choices; the paper gives neither.

  An image that cannot be read (its XML malformed, naming a class outside CLASS_NAMES or a box outside the
  frame; its JPEG or a PNG missing or undecodable), or whose JPEG, XML <size> and PNGs disagree in size, is
  skipped with a warning naming the file and counted. A VOC2012 image that is a copy of a VOC2007 image
  already read (2007_<id>) is read once (left_out: a copy that was skipped leaves the other one in), and images
  whose VOC2007 id (voc2007_id) is in `exclude` are left out: pass the VOC2007 test ids there when testing on
  VOC2007 test, since VOC2012's segmented images include VOC2007 ones. A run that keeps no instance at all is
  a DataError."""
  if class_name not in CLASS_NAMES:
    raise ValueError(f"class_name must be one of VOC's classes {CLASS_NAMES}, got {class_name!r}")
  if not (0 < box_share <= 1 and 0 <= min_iou <= 1):
    raise ValueError(f"box_share must be in (0, 1] and min_iou in [0, 1], got {box_share} and {min_iou}")
  target = CLASS_NAMES.index(class_name)
  counts = dict.fromkeys(("images", "kept", "box_mismatch", "no_mask", "class_mismatch", "too_small",
                          "unannotated", "duplicates", "excluded"), 0)
  skipped, seen, images, sources = [], set(), [], []
  for year in years:
    folder = year_folder(voc_dir, year, SEGMENTATION_FOLDERS)
    for image_id in read_image_ids(folder, split, SEGMENTATION_SETS):
      reason = left_out(year, image_id, seen, exclude)
      if reason:
        counts[reason] += 1
        continue
      try:
        record = read_record(folder, image_id)
        image, objects, classes = _read_segmented(folder, record)
      except DataError as e:
        logging.warning("skipping %s", e)
        skipped.append(str(e))
        continue
      seen.add(voc2007_id(year, image_id))
      counts["images"] += 1
      for index, mask, reason in _instances(record, objects, classes, target, min_iou, min_size):
        if reason:
          counts[reason] += 1
          continue
        counts["kept"] += 1
        images.append(normalised_cutout(image, mask, size, box_share))
        sources.append((year, image_id, index))
  report = InstanceReport(**counts, skipped=tuple(skipped), min_iou=min_iou, min_size=min_size)
  logging.info("%s", report.summary())
  if not images:
    raise DataError(f"{voc_dir}: no usable {class_name} instance in VOC {', '.join(years)} {split} "
                    f"segmentations ({report.summary()})")
  return Instances(cutouts_lib.Cutouts(np.stack(images), np.zeros(len(images), np.int32), [class_name]),
                   tuple(sources), report)


def _read_segmented(folder: str, record: Record) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(uint8 image, object indices, class indices) of a segmented image; DataError naming the file when one
  cannot be read or the sizes of JPEG, XML and PNGs disagree."""
  image = read_rgb(record.image_path)
  object_path = os.path.join(folder, OBJECT_PNGS, f"{record.image_id}.png")
  class_path = os.path.join(folder, CLASS_PNGS, f"{record.image_id}.png")
  objects, classes = read_indices(object_path), read_indices(class_path)
  expected = (record.height, record.width)
  for path, shape in ((record.image_path, image.shape[:2]), (object_path, objects.shape),
                      (class_path, classes.shape)):
    if shape != expected:
      raise DataError(f"{path}: {shape[1]}x{shape[0]} pixels, where its annotation "
                      f"{os.path.join(folder, ANNOTATIONS, record.image_id + '.xml')} says "
                      f"{record.width}x{record.height}")
  return image, objects, classes


def _instances(record: Record, objects: np.ndarray, classes: np.ndarray, target: int, min_iou: float,
               min_size: int) -> Iterator[tuple[int, np.ndarray | None, str]]:
  """(1-based object index, mask, reason) of each instance of class `target` in one image: reason "" for a
  kept one, else the InstanceReport count it goes to."""
  for index in range(1, len(record.classes) + 1):
    mask = objects == index
    in_xml = record.classes[index - 1] == target
    if not mask.any():
      if in_xml:
        yield index, None, "no_mask"
      continue
    in_png = np.bincount(classes[mask], minlength=VOID + 1).argmax() == target + 1
    if not (in_xml or in_png):
      continue
    if in_xml != in_png:
      yield index, None, "class_mismatch"
      continue
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    tight = (rows[0] / record.height, cols[0] / record.width, (rows[-1] + 1) / record.height,
             (cols[-1] + 1) / record.width)
    if evaluation.pair_iou(np.array(tight), record.boxes[index - 1][None])[0] < min_iou:
      yield index, None, "box_mismatch"
    elif max(rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0]) < min_size:
      yield index, None, "too_small"
    else:
      yield index, mask, ""
  # Indices past the XML's objects: a mask nothing in the XML names.
  extra = np.unique(objects[(objects > len(record.classes)) & (objects != VOID)])
  for index in extra:
    if np.bincount(classes[objects == index], minlength=VOID + 1).argmax() == target + 1:
      yield int(index), None, "unannotated"
