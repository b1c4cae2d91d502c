"""The experiment statistics: the fast AP against pycocotools (through terse_tf.evaluation) on random and
hand-made cases, resamples against pycocotools on the duplicated lists, and the paired bootstrap."""

import contextlib
import io

import numpy as np
import pytest
import scipy.stats
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from terse_tf.evaluation import ImageBoxes, evaluate_detections, to_coco
from terse_tf.experiments import statistics
from terse_tf.experiments.statistics import ap_at_iou, grouped_ap, match_at_iou, paired_bootstrap, sample_sd

NAMES = ["a", "b", "c"]


def boxes_at(centres: np.ndarray, sizes: np.ndarray) -> np.ndarray:
  """Normalised (ymin, xmin, ymax, xmax) from centres and (height, width), clipped, float32 as T emits."""
  return np.clip(np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1), 0, 1).astype(np.float32)


def random_case(seed: int, n_images: int = 40, n_classes: int = 3, inverted: bool = False, crowd: bool = False
                ) -> tuple[list[ImageBoxes], list[ImageBoxes]]:
  """Images with 0-6 objects of sizes from 2% to 60% of the side; detections: jittered copies (some far
  enough to miss, some duplicated, some of the wrong class), copies shrunk to IoU ~0.5 or ~0.75, random
  boxes, scores tied (one decimal) in half the images; images without detections; one image with 130
  detections of one class and one with 70 of each of two (more than 100 per image, not per class). With
  `crowd`, 0-3 crowd regions (ignore boxes) per image: around some detections (which they then hold, several
  at a time), over objects, and at random."""
  rng = np.random.default_rng(seed)
  truth, found = [], []
  for i in range(n_images):
    n_truth = 0 if rng.random() < 0.15 else int(rng.integers(1, 7))
    sizes = np.exp(rng.uniform(np.log(0.02), np.log(0.6), (n_truth, 2)))
    gt = boxes_at(rng.uniform(0.1, 0.9, (n_truth, 2)), sizes)
    gt_classes = rng.integers(0, n_classes, n_truth)
    dets, det_classes = [], []
    if rng.random() > 0.15:
      for box, label in zip(gt, gt_classes):
        h, w = box[2] - box[0], box[3] - box[1]
        for _ in range(int(rng.choice([0, 1, 1, 1, 2]))):
          jitter = rng.normal(0, rng.choice([0.03, 0.15, 0.3]), 4) * np.array([h, w, h, w])
          dets.append(box + jitter.astype(np.float32))
          det_classes.append(label if rng.random() > 0.1 else rng.integers(0, n_classes))
        if rng.random() < 0.3:  # Same top-left corner and height, width shrunk: IoU at a threshold +- rounding.
          factor = rng.choice([0.5, 0.75]) * (1 + rng.choice([-1e-7, 0.0, 1e-7]))
          dets.append(np.array([box[0], box[1], box[2], box[1] + factor * w], np.float32))
          det_classes.append(label)
      n_false = int(rng.integers(0, 4))
      dets += list(boxes_at(rng.uniform(0, 1, (n_false, 2)), rng.uniform(0.02, 0.4, (n_false, 2))))
      det_classes += list(rng.integers(0, n_classes, n_false))
    if i == 3:
      dets += list(boxes_at(rng.uniform(0, 1, (130, 2)), rng.uniform(0.05, 0.3, (130, 2))))
      det_classes += [0] * 130
    if i == 5:
      dets += list(boxes_at(rng.uniform(0, 1, (140, 2)), rng.uniform(0.05, 0.3, (140, 2))))
      det_classes += [0, n_classes - 1] * 70
    dets = np.array(dets, np.float32).reshape(-1, 4)
    if inverted:  # Some boxes upside down (negative area: pycocotools ignores them), some flipped both ways.
      for array in (gt, dets):
        flip = rng.random(len(array))
        array[flip < 0.1] = array[flip < 0.1][:, [2, 1, 0, 3]]
        array[flip > 0.95] = array[flip > 0.95][:, [2, 3, 0, 1]]
    scores = rng.random(len(dets))
    if i % 2:
      scores = np.round(scores, 1)
    regions = {}
    if crowd:
      n_regions = int(rng.integers(0, 4))
      around = [dets[j] for j in rng.choice(len(dets), min(n_regions, len(dets)), replace=False)] + list(gt[:1])
      grown = [np.clip(box + rng.uniform(-0.1, 0.1, 4) * 0.3 - np.array([0.05, 0.05, -0.05, -0.05]), 0, 1)
               for box in around] + list(boxes_at(rng.uniform(0, 1, (1, 2)), rng.uniform(0.1, 0.5, (1, 2))))
      ignore_boxes = np.array(grown, np.float32).reshape(-1, 4)
      regions = dict(ignore_boxes=ignore_boxes,
                     ignore_classes=rng.integers(0, n_classes, len(ignore_boxes)).astype(np.int32))
    truth.append(ImageBoxes(gt, gt_classes.astype(np.int32), **regions))
    found.append(ImageBoxes(dets, np.array(det_classes, np.int32).reshape(-1), scores.astype(np.float32)))
  return truth, found


