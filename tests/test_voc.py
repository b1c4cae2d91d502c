"""PASCAL VOC: records from a mini VOCdevkit written in the devkit's formats (JPEGs, XML with difficult and
truncated flags, palette PNGs with VOC's void borders), the same records from TFDS-shaped examples, person
instance recovery with its drops and skips counted, the cut-outs' normalisation, and the errors a bad folder
gets."""

import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from terse_tf.data import voc
from terse_tf.data.photos import read_rgb
from terse_tf.errors import DataError

W, H = 120, 90
PERSON, DOG, CHAIR = (voc.CLASS_NAMES.index(name) + 1 for name in ("person", "dog", "chair"))  # PNG indices.
PERSON_COLOUR = (200, 40, 40)


def voc_palette():
  """The devkit's colour map (VOClabelcolormap.m): index bits spread over the high bits of R, G and B."""
  palette = np.zeros((256, 3), np.uint8)
  for index in range(256):
    code, rgb = index, [0, 0, 0]
    for bit in range(8):
      for channel in range(3):
        rgb[channel] |= ((code >> channel) & 1) << (7 - bit)
      code >>= 3
    palette[index] = rgb
  return palette


def write_indices(path, indices):
  """A palette (mode P) PNG as the devkit ships its segmentations."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = Image.frombytes("P", (indices.shape[1], indices.shape[0]), indices.astype(np.uint8).tobytes())
  image.putpalette(voc_palette().tobytes())
  image.save(path)


def voc_xml(image_id, objects, width=W, height=H):
  """A VOC annotation; objects: (name, (xmin, ymin, xmax, ymax) in 1-based inclusive pixels, difficult,
  truncated)."""
  entries = "".join(
      f"<object><name>{name}</name><pose>Unspecified</pose><truncated>{int(truncated)}</truncated>"
      f"<difficult>{int(difficult)}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
      f"<ymax>{y1}</ymax></bndbox></object>" for name, (x0, y0, x1, y1), difficult, truncated in objects)
  return (f"<annotation><folder>VOC</folder><filename>{image_id}.jpg</filename><size><width>{width}</width>"
          f"<height>{height}</height><depth>3</depth></size><segmented>1</segmented>{entries}</annotation>")


def write_image(folder, image_id, objects, image=None, segmentation=None, png_size=None):
  """JPEG (noise, each object's box painted), XML and, with `segmentation` [(object index, class index,
  (row0, col0, row1, col1) 0-based inclusive, void-only)], the two PNGs: each instance a rectangle inside a
  2-pixel void (255) border, as VOC draws its outlines."""
  rng = np.random.default_rng(len(image_id))
  if image is None:
    image = rng.integers(0, 60, size=(H, W, 3), dtype=np.uint8)
  for name, (x0, y0, x1, y1), _, _ in objects:
    if name == "person":
      image[y0 - 1:y1, x0 - 1:x1] = PERSON_COLOUR
  for sub, data in ((voc.JPEGS, tf.io.encode_jpeg(image, quality=98).numpy()),
                    (voc.ANNOTATIONS, voc_xml(image_id, objects, image.shape[1], image.shape[0]).encode())):
    os.makedirs(os.path.join(folder, sub), exist_ok=True)
    with open(os.path.join(folder, sub, image_id + (".jpg" if sub == voc.JPEGS else ".xml")), "wb") as f:
      f.write(data)
  if segmentation is not None:
    shape = png_size or image.shape[:2]
    instances, classes = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    for index, class_index, (r0, c0, r1, c1), void_only in segmentation:
      for target, value in ((instances, index), (classes, class_index)):
        target[r0 - 2:r1 + 3, c0 - 2:c1 + 3] = voc.VOID
        if not void_only:
          target[r0:r1 + 1, c0:c1 + 1] = value
    write_indices(os.path.join(folder, voc.OBJECT_PNGS, image_id + ".png"), instances)
    write_indices(os.path.join(folder, voc.CLASS_PNGS, image_id + ".png"), classes)


def write_image_set(folder, image_sets, split, ids):
  os.makedirs(os.path.join(folder, image_sets), exist_ok=True)
  with open(os.path.join(folder, image_sets, f"{split}.txt"), "w") as f:
    f.write("".join(f"{image_id}\n" for image_id in ids))


# 000005's objects, in XML order (instance index = position + 1), and what recovery must make of each.
OBJECTS_000005 = [
    ("person", (11, 11, 40, 80), False, False),  # 1: mask inside its box's void border: kept.
    ("person", (61, 11, 70, 40), False, False),  # 2: mask far from its box: box_mismatch.
    ("dog", (81, 51, 110, 85), False, True),     # 3: not a person: no cut-out, no count.
    ("person", (50, 60, 58, 70), True, False),   # 4: difficult, left void by VOC: no_mask.
    ("person", (90, 5, 100, 16), False, False),  # 5: 12x10 pixels: too_small.
    ("person", (45, 45, 56, 85), False, False),  # 6: SegmentationClass says chair: class_mismatch.
]
SEGMENTATION_000005 = [
    (1, PERSON, (12, 12, 77, 37), False),  # Tight box rows 13..78, cols 13..38 (1-based): IoU 0.82 with its box.
    (2, PERSON, (40, 62, 70, 78), False),  # Rows 41..71 (1-based): below its box's rows 11..40, IoU 0.
    (3, DOG, (52, 82, 83, 108), False),
    (4, PERSON, (61, 51, 68, 56), True),
    (5, PERSON, (5, 90, 14, 98), False),
    (6, CHAIR, (46, 46, 83, 54), False),
]


def write_devkit(root):
  """VOCdevkit/VOC2007 and VOC2012: 2007 000005 (the six objects above), 000007 (its PNGs the wrong size),
  000009 (no object); 2012 2007_000005 (VOC2012's copy of it) and 2008_000002 (one person)."""
  voc2007 = os.path.join(root, "VOCdevkit", "VOC2007")
  write_image(voc2007, "000005", OBJECTS_000005, segmentation=SEGMENTATION_000005)
  write_image(voc2007, "000007", [("person", (11, 11, 40, 80), False, False)],
              segmentation=[(1, PERSON, (12, 12, 77, 37), False)], png_size=(80, 100))
  write_image(voc2007, "000009", [])
  write_image_set(voc2007, voc.MAIN_SETS, "trainval", ["000005", "000007", "000009"])
  write_image_set(voc2007, voc.SEGMENTATION_SETS, "trainval", ["000005", "000007"])
  voc2012 = os.path.join(root, "VOCdevkit", "VOC2012")
  write_image(voc2012, "2007_000005", OBJECTS_000005, segmentation=SEGMENTATION_000005)
  write_image(voc2012, "2008_000002", [("person", (31, 21, 70, 60), False, False)],
              segmentation=[(1, PERSON, (22, 32, 57, 67), False)])
  write_image_set(voc2012, voc.MAIN_SETS, "trainval", ["2007_000005", "2008_000002"])
  write_image_set(voc2012, voc.SEGMENTATION_SETS, "trainval", ["2007_000005", "2008_000002"])
  return root


# ------------------------------------------------------------------------------------ records
def test_records_hold_normalised_voc_boxes_flags_and_classes(tmp_path):
  root = write_devkit(str(tmp_path))
  records = voc.load_records(root, "2007", "trainval")
  assert [r.image_id for r in records] == ["000005", "000007", "000009"]
  first = records[0]
  assert (first.height, first.width) == (H, W) and first.image_path.endswith("VOC2007/JPEGImages/000005.jpg")
  # 1-based inclusive pixels: xmin 11..xmax 40 spans pixels 10..40 of the frame, 30 pixels.
  np.testing.assert_allclose(first.boxes[0], [10 / H, 10 / W, 80 / H, 40 / W], rtol=1e-6)
  np.testing.assert_allclose(first.boxes[2], [50 / H, 80 / W, 85 / H, 110 / W], rtol=1e-6)
  assert [voc.CLASS_NAMES[c] for c in first.classes] == ["person", "person", "dog", "person", "person", "person"]
  assert first.difficult.tolist() == [False, False, False, True, False, False]
  assert first.truncated.tolist() == [False, False, True, False, False, False]
  assert records[2].boxes.shape == (0, 4) and records[2].classes.shape == (0,)  # No object: an empty record.
  # As person ground truth: the three plain persons scored, the difficult one ignored, the dog left out.
  truth = voc.ground_truth(first, ("person",))
  np.testing.assert_array_equal(truth.boxes, first.boxes[[0, 1, 4, 5]])
  np.testing.assert_array_equal(truth.ignore_boxes, first.boxes[[3]])
  assert truth.classes.tolist() == [0, 0, 0, 0] and truth.ignore_classes.tolist() == [0]
  assert voc.ground_truth(first).classes.tolist() == [voc.PERSON] * 2 + [voc.CLASS_NAMES.index("dog")] + [
      voc.PERSON] * 2
  # Persons spanning fewer pixels than min_box_area (VOC's +1 widths: 30 x 70 = 2100, 10 x 30, 11 x 12, 12 x 41)
  # are ignore boxes too, beside the difficult one; a box of exactly min_box_area pixels is scored.
  small = voc.ground_truth(first, ("person",), min_box_area=2100)
  np.testing.assert_array_equal(small.boxes, first.boxes[[0]])
  np.testing.assert_array_equal(small.ignore_boxes, first.boxes[[1, 3, 4, 5]])
  assert len(voc.ground_truth(first, ("person",), min_box_area=2101).boxes) == 0
  # The VOCdevkit folder itself works as well as its parent.
  assert voc.year_folder(os.path.join(root, "VOCdevkit"), "2007") == voc.year_folder(root, "2007")


def test_tfds_examples_give_the_records_the_devkit_gives(tmp_path):
  # An example shaped as TFDS's voc builder writes it: bbox = VOC pixels / size with no -1, float32; labels
  # index VOC's class order; the image decoded; the file name as bytes (tfds.as_numpy).
  objects = OBJECTS_000005 + [("bird", (47.5, 3, 119, 90), False, True)]
  folder = os.path.join(tmp_path, "VOC2007")
  write_image(folder, "000005", objects)
  from_disk = voc.read_record(folder, "000005")
  example = {
      "image": read_rgb(from_disk.image_path),
      "image/filename": b"000005.jpg",
      "objects": {
          "bbox": np.array([[y0 / H, x0 / W, y1 / H, x1 / W] for _, (x0, y0, x1, y1), _, _ in objects],
                           np.float32),
          "label": np.array([voc.CLASS_NAMES.index(name) for name, *_ in objects], np.int64),
          "pose": np.full(len(objects), 4, np.int64),
          "is_difficult": np.array([difficult for *_, difficult, _ in objects]),
          "is_truncated": np.array([truncated for *_, truncated in objects]),
      },
      "labels": np.array(sorted({voc.CLASS_NAMES.index(name) for name, *_ in objects}), np.int64),
      "labels_no_difficult": np.array([], np.int64),
  }
  from_tfds, image = voc.record_from_tfds(example)
  assert from_tfds.image_path == "" and image is example["image"]
  for field in ("image_id", "height", "width"):
    assert getattr(from_tfds, field) == getattr(from_disk, field)
  for field in ("boxes", "classes", "difficult", "truncated"):  # Equal to the bit, not only close.
    got, expected = getattr(from_tfds, field), getattr(from_disk, field)
    assert got.dtype == expected.dtype and np.array_equal(got, expected), field


# ------------------------------------------------------------------------------------ person cut-outs
def test_person_instances_are_recovered_matched_and_dropped_by_reason(tmp_path):
  root = write_devkit(str(tmp_path))
  found = voc.recover_instances(root, size=40)
  report = found.report
  # 000005 gives one person; 000007 is skipped (PNG size); 2007_000005 is VOC2012's copy of 000005, read once;
  # 2008_000002 gives one.
  assert found.sources == (("2007", "000005", 1), ("2012", "2008_000002", 1))
  assert (report.kept, report.box_mismatch, report.no_mask, report.too_small, report.class_mismatch,
          report.unannotated, report.duplicates, report.images) == (2, 1, 1, 1, 1, 0, 1, 2)
  assert len(report.skipped) == 1 and "SegmentationObject/000007.png: 100x80 pixels" in report.skipped[0]
  assert "VOC2007/Annotations/000007.xml says 120x90" in report.skipped[0]
  summary = report.summary()
  for part in ("kept 2 of 6 from 2 images", "1 mask's box and XML box disagree (IoU < 0.5)",
               "1 no mask pixel", "1 mask under 32 pixels", "1 XML and SegmentationClass disagree",
               "1 VOC2012 copies", "1 images skipped: ", "000007.png"):
    assert part in summary, part
  assert found.cutouts.class_names == ["person"] and found.cutouts.classes.tolist() == [0, 0]
  assert found.cutouts.images.shape == (2, 40, 40, 4) and found.cutouts.images.dtype == np.float32

  # A stricter IoU drops the kept person of 000005 too (its tight box, void border excluded, has IoU
  # 26 * 66 / (30 * 70) = 0.817 with its box), and the small one (9 * 10 / (11 * 12) = 0.68) before its size
  # is looked at. With nothing kept, the run is an error that says why.
  with pytest.raises(DataError, match=r"no usable person instance in VOC 2007 trainval segmentations \(VOC "
                                      r"instances: kept 0 of 5 .*: 3 mask's box and XML box disagree"):
    voc.recover_instances(root, size=40, years=("2007",), min_iou=0.85)


def test_an_unreadable_image_is_a_counted_skip_and_leaves_its_other_years_copy_in(tmp_path):
  root = write_devkit(str(tmp_path))
  voc2007 = os.path.join(root, "VOCdevkit", "VOC2007")
  # VOC2007's 000005 has a malformed XML: skipped, named, counted; VOC2012's copy 2007_000005 is read instead.
  with open(os.path.join(voc2007, voc.ANNOTATIONS, "000005.xml"), "w") as f:
    f.write("<annotation><size><width>120</wid")
  found = voc.recover_instances(root, size=32)
  assert found.sources == (("2012", "2007_000005", 1), ("2012", "2008_000002", 1))
  assert (found.report.duplicates, found.report.images, len(found.report.skipped)) == (0, 2, 2)
  assert "VOC2007/Annotations/000005.xml: cannot parse this annotation" in found.report.skipped[0]
  # An unreadable JPEG likewise: 000005's copy in VOC2012 gives its cut-out.
  write_image(voc2007, "000005", OBJECTS_000005, segmentation=SEGMENTATION_000005)
  with open(os.path.join(voc2007, voc.JPEGS, "000005.jpg"), "wb") as f:
    f.write(b"not a jpeg")
  found = voc.recover_instances(root, size=32)
  assert found.sources[0] == ("2012", "2007_000005", 1) and found.report.duplicates == 0
  assert "VOC2007/JPEGImages/000005.jpg: cannot read this image" in found.report.skipped[0]


def test_a_cutout_is_its_mask_centred_with_its_longer_side_the_box_share(tmp_path):
  root = write_devkit(str(tmp_path))
  found = voc.recover_instances(root, size=40, years=("2007",), box_share=0.8)
  (cutout,) = found.cutouts.images
  alpha = cutout[..., 3]
  rows, cols = np.flatnonzero(alpha.max(axis=1) > 0.5), np.flatnonzero(alpha.max(axis=0) > 0.5)
  # The mask is 66 x 26 pixels (void border excluded); its frame 83 pixels (66 / 0.8 rounded up), so its
  # height is 66 / 83 of the 40 output pixels (31.8) and its width 26 / 83 of them (12.5), centred.
  assert rows[-1] + 1 - rows[0] == pytest.approx(40 * 66 / 83, abs=1)
  assert cols[-1] + 1 - cols[0] == pytest.approx(40 * 26 / 83, abs=1)
  weights = alpha / alpha.sum()
  centre = (weights.sum(axis=1) @ np.arange(40), weights.sum(axis=0) @ np.arange(40))
  np.testing.assert_allclose(centre, (19.5, 19.5), atol=0.5)
  # The colour is the person's (the JPEG's), and nothing outside the mask is visible.
  np.testing.assert_allclose(cutout[alpha > 0.99, :3].mean(axis=0), np.array(PERSON_COLOUR) / 255, atol=0.03)
  assert alpha[:rows[0] - 1].max() == 0 and alpha[:, :cols[0] - 1].max() == 0


def test_excluded_images_are_left_out_by_their_voc2007_id(tmp_path):
  # VOC2012 ships VOC2007's segmented images as 2007_<id>: a VOC2007 test image among them must not become a
  # training cut-out when the test is VOC2007 test.
  root = write_devkit(str(tmp_path))
  found = voc.recover_instances(root, size=32, years=("2012",), exclude={"000005"})
  assert found.sources == (("2012", "2008_000002", 1),)
  assert (found.report.excluded, found.report.duplicates) == (1, 0)
  assert "1 images excluded by the caller left out" in found.report.summary()
  assert voc.voc2007_id("2012", "2007_000005") == "000005" and voc.voc2007_id("2012", "2008_000002") == (
      "2008_000002")


def test_segmentations_are_read_as_palette_indices(tmp_path):
  indices = np.array([[0, 15, 255], [12, 1, 0]], np.uint8)
  path = str(tmp_path / "seg.png")
  write_indices(path, indices)
  np.testing.assert_array_equal(voc.read_indices(path), indices)
  # Decoded as an image, the same file is the palette's colours: person (15) is VOC's (192, 128, 128).
  decoded = tf.io.decode_png(open(path, "rb").read()).numpy()
  assert decoded.shape == (2, 3, 3) and decoded[0, 1].tolist() == [192, 128, 128]
  Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / "rgb.png")
  with pytest.raises(DataError, match=r"rgb\.png: a RGB PNG; expected a palette \(mode P\) PNG"):
    voc.read_indices(str(tmp_path / "rgb.png"))


