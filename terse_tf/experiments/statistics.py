"""The statistics a detection experiment reports: COCO's AP at one IoU threshold recomputed on bootstrap
resamples of the test images, paired 95% intervals for the difference between two arms, AP per group of
images, and the seed-to-seed standard deviation.

A paired interval needs the AP of ~1,000 resamples per arm and seed: with 5 seeds x 2 arms, 10,000
pycocotools runs at ~0.3 s each (500 images) would take most of an hour. The AP here is a re-implementation
of COCOeval's AP@IoU ("bbox", area "all", 100 detections per image, no crowd) that equals pycocotools'
figure, which tests/test_statistics.py checks case by case; a resample takes ~0.15 ms.
Matching (the slow, per-box part) runs once per arm and seed in `match_at_iou`; a resample then only
concatenates the chosen images' matched detections and sorts them once (`ap_at_iou`).

What is reproduced from pycocotools (cocoeval.py, COCOeval.evaluateImg and .accumulate):
  * IoU on COCO pixel boxes [x, y, w, h] made by terse_tf.evaluation._coco_box, computed as its C bbIou
    does (intersection / (area_d + area_g - intersection), no +1), in the same float operations;
  * per image and class, detections sorted by descending score with np.argsort(-scores, kind="mergesort")
    (stable: ties keep input order), the first 100 kept; each, in that order, takes the still unmatched
    ground-truth box of highest IoU >= min(t, 1 - 1e-10), a later box winning a tie; ground truth whose
    area is out of range [0, 1e10] (an inverted box has negative area) is ignored, as are the detections
    matched to it and unmatched detections of out-of-range area;
  * per class, detections of all images concatenated in image order, then one stable sort by descending
    score, so tied scores across images rank in image order; precision = tp / (tp + fp + eps), made
    monotone from the right, read at the first detection reaching each of the 101 recall thresholds
    (np.searchsorted(recall, thresholds, side="left")), 0 beyond the last recall reached;
  * a threshold on COCO's grid is pycocotools' float for it (see _coco_iou_threshold);
  * a class without ground truth is -1 and left out of the mean; one with ground truth and no detection is
    0; the AP is the mean of the [101 recall points x classes] precision values, in pycocotools' order.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Sequence

import numpy as np
import scipy.stats
from pycocotools.cocoeval import Params

from terse_tf.evaluation import ImageBoxes, _coco_box

_PARAMS = Params(iouType="bbox")
# pycocotools' own grids, np.linspace's floats: IoU 0.9 is 0.8999999999999999, recall 0.7 0.7000000000000001.
COCO_IOU_THRESHOLDS: np.ndarray = _PARAMS.iouThrs
RECALL_THRESHOLDS: np.ndarray = _PARAMS.recThrs
AREA_ALL: tuple[float, float] = tuple(_PARAMS.areaRng[_PARAMS.areaRngLbl.index("all")])


def sample_sd(values: Sequence[float] | np.ndarray) -> float:
  """Standard deviation with ddof=1, the unbiased-variance estimate a spread over seeds reports; NaN for
  fewer than 2 values, where no spread is defined (np.std would warn and return NaN or 0)."""
  values = np.asarray(values, dtype=np.float64).ravel()
  return float(np.std(values, ddof=1)) if values.size >= 2 else float("nan")


def paired_t_interval(differences: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float]:
  """The `level` t interval of the mean of paired differences (one per seed): what another training seed
  would give. NaN bounds for fewer than 2 differences."""
  differences = np.asarray(differences, dtype=np.float64).ravel()
  if differences.size < 2:
    return float("nan"), float("nan")
  mean = float(np.mean(differences))
  half = float(scipy.stats.t.ppf(0.5 + level / 2, differences.size - 1) * sample_sd(differences) /
               np.sqrt(differences.size))
  return mean - half, mean + half


class ImageMatches(NamedTuple):
  """One image's detections after COCO matching at one IoU, the least a resample needs to recompute AP.

  The detections pycocotools ignores are dropped (they change neither tp nor fp counts, so no AP); the
  rest are grouped by class, each class's in COCOeval's order (descending score, stable), at most
  max_detections per class.
  """
  scores: np.ndarray  # [D] float64
  classes: np.ndarray  # [D] int64, 0-based
  true_positive: np.ndarray  # [D] bool
  truth_counts: np.ndarray  # [K] int64: ground-truth boxes per class, ignored ones left out


@dataclasses.dataclass(frozen=True, eq=False)
class Matches:
  """A test set's ImageMatches (one per image, the order of the ImageBoxes lists) at IoU `iou`, with the
  flat arrays `ap_at_iou` gathers from, built once here so that a resample costs one gather and one sort."""
  images: tuple[ImageMatches, ...]
  num_classes: int
  iou: float
  _scores: np.ndarray = dataclasses.field(init=False, repr=False)
  _classes: np.ndarray = dataclasses.field(init=False, repr=False)
  _true_positive: np.ndarray = dataclasses.field(init=False, repr=False)
  _sort_key: np.ndarray = dataclasses.field(init=False, repr=False)
  _starts: np.ndarray = dataclasses.field(init=False, repr=False)
  _counts: np.ndarray = dataclasses.field(init=False, repr=False)
  _truth: np.ndarray = dataclasses.field(init=False, repr=False)

  def __post_init__(self):
    images = tuple(self.images)
    counts = np.array([len(m.scores) for m in images], dtype=np.int64)
    scores = np.concatenate([m.scores for m in images] + [np.zeros(0)]).astype(np.float64)
    classes = np.concatenate([m.classes for m in images] + [np.zeros(0, np.int64)]).astype(np.int64)
    true_positive = np.concatenate([m.true_positive for m in images] + [np.zeros(0, bool)]).astype(bool)
    truth = np.array([m.truth_counts for m in images], dtype=np.int64).reshape(len(images), self.num_classes)
    # One integer key sorts by class, then by descending score: equal scores share a rank, so a stable sort
    # on the key keeps tied detections in gathered order, as pycocotools' mergesort on -score does.
    _, score_rank = np.unique(-scores, return_inverse=True)
    sort_key = classes * max(len(scores), 1) + score_rank.reshape(-1)
    fields = {"images": images, "_scores": scores, "_classes": classes, "_true_positive": true_positive,
              "_sort_key": sort_key, "_starts": np.cumsum(counts) - counts, "_counts": counts, "_truth": truth}
    for name, value in fields.items():
      object.__setattr__(self, name, value)

  def __len__(self) -> int:
    return len(self.images)


def _coco_iou_threshold(iou: float) -> float:
  """`iou`, or pycocotools' value of the grid threshold it names: 0.9 means COCO's 0.8999999999999999, so
  matching at 0.9 here is matching at pycocotools' 0.9 (where an IoU of 0.8999999999999999 is a match)."""
  nearest = COCO_IOU_THRESHOLDS[np.argmin(np.abs(COCO_IOU_THRESHOLDS - iou))]
  return float(nearest) if abs(nearest - iou) < 1e-9 else float(iou)