def pycocotools_ap(truth, found, key="ap50", hw=(120, 160), names=NAMES):
  metrics = evaluate_detections(truth, found, hw, names)
  return metrics[key] if key in metrics else metrics["ap_at_iou"][key]


def fast_ap(truth, found, iou=0.5, hw=(120, 160), names=NAMES, indices=None):
  return ap_at_iou(match_at_iou(truth, found, iou, image_hw=hw, num_classes=len(names)), indices)


@pytest.mark.parametrize("seed, n_classes, inverted, crowd", [(0, 1, False, False), (1, 1, False, False),
                                                              (2, 3, False, False), (3, 3, False, False),
                                                              (4, 3, True, False), (5, 1, False, True),
                                                              (6, 3, False, True)])
def test_ap_equals_pycocotools_at_every_table4_threshold(seed, n_classes, inverted, crowd):
  names = NAMES[:n_classes]
  truth, found = random_case(seed, n_classes=n_classes, inverted=inverted, crowd=crowd)
  metrics = evaluate_detections(truth, found, (120, 160), names)
  matches = match_at_iou(truth, found, 0.5, image_hw=(120, 160), num_classes=n_classes)
  assert ap_at_iou(matches) == pytest.approx(metrics["ap50"], abs=1e-9)
  assert 0.05 < metrics["ap50"] < 0.95  # Neither trivially perfect nor empty.
  assert fast_ap(truth, found, 0.75, names=names) == pytest.approx(metrics["ap75"], abs=1e-9)
  for iou in ("0.6", "0.7", "0.8", "0.9"):
    assert fast_ap(truth, found, float(iou), names=names) == pytest.approx(metrics["ap_at_iou"][iou], abs=1e-9)


def test_random_case_covers_the_edge_cases():
  # The cases above hold what they claim: empty images both ways, ties, > 100 detections of a class.
  truth, found = random_case(2)
  assert any(len(t.boxes) == 0 for t in truth) and any(len(f.boxes) == 0 for f in found)
  assert any(len(np.unique(f.scores)) < len(f.scores) for f in found)
  assert max(np.count_nonzero(f.classes == 0) for f in found) > 100
  matches = match_at_iou(truth, found, image_hw=(120, 160), num_classes=3)
  assert max(np.count_nonzero(m.classes == 0) for m in matches.images) == 100  # Truncated per class...
  assert max(len(m.scores) for m in matches.images) > 100  # ... not per image.


def test_truncation_is_per_class_and_keeps_the_best_scores():
  truth = [ImageBoxes(np.array([[0.0, 0.0, 0.5, 0.5]]), np.array([0]))]
  # 100 false detections above the true one: the 101st (the match) is dropped, AP 0; at 99 false ones it counts.
  for n_false, expected in ((100, 0.0), (99, 0.01)):
    boxes = np.array([[0.6, 0.6, 0.9, 0.9]] * n_false + [[0.0, 0.0, 0.5, 0.5]])
    found = [ImageBoxes(boxes, np.zeros(n_false + 1, int), np.r_[np.full(n_false, 0.9), 0.5])]
    assert fast_ap(truth, found, names=["a"]) == pytest.approx(pycocotools_ap(truth, found, names=["a"]),
                                                               abs=1e-12)
    assert fast_ap(truth, found, names=["a"]) == pytest.approx(expected, abs=1e-12)


