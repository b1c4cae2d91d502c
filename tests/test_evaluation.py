"""Detection AP: hand-computable cases, the wrapper against pycocotools run directly on JSON files, and the
per-class table against pycocotools' own per-category figures."""

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from terse_tf import evaluation
from terse_tf.evaluation import ImageBoxes

HW = (100, 100)


def truth(*boxes, classes=None):
  return ImageBoxes(np.array(boxes, np.float64).reshape(-1, 4),
                    np.array(classes if classes is not None else [0] * len(boxes)))


def found(*boxes, scores, classes=None):
  return ImageBoxes(np.array(boxes, np.float64).reshape(-1, 4),
                    np.array(classes if classes is not None else [0] * len(boxes)), np.array(scores))


def test_perfect_detections_score_one_everywhere():
  groundtruth = [truth([0.1, 0.1, 0.5, 0.6], [0.5, 0.5, 0.9, 0.8], classes=[0, 1]), truth([0.2, 0.3, 0.7, 0.9],
                                                                                          classes=[1])]
  detections = [found(*g.boxes, scores=[0.9] * len(g.boxes), classes=g.classes) for g in groundtruth]
  metrics = evaluation.evaluate_detections(groundtruth, detections, HW, ["a", "b"])
  assert metrics["ap"] == metrics["ap50"] == metrics["ap75"] == pytest.approx(1.0)
  assert metrics["per_class"] == {"a": pytest.approx(1.0), "b": pytest.approx(1.0)}
  assert all(v == pytest.approx(1.0) for v in metrics["ap_at_iou"].values())


def test_a_box_at_iou_0_63_counts_up_to_threshold_0_6_only():
  # Ground truth 50x50 px; the detection keeps its left 31.5 px: IoU 31.5 / 50 = 0.63.
  metrics = evaluation.evaluate_detections([truth([0.0, 0.0, 0.5, 0.5])], [found([0.0, 0.0, 0.5, 0.315],
                                                                                scores=[0.8])], HW, ["a"])
  assert metrics["ap_at_iou"] == {"0.5": pytest.approx(1.0), "0.6": pytest.approx(1.0), "0.7": 0.0,
                                  "0.8": 0.0, "0.9": 0.0}
  assert metrics["ap50"] == pytest.approx(1.0) and metrics["ap75"] == 0.0
  assert metrics["ap"] == pytest.approx(0.3)  # 3 of COCO's 10 thresholds (0.50, 0.55, 0.60).


def test_a_higher_scored_false_positive_halves_the_precision():
  # Ranked: a miss (score 0.9), then the hit (0.5): precision 1/2 at recall 1, interpolated back to 0.
  metrics = evaluation.evaluate_detections(
      [truth([0.1, 0.1, 0.4, 0.4])], [found([0.6, 0.6, 0.9, 0.9], [0.1, 0.1, 0.4, 0.4], scores=[0.9, 0.5])],
      HW, ["a"])
  assert metrics["ap50"] == pytest.approx(0.5)


def test_a_detection_on_an_ignore_box_is_neither_true_nor_false_positive():
  # The case above with the miss's place an ignore box (a crowd region, as pycocotools has it) of class "a":
  # the higher-scored detection there no longer halves the precision. Of class "b" it still would.
  hit, small = [0.1, 0.1, 0.4, 0.4], [0.6, 0.6, 0.9, 0.9]
  detections = [found(small, hit, scores=[0.9, 0.5])]

  def with_ignored(ignore_class):
    return ImageBoxes(np.array([hit]), np.array([0]), ignore_boxes=np.array([small]),
                      ignore_classes=np.array([ignore_class]))
  assert evaluation.evaluate_detections([with_ignored(0)], detections, HW, ["a"])["ap50"] == pytest.approx(1.0)
  assert evaluation.evaluate_detections([with_ignored(1)], detections, HW, ["a", "b"])["ap50"] == pytest.approx(
      0.5)
  dataset, _ = evaluation.to_coco([with_ignored(0)], detections, HW, ["a"])
  assert [a["iscrowd"] for a in dataset["annotations"]] == [0, 1]
  # An ignore region is no ground truth: a class with only ignore boxes is undefined (-1), detected or not.
  only_ignored = ImageBoxes(np.zeros([0, 4]), np.zeros([0], np.int64), ignore_boxes=np.array([small]),
                            ignore_classes=np.array([1]))
  for detected in (found(scores=[]), found(small, scores=[0.9], classes=[1])):
    figures = evaluation.evaluate_detections([only_ignored], [detected], HW, ["a", "b"])
    assert figures["per_class_ap50"]["b"] == -1
  with pytest.raises(ValueError, match="ignore_boxes and ignore_classes go together"):
    ImageBoxes(np.array([hit]), np.array([0]), ignore_boxes=np.array([small]))