def _bbox_iou(found: np.ndarray, truth: np.ndarray, crowd: np.ndarray) -> np.ndarray:
  """[D, G] IoU of COCO [x, y, w, h] boxes, pycocotools' bbIou (maskApi.c) operation for operation: the
  overlap's width and height from min(x + w) - max(x) (0 unless both are positive), then i / (da + ga - i),
  or i / da against a crowd region (`crowd` [G]: the share of the detection inside it)."""
  d, g = found[:, None, :], truth[None, :, :]
  width = np.minimum(d[..., 2] + d[..., 0], g[..., 2] + g[..., 0]) - np.maximum(d[..., 0], g[..., 0])
  height = np.minimum(d[..., 3] + d[..., 1], g[..., 3] + g[..., 1]) - np.maximum(d[..., 1], g[..., 1])
  overlap = (width > 0) & (height > 0)
  intersection = np.where(overlap, width * height, 0.0)
  found_area = d[..., 2] * d[..., 3]
  union = np.where(crowd[None, :], found_area, (found_area + g[..., 2] * g[..., 3]) - intersection)
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(overlap, intersection / np.where(overlap, union, 1.0), 0.0)


def _out_of_range(areas: np.ndarray) -> np.ndarray:
  return (areas < AREA_ALL[0]) | (areas > AREA_ALL[1])