def test_an_iou_equal_to_the_threshold_matches():
  # 64 px square: ground truth 32 x 32 px, detection 32 x 16 px inside it: IoU exactly 0.5; 32 x 24: 0.75.
  truth = [ImageBoxes(np.array([[0.0, 0.0, 0.5, 0.5]]), np.array([0]))]
  for width, iou in ((0.25, 0.5), (0.375, 0.75)):
    found = [ImageBoxes(np.array([[0.0, 0.0, 0.5, width]]), np.array([0]), np.array([0.9]))]
    expected = pycocotools_ap(truth, found, f"ap{int(iou * 100)}", hw=(64, 64), names=["a"])
    assert expected == pytest.approx(1.0)  # 1 / (1 + eps): pycocotools' precision of the first detection.
    assert fast_ap(truth, found, iou, hw=(64, 64), names=["a"]) == expected
    assert fast_ap(truth, found, iou + 0.01, hw=(64, 64), names=["a"]) == 0.0


def test_grid_thresholds_are_pycocotools_floats_and_iou_is_taken_in_pixels():
  # pycocotools' 0.9 is 0.8999999999999999 (np.linspace). A detection keeping the left 0.8999999999999999 of
  # its ground truth has that IoU exactly in a 64 px image, a match there though below 0.9; in a 100 px image
  # rounding puts it at 0.8999999999999997, a miss: matching has to see the same pixel boxes.
  truth = [ImageBoxes(np.array([[0.0, 0.0, 1.0, 1.0]]), np.array([0]))]
  found = [ImageBoxes(np.array([[0.0, 0.0, 1.0, np.nextafter(0.9, 0)]]), np.array([0]), np.array([0.9]))]
  assert statistics.COCO_IOU_THRESHOLDS[8] < 0.9
  for side, expected in ((64, 1.0), (100, 0.0)):
    assert pycocotools_ap(truth, found, "0.9", hw=(side, side), names=["a"]) == pytest.approx(expected)
    assert fast_ap(truth, found, 0.9, hw=(side, side), names=["a"]) == pytest.approx(expected)


def cocoeval_ap(truth, found, iou, hw=(120, 160), names=NAMES):
  """pycocotools' AP@iou with its IoU thresholds set to [iou]: thresholds off COCO's grid."""
  dataset, results = to_coco(truth, found, hw, names)
  with contextlib.redirect_stdout(io.StringIO()):
    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    evaluator = COCOeval(coco, coco.loadRes(results), iouType="bbox")
    evaluator.params.iouThrs = np.array([iou])
    evaluator.evaluate()
    evaluator.accumulate()
  precision = evaluator.eval["precision"][0, :, :, 0, -1]
  return float(np.mean(precision[precision > -1]))


def test_ap_off_the_grid_equals_pycocotools_with_that_threshold():
  truth, found = random_case(10, inverted=True)
  for iou in (0.3, 0.55, 0.62):
    assert fast_ap(truth, found, iou) == pytest.approx(cocoeval_ap(truth, found, iou), abs=1e-9)


def test_at_iou_1_a_match_within_1e_10_counts():
  # pycocotools tests IoU >= min(t, 1 - 1e-10): at t = 1 a box off by a hair still matches.
  truth = [ImageBoxes(np.array([[0.0, 0.0, 0.5, 0.5]]), np.array([0]))]
  found = [ImageBoxes(np.array([[0.0, 0.0, 0.5, 0.5 - 1e-12]]), np.array([0]), np.array([0.9]))]
  assert cocoeval_ap(truth, found, 1.0, names=["a"]) == pytest.approx(1.0)
  assert fast_ap(truth, found, 1.0, names=["a"]) == pytest.approx(1.0)


