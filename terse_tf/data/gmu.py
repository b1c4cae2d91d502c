"""GMU Kitchen scenes (Georgakis et al., "Multiview RGB-D dataset for object instance detection", 3DV 2016;
https://cs.gmu.edu/~robot/gmu-kitchens.html) and the BigBIRD views of its 11 products, on disk as they are
distributed. The paper's §4.3 / A.3 detects these 11 instances with a Faster R-CNN.

Scenes, one folder per kitchen video:
    <gmu_dir>/gmu_scene_00N/Images/rgb_<frame>.png        1920x1080 RGB frames (Depths/ beside them is unused)
    <gmu_dir>/gmu_scene_00N/Annotations/rgb_<frame>.xml   one PASCAL VOC file per annotated frame:
        <annotation><folder/><filename>rgb_<frame>.png</filename><size><width/><height/><depth/></size>
          <object><name>coca_cola_glass_bottle</name><pose/><truncated/><difficult/>
            <bndbox><xmin/><ymin/><xmax/><ymax/></bndbox></object>...</annotation>
The format is not documented on the dataset's page that we could reach; it is what three independent public
readers of the real files parse (VOC XML under Annotations/, <filename> naming the frame in Images/, boxes
in 1-based inclusive pixels as VOC has them). The object names are BigBIRD's (lower case, underscores), as
the BigBIRD views of the products are named; the readers we found did not print the 11 names as they occur
in the XML files, so CLASS_NAMES is BigBIRD's spelling of the products in Georgakis et al. 2017's Table I
(which names them only in short). A name outside CLASS_NAMES is an error naming the file and the name,
unless listed in `skip_names` (an object the benchmark does not score).

Scene split: the benchmark (3DV 2016) and the Faster R-CNN results of Georgakis et al. 2017 (RSS, "Synthesizing
training data for object detection in indoor scenes", §IV-A: "In each fold six scenes are used for training
and three are used for testing") use three folds of the nine scenes, six scenes to train and three to test.
TERSE compares with Cut-Paste-Learn (Dwibedi et al. 2017, the paper's reference [7]); that it used the same
folds is our assumption. Which three scenes each fold tests on we could not read in any source we reached.
The one trace is a public converter that builds "Kitchen_fold1" from gmu_scene_002, 004 and 005:
FOLD1_TEST_SCENES is that, our assumption; the other folds are whatever scenes a user gives (the task's
--gmu_test_scenes). Scenes are never split by frame: consecutive frames of one video are near duplicates, so
a frame split would test on training views.

Objects, BigBIRD's layout (one folder per object, five cameras NP1..NP5 at 3-degree turntable steps):
    <objects_dir>/<object>/NP<camera>_<angle>.jpg
    <objects_dir>/<object>/masks/NP<camera>_<angle>_mask.pbm   a PBM bitmap (P4 binary or P1 text)
The masks' polarity is not stated with the data; public readers disagree (object black, or the minority
value), so the object is the value the mask's border does not have (a turntable object never fills the
border). Any folder data/cutouts.py reads (one sub-folder per class, with alpha or .mask.png) works as well.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re

import numpy as np
from absl import logging

from terse_tf.data import cutouts as cutouts_lib
from terse_tf.data import photos, voc
from terse_tf.errors import DataError

# The 11 products, in the order of Georgakis et al. 2017's Table I (alphabetical), BigBIRD's names.
CLASS_NAMES = ("coca_cola_glass_bottle", "coffee_mate_french_vanilla", "honey_bunches_of_oats_honey_roasted",
               "hunts_sauce", "mahatma_rice", "nature_valley_soft_baked_oatmeal_squares_cinnamon_brown_sugar",
               "nature_valley_sweet_and_salty_nut_almond", "palmolive_orange", "pop_secret_light_butter",
               "pringles_bbq", "red_bull")
# The column headers of the published per-class tables (Georgakis et al. 2017 Table I, Cut-Paste-Learn, TERSE).
SHORT_NAMES = ("coca cola", "coffee mate", "honey bunches", "hunts sauce", "mahatma rice", "nature valley 1",
               "nature valley 2", "palmolive orange", "pop secret", "pringles bbq", "red bull")
NUM_SCENES = 9
FOLD1_TEST_SCENES = (2, 4, 5)
IMAGES, ANNOTATIONS, MASKS = "Images", "Annotations", "masks"
_BIGBIRD_VIEW = re.compile(r"^NP([1-5])_(\d+)\.jpg$")
# A PBM header token after any whitespace and '#' comments (each to the end of its line).
_PBM_TOKEN = re.compile(rb"\s*(#[^\n]*\n\s*)*([^\s#]+)")


def scene_folder(scene: int) -> str:
  return f"gmu_scene_{scene:03d}"


@dataclasses.dataclass(frozen=True)
class Frame:
  """One annotated frame: its image file, size, and its objects' boxes [n, 4] (normalised ymin, xmin, ymax,
  xmax) and classes [n] (indices into CLASS_NAMES)."""
  image_path: str
  height: int
  width: int
  boxes: np.ndarray
  classes: np.ndarray


def read_annotation(path: str, images_dir: str, skip_names: tuple[str, ...] = ()) -> Frame:
  """One VOC annotation file of a scene (voc.parse_annotation); DataError naming the file when it is malformed,
  names a class outside CLASS_NAMES (and `skip_names`), or its frame is not in `images_dir`."""
  annotation = voc.parse_annotation(path)
  if not annotation.filename:
    raise DataError(f"{path}: no <filename> (expected a PASCAL VOC annotation naming its frame in {IMAGES}/)")
  image_path = os.path.join(images_dir, os.path.basename(annotation.filename))
  if not os.path.exists(image_path):
    raise DataError(f"{path}: its frame {image_path} is missing")
  boxes, classes = [], []
  for obj in annotation.objects:
    if obj.name in skip_names:
      continue
    if obj.name not in CLASS_NAMES:
      raise DataError(f"{path}: unknown object {obj.name!r}; expected one of the 11 GMU products "
                      f"{list(CLASS_NAMES)} (list objects the benchmark does not score in --gmu_skip_objects)")
    boxes.append(voc.box_to_normalised(obj.name, obj.box, annotation.height, annotation.width, path))
    classes.append(CLASS_NAMES.index(obj.name))
  return Frame(image_path, annotation.height, annotation.width, np.array(boxes, np.float32).reshape(-1, 4),
               np.array(classes, np.int32))


def read_scene(gmu_dir: str, scene: int, skip_names: tuple[str, ...] = ()) -> list[Frame]:
  """The annotated frames of scene `scene` (1..9), in frame order; one DataError naming what is missing when
  the folder, its Images/ or its annotations are not there."""
  folder = os.path.join(gmu_dir, scene_folder(scene))
  if not os.path.isdir(folder):
    raise DataError(f"--gmu_dir={gmu_dir}: no scene folder {scene_folder(scene)}/; expected the nine GMU "
                    f"Kitchen scenes {scene_folder(1)} ... {scene_folder(NUM_SCENES)}, each with {IMAGES}/ and "
                    f"{ANNOTATIONS}/")
  missing = [name + "/" for name in (IMAGES, ANNOTATIONS) if not os.path.isdir(os.path.join(folder, name))]
  if missing:
    raise DataError(f"{folder}: missing {' and '.join(missing)}; expected {IMAGES}/ (rgb_<frame>.png) and "
                    f"{ANNOTATIONS}/ (rgb_<frame>.xml, PASCAL VOC)")
  annotations = sorted(glob.glob(os.path.join(folder, ANNOTATIONS, "*.xml")), key=_frame_order)
  if not annotations:
    raise DataError(f"{os.path.join(folder, ANNOTATIONS)}: no annotation (.xml) files; expected one PASCAL VOC "
                    "file per annotated frame")
  frames = [read_annotation(path, os.path.join(folder, IMAGES), skip_names) for path in annotations]
  unannotated = len(glob.glob(os.path.join(folder, IMAGES, "*"))) - len(frames)
  if unannotated > 0:  # Frames without a file are not used: nothing says what is in them.
    logging.info("%s: %d frames have no annotation file and are left out", folder, unannotated)
  return frames


def _frame_order(path: str) -> tuple:
  """Natural order (rgb_9 before rgb_10), so a frame stride samples the video evenly."""
  return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", os.path.basename(path)))


@dataclasses.dataclass(frozen=True)
class Split:
  """Frames of some scenes, resized: uint8 images [N, S, S, 3], and per image the boxes and classes scored,
  and the boxes (with their classes) too small to score, to be ignored in training and evaluation."""
  images: np.ndarray
  boxes: list[np.ndarray]
  classes: list[np.ndarray]
  ignore_boxes: list[np.ndarray]
  ignore_classes: list[np.ndarray]
  scenes: np.ndarray  # [N] the scene of each image.
  frame_aspect: float  # Width / height of every frame before it was squashed (16 / 9 for GMU's 1920x1080).


def load_split(gmu_dir: str, scenes: tuple[int, ...], image_size: int, frame_stride: int = 1,
               skip_names: tuple[str, ...] = (), min_box_area: float = 0.0) -> Split:
  """Every `frame_stride`-th annotated frame of `scenes`, squashed to image_size x image_size (as SSD resizes;
  normalised boxes are unchanged by it); every frame must have the first one's size, so that one squash
  (`frame_aspect`) applies to all. Boxes of less than `min_box_area` pixels in the full frame are not
  scored: they are the split's ignore boxes, neither object nor background (deleting them would teach T
  that a small product is background, and count a detection of one a false positive)."""
  images, boxes, classes, ignore_boxes, ignore_classes, scene_of, first = [], [], [], [], [], [], None
  for scene in scenes:
    for frame in read_scene(gmu_dir, scene, skip_names)[::frame_stride]:
      image = photos.read_rgb(frame.image_path)
      if image.shape[:2] != (frame.height, frame.width):
        raise DataError(f"{frame.image_path}: {image.shape[1]}x{image.shape[0]} pixels, its annotation says "
                        f"{frame.width}x{frame.height}")
      first = first or frame
      if (frame.height, frame.width) != (first.height, first.width):
        raise DataError(f"{frame.image_path}: {frame.width}x{frame.height} pixels, where {first.image_path} has "
                        f"{first.width}x{first.height}; every frame must have one size (all are squashed to a "
                        "square, and S's composites the same way)")
      images.append(photos.resized(image, image_size, image_size))
      sides = (frame.boxes[:, 2:] - frame.boxes[:, :2]) * [frame.height, frame.width]
      keep = sides.prod(axis=1) >= min_box_area
      boxes.append(frame.boxes[keep])
      classes.append(frame.classes[keep])
      ignore_boxes.append(frame.boxes[~keep])
      ignore_classes.append(frame.classes[~keep])
      scene_of.append(scene)
  return Split(np.stack(images), boxes, classes, ignore_boxes, ignore_classes, np.array(scene_of, np.int32),
               first.width / first.height)


# ------------------------------------------------------------------------------------ objects
def read_pbm(path: str) -> np.ndarray:
  """A PBM bitmap (P4 binary or P1 text) -> bool [H, W], True where the file's bit is 1 (black)."""
  with open(path, "rb") as f:
    data = f.read()
  tokens, position = [], 0
  while len(tokens) < 3:  # Magic number, width, height; '#' starts a comment to the end of the line.
    match = _PBM_TOKEN.match(data, position)
    if match is None:
      raise DataError(f"{path}: not a PBM bitmap (expected a P4 or P1 header with width and height)")
    tokens.append(match.group(2))
    position = match.end()
  if not (tokens[1].isdigit() and tokens[2].isdigit()):
    size = " x ".join(repr(token.decode(errors="replace")) for token in tokens[1:])
    raise DataError(f"{path}: PBM header's size is {size}, not two whole numbers")
  magic, (width, height) = tokens[0], (int(tokens[1]), int(tokens[2]))
  if magic == b"P4":
    row_bytes, start = (width + 7) // 8, position + 1  # One whitespace byte ends the header.
    if len(data) < start + row_bytes * height:
      raise DataError(f"{path}: truncated P4 bitmap ({width}x{height} needs {row_bytes * height} bytes)")
    raw = np.frombuffer(data, np.uint8, count=row_bytes * height, offset=start)
    return np.unpackbits(raw.reshape(height, row_bytes), axis=1)[:, :width].astype(bool)
  if magic == b"P1":
    bits = re.sub(rb"#[^\n]*", b"", data[position:])
    values = np.frombuffer(re.sub(rb"\s", b"", bits), np.uint8) - ord("0")
    if values.size != width * height:
      raise DataError(f"{path}: P1 bitmap has {values.size} pixels, its header says {width}x{height}")
    return values.reshape(height, width).astype(bool)
  raise DataError(f"{path}: not a PBM bitmap (magic {magic!r}; expected P4 or P1)")