def _match_class(truth_boxes: np.ndarray, truth_crowd: np.ndarray, found_boxes: np.ndarray,
                 found_scores: np.ndarray, threshold: float, max_detections: int
                 ) -> tuple[np.ndarray, np.ndarray, int]:
  """COCOeval.evaluateImg for one image and class at one threshold: (scores, true positive) of the
  detections it does not ignore, in its order, and the number of ground-truth boxes it does not ignore.
  Crowd regions (`truth_crowd`) are ignored ground truth that any number of detections may match."""
  truth_ignored = truth_crowd | _out_of_range(truth_boxes[:, 2] * truth_boxes[:, 3])
  truth_order = np.argsort(truth_ignored, kind="mergesort")  # Ignored ground truth last.
  truth_boxes, truth_ignored = truth_boxes[truth_order], truth_ignored[truth_order]
  truth_crowd = truth_crowd[truth_order]
  order = np.argsort(-found_scores, kind="mergesort")[:max_detections]
  found_boxes, found_scores = found_boxes[order], found_scores[order]
  matched = np.zeros(len(found_boxes), bool)
  matched_ignored = np.zeros(len(found_boxes), bool)
  if len(found_boxes) and len(truth_boxes):
    ious = _bbox_iou(found_boxes, truth_boxes, truth_crowd).tolist()
    taken = [False] * len(truth_boxes)
    ignored, crowd = truth_ignored.tolist(), truth_crowd.tolist()
    for d, row in enumerate(ious):
      best, m = min(threshold, 1 - 1e-10), -1
      for g, value in enumerate(row):
        if taken[g] and not crowd[g]:
          continue
        if m > -1 and not ignored[m] and ignored[g]:
          break
        if value < best:
          continue
        best, m = value, g  # `<` above: an equal IoU later in the list takes over.
      if m > -1:
        taken[m] = True
        matched[d], matched_ignored[d] = True, ignored[m]
  found_ignored = matched_ignored | (~matched & _out_of_range(found_boxes[:, 2] * found_boxes[:, 3]))
  kept = ~found_ignored
  return found_scores[kept], matched[kept], int(np.count_nonzero(~truth_ignored))


