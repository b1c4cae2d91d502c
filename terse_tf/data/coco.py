"""COCO instances files (https://cocodataset.org/#format-data): a detection task's real and test scenes as a
folder of images with a COCO instances JSON, and backgrounds without a category (the COCO images in which
it is not annotated: the person-free backgrounds of the paper's VOC person experiment, §4.2, A.2), from a
COCO folder + JSON or from TFDS's `coco/2017`.

The JSON needs these keys (anything else is ignored):
    {"images": [{"id", "file_name", ("width", "height")}, ...],
     "categories": [{"id", "name"}, ...],
     "annotations": [{"id", "image_id", "category_id", "bbox": [x, y, width, height] in pixels, ("iscrowd")}]}

Scenes: each image is squashed to the task's square (as SSD resizes; a normalised box is unchanged by it:
its aspect in the square is the image's times the box's, as T sees it), its boxes normalised (ymin, xmin,
ymax, xmax) from COCO's pixels and clipped to the image (COCO's own files have boxes a fraction of a pixel
past the edge). Classes are matched to the task's by category NAME, so the ids are the file's own business.
`iscrowd` annotations and boxes under a minimum area are ignore boxes: neither object nor background in T's
training, crowd regions in evaluation.

Bad input: a file that is not COCO's instances format, or an annotation of an image or category the file
does not list, is one DataError naming the file and the id; an annotated category that is neither a class
nor skipped is a ConfigError naming both lists; an image listed but missing, unreadable or of another size
than the file says is skipped with a warning naming it, and counted; a box with no area once clipped is
dropped with a warning naming it, and counted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
from typing import Any, Iterable

import numpy as np
from absl import logging
from pycocotools.coco import COCO

from terse_tf.data import photos
from terse_tf.errors import ConfigError, DataError

TFDS_NAME = "coco/2017"
# The keys each entry of a list must have (COCO's instances format); the optional ones are read when there.
_REQUIRED = {"images": ("id", "file_name"), "categories": ("id", "name"),
             "annotations": ("id", "image_id", "category_id", "bbox")}


def read_instances(path: str) -> COCO:
  """A COCO instances JSON, checked and indexed by pycocotools; one DataError naming the file and what is
  wrong when it is not COCO's format or an annotation names an image or category it does not list."""
  try:
    with open(path) as f:
      dataset = json.load(f)
  except (OSError, ValueError) as e:
    raise DataError(f"{path}: cannot read this COCO instances JSON ({type(e).__name__}: {e})") from e
  expected = ("expected COCO's instances format: images [{id, file_name}], categories [{id, name}], "
              "annotations [{id, image_id, category_id, bbox [x, y, width, height]}]")
  if not isinstance(dataset, dict):
    raise DataError(f"{path}: a JSON {type(dataset).__name__}, not an object; {expected}")
  for key, fields in _REQUIRED.items():
    entries = dataset.get(key)
    if not isinstance(entries, list):
      raise DataError(f"{path}: no {key!r} list; {expected}")
    for entry in entries:
      missing = [field for field in fields if not isinstance(entry, dict) or field not in entry]
      if missing:
        raise DataError(f"{path}: an entry of {key!r} has no {', '.join(missing)} ({json.dumps(entry)[:100]}); "
                        f"{expected}")
  for key in ("images", "categories"):
    ids = [entry["id"] for entry in dataset[key]]
    if len(set(ids)) != len(ids):
      duplicate = next(i for i in ids if ids.count(i) > 1)
      raise DataError(f"{path}: {key} id {duplicate} is listed twice; each id must name one entry")
  image_ids = {image["id"] for image in dataset["images"]}
  category_ids = {category["id"] for category in dataset["categories"]}
  for annotation in dataset["annotations"]:
    where = f"{path}: annotation {annotation['id']}"
    if annotation["image_id"] not in image_ids:
      raise DataError(f"{where} is of image id {annotation['image_id']}, which \"images\" does not list")
    if annotation["category_id"] not in category_ids:
      raise DataError(f"{where} is of category id {annotation['category_id']}, which \"categories\" does not "
                      f"list (its ids: {sorted(category_ids)})")
    bbox = annotation["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
      raise DataError(f"{where}: bbox {bbox!r} is not four numbers [x, y, width, height] in pixels")
  with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress.
    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
  return coco


def category_classes(coco: COCO, path: str, class_names: list[str], skip_categories: Iterable[str] = (),
                     skip_flag: str = "skip_categories") -> dict[int, int | None]:
  """{category id: index in `class_names`, or None for a skipped category} of every category the file
  annotates, matched by name. An annotated category that is neither a class nor in `skip_categories` is a
  ConfigError naming both lists and `skip_flag` (the caller's flag for them)."""
  skipped, annotated = set(skip_categories), sorted(coco.catToImgs)
  mapping = {}
  for category_id in annotated:
    name = coco.cats[category_id]["name"]
    if name in class_names:
      mapping[category_id] = class_names.index(name)
    elif name in skipped:
      mapping[category_id] = None
    else:
      raise ConfigError(f"{path}: category {name!r} (id {category_id}) is not one of the cut-out classes "
                        f"{class_names}; the file annotates {[coco.cats[i]['name'] for i in annotated]}. Name "
                        f"a cut-out folder after it, or list it in --{skip_flag} to leave its boxes out")
  return mapping


@dataclasses.dataclass(frozen=True)
class Scenes:
  """Images of a COCO file, squashed: uint8 [N, S, S, 3], and per image the boxes [n, 4] (normalised ymin,
  xmin, ymax, xmax) and classes [n] scored, and the ignore boxes (crowd regions and boxes too small to score)
  with their classes."""
  images: np.ndarray
  boxes: list[np.ndarray]
  classes: list[np.ndarray]
  ignore_boxes: list[np.ndarray]
  ignore_classes: list[np.ndarray]
  names: list[str]       # Each image's file_name.
  aspects: np.ndarray    # [N] each image's width / height before it was squashed.
  skipped: int           # Images listed but missing, unreadable or of another size than the file says.


def read_scenes(images_dir: str, annotations: str, class_names: list[str], image_size: int,
                skip_categories: Iterable[str] = (), min_box_area: float = 0.0,
                skip_flag: str = "skip_categories") -> Scenes:
  """The images `annotations` (a COCO instances JSON) lists, from `images_dir`, in the file's order,
  squashed to image_size x image_size, with their boxes in `class_names`' ids (category_classes; boxes of a
  skipped category left out). Boxes of fewer than `min_box_area` pixels (in the full-size image) and crowd
  annotations are ignore boxes. No usable image at all is a DataError naming both paths."""
  coco = read_instances(annotations)
  classes_of = category_classes(coco, annotations, class_names, skip_categories, skip_flag)
  images, names, aspects, parts, skipped, dropped = [], [], [], [], 0, 0
  for entry in coco.dataset["images"]:
    path = os.path.join(images_dir, entry["file_name"])
    try:
      image = photos.read_rgb(path)
    except DataError as e:
      if os.path.exists(path):
        logging.warning("skipping %s", e)
      else:
        logging.warning("skipping %s: listed in %s but not there", path, annotations)
      skipped += 1
      continue
    height, width = image.shape[:2]
    listed = (entry.get("height", height), entry.get("width", width))
    if listed != (height, width):  # The boxes are in the listed image's pixels: this file is another.
      logging.warning("skipping %s: %dx%d pixels, %s lists it as %dx%d", path, width, height, annotations,
                      listed[1], listed[0])
      skipped += 1
      continue
    scored, ignored = ([], []), ([], [])
    for annotation in coco.imgToAnns[entry["id"]]:
      class_id = classes_of[annotation["category_id"]]
      if class_id is None:
        continue
      x, y, w, h = annotation["bbox"]
      xmin, ymin = np.clip([x, y], 0, [width, height])
      xmax, ymax = np.clip([x + w, y + h], 0, [width, height])
      if xmax <= xmin or ymax <= ymin:
        logging.warning("dropping annotation %s of %s in %s: its box %s has no area inside the %dx%d image",
                        annotation["id"], entry["file_name"], annotations, annotation["bbox"], width, height)
        dropped += 1
        continue
      small = (xmax - xmin) * (ymax - ymin) < min_box_area
      boxes, classes = ignored if annotation.get("iscrowd", 0) or small else scored
      boxes.append([ymin / height, xmin / width, ymax / height, xmax / width])
      classes.append(class_id)
    images.append(photos.resized(image, image_size, image_size))
    names.append(entry["file_name"])
    aspects.append(width / height)
    parts.append([np.array(b, np.float32).reshape(-1, 4) for b in (scored[0], ignored[0])] +
                 [np.array(c, np.int32) for c in (scored[1], ignored[1])])
  if skipped:
    logging.warning("%d of %d images of %s skipped (see the warnings above)", skipped,
                    len(coco.dataset["images"]), annotations)
  if dropped:
    logging.warning("%d annotations of %s dropped: no area inside their image", dropped, annotations)
  if not images:
    raise DataError(f"{annotations}: none of its {len(coco.dataset['images'])} images could be read from "
                    f"{images_dir} (its file_name values are paths under that folder)")
  boxes, ignore_boxes, classes, ignore_classes = (list(column) for column in zip(*parts))
  return Scenes(np.stack(images), boxes, classes, ignore_boxes, ignore_classes, names, np.array(aspects),
                skipped)


# ------------------------------------------------------------------------------------ backgrounds
@dataclasses.dataclass(frozen=True)
class Backgrounds:
  """COCO images without a category: `paths` of those on disk, and the counts left out, for a report."""
  paths: list[str]
  excluded: int    # Images with an annotation (crowd or not) of the category.
  missing: int     # Images without it, listed but not on disk.

  def report(self, category: str) -> str:
    return (f"{len(self.paths)} COCO images without {category!r} ({self.excluded} with it left out, "
            f"{self.missing} listed but missing)")


def _category_id(categories: list[str], category: str, source: str) -> int:
  if category not in categories:
    raise ConfigError(f"{source} has no category {category!r}; its categories are {categories}")
  return categories.index(category)


def backgrounds_without(coco_dir: str, annotations: str, exclude_category: str) -> Backgrounds:
  """The images of `coco_dir` (a COCO image folder, train2017/ say) that `annotations` (its instances JSON)
  lists and in which no object of `exclude_category` (a category name, "person") is annotated, crowds
  included, in the file's order. Images not on disk are counted and left out (a warning says how many); none
  left at all is a DataError."""
  coco = read_instances(annotations)
  categories = coco.loadCats(coco.getCatIds())
  names = [category["name"] for category in categories]
  _category_id(names, exclude_category, annotations)
  excluded_ids = {category["id"] for category in categories if category["name"] == exclude_category}
  with_category = {image_id for category_id in excluded_ids for image_id in coco.catToImgs[category_id]}
  paths, missing = [], 0
  for entry in coco.dataset["images"]:
    if entry["id"] in with_category:
      continue
    path = os.path.join(coco_dir, entry["file_name"])
    if os.path.exists(path):
      paths.append(path)
    else:
      missing += 1
  if missing:
    logging.warning("%d images of %s are not in %s; left out of the backgrounds", missing, annotations, coco_dir)
  if not paths:
    raise DataError(f"{coco_dir}: none of the images {annotations} lists without {exclude_category!r} is there")
  return Backgrounds(paths, len(with_category), missing)


def tfds_backgrounds_without(examples: Iterable[dict[str, Any]], label_names: list[str], exclude_category: str,
                             count: int, rng: np.random.Generator, min_side: int = 64
                             ) -> tuple[photos.Photos, int]:
  """From examples shaped as TFDS's `coco/2017` gives them with its images left encoded (tfds.as_numpy over
  load_tfds_backgrounds' dataset: {"image": JPEG bytes, "image/filename": bytes, "objects": {"label": int [n],
  "is_crowd": bool [n], ...}}), with `label_names` the dataset's (info.features["objects"]["label"].names):
  (`count` of the images without an object of `exclude_category`, drawn uniformly at random by `rng` (all of
  them when there are fewer), decoded in the stream's order and named by their file names, those under
  `min_side` pixels skipped as photos.read_photos skips them; how many images were left out for having one).

  One pass over the stream that holds at most `count` encoded images (reservoir sampling, Algorithm R) and
  decodes only the drawn ones: a draw as random as the COCO folder's, for the cost of reading the split once."""
  label = _category_id(list(label_names), exclude_category, f"TFDS {TFDS_NAME}")
  drawn, without, excluded = [], 0, 0  # drawn: (position among the images without it, name, bytes).
  for example in examples:
    if np.any(np.asarray(example["objects"]["label"]) == label):
      excluded += 1
      continue
    name = example["image/filename"]
    entry = (without, name.decode() if isinstance(name, bytes) else str(name), example["image"])
    if without < count:
      drawn.append(entry)
    else:
      slot = int(rng.integers(without + 1))
      if slot < count:
        drawn[slot] = entry
    without += 1
  drawn.sort(key=lambda entry: entry[0])
  source = f"TFDS {TFDS_NAME}"
  encoded = {f"{source} {name}": image for _, name, image in drawn}  # COCO's file names are unique.
  found = photos.read_photos(list(encoded), source, min_side, names=[name for _, name, _ in drawn],
                             read=lambda where: photos.decode_rgb(encoded[where], where))
  return found, excluded


def load_tfds_backgrounds(data_dir: str, exclude_category: str, count: int, rng: np.random.Generator,
                          min_side: int = 64, split: str = "train") -> tuple[photos.Photos, int]:
  """tfds_backgrounds_without over TFDS's `coco/2017` `split`, prepared under `data_dir` ('' TFDS's
  default), its images read undecoded (tfds.decode.SkipDecoding); never downloads (COCO is 25 GB). A
  DataError naming the folder when it is not prepared there."""
  import tensorflow_datasets as tfds  # Imported here: only this source needs it.

  try:
    dataset, info = tfds.load(TFDS_NAME, split=split, data_dir=data_dir or None, download=False,
                              with_info=True, decoders={"image": tfds.decode.SkipDecoding()})
  except Exception as e:  # TFDS raises assorted types for "not prepared".
    raise DataError(f"TFDS {TFDS_NAME} is not prepared under data_dir={data_dir or '(TFDS default)'} "
                    f"({type(e).__name__}: {e}); prepare it with `tfds build {TFDS_NAME}`, or give a COCO "
                    "folder and its instances JSON") from e
  return tfds_backgrounds_without(tfds.as_numpy(dataset), info.features["objects"]["label"].names,
                                  exclude_category, count, rng, min_side)