def test_nothing_detected_scores_zero_and_mismatched_lengths_are_refused():
  metrics = evaluation.evaluate_detections([truth([0.1, 0.1, 0.4, 0.4])], [found(scores=[])], HW, ["a", "b"])
  assert metrics["ap"] == metrics["ap50"] == 0.0 and metrics["per_class"] == {"a": 0.0, "b": -1.0}
  # "b" has no ground truth: undefined, as pycocotools has it whatever is detected.
  assert metrics["per_class_ap50"] == {"a": 0.0, "b": -1.0}
  with pytest.raises(ValueError, match="one detection entry per image"):
    evaluation.evaluate_detections([truth([0.1, 0.1, 0.4, 0.4])], [], HW, ["a"])


def test_the_wrapper_equals_pycocotools_run_on_json_files(tmp_path):
  rng = np.random.default_rng(0)
  groundtruth, detections = [], []
  for _ in range(12):
    count = rng.integers(1, 4)
    corners = rng.uniform(0, 0.6, (count, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(0.1, 0.4, (count, 2))], axis=1)
    classes = rng.integers(0, 3, count)
    groundtruth.append(ImageBoxes(boxes, classes))
    # Jittered copies of the truth, some with the wrong class, and a few boxes of noise.
    jittered = np.clip(boxes + rng.normal(0, 0.03, boxes.shape), 0, 1)
    noise = np.sort(rng.uniform(0, 1, (2, 4)).reshape(2, 2, 2), axis=1).transpose(0, 2, 1).reshape(2, 4)
    detections.append(ImageBoxes(np.concatenate([jittered, noise]),
                                 np.concatenate([np.where(rng.uniform(size=count) < 0.2, (classes + 1) % 3,
                                                          classes), rng.integers(0, 3, 2)]),
                                 rng.uniform(size=count + 2)))
  names = ["x", "y", "z"]
  metrics = evaluation.evaluate_detections(groundtruth, detections, (120, 160), names)

  dataset, results = evaluation.to_coco(groundtruth, detections, (120, 160), names)
  (tmp_path / "truth.json").write_text(json.dumps(dataset))
  (tmp_path / "results.json").write_text(json.dumps(results))
  with contextlib.redirect_stdout(io.StringIO()):
    coco = COCO(str(tmp_path / "truth.json"))
    direct = COCOeval(coco, coco.loadRes(str(tmp_path / "results.json")), iouType="bbox")
    direct.evaluate()
    direct.accumulate()
    direct.summarize()
  assert [metrics["ap"], metrics["ap50"], metrics["ap75"]] == pytest.approx(list(direct.stats[:3]))
  assert 0.2 < metrics["ap50"] < 1.0  # A case where ranking and matching matter.
  for k, name in enumerate(names):
    per_class = direct.eval["precision"][:, :, k, 0, -1]
    assert metrics["per_class"][name] == pytest.approx(per_class[per_class > -1].mean())
  seventy = direct.eval["precision"][4, :, :, 0, -1]  # COCO's thresholds: 0.50, 0.55, ..., index 4 is 0.70.
  assert metrics["ap_at_iou"]["0.7"] == pytest.approx(seventy[seventy > -1].mean())