def object_mask(bitmap: np.ndarray) -> np.ndarray:
  """The object of a turntable mask: the pixels whose value the border does not mostly have."""
  border = np.concatenate([bitmap[0], bitmap[-1], bitmap[:, 0], bitmap[:, -1]])
  return bitmap != (border.mean() > 0.5)


def read_bigbird_view(image_path: str, mask_path: str) -> np.ndarray:
  """float32 [h, w, 4] RGB + alpha of one BigBIRD view, cropped to its mask's box."""
  if not os.path.exists(mask_path):
    raise DataError(f"{image_path}: no mask {mask_path}")
  image = photos.read_rgb(image_path).astype(np.float32) / 255
  mask = object_mask(read_pbm(mask_path))
  if mask.shape != image.shape[:2]:
    raise DataError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} pixels, its image is "
                    f"{image.shape[1]}x{image.shape[0]}")
  rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
  if not len(rows):
    raise DataError(f"{mask_path}: empty mask (no object pixel)")
  crop = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
  return np.concatenate([image[crop], mask[crop][..., None].astype(np.float32)], axis=-1)


def is_bigbird(objects_dir: str) -> bool:
  """Whether a folder of objects is in BigBIRD's layout (a masks/ folder beside each object's views)."""
  return any(os.path.isdir(os.path.join(objects_dir, name, MASKS)) for name in CLASS_NAMES)


