"""The generator: an exported synthesizer -> a dataset of its composites, shard by shard (package docstring).

A shard is a pure function of (seed, shard index): its cut-outs, backgrounds and the synthesizer's dropout
and noise (the SavedModel's `generate` signature takes the seed) are all drawn from that key
(inputs.shard_rng). So a killed run resumes by redoing only the shards it had not finished, and the result
equals an uninterrupted run's. A shard is finished exactly when its `.tfrecord` exists (records.ShardWriter).
A resume keeps a finished shard only when its sidecar's recipe is this run's: the models and folders are
compared by content (a synthesizer retrained into the same path is another one; `dir/` and `./dir` are the
same folder), and an --out that holds a shard set of another size (another --num or --shard_size) is
refused, since both sets would be globbed.

While the synthesizer composites batch k + 1, worker threads encode batch k as PNGs and serialise its
examples, and one thread draws batch k + 2's inputs, so the generator's rate stays close to the compositor's
(bench/generate.py).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import math
import os
import time
from typing import Iterator

import numpy as np
import tensorflow as tf
from absl import logging

from terse_tf import export, files
from terse_tf.errors import ConfigError, DataError
from terse_tf.generation import inputs as inputs_lib
from terse_tf.generation import records, signatures
from terse_tf.progress import format_duration

# A --hard_only shard gives up after this many batches per batch it needs: the target finds (almost) nothing
# hard, and the run says so instead of spinning.
MAX_BATCHES_PER_NEEDED_BATCH = 50


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
  synthesizer: str               # Exported synthesizer: a SavedModel, or a TF Serving model directory.
  foregrounds: str               # Folder of cut-outs (data/cutouts.py's layout), or "bundled": MNIST digits.
  out: str
  num: int
  backgrounds: str = ""          # Folder of photos to crop backgrounds from; "bundled" the sample photos
                                 # data/photos.py finds; "" black (as affNIST).
  shard_size: int = 1000
  batch_size: int = 64
  seed: int = 0
  signature: str = export.GENERATE
  target: str = ""               # Exported target; its `hardness` is recorded, and --hard_only filters on it.
  hard_only: bool = False
  # Hard below this hardness; None: the target's own default, as the trainer's (0.0 on a classifier's
  # p_gt - max_other in [-1, 1], 0.5 on a detector's confidence in [0, 1]).
  hard_threshold: float | None = None
  max_objects: int = 0           # Detection: objects per image drawn from 1..max_objects (0: every slot).
  write_masks: bool = False
  # Run the synthesizer's signature compiled by XLA: 1.8x the composites per second at 300x300 on CPU
  # (BENCHMARKS.md, dataset generation: 45 a second against 25.6). XLA draws other random numbers for the
  # same seed than the uncompiled graph does (both are deterministic), so a dataset made with it differs
  # from one made without, and a resume keeps to the setting the shards were made with.
  jit_compile: bool = True
  encode_threads: int = 2

  def __post_init__(self):
    for name in ("synthesizer", "foregrounds", "out"):
      if not getattr(self, name):
        raise ConfigError(f"--{name} is required")
    for name in ("num", "shard_size", "batch_size"):
      if getattr(self, name) < 1:
        raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")
    if self.hard_only and not self.target:
      raise ConfigError("--hard_only needs --target: the exported target whose hardness picks the composites")
    if self.hard_threshold is not None and not self.target:
      raise ConfigError("--hard_threshold needs --target: the exported target whose hardness it compares")
    if self.max_objects < 0:
      raise ConfigError(f"--max_objects must be >= 0, got {self.max_objects}")

  @property
  def num_shards(self) -> int:
    return math.ceil(self.num / self.shard_size)

  def shard_length(self, index: int) -> int:
    return min(self.shard_size, self.num - index * self.shard_size)

  def shard_path(self, index: int) -> str:
    return os.path.join(self.out, records.shard_name(index, self.num_shards))


class Generator:
  """Writes `config.num` composites of the synthesizer under `config.out` (module docstring)."""

  def __init__(self, config: GenerateConfig):
    self.config = config
    self._check_out()  # Before loading anything: a refusal comes at once.
    self.synthesizer = signatures.Synthesizer(config.synthesizer, config.signature, config.jit_compile)
    synthesizer = self.synthesizer
    if not synthesizer.seeded:
      logging.warning("--signature=%s takes no seed: its dropout or noise differs from run to run, so the "
                      "dataset is not reproducible and a resumed shard differs from the lost one",
                      config.signature)
    self.target = signatures.Target(config.target) if config.target else None
    self.hard_threshold = self._check_target() if self.target else None
    cutout_shape = synthesizer.foreground_shape[-3:]
    cutouts = inputs_lib.load_cutouts(config.foregrounds, cutout_shape, synthesizer.class_names)
    self.class_names = cutouts.class_names
    if self.target and self.target.num_classes is not None and len(self.class_names) > self.target.num_classes:
      raise ConfigError(f"--foregrounds={config.foregrounds} has {len(self.class_names)} classes "
                        f"({self.class_names}); {self.target.flag} tells {self.target.num_classes} apart: give "
                        "cut-outs of its classes, one sub-folder each in its class order")
    if config.max_objects > synthesizer.slots:
      raise ConfigError(f"--max_objects={config.max_objects}: the synthesizer pastes at most "
                        f"{synthesizer.slots} objects")
    photos = inputs_lib.load_photos(config.backgrounds, synthesizer.background_shape)
    self.inputs = inputs_lib.Inputs(cutouts.with_channels(cutout_shape[-1]), cutouts.classes, photos,
                                    synthesizer.background_shape, synthesizer.detection, synthesizer.slots,
                                    config.max_objects or synthesizer.slots)
    self.encoder = records.RecordEncoder(self.class_names, synthesizer.detection)
    self._recipe = self._make_recipe()
    # Two batches in flight: enough to overlap with the synthesizer, which takes the cores' threads.
    self._encode_threads = concurrent.futures.ThreadPoolExecutor(config.encode_threads)
    self._draw_thread = concurrent.futures.ThreadPoolExecutor(1)

  def _check_out(self) -> None:
    """--out must be a folder, and hold no shards of a dataset of another size: their names differ from this
    run's, so they would stay beside the new set (and be read with it) while annotations.json and
    generation.json describe the new one only."""
    out, config = self.config.out, self.config
    if os.path.exists(out) and not os.path.isdir(out):
      raise ConfigError(f"--out={out} is a file; give a folder (a new one, or one this command wrote to resume "
                        "it)")
    if not os.path.isdir(out):
      return
    other_sets: dict[int, str] = {}
    for name in sorted(os.listdir(out)):
      match = records.SHARD_NAME.match(name)
      if match and int(match.group(2)) != config.num_shards:
        other_sets.setdefault(int(match.group(2)), name)
    if not other_sets:
      return
    total, name = next(iter(other_sets.items()))
    try:  # Its sidecar names the --num and --shard_size that set was made with.
      with open(records.sidecar_path(os.path.join(out, name))) as f:
        earlier = json.load(f)["recipe"]
      made_with = f"--num={earlier['num']} --shard_size={earlier['shard_size']}"
    except (OSError, ValueError, KeyError, TypeError):
      made_with = "another --num or --shard_size"
    raise ConfigError(
        f"--out={out} holds a dataset of {total} shards (composites-*-of-{total:05d}{records.RECORD_SUFFIX}, "
        f"made with {made_with}); --num={config.num} --shard_size={config.shard_size} make {config.num_shards}. "
        "Rerun with the --num and --shard_size it was made with, or write to a new --out; nothing was changed")

  def _check_target(self) -> float:
    """That the target judges what the synthesizer makes; its --hard_threshold."""
    target, synthesizer, config = self.target, self.synthesizer, self.config
    if target.detector != synthesizer.detection:
      makes = "detection scenes" if synthesizer.detection else "classification composites"
      raise ConfigError(f"{target.flag} is {target.describe()}, but --synthesizer={config.synthesizer} makes "
                        f"{makes}: give the target exported with this synthesizer (its run's export/target)")
    if target.image_shape != synthesizer.background_shape:
      raise ConfigError(f"{target.flag} takes {target.image_shape} images, but --synthesizer="
                        f"{config.synthesizer} makes {synthesizer.background_shape} composites: give the target "
                        "exported with this synthesizer (its run's export/target)")
    return target.kind.resolve_hard_threshold(config.hard_threshold, f"{target.flag}, {target.describe()}")

  # ------------------------------------------------------------------------------------ shards
  def _shard_batches(self, shard: int) -> Iterator[tuple[records.Batch, np.ndarray, int]]:
    """(batch, indices of its composites to keep, how many of it were looked at) until the shard is full;
    its seed fixes everything."""
    rng = inputs_lib.shard_rng(self.config.seed, shard)
    # The next batch's inputs (photo crops above all) are drawn while the synthesizer runs this one; one
    # thread draws them in order, so the shard stays a function of its seed.
    draw = lambda: self.inputs.draw(self.config.batch_size, rng)
    upcoming = self._draw_thread.submit(draw)
    needed, kept, batches = self.config.shard_length(shard), 0, 0
    limit = MAX_BATCHES_PER_NEEDED_BATCH * math.ceil(needed / self.config.batch_size)
    while kept < needed:
      if batches >= limit:
        raise DataError(f"--hard_only: after {batches} batches shard {shard} holds {kept} of {needed} hard "
                        f"composites; the target finds almost nothing hard below --hard_threshold="
                        f"{self.hard_threshold}. Raise the threshold or drop --hard_only.")
      inputs = upcoming.result()
      # Without --hard_only every composite is kept, so the batch that fills the shard needs no successor.
      if self.config.hard_only or kept + self.config.batch_size < needed:
        upcoming = self._draw_thread.submit(draw)
      batch = signatures.composite(self.synthesizer, self.target, inputs, self.config.write_masks)
      batches += 1
      rows = np.arange(self.config.batch_size)
      if self.config.hard_only:
        rows = rows[batch.hardness < self.hard_threshold]
      full = len(rows) >= needed - kept
      rows = rows[:needed - kept]
      kept += len(rows)
      yield batch, rows, int(rows[-1]) + 1 if full else self.config.batch_size

  def _write_shard(self, shard: int, progress: Progress) -> dict:
    drawn, queued = 0, 0
    pending: collections.deque = collections.deque()
    with records.ShardWriter(self.config.shard_path(shard)) as writer:
      def drain(keep: int):
        while len(pending) > keep:
          writer.write(pending.popleft().result())
      for batch, rows, looked_at in self._shard_batches(shard):
        drawn += looked_at
        pending.append(self._encode_threads.submit(self.encoder.encode, batch, rows, queued, shard))
        queued += len(rows)
        progress.add(len(rows), looked_at)
        drain(keep=2)  # Encoding overlaps the next batches' compositing.
      drain(keep=0)
      return writer.finish(shard, drawn, self.recipe())

  def _make_recipe(self) -> dict:
    """What a shard's contents depend on. The models and folders enter by their content, not their path."""
    config = self.config
    fields = ("num", "shard_size", "batch_size", "seed", "signature", "hard_only", "max_objects", "write_masks",
              "jit_compile")
    return {"synthesizer": export.digest(self.synthesizer.path),
            "target": export.digest(self.target.path) if self.target else "",
            "hard_threshold": self.hard_threshold,
            "foregrounds": inputs_lib.foregrounds_identity(config.foregrounds),
            "backgrounds": inputs_lib.backgrounds_identity(config.backgrounds),
            **{k: getattr(config, k) for k in fields}}

  def recipe(self) -> dict:
    """What a shard's contents depend on: a resumed run may keep a finished shard only if these agree."""
    return self._recipe

  def finished(self, shard: int) -> dict | None:
    """The sidecar of a finished shard, None for one still to write; a DataError for a shard made with
    other settings (mixing two recipes in one dataset would go unnoticed) or whose sidecar is lost."""
    path = self.config.shard_path(shard)
    if not os.path.exists(path):
      return None
    sidecar_path = records.sidecar_path(path)
    redo = f"delete {os.path.basename(path)} (and its sidecar) to have the shard written again"
    try:
      with open(sidecar_path) as f:
        sidecar = json.load(f)
    except FileNotFoundError:
      raise DataError(f"{sidecar_path}: missing, so the finished shard {os.path.basename(path)} has no "
                      f"annotations to resume with; {redo}") from None
    except (OSError, ValueError) as e:
      raise DataError(f"{sidecar_path}: unreadable ({e}); {redo}") from e
    if (not isinstance(sidecar, dict) or not {"records", "drawn", "annotations", "recipe"} <= set(sidecar) or
        not isinstance(sidecar["recipe"], dict) or set(sidecar["recipe"]) != set(self.recipe())):
      # A damaged or foreign file, not one with other settings (those are compared next).
      raise DataError(f"{sidecar_path}: not a shard's sidecar (records, drawn, annotations and a recipe of "
                      f"{', '.join(sorted(self.recipe()))}); {redo}")
    differences = _differences(sidecar.get("recipe"), self.recipe())
    if differences:
      raise DataError(f"--out={self.config.out}: {os.path.basename(path)} was written with other settings "
                      f"({'; '.join(differences)}); resume with those, or write to a new --out")
    return sidecar

  def run(self) -> dict:
    config = self.config
    try:
      os.makedirs(config.out, exist_ok=True)
    except OSError as e:
      raise DataError(f"--out={config.out}: cannot make this folder ({e})") from e
    # One generator writes a dataset at a time: two would write the same shards' staging files.
    lock = files.DirectoryLock(config.out)
    try:
      lock.acquire()
    except files.DirectoryInUseError as e:
      raise ConfigError(f"--out={config.out} is {e}, a generation still going: wait for it to end (or stop "
                        "it), or use another --out") from None
    try:
      return self._run()
    finally:
      self._encode_threads.shutdown()
      self._draw_thread.shutdown()
      lock.release()

  def _run(self) -> dict:
    config = self.config
    sidecars, todo = {}, []
    for shard in range(config.num_shards):
      done = self.finished(shard)
      if done is None:
        todo.append(shard)
      else:
        sidecars[shard] = done
    summary_path = os.path.join(config.out, records.SUMMARY)
    if not todo and os.path.exists(summary_path):
      logging.info("%s holds the whole dataset (%d shards): nothing to do", config.out, config.num_shards)
      with open(summary_path) as f:
        return json.load(f)
    if sidecars:
      logging.info("resuming: %d of %d shards already written", len(sidecars), config.num_shards)
    progress = Progress(sum(config.shard_length(s) for s in todo))
    start = time.perf_counter()
    try:
      for shard in todo:
        sidecars[shard] = self._write_shard(shard, progress)
    except (MemoryError, tf.errors.ResourceExhaustedError) as e:
      # numpy's MemoryError drawing a batch's inputs, TensorFlow's ResourceExhaustedError running S on it.
      raise ConfigError(f"--batch_size={config.batch_size}: out of memory compositing one batch "
                        f"({type(e).__name__}); lower --batch_size. Finished shards are kept") from e
    seconds = time.perf_counter() - start
    num_records = sum(s["records"] for s in sidecars.values())
    drawn = sum(s["drawn"] for s in sidecars.values())
    summary = {"num": num_records, "shards": config.num_shards, "drawn": drawn,
               "yield": num_records / max(drawn, 1),
               "seconds_this_run": round(seconds, 2), "written_this_run": progress.kept,
               "composites_per_second": round(progress.kept / seconds, 2) if seconds else None,
               "synthesizer": self.synthesizer.path, "class_names": self.class_names,
               "hard_threshold": self.hard_threshold,
               "detection": self.synthesizer.detection, "config": dataclasses.asdict(config)}
    if self.synthesizer.detection:
      summary["annotations"] = os.path.join(config.out, records.ANNOTATIONS)
      shards = [(os.path.basename(config.shard_path(s)), sidecars[s]) for s in sorted(sidecars)]
      records.write_coco(summary["annotations"], shards, tuple(self.synthesizer.background_shape[:2]),
                         self.class_names, masks=config.write_masks)
    summary["preview"] = os.path.join(config.out, records.PREVIEW)
    records.write_preview(summary["preview"], config.shard_path(0))
    files.write_json(summary_path, summary)
    if config.hard_only:
      logging.info("--hard_only: %d of %d composites were hard (yield %.1f%%)", num_records, drawn,
                   100 * summary["yield"])
    logging.info("%d composites in %d shards under %s", num_records, config.num_shards, config.out)
    return summary


