"""The TERSE trainer for classification targets (paper §3.4, A.1).

One Trainer owns the strategy, both networks, their optimizers, every GradientTape, the step counters, the
hard-example cache and the checkpoint. The schedule:

  1. baseline: T trained on the real training digits;
  2. C sleep cycles, each
     a. synthesize: S trained with T frozen to maximise T's loss on its composites; every composite with
        p_gt - max_other < threshold goes to the cache until each class has its quota (or a step cap);
        with --sample_source=random_affine the quota is filled by random affNIST-recipe transforms instead
        (the in-tree baseline), and with --sample_source=none nothing is added (the control);
     b. fine-tune: T trained on the real digits plus the whole cache with S frozen;
  3. export S and T as SavedModels.

Every phase is resumable: the checkpoint carries the phase, cycle, epoch and step it reached.
Resume order: the latest checkpoint in the run directory -> --init_checkpoint (weights only) -> scratch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import keras
from absl import logging

from terse_tf import compositor as compositor_lib
from terse_tf import losses
from terse_tf.cache import HardExampleCache, as_stored
from terse_tf.data import affnist, mnist
from terse_tf.errors import ConfigError, DataError, NonFiniteLossError
from terse_tf.networks import classifier, synthesizer

STRATEGIES = ("auto", "default", "mirrored")
# Where each cycle's added samples come from: TERSE's synthesizer (hard composites against the current T),
# the in-tree baseline of random affine augmentation with affNIST's recipe, or nothing (a control that
# fine-tunes on the real digits alone for the same epochs).
SAMPLE_SOURCES = ("terse", "random_affine", "none")
# Weight decay as the paper's PyTorch optimizers apply it (an L2 term whose gradient joins the loss's before
# momentum or Adam's moments), or Keras 3's own decoupled decay (w -= lr * decay * w after the update).
WEIGHT_DECAY_MODES = ("coupled", "decoupled")
PHASE_BASELINE, PHASE_SYNTHESIZE, PHASE_FINETUNE, PHASE_DONE = range(4)
PHASE_NAMES = ("baseline", "synthesize", "finetune", "done")
IMAGE_SHAPE = (mnist.IMAGE_SIZE, mnist.IMAGE_SIZE, 1)
FOREGROUND_SHAPE = (mnist.IMAGE_SIZE, mnist.IMAGE_SIZE, 2)  # White ink + the digit as alpha.
# What --fresh removes: only the paths a run writes, never the rest of the run directory.
RUN_OUTPUTS = ("checkpoints", "tensorboard", "export", "results.json", "config.json")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  run_dir: str
  data: mnist.DataConfig = mnist.DataConfig()
  affnist: affnist.AffnistConfig = affnist.AffnistConfig()
  compositor: compositor_lib.CompositorConfig = compositor_lib.CompositorConfig()
  target: str = "paper"
  seed: int = 0
  # Target T: SGD with momentum and weight decay (A.1), batch 64.
  batch_size: int = 64
  target_lr: float = 0.01
  target_momentum: float = 0.9
  target_weight_decay: float = 5e-4
  weight_decay_mode: str = "coupled"
  baseline_epochs: int = 3
  finetune_epochs: int = 2
  # When > 0, each cycle fine-tunes T for this many steps on real + cache instead of finetune_epochs epochs:
  # the cost of a cycle then stays constant as the cache grows.
  finetune_steps: int = 0
  # When > 0, fine-tuning batches draw this share of their examples (in expectation) from the cache and the
  # rest from the real digits; 0 shuffles real + cache as one pool (A.1). With many real digits and a fixed
  # step count, the one pool shows T few of the added samples (full MNIST: 59k real beside 1k added).
  cache_fraction: float = 0.0
  # Cycles after which T is evaluated (the last one always is); empty: after every cycle.
  eval_after_cycles: tuple[int, ...] = ()
  cycles: int = 4
  # Synthesizer S: Adam (A.1).
  synth_batch_size: int = 64
  synth_lr: float = 1e-3
  synth_weight_decay: float = 1e-4
  synth_width: int = 32
  synth_dropout: float = 0.3
  # Length of the noise vector S takes beside the images (0: none, the paper's S).
  synth_noise_dim: int = 0
  # Weight of the diversity penalty in S's loss: the energy distance between a batch's transforms
  # (normalised to the clamp box) and as many drawn uniformly from the box, i.e. from the affNIST recipe's
  # range. 0 is the paper's loss. Without it S spends a cycle on one transform (BENCHMARKS.md).
  diversity_weight: float = 0.0
  # Measure the penalty per class (each class's transforms against the whole range) rather than on the
  # pooled batch: pooled, S can give each class its own corner while the classes together look uniform.
  diversity_per_class: bool = False
  hard_threshold: float = 0.0
  # Samples added per class in each cycle: one value for every cycle, or one value per cycle.
  hard_per_class: tuple[int, ...] = (500,)
  synth_max_steps: int = 400
  # S steps whose composites are not cached, each time S starts afresh (the first cycle; every cycle with
  # reset_synthesizer_each_cycle): a new S puts out near-identity transforms, and the diversity penalty
  # needs ~70 steps to spread them over the ranges; hard composites from those steps are all one mode.
  # synth_max_steps counts the steps after it.
  synth_warmup_steps: int = 0
  # Start S (and its optimizer) afresh every cycle: a saturated S, whose every output sits on the clamp
  # bound, no longer moves under dropout noise, so each cycle repeats one mode; a fresh S walks from the
  # identity to T's current weak spot and leaves hard composites all along the way.
  reset_synthesizer_each_cycle: bool = False
  sample_source: str = "terse"
  # Infrastructure.
  strategy: str = "auto"
  checkpoint_every_steps: int = 25
  image_summary_every_steps: int = 100
  eval_batch_size: int = 1000
  jit_compile: bool = True
  init_checkpoint: str = ""
  fresh: bool = False
  export: bool = True

  def __post_init__(self):
    if self.strategy not in STRATEGIES:
      raise ConfigError(f"--strategy must be one of {STRATEGIES}, got {self.strategy!r}")
    if self.target not in classifier.ARCHITECTURES:
      raise ConfigError(f"--target must be one of {classifier.ARCHITECTURES}, got {self.target!r}")
    if self.weight_decay_mode not in WEIGHT_DECAY_MODES:
      raise ConfigError(f"--weight_decay_mode must be one of {WEIGHT_DECAY_MODES}, got "
                        f"{self.weight_decay_mode!r}")
    if self.sample_source not in SAMPLE_SOURCES:
      raise ConfigError(f"--sample_source must be one of {SAMPLE_SOURCES}, got {self.sample_source!r}")
    if not self.hard_per_class or min(self.hard_per_class) < 1:
      raise ConfigError(f"--hard_per_class needs values >= 1, got {list(self.hard_per_class)}")
    if len(self.hard_per_class) not in (1, self.cycles):
      raise ConfigError(f"--hard_per_class has {len(self.hard_per_class)} values; expected one, or one per "
                        f"cycle (--cycles={self.cycles})")
    for name in ("batch_size", "synth_batch_size", "synth_max_steps", "checkpoint_every_steps",
                 "eval_batch_size"):
      if getattr(self, name) < 1:
        raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")
    for name in ("baseline_epochs", "finetune_epochs", "finetune_steps", "cycles", "synth_noise_dim",
                 "synth_warmup_steps"):
      if getattr(self, name) < 0:
        raise ConfigError(f"--{name} must be >= 0, got {getattr(self, name)}")
    if not 0 <= self.synth_dropout < 1:
      raise ConfigError(f"--synth_dropout must be in [0, 1), got {self.synth_dropout}")
    if not 0 <= self.cache_fraction < 1:
      raise ConfigError(f"--cache_fraction must be in [0, 1), got {self.cache_fraction}")
    if self.diversity_weight < 0:
      raise ConfigError(f"--diversity_weight must be >= 0, got {self.diversity_weight}")
    if not -1 <= self.hard_threshold <= 1:
      raise ConfigError(f"--hard_threshold compares p_gt - max_other, which lies in [-1, 1]; got "
                        f"{self.hard_threshold}")

  def quota(self, cycle: int) -> int:
    """Samples to add per class in `cycle` (1-based)."""
    return self.hard_per_class[0] if len(self.hard_per_class) == 1 else self.hard_per_class[cycle - 1]

  def cache_capacity(self) -> int:
    if self.sample_source == "none":  # The control adds nothing: no need to checkpoint an empty cache.
      return 1
    return max(1, sum(self.quota(c) for c in range(1, self.cycles + 1))) * mnist.NUM_CLASSES


class SynthStepOutputs(NamedTuple):
  """What one synthesizer step produces, gathered over replicas: losses, metrics and summaries take it."""
  loss: tf.Tensor        # scalar, S's loss (negative T cross-entropy, plus the diversity penalty; no decay).
  diversity: tf.Tensor   # scalar, energy distance of the batch's transforms to the uniform box.
  params: tf.Tensor      # [B, 6] clamped affine parameters.
  composites: tf.Tensor  # [B, H, W, C] on the cache's 8-bit grid, as T judged them.
  labels: tf.Tensor      # [B]
  margins: tf.Tensor     # [B] p_gt - max_other under T.


def build_strategy(name: str) -> tf.distribute.Strategy:
  """The one place the distribution strategy is chosen: mirrored over several GPUs, else the default.

  An explicit "mirrored" with no GPU mirrors over the logical CPU devices (how the tests run it).
  """
  gpus = tf.config.list_logical_devices("GPU")
  if name == "mirrored" or (name == "auto" and len(gpus) > 1):
    devices = gpus or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([device.name for device in devices])
  return tf.distribute.get_strategy()


def _foregrounds(digits: tf.Tensor) -> tf.Tensor:
  """uint8 digits [..., H, W] -> RGBA-style cut-outs [..., H, W, 2]: white ink whose alpha is the digit."""
  alpha = tf.cast(digits, tf.float32)[..., None] / 255.0
  return tf.concat([tf.ones_like(alpha), alpha], axis=-1)


def _as_images(pixels: tf.Tensor) -> tf.Tensor:
  """uint8 [..., H, W, C] -> float [..., H, W, C] in [0, 1]."""
  return tf.cast(pixels, tf.float32) / 255.0


def _image_grid(images: tf.Tensor, columns: int = 8) -> tf.Tensor:
  """[N, H, W, C] -> one [1, rows*H, columns*W, C] grid for TensorBoard."""
  count = (images.shape[0] // columns) * columns
  images = images[:count]
  _, height, width, channels = images.shape
  grid = tf.reshape(images, [count // columns, columns, height, width, channels])
  grid = tf.transpose(grid, [0, 2, 1, 3, 4])
  return tf.reshape(grid, [1, count // columns * height, columns * width, channels])


def write_json(path: str, payload: dict) -> None:
  """Atomic: a crash mid-write never leaves a truncated file behind."""
  handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
  with os.fdopen(handle, "w") as f:
    json.dump(payload, f, indent=2)
  os.replace(temporary, path)


def format_duration(seconds: float) -> str:
  """4h02m, 12m07s or 37s."""
  seconds = int(round(seconds))
  if seconds >= 3600:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
  if seconds >= 60:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds}s"


class Progress:
  """Where a run is and how long is left, for its log lines.

  A phase's ETA extrapolates the time it has taken so far over the share of it done. The run's ETA
  extrapolates the rate at which this process has gone through cycles (a cycle's synthesis and its
  fine-tuning count as a half each), so it exists once some cycle work has been timed.
  """

  def __init__(self, cycles: int, elapsed_before: float):
    self.cycles = cycles
    self._started, self._elapsed_before = time.monotonic(), elapsed_before
    self._phase_started = self._started
    self._first_mark: tuple[float, float] | None = None  # (time, cycles done) when cycle work was first seen.

  def elapsed(self) -> float:
    """Seconds the run has trained, across resumes."""
    return self._elapsed_before + time.monotonic() - self._started

  def start_phase(self) -> None:
    self._phase_started = time.monotonic()

  def describe(self, phase_done: float, cycles_done: float | None = None) -> str:
    """`phase_done` in [0, 1] of the current phase; `cycles_done` (fractional), None before cycle 1."""
    now = time.monotonic()
    phase_elapsed = now - self._phase_started
    parts = [f"elapsed {format_duration(self.elapsed())}"]
    if phase_done > 0:
      parts.append(f"phase ETA {format_duration(phase_elapsed * (1 - phase_done) / phase_done)}")
    if cycles_done is not None:
      if self._first_mark is None:
        self._first_mark = (now, cycles_done)
      mark_time, mark_cycles = self._first_mark
      if cycles_done > mark_cycles:
        rate = (now - mark_time) / (cycles_done - mark_cycles)
        parts.append(f"run ETA {format_duration(rate * (self.cycles - cycles_done))}")
    return ", ".join(parts)


class Trainer:
  """Runs (or resumes) the whole TERSE schedule for one run directory."""

  def __init__(self, config: TrainConfig):
    """Checks the run directory, loads the data, builds the players and restores their state, in that
    order; only then does it touch the run directory (and with --fresh remove the previous run's outputs),
    so a start that fails on bad input loses nothing and leaves nothing behind."""
    self.config = config
    self._check_run_dir_path()
    keras.utils.set_random_seed(config.seed)

    self.splits = mnist.load_splits(config.data)
    test_images, test_labels, self.affnist_description = affnist.load_test_set(
        self.splits.test_images, self.splits.test_labels, config.affnist)
    self.affnist_test = (test_images, test_labels)
    logging.info("data: %s digits %s; affNIST test: %d images, %s", self.splits.source, self.splits.sizes(),
                 len(test_labels), self.affnist_description)

    self.strategy = build_strategy(config.strategy)
    # With coupled decay the optimizers decay nothing themselves: the L2 term joins each player's loss.
    decoupled = config.weight_decay_mode == "decoupled"
    with self.strategy.scope():
      self.target = classifier.build_classifier(config.target, IMAGE_SHAPE, mnist.NUM_CLASSES)
      self.synthesizer = self._build_synthesizer(seed=config.seed)
      self.target_optimizer = keras.optimizers.SGD(
          config.target_lr, momentum=config.target_momentum,
          weight_decay=config.target_weight_decay if decoupled else None)
      self.synth_optimizer = keras.optimizers.Adam(
          config.synth_lr, weight_decay=config.synth_weight_decay if decoupled else None)
      # Built here, before any tf.function step: under MirroredStrategy a lazily built Keras 3 optimizer
      # fails inside the first step ("You must feed a value for placeholder tensor").
      self.target_optimizer.build(self.target.trainable_variables)
      self.synth_optimizer.build(self.synthesizer.trainable_variables)
    self.cache = HardExampleCache(config.cache_capacity(), IMAGE_SHAPE, mnist.NUM_CLASSES)
    self.phase = tf.Variable(PHASE_BASELINE, dtype=tf.int64, trainable=False, name="phase")
    self.cycle = tf.Variable(0, dtype=tf.int64, trainable=False, name="cycle")
    self.epoch_in_phase = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch_in_phase")
    self.synth_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="synth_step_in_cycle")
    self.target_global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="target_global_step")
    self.synth_global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="synth_global_step")
    self.elapsed_s = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="elapsed_s")
    # The evaluation history rides in the checkpoint, so results always agree with the restored state.
    self.history_json = tf.Variable("[]", dtype=tf.string, trainable=False, name="history_json")
    # What the run trains on and for: resuming it with other data or another target would mix two runs.
    self.run_identity = tf.Variable(self._identity(), dtype=tf.string, trainable=False, name="run_identity")
    self.checkpoint = tf.train.Checkpoint(
        synthesizer=self.synthesizer, target=self.target, synth_optimizer=self.synth_optimizer,
        target_optimizer=self.target_optimizer, cache=self.cache, phase=self.phase, cycle=self.cycle,
        epoch_in_phase=self.epoch_in_phase, synth_step=self.synth_step,
        target_global_step=self.target_global_step, synth_global_step=self.synth_global_step,
        elapsed_s=self.elapsed_s, history_json=self.history_json, run_identity=self.run_identity)
    checkpoint_dir = os.path.join(config.run_dir, "checkpoints")
    self.history: list[dict] = []
    self._restore(None if config.fresh else tf.train.latest_checkpoint(checkpoint_dir))

    self._prepare_run_dir()
    self.checkpoint_manager = tf.train.CheckpointManager(self.checkpoint, checkpoint_dir, max_to_keep=3)
    self.writer = tf.summary.create_file_writer(os.path.join(config.run_dir, "tensorboard"))
    self.results_path = os.path.join(config.run_dir, "results.json")
    self.progress = Progress(config.cycles, float(self.elapsed_s.numpy()))
    self._target_step = tf.function(self._target_step_fn)
    # XLA pays for the compositor's gathers (about 15% of a synthesizer step on CPU) but not for the whole
    # step, whose convolutions it makes slower; bench/compositor.py has the compositor's own figures.
    self._composite = tf.function(compositor_lib.composite, jit_compile=config.jit_compile)
    self._synth_step = tf.function(self._synth_step_fn)
    self._logits = tf.function(lambda images: self.target(images, training=False))

  def _build_synthesizer(self, seed: int) -> keras.Model:
    return synthesizer.build_synthesizer(IMAGE_SHAPE, self.config.synth_width, self.config.synth_dropout,
                                         self.config.synth_noise_dim, seed=seed)

  # ----------------------------------------------------------------------------------------- state
  def _restore(self, latest: str | None) -> None:
    """Resume order: the run directory's `latest` checkpoint -> --init_checkpoint (S and T only) -> scratch."""
    if latest:
      reader = tf.train.load_checkpoint(latest)
      key = "run_identity/.ATTRIBUTES/VARIABLE_VALUE"
      saved_identity = reader.get_tensor(key).decode() if reader.has_tensor(key) else "unknown"
      if saved_identity != self._identity():
        raise ConfigError(f"--run_dir={self.config.run_dir} holds a run on other data or another target "
                          f"({saved_identity}); now asked for {self._identity()}. Use another --run_dir, "
                          "or --fresh to replace it")
      try:
        self.checkpoint.restore(latest).assert_existing_objects_matched()
      except (AssertionError, ValueError, tf.errors.OpError) as e:
        raise ConfigError(f"--run_dir={self.config.run_dir} holds a checkpoint ({latest}) from a different "
                          "configuration (networks or cache size differ); rerun with the flags that made "
                          f"it, or add --fresh to start over ({type(e).__name__})") from e
      self.history = json.loads(self.history_json.numpy().decode())
      logging.info("resumed from %s: phase %s, cycle %d, %d cached hard examples", latest,
                   PHASE_NAMES[int(self.phase.numpy())], int(self.cycle.numpy()), len(self.cache))
    elif self.config.init_checkpoint:
      try:
        tf.train.Checkpoint(synthesizer=self.synthesizer, target=self.target).restore(
            self.config.init_checkpoint).expect_partial().assert_existing_objects_matched()
      except (AssertionError, ValueError, tf.errors.OpError) as e:
        raise DataError(f"--init_checkpoint={self.config.init_checkpoint}: expected the prefix of a terse_tf "
                        f"checkpoint with matching S and T, e.g. <run_dir>/checkpoints/ckpt-3 "
                        f"({type(e).__name__})") from e
      logging.info("initialised S and T from --init_checkpoint=%s", self.config.init_checkpoint)

  def _check_run_dir_path(self) -> None:
    run_dir = self.config.run_dir
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
      raise ConfigError(f"--run_dir={run_dir} is an existing file; expected a directory (or a path to "
                        "create one at)")

  def _prepare_run_dir(self) -> None:
    """Creates the run directory and proves it writable, then (--fresh) removes the previous run's outputs.

    A directory this call created is removed again if it cannot be used, so a failed start leaves none.
    """
    run_dir = self.config.run_dir
    created = not os.path.exists(run_dir)
    try:
      os.makedirs(run_dir, exist_ok=True)
      with tempfile.TemporaryFile(dir=run_dir):
        pass
    except OSError as e:
      if created:
        shutil.rmtree(run_dir, ignore_errors=True)
      raise ConfigError(f"--run_dir={run_dir} cannot be written ({e.strerror or e}); expected a writable "
                        "directory") from e
    if self.config.fresh:
      for name in RUN_OUTPUTS:
        path = os.path.join(run_dir, name)
        if os.path.isdir(path):
          shutil.rmtree(path)
        elif os.path.exists(path):
          os.remove(path)

  def _identity(self) -> str:
    """The settings a checkpoint must share to be resumed: data, test set and target architecture."""
    affnist_settings = dataclasses.asdict(self.config.affnist)
    del affnist_settings["cache_dir"]  # Where a generated set is cached does not change it.
    return json.dumps({"data": dataclasses.asdict(self.config.data), "affnist": affnist_settings,
                       "target": self.config.target}, sort_keys=True)

  def _save(self) -> None:
    self.elapsed_s.assign(self.progress.elapsed())
    self.checkpoint_manager.save()

  def _check_finite(self, loss: float, what: str) -> None:
    if not np.isfinite(loss):
      raise NonFiniteLossError(
          f"{what} loss became {loss} at cycle {int(self.cycle.numpy())}; stopped without saving, the last "
          f"good checkpoint ({self.checkpoint_manager.latest_checkpoint or 'none yet'}) is kept. Lower "
          "the learning rates or check the data.")

  # ----------------------------------------------------------------------------------------- data
  def _target_dataset(self, epoch_seed: int, steps: int = 0) -> tf.distribute.DistributedDataset:
    """Real training digits plus every cached hard example, shuffled: one epoch of T, or `steps` batches.

    With --cache_fraction the two are drawn from separately at that ratio; an "epoch" is then as many
    batches as one pass over both would take.
    """
    real_images, real_labels = self.splits.train_images[..., None], self.splits.train_labels
    cache_images, cache_labels = self.cache.contents()
    total = len(real_labels) + len(cache_labels)
    mixed = self.config.cache_fraction > 0 and len(cache_labels) > 0

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
      batch = context.get_per_replica_batch_size(self.config.batch_size)
      # Each global step takes one batch from this pipeline per replica it feeds.
      batches = (steps or total // self.config.batch_size) * (
          self.strategy.num_replicas_in_sync // context.num_input_pipelines)

      def shuffled(images: np.ndarray, labels: np.ndarray, seed: int) -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices((images, labels)).shard(
            context.num_input_pipelines, context.input_pipeline_id)
        return ds.shuffle(len(labels), seed=seed)

      if mixed:
        fraction = self.config.cache_fraction
        ds = tf.data.Dataset.sample_from_datasets(
            [shuffled(real_images, real_labels, epoch_seed).repeat(),
             shuffled(cache_images, cache_labels, epoch_seed + 1).repeat()],
            weights=[1.0 - fraction, fraction], seed=epoch_seed)
        ds = ds.batch(batch, drop_remainder=True).take(batches)
      else:
        ds = shuffled(np.concatenate([real_images, cache_images]), np.concatenate([real_labels, cache_labels]),
                      epoch_seed)
        if steps:
          ds = ds.repeat()
        ds = ds.batch(batch, drop_remainder=True)
        if steps:
          ds = ds.take(batches)
      return ds.map(lambda x, y: (_as_images(x), y)).prefetch(tf.data.AUTOTUNE)

    return self.strategy.distribute_datasets_from_function(dataset_fn)

  def _synth_dataset(self, seed: int) -> tf.distribute.DistributedDataset:
    """Endless (foreground, background, label) batches: training digits on black affNIST backgrounds."""
    digits, labels = self.splits.train_images, self.splits.train_labels

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
      batch = context.get_per_replica_batch_size(self.config.synth_batch_size)
      ds = tf.data.Dataset.from_tensor_slices((digits, labels)).shard(
          context.num_input_pipelines, context.input_pipeline_id)
      ds = ds.shuffle(len(labels), seed=seed).repeat().batch(batch, drop_remainder=True)
      return ds.map(lambda d, y: (_foregrounds(d), tf.zeros([batch, *IMAGE_SHAPE]), y)).prefetch(2)

    return self.strategy.distribute_datasets_from_function(dataset_fn)

  # ----------------------------------------------------------------------------------------- steps
  def _coupled_decay(self, variables: list[tf.Variable], weight: float) -> tf.Tensor:
    """This replica's share of the coupled L2 term (0 under decoupled decay): 1/replicas of it, since the
    optimizer sums the replicas' gradients."""
    if self.config.weight_decay_mode != "coupled" or not weight:
      return tf.constant(0.0)
    return losses.l2_penalty(variables, weight) / self.strategy.num_replicas_in_sync

  def _target_step_fn(self, batch) -> tf.Tensor:
    """One SGD step of T on a global batch; returns T's mean loss on it (without the decay term)."""
    def replica_step(images, labels):
      variables = self.target.trainable_variables
      with tf.GradientTape() as tape:
        logits = self.target(images, training=True)
        # The one place losses are scaled: mean over the global batch, summed over replicas below.
        loss = tf.nn.compute_average_loss(losses.target_loss(labels, logits))
        regularized = loss + self._coupled_decay(variables, self.config.target_weight_decay)
      self.target_optimizer.apply_gradients(zip(tape.gradient(regularized, variables), variables))
      return loss

    per_replica = self.strategy.run(replica_step, args=batch)
    return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

  def _synth_step_fn(self, batch) -> SynthStepOutputs:
    config = self.config.compositor
    replicas = self.strategy.num_replicas_in_sync

    def replica_step(foreground, background, labels):
      variables = self.synthesizer.trainable_variables
      with tf.GradientTape() as tape:
        raw = synthesizer.raw_params(self.synthesizer, compositor_lib.premultiplied(foreground), background,
                                     training=True)
        params = compositor_lib.place(raw, foreground, IMAGE_SHAPE[:2], config)
        # T judges the composite the cache would store (8-bit), so what is cached as hard is hard.
        image = as_stored(self._composite(foreground, background, params, config).image)
        logits = self.target(image, training=False)  # T frozen: only S's variables are updated.
        # Diversity is measured where the affNIST recipe is uniform: the clamp box, before framing.
        normalized = compositor_lib.normalize_params(
            compositor_lib.clamp_params(raw, config.ranges, config.clamp_mode), config.ranges)
        uniform = tf.random.uniform(tf.shape(normalized), -1.0, 1.0)
        if self.config.diversity_per_class:
          diversity = losses.class_conditional_energy_distance(normalized, uniform, labels, mnist.NUM_CLASSES)
        else:
          diversity = losses.energy_distance(normalized, uniform)
        # Each replica's batch-level penalty counts 1/replicas, so the sum over replicas is their mean.
        loss = (tf.nn.compute_average_loss(losses.synthesizer_loss(labels, logits)) +
                self.config.diversity_weight * diversity / replicas)
        regularized = loss + self._coupled_decay(variables, self.config.synth_weight_decay)
      self.synth_optimizer.apply_gradients(zip(tape.gradient(regularized, variables), variables))
      return loss, diversity / replicas, params, image, labels, losses.hardness_margin(labels, logits)

    loss, diversity, *per_example = self.strategy.run(replica_step, args=batch)
    return SynthStepOutputs(self.strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
                            self.strategy.reduce(tf.distribute.ReduceOp.SUM, diversity, axis=None),
                            *(self.strategy.gather(x, axis=0) for x in per_example))

  # ----------------------------------------------------------------------------------------- phases
  def _where(self) -> str:
    """"baseline" or "cycle 3/8 synthesize": the part of the schedule the run is in."""
    phase = PHASE_NAMES[int(self.phase.numpy())]
    if int(self.phase.numpy()) == PHASE_BASELINE:
      return phase
    return f"cycle {int(self.cycle.numpy())}/{self.config.cycles} {phase}"

  def _cycles_done(self, phase_done: float) -> float | None:
    """Cycles completed, fractionally (synthesis and fine-tuning a half each); None during the baseline."""
    phase = int(self.phase.numpy())
    if phase == PHASE_BASELINE:
      return None
    half = 0.0 if phase == PHASE_SYNTHESIZE else 0.5
    return int(self.cycle.numpy()) - 1 + half + 0.5 * phase_done

  def _progress(self, phase_done: float) -> str:
    return self.progress.describe(phase_done, self._cycles_done(phase_done))

  def _train_target_epochs(self, epochs: int, seed_base: int, steps_per_epoch: int = 0) -> None:
    """`epochs` passes over real + cache (or of `steps_per_epoch` batches each), checkpointed after each."""
    self.progress.start_phase()
    start_epoch = int(self.epoch_in_phase.numpy())
    while int(self.epoch_in_phase.numpy()) < epochs:
      epoch = int(self.epoch_in_phase.numpy())
      total, steps = 0.0, 0
      for batch in self._target_dataset(seed_base + epoch, steps_per_epoch):
        loss = float(self._target_step(batch).numpy())
        self._check_finite(loss, "target")
        total, steps = total + loss, steps + 1
        self.target_global_step.assign_add(1)
      mean = total / max(steps, 1)
      with self.writer.as_default(step=int(self.target_global_step.numpy())):
        tf.summary.scalar("train/target_loss", mean)
      self.epoch_in_phase.assign_add(1)
      phase_done = (epoch + 1 - start_epoch) / (epochs - start_epoch)
      logging.info("%s epoch %d/%d: target loss %.4f over %d steps (%d cached hard examples); %s",
                   self._where(), epoch + 1, epochs, mean, steps, len(self.cache), self._progress(phase_done))
      self._save()

  def _reset_synthesizer(self, cycle: int) -> None:
    fresh = self._build_synthesizer(seed=self.config.seed * 1000 + cycle)
    for variable, value in zip(self.synthesizer.variables, fresh.variables):
      variable.assign(value)
    for variable in self.synth_optimizer.variables:
      if variable.name != "learning_rate":  # The step count and Adam's moments start over; the rate stays.
        variable.assign(tf.zeros_like(variable))

  def _synthesize(self, cycle: int) -> None:
    config = self.config
    quota = config.quota(cycle)
    self.progress.start_phase()
    start_step = int(self.synth_step.numpy())
    if config.reset_synthesizer_each_cycle and int(self.synth_step.numpy()) == 0:
      self._reset_synthesizer(cycle)
    iterator = iter(self._synth_dataset(config.seed * 1000 + cycle * 100 + int(self.synth_step.numpy())))
    warmup = config.synth_warmup_steps if cycle == 1 or config.reset_synthesizer_each_cycle else 0
    margins_seen, params_seen = [], []
    while (int(self.synth_step.numpy()) < warmup + config.synth_max_steps and
           self.cache.class_counts(cycle).min() < quota):
      outputs = self._synth_step(next(iterator))
      loss = float(outputs.loss.numpy())
      self._check_finite(loss, "synthesizer")
      margins = outputs.margins.numpy()
      hard = losses.is_hard(outputs.margins, config.hard_threshold).numpy()
      hard &= int(self.synth_step.numpy()) >= warmup
      added = self.cache.add(outputs.composites.numpy()[hard], outputs.labels.numpy()[hard], margins[hard],
                             cycle, quota)
      margins_seen.append(margins)
      params_seen.append(outputs.params.numpy()[hard])
      self.synth_step.assign_add(1)
      self.synth_global_step.assign_add(1)
      step = int(self.synth_global_step.numpy())
      with self.writer.as_default(step=step):
        tf.summary.scalar("train/synth_loss", loss)
        tf.summary.scalar("train/synth_diversity_energy_distance", float(outputs.diversity.numpy()))
        tf.summary.scalar("train/hard_yield", float(hard.mean()))
        tf.summary.scalar("train/hard_added", added)
        tf.summary.scalar("cache/size", len(self.cache))
        if step % config.image_summary_every_steps == 0:
          tf.summary.image("composites/during_synthesis", _image_grid(outputs.composites))
      in_cycle = int(self.synth_step.numpy())
      if in_cycle % config.checkpoint_every_steps == 0:
        counts = self.cache.class_counts(cycle)
        # Done when the emptiest class fills its quota or the step cap is reached, whichever comes first.
        step_cap = warmup + config.synth_max_steps
        phase_done = max(counts.min() / quota, (in_cycle - start_step) / max(step_cap - start_step, 1))
        logging.info("%s step %d/%d: S loss %.3f, %.0f%% of batch hard, cycle quota %d/%d (fewest in a "
                     "class %d); %s", self._where(), in_cycle, step_cap, loss, 100 * hard.mean(), counts.sum(),
                     quota * mnist.NUM_CLASSES, counts.min(), self._progress(min(phase_done, 1.0)))
        self._save()

    counts = self.cache.class_counts(cycle)
    if counts.min() < quota:
      logging.warning("cycle %d: step cap --synth_max_steps=%d reached with %d/%d hard examples (fewest in a "
                      "class: %d)", cycle, config.synth_max_steps, counts.sum(), quota * mnist.NUM_CLASSES,
                      counts.min())
    with self.writer.as_default(step=cycle):
      tf.summary.scalar("synth/steps_to_fill_cache", int(self.synth_step.numpy()))
      # Only this cycle's first 64 entries are read: the whole cache can be hundreds of megabytes.
      recent = np.flatnonzero(self.cache.cycles.numpy()[:len(self.cache)] == cycle)[:64]
      if len(recent) >= 8:
        tf.summary.image("composites/hard_examples_by_cycle",
                         _image_grid(_as_images(tf.gather(self.cache.images, recent))))
      if margins_seen:
        tf.summary.histogram("synth/hardness_margin", np.concatenate(margins_seen))
        # One mode per cycle (every digit sent to the same corner) shows up as a narrow histogram here.
        params = np.concatenate(params_seen)
        for name, values in zip(compositor_lib.PARAM_NAMES, params.T):
          tf.summary.histogram(f"synth/hard_params/{name}", values)

  def _augment_randomly(self, cycle: int) -> None:
    """The random-augmentation baseline: `quota` training digits per class under affNIST-recipe transforms.

    Every sample is kept, hard or not; their margins under the current T are logged beside TERSE's.
    """
    quota = self.config.quota(cycle)
    rng = np.random.default_rng([self.config.seed, cycle])
    labels = self.splits.train_labels
    picks = np.concatenate([
        rng.choice(np.flatnonzero(labels == c), quota, replace=quota > np.sum(labels == c))
        for c in range(mnist.NUM_CLASSES)])
    digits, picked_labels = affnist.generate(self.splits.train_images[picks], labels[picks],
                                             transforms_per_digit=1, seed=int(rng.integers(2**31)))
    images = digits[..., None].astype(np.float32) / 255.0
    margins = losses.hardness_margin(picked_labels, self._logits_in_batches(images)).numpy()
    self.cache.add(images, picked_labels, margins, cycle, quota)
    logging.info("%s: added %d random affine samples (%.0f%% of them hard for T); %s", self._where(),
                 len(images), 100 * float(np.mean(margins < self.config.hard_threshold)), self._progress(1.0))
    with self.writer.as_default(step=cycle):
      tf.summary.scalar("cache/size", len(self.cache))
      tf.summary.histogram("synth/hardness_margin", margins)
      tf.summary.image("composites/added_by_cycle", _image_grid(tf.constant(images[:64])))

  def _add_samples(self, cycle: int) -> None:
    if self.config.sample_source == "terse":
      self._synthesize(cycle)
    elif self.config.sample_source == "random_affine":
      self._augment_randomly(cycle)

  def _logits_in_batches(self, images: np.ndarray) -> np.ndarray:
    """T's logits for images [N, H, W, C] (uint8, or float in [0, 1]), --eval_batch_size at a time."""
    step = self.config.eval_batch_size
    return np.concatenate([
        self._logits(tf.image.convert_image_dtype(images[start:start + step], tf.float32)).numpy()
        for start in range(0, len(images), step)])

  def _accuracy(self, digits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of uint8 images [N, H, W] that T classifies correctly."""
    return float(np.mean(self._logits_in_batches(digits[..., None]).argmax(axis=-1) == labels))

  def _evaluate(self, label: str) -> dict:
    accuracy = self._accuracy

    cycle = int(self.cycle.numpy())
    record = {"after": label, "cycle": cycle, "cache_size": len(self.cache),
              "mnist_val_accuracy": accuracy(self.splits.val_images, self.splits.val_labels),
              "affnist_test_accuracy": accuracy(*self.affnist_test)}
    with self.writer.as_default(step=cycle):
      tf.summary.scalar("eval/mnist_val_accuracy", record["mnist_val_accuracy"])
      tf.summary.scalar("eval/affnist_test_accuracy", record["affnist_test_accuracy"])
      tf.summary.scalar("eval/cache_size", record["cache_size"])
    logging.info("eval after %s: MNIST-val accuracy %.4f, affNIST-test accuracy %.4f", label,
                 record["mnist_val_accuracy"], record["affnist_test_accuracy"])
    self.history = [h for h in self.history if h["after"] != label] + [record]
    self.history_json.assign(json.dumps(self.history))
    self._write_results()
    return record

  def _write_results(self) -> None:
    before = next((h for h in self.history if h["after"] == "baseline"), None)
    final = self.history[-1] if self.history and self.history[-1]["after"] != "baseline" else None
    write_json(self.results_path, {
        "affnist_test_accuracy_before": before and before["affnist_test_accuracy"],
        "affnist_test_accuracy_after": final and final["affnist_test_accuracy"],
        "mnist_val_accuracy_before": before and before["mnist_val_accuracy"],
        "mnist_val_accuracy_after": final and final["mnist_val_accuracy"],
        "cycles_completed": sum(1 for h in self.history if h["after"] != "baseline"),
        "hard_examples": len(self.cache),
        "affnist_test_set": self.affnist_description,
        "data": {"source": self.splits.source, **self.splits.sizes()},
        "wall_time_s": round(self.progress.elapsed(), 1),
        "history": self.history,
    })

  # ----------------------------------------------------------------------------------------- driver
  def run(self) -> dict:
    """Runs every remaining phase; returns the results written to results.json."""
    config = self.config
    if int(self.phase.numpy()) == PHASE_BASELINE:
      self._train_target_epochs(config.baseline_epochs, seed_base=config.seed * 1000)
      self._evaluate("baseline")
      self._advance(PHASE_SYNTHESIZE if config.cycles else PHASE_DONE, next_cycle=1)

    while int(self.phase.numpy()) in (PHASE_SYNTHESIZE, PHASE_FINETUNE):
      cycle = int(self.cycle.numpy())
      if int(self.phase.numpy()) == PHASE_SYNTHESIZE:
        self._add_samples(cycle)
        self._advance(PHASE_FINETUNE, next_cycle=cycle)
      if config.finetune_steps:
        self._train_target_epochs(1, seed_base=config.seed * 1000 + 10 * cycle,
                                  steps_per_epoch=config.finetune_steps)
      else:
        self._train_target_epochs(config.finetune_epochs, seed_base=config.seed * 1000 + 10 * cycle)
      if not config.eval_after_cycles or cycle in config.eval_after_cycles or cycle == config.cycles:
        self._evaluate(f"cycle {cycle}")
      if cycle < config.cycles:
        self._advance(PHASE_SYNTHESIZE, next_cycle=cycle + 1)
      else:
        self._advance(PHASE_DONE, next_cycle=cycle)

    self.writer.flush()
    self._write_results()
    with open(self.results_path) as f:
      return json.load(f)

  def _advance(self, phase: int, next_cycle: int) -> None:
    self.phase.assign(phase)
    self.cycle.assign(next_cycle)
    self.epoch_in_phase.assign(0)
    if phase == PHASE_SYNTHESIZE:
      self.synth_step.assign(0)
    self._save()