# ------------------------------------------------------------------------------------ bad input
def test_a_bad_devkit_gets_one_error_naming_what_is_missing(tmp_path):
  root = write_devkit(str(tmp_path))
  voc2012 = os.path.join(root, "VOCdevkit", "VOC2012")
  os.rename(os.path.join(voc2012, voc.OBJECT_PNGS), os.path.join(root, "elsewhere"))
  assert len(voc.load_records(root, "2012", "trainval")) == 2  # Detection records need no segmentation.
  with pytest.raises(DataError, match=r"VOC2012: missing .*VOC2012/SegmentationObject; expected <voc_dir>/VOC"):
    voc.recover_instances(root, size=32)
  with pytest.raises(DataError, match=r"neither .*/VOC2007 nor .*/VOCdevkit/VOC2007 exists; expected <voc_dir>"):
    voc.load_records(str(tmp_path / "nowhere"), "2007", "trainval")
  with pytest.raises(DataError, match=r"ImageSets/Main/test\.txt: no such image set; .* lists \['trainval'\]"):
    voc.load_records(root, "2007", "test")
  voc2007 = os.path.join(root, "VOCdevkit", "VOC2007")
  write_image(voc2007, "000009", [("unicorn", (1, 1, 5, 5), False, False)])
  with pytest.raises(DataError, match=r"000009\.xml: unknown class 'unicorn'; expected one of VOC's 20"):
    voc.load_records(root, "2007", "trainval")
  write_image(voc2007, "000009", [("dog", (1, 1, 121, 5), False, False)])
  with pytest.raises(DataError, match=r"000009\.xml: box of dog \(1, 1, 121, 5\) is not inside the 120x90"):
    voc.load_records(root, "2007", "trainval")
  os.remove(os.path.join(voc2007, voc.JPEGS, "000009.jpg"))
  with pytest.raises(DataError, match=r"000009\.xml: its image .*JPEGImages/000009\.jpg is missing"):
    voc.load_records(root, "2007", "trainval")
  # The TFDS path checks what it can before it imports tensorflow_datasets (tfds.load is never called here).
  with pytest.raises(DataError, match=r"expected a dataset in \('voc/2007', 'voc/2012'\) .* got 'voc/2009'"):
    voc.load_tfds("voc/2009", "trainval", root)
  with pytest.raises(DataError, match=r"nowhere: not a directory; expected a TFDS data_dir where voc/2007"):
    voc.load_tfds("voc/2007", "trainval", str(tmp_path / "nowhere"))