def test_a_tie_in_iou_goes_to_the_later_ground_truth():
  # 64 px square. Truth x 0-20 and 10-30 px; the first detection (x 5-25) overlaps both at IoU 0.6 and takes
  # the later one, so the second (x 12-30, IoU 0.9 with it) finds it taken: AP 0.5 (1.0 had it taken the first).
  px = 1 / 64
  truth = [ImageBoxes(np.array([[0, 0, 20, 20], [0, 10, 20, 30]]) * px, np.array([0, 0]))]
  found = [ImageBoxes(np.array([[0, 5, 20, 25], [0, 12, 20, 30]]) * px, np.array([0, 0]), np.array([0.9, 0.8]))]
  expected = pycocotools_ap(truth, found, hw=(64, 64), names=["a"])
  assert expected == pytest.approx(51 / 101)
  assert fast_ap(truth, found, hw=(64, 64), names=["a"]) == pytest.approx(expected, abs=1e-12)


def test_a_resample_equals_pycocotools_on_the_duplicated_lists():
  truth, found = random_case(5, n_images=30)
  matches = match_at_iou(truth, found, image_hw=(120, 160), num_classes=3)
  rng = np.random.default_rng(0)
  for _ in range(3):
    indices = rng.integers(0, len(truth), len(truth))
    assert len(np.unique(indices)) < len(indices)
    expected = pycocotools_ap([truth[i] for i in indices], [found[i] for i in indices])
    assert ap_at_iou(matches, indices) == pytest.approx(expected, abs=1e-9)
  # A multiset of one image repeated, and its order mattering through tied scores as in pycocotools.
  assert ap_at_iou(matches, [1, 1, 1]) == pytest.approx(pycocotools_ap([truth[1]] * 3, [found[1]] * 3), abs=1e-9)
  order = np.arange(len(truth))[::-1]
  assert ap_at_iou(matches, order) == pytest.approx(
      pycocotools_ap([truth[i] for i in order], [found[i] for i in order]), abs=1e-9)


def test_tied_scores_across_images_rank_in_list_order():
  # One true and one false detection at the same score in two images: which comes first changes COCO's AP.
  truth = [ImageBoxes(np.array([[0.0, 0.0, 0.5, 0.5]]), np.array([0])),
           ImageBoxes(np.array([[0.0, 0.0, 0.5, 0.5]]), np.array([0]))]
  found = [ImageBoxes(np.array([[0.0, 0.0, 0.5, 0.5]]), np.array([0]), np.array([0.5])),
           ImageBoxes(np.array([[0.6, 0.6, 0.9, 0.9]]), np.array([0]), np.array([0.5]))]
  matches = match_at_iou(truth, found, image_hw=(64, 64), num_classes=1)
  forward, backward = ap_at_iou(matches, [0, 1]), ap_at_iou(matches, [1, 0])
  assert forward != pytest.approx(backward)
  assert forward == pytest.approx(pycocotools_ap(truth, found, hw=(64, 64), names=["a"]), abs=1e-12)
  assert backward == pytest.approx(pycocotools_ap(truth[::-1], found[::-1], hw=(64, 64), names=["a"]), abs=1e-12)


def test_a_class_without_ground_truth_is_left_out():
  truth, found = random_case(6, n_classes=2)
  with_false_c = [ImageBoxes(f.boxes, np.where(np.arange(len(f.classes)) % 3 == 0, 2, f.classes), f.scores)
                  for f in found]  # Some detections relabelled to class "c", which has no ground truth.
  metrics = evaluate_detections(truth, with_false_c, (120, 160), NAMES)
  assert metrics["per_class_ap50"]["c"] == -1
  assert metrics["ap50"] == pytest.approx(np.mean([metrics["per_class_ap50"][k] for k in "ab"]), abs=1e-9)
  assert fast_ap(truth, with_false_c) == pytest.approx(metrics["ap50"], abs=1e-9)
  without_c = [ImageBoxes(f.boxes[f.classes != 2], f.classes[f.classes != 2], f.scores[f.classes != 2])
               for f in with_false_c]
  assert fast_ap(truth, with_false_c) == pytest.approx(fast_ap(truth, without_c), abs=1e-12)