def _differences(earlier: dict | None, now: dict) -> list[str]:
  """The settings in which a shard's recipe differs from this run's, each named by its flag."""
  earlier = earlier if isinstance(earlier, dict) else {}
  differences = []
  for key, value in now.items():
    if earlier.get(key) == value:
      continue
    if key in ("synthesizer", "target", "foregrounds", "backgrounds"):  # Compared by content.
      differences.append(f"--{key}: other contents than this run's (another model or other files)")
    else:
      differences.append(f"--{key}={earlier.get(key)}, this run {value}")
  return differences


class Progress:
  """Logs composites written, the rate and the time left, at most every few seconds."""

  def __init__(self, total: int, every_s: float = 5.0):
    self.total, self.every_s = total, every_s
    self.kept = self.drawn = 0
    self.start = self.last = time.perf_counter()

  def add(self, kept: int, drawn: int) -> None:
    self.kept += kept
    self.drawn += drawn
    now = time.perf_counter()
    if now - self.last >= self.every_s or self.kept >= self.total:
      self.last = now
      rate = self.kept / max(now - self.start, 1e-9)
      eta = (self.total - self.kept) / rate if rate else float("inf")
      logging.info("%d / %d composites (%.1f%%), %.1f per second, %s left%s", self.kept, self.total,
                   100 * self.kept / max(self.total, 1), rate, format_duration(eta),
                   f", yield {self.kept / self.drawn:.1%}" if self.drawn != self.kept else "")
