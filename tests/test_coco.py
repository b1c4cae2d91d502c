"""COCO instances files: scenes (boxes normalised, classes by category name, crowds as ignore boxes, a missing
image skipped and counted), the errors a file that is not COCO or names an unknown id gets, and backgrounds
without a category from a COCO folder and from TFDS-shaped examples. Fixtures are written in COCO's format."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from terse_tf.data import coco
from terse_tf.errors import ConfigError, DataError

CLASSES = ["bottle", "mug"]


def write_image(path, image):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(tf.io.encode_png(image).numpy())


def write_coco(folder, images, annotations, categories=((7, "mug"), (3, "bottle"))):
  """COCO's layout: images (name -> uint8 array, or (name, width, height) for an image listed but not written)
  under `folder`, and `folder`/annotations.json listing them with ids 1, 2, ...; annotations are
  (image index, category id, [x, y, w, h], iscrowd). Returns the JSON's path."""
  entries = []
  for index, (name, image) in enumerate(images.items(), start=1):
    if isinstance(image, np.ndarray):
      write_image(os.path.join(folder, name), image)
      height, width = image.shape[:2]
    else:
      width, height = image
    entries.append({"id": index, "file_name": name, "width": width, "height": height})
  dataset = {"info": {}, "images": entries, "categories": [{"id": i, "name": n} for i, n in categories],
             "annotations": [{"id": 100 + k, "image_id": image, "category_id": category, "bbox": bbox,
                              "area": bbox[2] * bbox[3], "iscrowd": crowd}
                             for k, (image, category, bbox, crowd) in enumerate(annotations)]}
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, "annotations.json")
  with open(path, "w") as f:
    json.dump(dataset, f)
  return path


def patch_image(height, width, box, colour):
  image = np.zeros((height, width, 3), np.uint8)
  x, y, w, h = box
  image[y:y + h, x:x + w] = colour
  return image


def test_a_coco_file_gives_squashed_images_with_normalised_boxes_classes_by_name_and_crowds_to_ignore(tmp_path):
  wide = patch_image(40, 80, (40, 10, 20, 20), (200, 40, 40))  # 2:1, a red mug in its right half.
  square = patch_image(40, 40, (0, 0, 20, 40), (40, 200, 40))
  path = write_coco(str(tmp_path), {"wide.png": wide, "gone.png": (40, 40), "square.png": square}, [
      (1, 7, [40, 10, 20, 20], 0),
      (1, 3, [2, 2, 8, 8], 1),          # A crowd of bottles: an ignore box.
      (3, 3, [0, 0, 20, 40], 0),
      (3, 7, [30, 30, 20, 20], 0),      # Past the bottom-right corner: clipped to the image.
      (3, 7, [50, 50, 5, 5], 0),        # Wholly outside: no area once clipped, dropped.
      (3, 3, [30, 2, 3, 3], 0)])        # 9 pixels: under the area floor, an ignore box.
  scenes = coco.read_scenes(str(tmp_path), path, CLASSES, image_size=32, min_box_area=10)
  assert scenes.names == ["wide.png", "square.png"] and scenes.skipped == 1  # gone.png is not on disk.
  assert scenes.images.shape == (2, 32, 32, 3) and scenes.images.dtype == np.uint8
  np.testing.assert_allclose(scenes.aspects, [2.0, 1.0])
  np.testing.assert_allclose(scenes.boxes[0], [[10 / 40, 40 / 80, 30 / 40, 60 / 80]])
  assert scenes.classes[0].tolist() == [CLASSES.index("mug")]  # Category 7 is "mug": by name, not by id.
  np.testing.assert_allclose(scenes.ignore_boxes[0], [[2 / 40, 2 / 80, 10 / 40, 10 / 80]])
  assert scenes.ignore_classes[0].tolist() == [CLASSES.index("bottle")]
  np.testing.assert_allclose(scenes.boxes[1], [[0, 0, 1, 0.5], [0.75, 0.75, 1, 1]])
  assert scenes.classes[1].tolist() == [0, 1]
  np.testing.assert_allclose(scenes.ignore_boxes[1], [[2 / 40, 30 / 40, 5 / 40, 33 / 40]])
  # The mug's patch lands where its normalised box says in the squashed image.
  ymin, xmin, ymax, xmax = (scenes.boxes[0][0] * 32).round().astype(int)
  np.testing.assert_allclose(scenes.images[0, ymin + 2:ymax - 2, xmin + 2:xmax - 2].mean(axis=(0, 1)),
                             [200, 40, 40], atol=2)