def _pycocotools_per_category_ap50(dataset, results, category_id):
  """pycocotools' own AP@0.5 of one category: COCOeval restricted to it."""
  with contextlib.redirect_stdout(io.StringIO()):
    truth = COCO()
    truth.dataset = dataset
    truth.createIndex()
    evaluator = COCOeval(truth, truth.loadRes(results), iouType="bbox")
    evaluator.params.catIds = [category_id]
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  return evaluator.stats[1]


def test_per_class_ap_is_pycocotools_per_category_ap_and_a_class_without_truth_is_left_out_of_the_table():
  names = ["a", "b", "c"]  # "c" has no ground truth, only a false detection.
  box = lambda y, x: [y, x, y + 0.3, x + 0.3]
  groundtruth = [truth(box(0.1, 0.1), box(0.5, 0.5), classes=[0, 1]), truth(box(0.2, 0.6), box(0.6, 0.1))]
  detections = [found(box(0.1, 0.12), box(0.5, 0.7), box(0.0, 0.0), scores=[0.9, 0.8, 0.7], classes=[0, 1, 2]),
                found(box(0.2, 0.6), box(0.3, 0.3), box(0.6, 0.1), scores=[0.6, 0.95, 0.5], classes=[0, 0, 1])]
  figures = evaluation.evaluate_detections(groundtruth, detections, HW, names)
  dataset, results = evaluation.to_coco(groundtruth, detections, HW, names)
  for k, name in enumerate(names):
    own = _pycocotools_per_category_ap50(dataset, results, k + 1)
    assert figures["per_class_ap50"][name] == pytest.approx(own)
  assert figures["per_class_ap50"]["c"] == -1  # pycocotools' marker for a category without ground truth.
  assert 0 < figures["per_class_ap50"]["a"] < 1 and figures["per_class_ap50"]["b"] == 0
  # The table: percent to one decimal, "n/a" for "c", and the mean over the classes with truth, which is
  # pycocotools' own mean.
  defined = (figures["per_class_ap50"]["a"] + figures["per_class_ap50"]["b"]) / 2
  assert figures["ap50"] == pytest.approx(defined)
  table = evaluation.per_class_table({"TERSE": figures["per_class_ap50"],
                                      "real only": {**figures["per_class_ap50"], "mAP": figures["ap50"]}},
                                     names, headers=["A", "B", "C"])
  row = f"{100 * figures['per_class_ap50']['a']:.1f} | 0.0 | n/a | {100 * defined:.1f} |"
  assert table.splitlines() == ["| | A | B | C | mAP |", "|---|---:|---:|---:|---:|", f"| TERSE | {row}",
                                f"| real only | {row}"]


# ------------------------------------------------------------------------------------ VOC07 11-point AP
def test_voc07_ap_by_hand_with_a_difficult_box_a_duplicate_and_a_miss():
  a, b, c = [0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.2, 0.2, 0.6, 0.6]
  difficult, far = [0.0, 0.5, 0.5, 1.0], [0.7, 0.7, 0.9, 0.9]
  groundtruth = [ImageBoxes(np.array([a, b]), np.array([0, 0]), ignore_boxes=np.array([difficult]),
                            ignore_classes=np.array([0])), truth(c)]
  detections = [found(a, difficult, a, scores=[0.9, 0.8, 0.6]), found(far, c, scores=[0.7, 0.5])]
  # Ranked, with 3 scored boxes (a, b, c; the difficult one is not counted):
  #   0.9 a          TP              recall 1/3, precision 1/1
  #   0.8 difficult  neither: no point on the curve
  #   0.7 far        FP              recall 1/3, precision 1/2
  #   0.6 a again    FP (a matched)  recall 1/3, precision 1/3
  #   0.5 c          TP              recall 2/3, precision 2/4
  # Recall thresholds 0, .1, .2, .3 (<= 1/3): best precision 1; .4, .5, .6 (<= 2/3): 1/2; .7 ... 1: none, 0.
  # AP = (4 * 1 + 3 * 1/2) / 11 = 5.5 / 11 = 0.5.
  figures = evaluation.voc07_ap(groundtruth, detections, ["person"])
  assert figures == {"map": pytest.approx(0.5), "per_class": {"person": pytest.approx(0.5)}}
  # Without the difficult box the detection there is a false positive: precisions 1, 1/2, 1/3, 1/4, then
  # 2/5 at recall 2/3: AP = (4 * 1 + 3 * 2/5) / 11 = 5.2 / 11.
  plain = [truth(a, b), truth(c)]
  assert evaluation.voc07_ap(plain, detections, ["person"])["map"] == pytest.approx(5.2 / 11)
  # A class without ground truth is undefined (-1) and left out of the mean.
  figures = evaluation.voc07_ap(plain, detections, ["person", "dog"])
  assert figures["per_class"]["dog"] == -1 and figures["map"] == pytest.approx(5.2 / 11)
  with pytest.raises(ValueError, match="one detection entry per image"):
    evaluation.voc07_ap(plain, detections[:1], ["person"])


