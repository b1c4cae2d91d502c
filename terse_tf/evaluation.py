"""Detection evaluation through pycocotools: COCO's AP@[.5:.95], AP@0.5 and AP@0.75, per-class AP (and the
per-class table of the paper's GMU results), and the single-threshold AP at IoU 0.5 ... 0.9 of the paper's
Table 4.

Every figure comes out of one `COCOeval` run; nothing here computes a precision-recall curve of its own.
Boxes travel as the rest of terse_tf carries them: normalised (ymin, xmin, ymax, xmax), classes 0-based.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# The IoU thresholds of the paper's Table 4; each is one of COCO's ten (0.50, 0.55, ..., 0.95).
TABLE4_IOUS = (0.5, 0.6, 0.7, 0.8, 0.9)


@dataclasses.dataclass(frozen=True)
class ImageBoxes:
  """One image's boxes [N, 4] (normalised ymin, xmin, ymax, xmax), classes [N] and, for detections,
  scores [N]. Ground truth may also carry regions not scored, `ignore_boxes` [M, 4] of `ignore_classes` [M]
  (objects too small to score, say): a detection of that class on one is neither a true nor a false
  positive (to_coco writes them as COCO crowd regions)."""
  boxes: np.ndarray
  classes: np.ndarray
  scores: np.ndarray | None = None
  ignore_boxes: np.ndarray | None = None
  ignore_classes: np.ndarray | None = None

  def __post_init__(self):
    if (self.ignore_boxes is None) != (self.ignore_classes is None) or (
        self.ignore_boxes is not None and len(self.ignore_boxes) != len(self.ignore_classes)):
      raise ValueError("ImageBoxes: ignore_boxes and ignore_classes go together, one class per ignore box")


def _coco_box(box: np.ndarray, height: int, width: int) -> list[float]:
  ymin, xmin, ymax, xmax = box
  return [float(xmin * width), float(ymin * height), float((xmax - xmin) * width),
          float((ymax - ymin) * height)]


def to_coco(groundtruth: list[ImageBoxes], detections: list[ImageBoxes], image_hw: tuple[int, int],
            class_names: list[str]) -> tuple[dict, list[dict]]:
  """(COCO-format ground-truth dataset, COCO-format result list); image ids 1..N, category ids 1..K. Ignore
  boxes are crowd regions (iscrowd 1): COCOeval matches a detection to an object first, else to a crowd
  region of its class (by the share of the detection inside it), and leaves one so matched out of both
  true and false positives."""
  height, width = image_hw
  images = [{"id": i + 1, "height": height, "width": width} for i in range(len(groundtruth))]
  categories = [{"id": k + 1, "name": name} for k, name in enumerate(class_names)]
  annotations = []
  for image_id, truth in enumerate(groundtruth, start=1):
    regions = [(truth.boxes, truth.classes, 0)]
    if truth.ignore_boxes is not None:
      regions.append((truth.ignore_boxes, truth.ignore_classes, 1))
    for boxes, classes, crowd in regions:
      for box, label in zip(boxes, classes):
        coco_box = _coco_box(box, height, width)
        annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                            "bbox": coco_box, "area": coco_box[2] * coco_box[3], "iscrowd": crowd})
  results = [{"image_id": image_id, "category_id": int(label) + 1, "bbox": _coco_box(box, height, width),
              "score": float(score)}
             for image_id, found in enumerate(detections, start=1)
             for box, label, score in zip(found.boxes, found.classes, found.scores)]
  return {"images": images, "categories": categories, "annotations": annotations}, results


def evaluate_detections(groundtruth: list[ImageBoxes], detections: list[ImageBoxes],
                        image_hw: tuple[int, int], class_names: list[str]) -> dict:
  """AP figures of `detections` against `groundtruth` (one entry per image, same order).

  Returns {"ap", "ap50", "ap75"} (COCO's, all areas, 100 detections per image), "per_class": {name: AP@[.5:.95]},
  "per_class_ap50": {name: AP@0.5} and "ap_at_iou": {"0.5": AP, ..., "0.9": AP} (Table 4). A class with no
  ground truth has AP -1, pycocotools' marker, and is left out of the means as pycocotools does.
  """
  if len(groundtruth) != len(detections):
    raise ValueError(f"expected one detection entry per image: {len(groundtruth)} images, "
                     f"{len(detections)} detection entries")
  dataset, results = to_coco(groundtruth, detections, image_hw, class_names)
  if not results:  # pycocotools cannot load an empty result list: nothing detected scores 0 everywhere.
    # Except a class without ground truth (crowd regions are none), which pycocotools marks -1 whatever is
    # detected.
    truth_classes = {annotation["category_id"] - 1 for annotation in dataset["annotations"]
                     if not annotation["iscrowd"]}
    zeros = {name: 0.0 if k in truth_classes else -1.0 for k, name in enumerate(class_names)}
    return {"ap": 0.0, "ap50": 0.0, "ap75": 0.0, "per_class": zeros, "per_class_ap50": dict(zeros),
            "ap_at_iou": {str(t): 0.0 for t in TABLE4_IOUS}}
  with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress.
    truth = COCO()
    truth.dataset = dataset
    truth.createIndex()
    evaluator = COCOeval(truth, truth.loadRes(results), iouType="bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  # precision [IoU thresholds, recall points, classes, area ranges, max detections]; -1 where undefined.
  precision = evaluator.eval["precision"][:, :, :, 0, -1]
  thresholds = evaluator.params.iouThrs

  def at(iou: float) -> int:
    return int(np.argmin(np.abs(thresholds - iou)))

  return {
      "ap": float(evaluator.stats[0]), "ap50": float(evaluator.stats[1]), "ap75": float(evaluator.stats[2]),
      "per_class": {name: _mean_defined(precision[:, :, k]) for k, name in enumerate(class_names)},
      "per_class_ap50": {name: _mean_defined(precision[at(0.5), :, k]) for k, name in enumerate(class_names)},
      "ap_at_iou": {str(t): _mean_defined(precision[at(t)]) for t in TABLE4_IOUS},
  }


def _mean_defined(values: np.ndarray) -> float:
  """The mean of the values pycocotools defines (> -1), as its summaries take it; -1 when none is."""
  defined = np.asarray(values)[np.asarray(values) > -1]
  return float(defined.mean()) if defined.size else -1.0


def mean_row(rows: list[dict[str, float]]) -> dict[str, float]:
  """The mean of several rows of per-class figures (one arm's rows of the folds of a benchmark), key by key,
  over the rows that define it: -1 (pycocotools' marker of a class without ground truth in that fold) is
  left out, and a key no row defines stays -1. Every row must have the same keys."""
  if not rows or any(set(row) != set(rows[0]) for row in rows):
    raise ValueError(f"mean_row needs rows with the same keys, got {[sorted(row) for row in rows]}")
  return {key: _mean_defined(np.array([row[key] for row in rows], np.float64)) for key in rows[0]}


def per_class_table(arms: dict[str, dict[str, float]], class_names: list[str],
                    headers: list[str] | None = None, mean: str = "mAP") -> str:
  """A markdown table in the form of the paper's GMU table: one row per arm (real only, Cut-Paste, TERSE,
  ...), one column per class and one for the mean, AP in percent to one decimal.

  Each arm maps every name in `class_names` to that class's AP (evaluate_detections' "per_class_ap50", or a
  run's per-class figures) and may map `mean` to pycocotools' own mean (evaluate_detections' "ap50"); without
  it the mean is taken over the classes with ground truth, as pycocotools takes it. A class without ground
  truth (AP -1, pycocotools' marker) shows as "n/a". `headers` name the class columns (default: the class
  names)."""
  headers = list(headers or class_names)
  if len(headers) != len(class_names):
    raise ValueError(f"{len(headers)} headers for {len(class_names)} classes")
  lines = ["| | " + " | ".join(headers) + f" | {mean} |", "|---|" + "---:|" * (len(headers) + 1)]
  for arm, figures in arms.items():
    missing = [name for name in class_names if name not in figures]
    if missing:
      raise ValueError(f"arm {arm!r} has no AP for {missing}")
    values = [figures[name] for name in class_names]
    overall = figures.get(mean, _mean_defined(np.array(values)))
    cells = ("n/a" if v < 0 else f"{100 * v:.1f}" for v in (*values, overall))
    lines.append(f"| {arm} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"