def load_objects(objects_dir: str, size: tuple[int, int], view_stride: int = 1) -> cutouts_lib.Cutouts:
  """Cut-outs of the 11 products fitted to `size`, class ids as CLASS_NAMES: from BigBIRD's layout (every
  `view_stride`-th turntable angle of each of the five cameras; other objects' folders are ignored), or from a
  data/cutouts.py folder whose classes are the 11 names."""
  if not os.path.isdir(objects_dir):
    raise DataError(f"--gmu_objects_dir={objects_dir}: not a directory; expected BigBIRD's object folders "
                    f"({', '.join(CLASS_NAMES[:2])}, ...) or one sub-folder of cut-outs per product")
  missing = [name for name in CLASS_NAMES if not os.path.isdir(os.path.join(objects_dir, name))]
  if missing:
    raise DataError(f"--gmu_objects_dir={objects_dir}: no folder for {', '.join(missing)}; expected one folder "
                    f"per GMU product, named {list(CLASS_NAMES)}")
  if not is_bigbird(objects_dir):
    found = cutouts_lib.load_cutouts(objects_dir, size, flag="--gmu_objects_dir")
    if sorted(found.class_names) != sorted(CLASS_NAMES):
      raise DataError(f"--gmu_objects_dir={objects_dir}: its classes are {found.class_names}; expected exactly "
                      f"the 11 GMU products {list(CLASS_NAMES)} (move other folders out)")
    order = np.array([CLASS_NAMES.index(name) for name in found.class_names], np.int32)
    return cutouts_lib.Cutouts(found.images, order[found.classes], list(CLASS_NAMES))
  images, classes = [], []
  for class_id, name in enumerate(CLASS_NAMES):
    folder = os.path.join(objects_dir, name)
    views = [(path, _BIGBIRD_VIEW.match(os.path.basename(path))) for path in sorted(
        glob.glob(os.path.join(folder, "NP*_*.jpg")), key=_frame_order)]
    views = [path for path, match in views if match and (int(match.group(2)) // 3) % view_stride == 0]
    if not views:
      raise DataError(f"{folder}: no BigBIRD view NP<camera>_<angle>.jpg")
    for path in views:
      stem = os.path.splitext(os.path.basename(path))[0]
      images.append(cutouts_lib.fit(read_bigbird_view(path, os.path.join(folder, MASKS, f"{stem}_mask.pbm")),
                                    size))
      classes.append(class_id)
  return cutouts_lib.Cutouts(np.stack(images), np.array(classes, np.int32), list(CLASS_NAMES))