def test_voc07_ap_counts_a_recall_equal_to_a_threshold():
  # 3 of 10 boxes found, each at precision 1: recall 3/10 reaches thresholds 0, .1, .2 and .3, so AP = 4/11.
  # (numpy.arange(0, 1.1, 0.1), the Python ports' thresholds, puts the fourth at 0.30000000000000004 > 3/10,
  # and would say 3/11.)
  boxes = [[0.1 * i, 0.0, 0.1 * i + 0.05, 0.05] for i in range(10)]
  figures = evaluation.voc07_ap([truth(*boxes)], [found(*boxes[:3], scores=[0.9, 0.8, 0.7])], ["a"])
  assert figures["map"] == pytest.approx(4 / 11)


def test_voc07_ap_agrees_with_pycocotools_where_the_curves_allow_and_differs_where_they_do_not():
  def both(groundtruth, detections):
    return (evaluation.voc07_ap(groundtruth, detections, ["a"])["map"],
            evaluation.evaluate_detections(groundtruth, detections, HW, ["a"])["ap50"])

  # Perfect detections: 1 either way.
  groundtruth = [truth([0.1, 0.1, 0.5, 0.6], [0.5, 0.5, 0.9, 0.8]), truth([0.2, 0.3, 0.7, 0.9])]
  assert both(groundtruth, [found(*g.boxes, scores=[0.9] * len(g.boxes)) for g in groundtruth]) == (
      pytest.approx(1.0), pytest.approx(1.0))
  # A miss ranked above the hit: precision 1/2 at recall 1, the best at every recall, 11 points or 101.
  assert both([truth([0.1, 0.1, 0.4, 0.4])], [found([0.6, 0.6, 0.9, 0.9], [0.1, 0.1, 0.4, 0.4],
                                                     scores=[0.9, 0.5])]) == (pytest.approx(0.5),
                                                                              pytest.approx(0.5))
  # Hit, miss, hit of 3 boxes: precision 1 up to recall 1/3, 2/3 up to recall 2/3. 11 points: 4 thresholds
  # (0 ... .3) at 1 and 3 (.4 ... .6) at 2/3: 6/11. COCO's 101: 34 (0 ... .33) at 1 and 33 (.34 ... .66) at 2/3:
  # 56/101.
  boxes = [[0.0, 0.0, 0.2, 0.2], [0.4, 0.4, 0.6, 0.6], [0.8, 0.8, 1.0, 1.0]]
  assert both([truth(*boxes)], [found(boxes[0], [0.2, 0.7, 0.3, 0.9], boxes[1], scores=[0.9, 0.8, 0.7])]) == (
      pytest.approx(6 / 11), pytest.approx(56 / 101))
  # Matching: the second detection overlaps the already matched box A best (IoU 2/3) and box B at 0.54.
  # VOC makes it a false positive (1 then 1/2 at recall 1/2: 6/11); COCO gives it to B (recall 1: AP 1).
  box_a, box_b = [0.0, 0.0, 0.5, 0.5], [0.0, 0.25, 0.5, 0.75]
  assert both([truth(box_a, box_b)], [found(box_a, [0.0, 0.1, 0.5, 0.6], scores=[0.9, 0.8])]) == (
      pytest.approx(6 / 11), pytest.approx(1.0))