def match_at_iou(truth: list[ImageBoxes], found: list[ImageBoxes], iou: float = 0.5, max_detections: int = 100,
                 *, image_hw: tuple[int, int] = (1, 1), num_classes: int | None = None) -> Matches:
  """COCO's per-image, per-class greedy matching of `found` against `truth` (one entry each per image, same
  order) at IoU `iou` (a COCO grid value such as 0.6 is taken as pycocotools' float for it).

  Pass the `image_hw` given to terse_tf.evaluation.evaluate_detections: IoU is computed on the pixel boxes
  it makes, so IoUs at the threshold fall on the same side as in pycocotools. `num_classes` (the length of
  its class_names) drops boxes of other classes as pycocotools does; by default it is one more than the
  largest class present.
  """
  if len(truth) != len(found):
    raise ValueError(f"expected one detection entry per image: {len(truth)} images, "
                     f"{len(found)} detection entries")
  if any(f.scores is None for f in found):
    raise ValueError("every detection entry needs scores")
  if num_classes is None:
    labels = [np.asarray(x.classes).reshape(-1) for x in (*truth, *found)]
    num_classes = int(max((int(c.max()) for c in labels if c.size), default=-1)) + 1
  height, width = image_hw
  threshold = _coco_iou_threshold(iou)

  def coco_boxes(boxes: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # terse_tf.evaluation's own conversion, box by box, so the doubles are those pycocotools receives.
    pixel = np.array([_coco_box(box, height, width) for box in boxes], np.float64).reshape(-1, 4)
    return pixel, np.array([int(c) for c in np.asarray(classes).reshape(-1)], np.int64)

  images = []
  for image_truth, image_found in zip(truth, found):
    truth_boxes, truth_classes = coco_boxes(image_truth.boxes, image_truth.classes)
    truth_crowd = np.zeros(len(truth_boxes), bool)
    if image_truth.ignore_boxes is not None:  # Crowd regions after the objects, as to_coco writes them.
      crowd_boxes, crowd_classes = coco_boxes(image_truth.ignore_boxes, image_truth.ignore_classes)
      truth_boxes, truth_classes = np.concatenate([truth_boxes, crowd_boxes]), np.concatenate(
          [truth_classes, crowd_classes])
      truth_crowd = np.concatenate([truth_crowd, np.ones(len(crowd_boxes), bool)])
    found_boxes, found_classes = coco_boxes(image_found.boxes, image_found.classes)
    found_scores = np.array([float(s) for s in np.asarray(image_found.scores).reshape(-1)], np.float64)
    scores, true_positive, classes = [], [], []
    truth_counts = np.zeros(num_classes, np.int64)
    for k in range(num_classes):
      in_truth, in_found = truth_classes == k, found_classes == k
      if not in_truth.any() and not in_found.any():
        continue
      class_scores, class_tp, truth_counts[k] = _match_class(
          truth_boxes[in_truth], truth_crowd[in_truth], found_boxes[in_found], found_scores[in_found], threshold,
          max_detections)
      scores.append(class_scores)
      true_positive.append(class_tp)
      classes.append(np.full(len(class_scores), k, np.int64))
    images.append(ImageMatches(scores=np.concatenate(scores + [np.zeros(0)]),
                               classes=np.concatenate(classes + [np.zeros(0, np.int64)]),
                               true_positive=np.concatenate(true_positive + [np.zeros(0, bool)]),
                               truth_counts=truth_counts))
  return Matches(images=_without_trailing_false_positives(images, num_classes), num_classes=num_classes,
                 iou=threshold)


def _without_trailing_false_positives(images: list[ImageMatches], num_classes: int) -> tuple[ImageMatches, ...]:
  """The images' matches less each class's detections scored below all of that class's true positives.

  They come after every true positive in any resample's score order, where precision no longer counts: each
  recall point reads the precision at the first detection that reaches it. Dropping them changes no AP and
  makes a resample's sort cost the few hundred detections that can matter instead of up to 100 per image.
  """
  lowest = np.full(num_classes, np.inf)
  for image in images:
    for k in np.unique(image.classes[image.true_positive]):
      lowest[k] = min(lowest[k], image.scores[image.true_positive & (image.classes == k)].min())
  return tuple(image._replace(**{field: getattr(image, field)[image.scores >= lowest[image.classes]]
                                 for field in ("scores", "classes", "true_positive")}) for image in images)


@functools.lru_cache(maxsize=None)
def _recall_steps(num_truth: int) -> np.ndarray:
  """For each of the 101 recall thresholds, how many true positives reach it with `num_truth` ground-truth
  boxes: pycocotools' np.searchsorted(tp / npig, recThrs, side="left") over every possible tp count (the
  recall tp / npig only grows with tp, so the first detection reaching a threshold is the tp-th true one)."""
  recalls = np.arange(num_truth + 1, dtype=np.float64) / num_truth
  steps = np.searchsorted(recalls, RECALL_THRESHOLDS, side="left")
  steps.flags.writeable = False
  return steps


def ap_at_iou(matches: Matches, image_indices: Sequence[int] | np.ndarray | None = None) -> float:
  """COCO AP at `matches.iou` (mean over classes with ground truth) of the multiset of images
  `image_indices` (None: every image once), equal to pycocotools run on the list of those images in that
  order; a repeated index counts the image again, its detections and ground truth both. -1 when no class
  has ground truth, pycocotools' marker.

  Vectorised: the chosen images' detections are gathered in order and sorted once by (class, descending
  score), stably, so tied scores keep pycocotools' order (image position, then the image's own order).
  Precision then matters only at true positives: after a false one it falls, so the envelope made
  monotone from the right is the running maximum, from the right, of precision at the true positives.
  """
  n_images, n_classes = len(matches), matches.num_classes
  if image_indices is None:
    indices = np.arange(n_images)
  else:
    indices = np.asarray(image_indices, dtype=np.int64).reshape(-1)
    if indices.size and (indices.min() < 0 or indices.max() >= n_images):
      raise IndexError(f"image indices must lie in [0, {n_images}): got {indices.min()} .. {indices.max()}")
  num_truth = matches._truth[indices].sum(axis=0)
  defined = np.flatnonzero(num_truth > 0)
  if not defined.size:
    return -1.0
  counts = matches._counts[indices]
  ends = np.cumsum(counts)
  gather = np.repeat(matches._starts[indices] - (ends - counts), counts) + np.arange(ends[-1])
  order = gather[np.argsort(matches._sort_key[gather], kind="stable")]
  classes = matches._classes[order]
  class_starts = np.searchsorted(classes, np.arange(n_classes), side="left")
  tp_at = np.flatnonzero(matches._true_positive[order])
  tp_classes = classes[tp_at]
  tp_counts = np.bincount(tp_classes, minlength=n_classes)
  tp_rank = np.arange(len(tp_at)) - (np.cumsum(tp_counts) - tp_counts)[tp_classes]  # 0-based, per class.
  detections_so_far = (tp_at - class_starts[tp_classes] + 1).astype(np.float64)  # tp + fp, as floats.
  precision = (tp_rank + 1) / (detections_so_far + np.spacing(1))
  # [class, k-th true positive] precision, a zero column past the last: reading beyond a class's last
  # true positive gives 0, as pycocotools' q array keeps where its searchsorted index runs off the end.
  width = int(tp_counts.max(initial=0)) + 1
  table = np.zeros((n_classes, width))
  table[tp_classes, tp_rank] = precision
  envelope = np.maximum.accumulate(table[:, ::-1], axis=1)[:, ::-1]
  steps = np.stack([_recall_steps(int(num_truth[k])) for k in defined])  # [classes with truth, 101]
  columns = np.minimum(np.maximum(steps, 1) - 1, width - 1)  # Recall 0 reads the first detection.
  per_point = envelope[defined[:, None], columns]
  # pycocotools: np.mean(s[s > -1]) over precision[recall point, class], recall-point-major.
  return float(np.mean(np.ascontiguousarray(per_point.T).reshape(-1)))


def resampled_aps(matches: Matches, resamples: int, seed: int = 0) -> np.ndarray:
  """AP (ap_at_iou) of `matches` on each of `resamples` bootstrap draws of its images: indices
  np.random.default_rng(seed).integers(0, n, n), draw after draw, the same draws for every Matches of n
  images, so that arms and seeds scored on them are paired."""
  rng = np.random.default_rng(seed)
  n_images = len(matches)
  return np.array([ap_at_iou(matches, rng.integers(0, n_images, n_images)) for _ in range(resamples)])


def paired_bootstrap(matches_a: list[Matches], matches_b: list[Matches], resamples: int = 1000, seed: int = 0,
                     confidence: float = 0.95, memo: dict | None = None) -> dict:
  """Percentile bootstrap interval of mean over seeds of AP_a - AP_b, over test images.

  matches_a[i] and matches_b[i] are the two arms' matches for training seed i on the same test images.
  Each draw resamples test-image indices once with replacement (np.random.default_rng(seed).integers(0, n,
  n), draw after draw) and scores every seed and both arms on those same indices: the pairing removes the
  test set's shared difficulty from the difference, and one resample across seeds keeps the test set fixed
  while the seeds vary, as in the experiment itself.

  Returns {"mean_difference": on the full test set, "low", "high": the interval's ends (percentiles
  (1 - confidence) / 2 and (1 + confidence) / 2 of the draws), "resamples", "seeds", "share_above_zero": the
  share of draws with a difference above 0}. `memo`, a dict kept across calls, keeps each Matches' resampled
  APs (resampled_aps), so that comparing one arm with several others scores its draws once.
  """
  if not matches_a or len(matches_a) != len(matches_b):
    raise ValueError(f"expected the same positive number of seeds per arm: {len(matches_a)} and "
                     f"{len(matches_b)}")
  every = [*matches_a, *matches_b]
  n_images = len(every[0])
  for m in every:
    if len(m) != n_images or m.num_classes != every[0].num_classes or m.iou != every[0].iou:
      raise ValueError("every arm and seed must be matched on the same test images, classes and IoU")
    if not np.array_equal(m._truth, every[0]._truth):
      raise ValueError("the arms' matches count different ground truth: not the same test images")
  if resamples < 1 or not 0 < confidence < 1:
    raise ValueError(f"need resamples >= 1 and 0 < confidence < 1: got {resamples}, {confidence}")

  memo = {} if memo is None else memo

  def draws_of(matches: Matches) -> np.ndarray:
    key = (matches, resamples, seed)  # Matches hash by identity.
    if key not in memo:
      memo[key] = resampled_aps(matches, resamples, seed)
    return memo[key]

  draws = np.mean([draws_of(a) - draws_of(b) for a, b in zip(matches_a, matches_b)], axis=0)
  mean_difference = float(np.mean([ap_at_iou(a) - ap_at_iou(b) for a, b in zip(matches_a, matches_b)]))
  tail = (1 - confidence) / 2 * 100
  low, high = np.percentile(draws, [tail, 100 - tail])
  return {"mean_difference": mean_difference, "low": float(low), "high": float(high), "resamples": resamples,
          "seeds": len(matches_a), "share_above_zero": float(np.mean(draws > 0))}


def grouped_ap(matches: Matches, groups: np.ndarray) -> dict:
  """{group label: AP of that group's images} for `groups` [images] (say the source photo of each test
  scene), to see whether a difference comes from a few groups; -1 for a group with no ground truth."""
  groups = np.asarray(groups).reshape(-1)
  if len(groups) != len(matches):
    raise ValueError(f"expected one group label per image: {len(groups)} labels, {len(matches)} images")
  return {label.item(): ap_at_iou(matches, np.flatnonzero(groups == label)) for label in np.unique(groups)}