def test_an_unreadable_or_resized_image_is_skipped_and_counted_and_none_left_is_an_error(tmp_path):
  image = patch_image(40, 40, (0, 0, 10, 10), (255, 255, 255))
  path = write_coco(str(tmp_path), {"a.png": image, "b.png": image, "c.png": image},
                    [(1, 3, [0, 0, 10, 10], 0)])
  (tmp_path / "b.png").write_bytes(b"not a png")
  write_image(str(tmp_path / "c.png"), np.zeros((40, 50, 3), np.uint8))  # Not the 40x40 the file lists.
  scenes = coco.read_scenes(str(tmp_path), path, CLASSES, image_size=16)
  assert scenes.names == ["a.png"] and scenes.skipped == 2
  with pytest.raises(DataError, match=r"annotations\.json: none of its 3 images could be read from .*elsewhere"):
    coco.read_scenes(str(tmp_path / "elsewhere"), path, CLASSES, image_size=16)


def test_a_file_that_is_not_coco_or_names_an_unknown_id_is_one_error_naming_the_file_and_the_id(tmp_path):
  image = patch_image(20, 20, (0, 0, 5, 5), (255, 0, 0))
  path = write_coco(str(tmp_path), {"a.png": image}, [(1, 3, [0, 0, 5, 5], 0)])
  good = json.loads(open(path).read())

  def rewritten(change):
    dataset = json.loads(json.dumps(good))
    change(dataset)
    with open(path, "w") as f:
      json.dump(dataset, f)
    return path

  for change, message in (
      (lambda d: d.pop("annotations"), r"no 'annotations' list; expected COCO's instances format"),
      (lambda d: d["images"][0].pop("file_name"), r"an entry of 'images' has no file_name"),
      (lambda d: d["annotations"][0].update(image_id=42), r"annotation 100 is of image id 42, which \"images\" "
       r"does not list"),
      (lambda d: d["annotations"][0].update(category_id=99), r"annotation 100 is of category id 99, which "
       r"\"categories\" does not list \(its ids: \[3, 7\]\)"),
      (lambda d: d["annotations"][0].update(bbox=[0, 0, 5]), r"annotation 100: bbox \[0, 0, 5\] is not four "
       r"numbers"),
      (lambda d: d["categories"].append({"id": 3, "name": "cup"}), r"categories id 3 is listed twice")):
    with pytest.raises(DataError, match=r"annotations\.json: " + message):
      coco.read_scenes(str(tmp_path), rewritten(change), CLASSES, image_size=16)
  with open(path, "w") as f:
    f.write('{"images": [')
  with pytest.raises(DataError, match=r"annotations\.json: cannot read this COCO instances JSON"):
    coco.read_instances(path)


def test_a_category_that_is_no_class_is_an_error_naming_both_lists_unless_skipped(tmp_path):
  image = patch_image(20, 20, (0, 0, 5, 5), (255, 0, 0))
  path = write_coco(str(tmp_path), {"a.png": image}, [(1, 3, [0, 0, 5, 5], 0), (1, 5, [5, 5, 5, 5], 0)],
                    categories=((3, "bottle"), (5, "spoon"), (7, "mug"), (8, "fork")))  # fork: no annotation.
  with pytest.raises(ConfigError, match=r"category 'spoon' \(id 5\) is not one of the cut-out classes "
                                        r"\['bottle', 'mug'\]; the file annotates \['bottle', 'spoon'\]\. .*"
                                        r"--folders_skip_categories"):
    coco.read_scenes(str(tmp_path), path, CLASSES, 16, skip_flag="folders_skip_categories")
  scenes = coco.read_scenes(str(tmp_path), path, CLASSES, 16, skip_categories=("spoon",))
  assert scenes.classes[0].tolist() == [0] and len(scenes.ignore_boxes[0]) == 0  # The spoon's box left out.