def test_nothing_detected_scores_zero_and_nothing_to_find_is_minus_one():
  truth, _ = random_case(7)
  empty = [ImageBoxes(np.zeros((0, 4), np.float32), np.zeros(0, np.int32), np.zeros(0, np.float32))] * len(truth)
  assert fast_ap(truth, empty) == 0.0 == pycocotools_ap(truth, empty)
  no_truth = [ImageBoxes(np.zeros((0, 4)), np.zeros(0, np.int32))] * len(truth)
  assert fast_ap(no_truth, empty) == -1.0  # pycocotools' marker: no class to average over.


def test_match_at_iou_rejects_mismatched_lists():
  truth, found = random_case(8, n_images=4)
  with pytest.raises(ValueError, match="one detection entry per image"):
    match_at_iou(truth, found[:3])
  with pytest.raises(ValueError, match="scores"):
    match_at_iou(truth, [ImageBoxes(f.boxes, f.classes) for f in found])
  with pytest.raises(IndexError):
    ap_at_iou(match_at_iou(truth, found), [0, 4])


def _arms(n_seeds: int = 2, n_images: int = 30) -> tuple[list, list, list]:
  """Per seed: truth, arm a's detections (true ones scored above false ones mostly) and arm b's (a's with
  every true detection's score pushed below every false one's)."""
  truth, _ = random_case(100, n_images=n_images)
  found_a, found_b = [], []
  for seed in range(n_seeds):
    rng = np.random.default_rng(seed)
    a, b = [], []
    for t in truth:
      hits = t.boxes + rng.normal(0, 0.005, t.boxes.shape).astype(np.float32)
      misses = boxes_at(rng.uniform(0, 1, (2, 2)), np.full((2, 2), 0.05))
      boxes = np.concatenate([hits, misses]).astype(np.float32)
      classes = np.concatenate([t.classes, rng.integers(0, 3, 2)]).astype(np.int32)
      true_scores, false_scores = rng.uniform(0.4, 1.0, len(hits)), rng.uniform(0.3, 0.6, 2)
      a.append(ImageBoxes(boxes, classes, np.concatenate([true_scores, false_scores])))
      b.append(ImageBoxes(boxes, classes, np.concatenate([true_scores * 0.1, false_scores])))
    found_a.append(a)
    found_b.append(b)
  return truth, found_a, found_b


def _matched(truth, founds):
  return [match_at_iou(truth, found, image_hw=(120, 160), num_classes=3) for found in founds]


def test_identical_arms_differ_by_exactly_zero():
  truth, found_a, _ = _arms()
  matches = _matched(truth, found_a)
  result = paired_bootstrap(matches, matches, resamples=200)
  assert result == {"mean_difference": 0.0, "low": 0.0, "high": 0.0, "resamples": 200, "seeds": 2,
                    "share_above_zero": 0.0}


def test_an_arm_better_on_every_image_has_an_interval_above_zero():
  truth, found_a, found_b = _arms()
  a, b = _matched(truth, found_a), _matched(truth, found_b)
  result = paired_bootstrap(a, b, resamples=300)
  assert 0 < result["low"] < result["mean_difference"] < result["high"]
  assert result["share_above_zero"] == 1.0
  assert result["mean_difference"] == pytest.approx(
      np.mean([pycocotools_ap(truth, fa) - pycocotools_ap(truth, fb) for fa, fb in zip(found_a, found_b)]),
      abs=1e-9)
  swapped = paired_bootstrap(b, a, resamples=300)
  assert (swapped["low"], swapped["high"]) == pytest.approx((-result["high"], -result["low"]), abs=1e-12)


def test_the_interval_is_reproducible_and_follows_the_documented_draws():
  truth, found_a, found_b = _arms()
  a, b = _matched(truth, found_a), _matched(truth, found_b)
  result = paired_bootstrap(a, b, resamples=40, seed=3, confidence=0.9)
  assert paired_bootstrap(a, b, resamples=40, seed=3, confidence=0.9) == result
  assert paired_bootstrap(a, b, resamples=40, seed=4, confidence=0.9) != result
  rng = np.random.default_rng(3)
  draws = []
  for _ in range(40):
    indices = rng.integers(0, len(truth), len(truth))
    draws.append(np.mean([ap_at_iou(x, indices) - ap_at_iou(y, indices) for x, y in zip(a, b)]))
  assert (result["low"], result["high"]) == pytest.approx(tuple(np.percentile(draws, [5, 95])), abs=1e-12)
  assert result["share_above_zero"] == np.mean(np.array(draws) > 0)


