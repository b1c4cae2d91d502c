"""Detection evaluation: through pycocotools, COCO's AP@[.5:.95], AP@0.5 and AP@0.75, per-class AP (and the
per-class table of the paper's GMU results), and the single-threshold AP at IoU 0.5 ... 0.9 of the paper's
Table 4; and, for the paper's VOC person figure, PASCAL VOC 2007's 11-point AP (voc07_ap).

Every COCO figure comes out of one `COCOeval` run. voc07_ap is the one precision-recall curve computed here:
pycocotools has no 11-point AP, and VOC matches detections to ground truth by a different rule.
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
  positive (to_coco writes them as COCO crowd regions; voc07_ap applies VOC's rule for difficult objects, which
  is what a VOC task passes as ignore boxes)."""
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


# VOC 2007's recall thresholds 0, 0.1, ..., 1 are i / VOC07_STEPS for i = 0 .. VOC07_STEPS.
VOC07_STEPS = 10


def pair_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  """IoU [M] of one normalised box with boxes [M, 4]."""
  height = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
  width = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
  inter = height * width
  areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  union = (box[2] - box[0]) * (box[3] - box[1]) + areas - inter
  return inter / np.maximum(union, np.finfo(np.float64).tiny)  # Two empty boxes: 0, not NaN.


def voc07_ap(groundtruth: list[ImageBoxes], detections: list[ImageBoxes], class_names: list[str],
             iou_threshold: float = 0.5) -> dict:
  """PASCAL VOC 2007's 11-point interpolated AP (the devkit's VOCevaldet with VOC2007's VOCap), the figure the
  paper reports on VOC. Returns {"map": the mean over classes with ground truth, "per_class": {name: AP}}; a
  class without ground truth has AP -1 (pycocotools' marker) and is left out of the mean.

  Per class, the detections of every image are ranked by score (ties in image, then detection, order). Each
  is matched to the ground-truth box of its class in its image with the highest IoU, scored and ignore boxes
  alike; at IoU >= `iou_threshold` it is a true positive if that box is scored and not yet matched, a false
  positive if already matched, and neither if it is an ignore box (VOC's rule for its "difficult" objects: a
  task passes VOC's difficult boxes as ignore boxes; several detections may land on one). Below the
  threshold, or with no box of its class there, it is a false positive. Recall counts the scored boxes only.
  AP is the mean over recall thresholds t = 0, 0.1, ..., 1 of the highest precision at a recall >= t (0 when
  no recall reaches t).

  Two departures from the devkit's MATLAB: IoU is of the normalised boxes as they are. For boxes normalised from
  VOC pixels as data/voc.py does (the +1 is the span of the last pixel; scaling the axes scales every area alike)
  that is the devkit's "+1 pixel" IoU up to rounding: the boxes are float32, so an IoU exactly at the threshold
  in whole pixels (say 0.5) may fall just below or above it here. And recall >= t is compared exactly (10 tp >= i
  npos in integers), where floating thresholds (the devkit's 0:0.1:1; numpy.arange(0, 1.1, 0.1) in the Python
  ports) can miss a recall equal to one: 3/10 is below 0.30000000000000004, arange's fourth threshold.

  Unlike pycocotools, a detection whose best box is already matched is a false positive even when another
  box of its class would take it, and the interpolation samples 11 recalls where COCO samples 101.
  """
  if len(groundtruth) != len(detections):
    raise ValueError(f"expected one detection entry per image: {len(groundtruth)} images, "
                     f"{len(detections)} detection entries")
  if any(found.scores is None for found in detections):
    raise ValueError("voc07_ap ranks detections by score: every detection entry needs scores")
  per_class = {}
  for k, name in enumerate(class_names):
    scored = [np.asarray(truth.boxes)[np.asarray(truth.classes) == k] for truth in groundtruth]
    ignored = [np.zeros([0, 4]) if truth.ignore_boxes is None else
               np.asarray(truth.ignore_boxes)[np.asarray(truth.ignore_classes) == k] for truth in groundtruth]
    positives = sum(len(boxes) for boxes in scored)
    if not positives:
      per_class[name] = -1.0
      continue
    ranked = [(score, image, box) for image, found in enumerate(detections)
              for box, label, score in zip(np.asarray(found.boxes), np.asarray(found.classes), found.scores)
              if label == k]
    order = sorted(range(len(ranked)), key=lambda i: -ranked[i][0])  # sorted() is stable: ties keep order.
    matched = [np.zeros(len(boxes), bool) for boxes in scored]
    hits = []  # 1 true positive, 0 false positive; a detection on an ignore box adds no point to the curve.
    for i in order:
      _, image, box = ranked[i]
      candidates = np.concatenate([scored[image], ignored[image]]).reshape(-1, 4)
      overlaps = pair_iou(np.asarray(box, np.float64), candidates) if len(candidates) else np.zeros(0)
      best = int(np.argmax(overlaps)) if len(overlaps) else -1
      if best < 0 or overlaps[best] < iou_threshold:
        hits.append(0)
      elif best >= len(scored[image]):
        continue
      elif not matched[image][best]:
        matched[image][best] = True
        hits.append(1)
      else:
        hits.append(0)
    true_positives = np.cumsum(hits, dtype=np.int64)
    precision = true_positives / np.arange(1, len(hits) + 1)
    ap = 0.0
    for step in range(VOC07_STEPS + 1):
      reached = VOC07_STEPS * true_positives >= step * positives
      ap += precision[reached].max() if reached.any() else 0.0
    per_class[name] = float(ap / (VOC07_STEPS + 1))
  defined = [ap for ap in per_class.values() if ap >= 0]
  return {"map": float(np.mean(defined)) if defined else -1.0, "per_class": per_class}