# ------------------------------------------------------------------------------------ backgrounds
def test_backgrounds_leave_out_every_image_with_the_category_crowds_included(tmp_path):
  image = np.full((30, 30, 3), 90, np.uint8)
  images = {"person.png": image, "crowd.png": image, "street.png": image, "empty.png": image,
            "gone.png": (30, 30)}
  path = write_coco(str(tmp_path), images, [(1, 1, [0, 0, 9, 9], 0), (1, 2, [9, 9, 9, 9], 0),
                                            (2, 1, [0, 0, 30, 30], 1), (3, 2, [1, 1, 5, 5], 0)],
                    categories=((1, "person"), (2, "car")))
  found = coco.backgrounds_without(str(tmp_path), path, "person")
  assert [os.path.basename(p) for p in found.paths] == ["street.png", "empty.png"]
  assert (found.excluded, found.missing) == (2, 1)
  assert found.report("person") == "2 COCO images without 'person' (2 with it left out, 1 listed but missing)"
  with pytest.raises(ConfigError, match=r"annotations\.json has no category 'persn'; its categories are "
                                        r"\['person', 'car'\]"):
    coco.backgrounds_without(str(tmp_path), path, "persn")


def tfds_example(name, labels, crowd=None, size=(24, 32)):
  """One example as TFDS's coco/2017 gives it through tfds.as_numpy with its image left encoded
  (tfds.decode.SkipDecoding): a PNG whose every pixel is the name's length."""
  count = len(labels)
  return {"image": tf.io.encode_png(np.full((*size, 3), len(name), np.uint8)).numpy(),
          "image/filename": name.encode(), "image/id": np.int64(len(name)),
          "objects": {"area": np.full(count, 50, np.int64), "bbox": np.tile(np.float32([[0.1, 0.1, 0.5, 0.5]]),
                                                                            (count, 1)),
                      "id": np.arange(count, dtype=np.int64), "is_crowd": np.array(crowd or [False] * count),
                      "label": np.array(labels, np.int64)}}


def test_tfds_shaped_examples_give_a_random_draw_of_backgrounds_without_the_category():
  label_names = ["person", "bicycle", "car"]  # TFDS's ClassLabel names, in its order: person is 0.
  examples = [tfds_example("a.jpg", [0, 2]), tfds_example("bb.jpg", [2, 1]), tfds_example("ccc.jpg", []),
              tfds_example("dddd.jpg", [0], crowd=[True]), tfds_example("eeeee.jpg", [1]),
              tfds_example("ffffff.jpg", [], size=(8, 40))]

  def draw(count, seed, min_side=16):
    return coco.tfds_backgrounds_without(iter(examples), label_names, "person", count,
                                         np.random.default_rng(seed), min_side)

  # Fewer without a person than asked for: all of them, decoded, in the stream's order, except the one whose
  # shorter side is under min_side (skipped as photos.read_photos skips a small file).
  kept, excluded = draw(10, 0)
  assert kept.names == ["bb.jpg", "ccc.jpg", "eeeee.jpg"] and excluded == 2
  assert kept[0].shape == (24, 32, 3) and kept[0].dtype == np.uint8 and kept[1][0, 0, 0] == 7
  assert draw(10, 0, min_side=8)[0].names[-1] == "ffffff.jpg"
  # More than asked for: a draw by the seed, the same for the same seed, not always the stream's first ones.
  draws = {seed: tuple(draw(2, seed, min_side=8)[0].names) for seed in range(12)}
  assert draws[3] == tuple(draw(2, 3, min_side=8)[0].names) and all(len(names) == 2 for names in draws.values())
  assert len(set(draws.values())) > 2 and {"eeeee.jpg", "ffffff.jpg"} <= set().union(*draws.values())
  with pytest.raises(ConfigError, match=r"TFDS coco/2017 has no category 'people'; its categories are "):
    coco.tfds_backgrounds_without(iter(examples), label_names, "people", 2, np.random.default_rng(0))