def test_every_seed_and_arm_is_scored_on_the_same_resample():
  # Seed 0 compares X with Y, seed 1 Y with X: on a shared resample the two differences cancel in every draw;
  # resampled apart, they would not.
  truth, found_a, found_b = _arms(n_seeds=1)
  x, y = _matched(truth, found_a + found_b)
  assert ap_at_iou(x) - ap_at_iou(y) > 0.1
  result = paired_bootstrap([x, y], [y, x], resamples=200)
  assert (result["mean_difference"], result["low"], result["high"]) == (0.0, 0.0, 0.0)


def test_paired_bootstrap_refuses_different_test_sets():
  truth, found_a, found_b = _arms(n_seeds=1)
  a = _matched(truth, found_a)
  with pytest.raises(ValueError, match="same test images"):
    paired_bootstrap(a, _matched(truth[:-1], [found_b[0][:-1]]), resamples=5)
  shuffled = _matched(truth[::-1], [found_b[0][::-1]])
  with pytest.raises(ValueError, match="different ground truth"):
    paired_bootstrap(a, shuffled, resamples=5)
  with pytest.raises(ValueError, match="seeds"):
    paired_bootstrap(a, a + a, resamples=5)


def test_sample_sd_is_numpy_ddof_1_and_nan_below_two_values():
  values = np.random.default_rng(0).normal(size=7)
  assert sample_sd(values) == pytest.approx(np.std(values, ddof=1), rel=1e-12)
  assert sample_sd(list(values[:2])) == pytest.approx(abs(values[0] - values[1]) / np.sqrt(2), rel=1e-12)
  assert np.isnan(sample_sd([])) and np.isnan(sample_sd([0.4]))


def test_grouped_ap_equals_pycocotools_per_group():
  truth, found = random_case(9, n_images=36)
  groups = np.array(["p0", "p1", "p2", "p3"])[np.random.default_rng(1).integers(0, 4, len(truth))]
  result = grouped_ap(match_at_iou(truth, found, image_hw=(120, 160), num_classes=3), groups)
  assert list(result) == ["p0", "p1", "p2", "p3"]
  for label, ap in result.items():
    members = np.flatnonzero(groups == label)
    expected = pycocotools_ap([truth[i] for i in members], [found[i] for i in members])
    assert ap == pytest.approx(expected, abs=1e-9)
  with pytest.raises(ValueError, match="one group label per image"):
    grouped_ap(match_at_iou(truth, found), groups[:-1])


def test_recall_steps_are_pycocotools_searchsorted():
  # The shortcut: the first detection reaching a recall threshold is the tp-th true one, tp from this table.
  for n in (1, 3, 7, 100, 333):
    recalls = np.arange(n + 1) / n
    assert np.array_equal(statistics._recall_steps(n), np.searchsorted(recalls, statistics.RECALL_THRESHOLDS))


def test_the_paired_t_interval_is_scipys_one_sample_t_interval_of_the_differences():
  differences = np.array([0.061, 0.033, -0.012, 0.070, 0.035])
  expected = scipy.stats.ttest_1samp(differences, 0.0).confidence_interval(0.95)
  np.testing.assert_allclose(statistics.paired_t_interval(differences), (expected.low, expected.high))
  assert all(np.isnan(statistics.paired_t_interval([0.1])))


def test_a_memo_kept_across_comparisons_scores_each_arms_draws_once_and_changes_no_figure():
  truth, found_a, found_b = _arms()
  a, b = _matched(truth, found_a), _matched(truth, found_b)
  memo = {}
  assert paired_bootstrap(a, b, resamples=50, memo=memo) == paired_bootstrap(a, b, resamples=50)
  assert paired_bootstrap(b, a, resamples=50, memo=memo) == paired_bootstrap(b, a, resamples=50)
  assert len(memo) == len(a) + len(b)  # One entry per seed's matches of each arm, reused by the second call.
