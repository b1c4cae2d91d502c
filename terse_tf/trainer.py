"""The TERSE trainer: three players in sleep cycles, for any task (paper §3, A.1, A.2).

One Trainer owns the strategy, the networks (synthesizer S, target T, and optionally discriminator D),
their optimizers, every GradientTape, the step counters, the hard-example cache and the checkpoint. What
is task-specific (data, shapes, which T and S, placement ranges, evaluation) lives behind tasks.base.Task;
what is target-specific (loss, hardness, serving) behind targets.base.Target. The schedule:

  1. baseline: T trained on the task's real training set (eq. 1 without composites);
  2. C sleep cycles, each
     a. synthesize: S trained with T and D frozen to maximise T's loss on its composites while D calls them
        real (eq. 3), and in lockstep D trained with S frozen on real images against those composites
        (eq. 2); every composite T finds hard goes to the cache until each class has its quota (or a step
        cap). With --sample_source set to the task's random source (random_affine, cut_paste) the quota is
        filled by random placements instead (the in-tree baseline), and with none nothing is added;
     b. fine-tune: T trained on the real set plus the whole cache with S frozen (eq. 1);
  3. export S and T as SavedModels.

Every phase is resumable: the checkpoint carries the phase, cycle, epoch and step it reached, and the number
of cache shards it saw. Resume order: the latest checkpoint in the run directory -> --init_checkpoint
(weights only) -> scratch. With several worker processes (--strategy=multi_worker) every worker takes every
step and holds the same cache (S's outputs are gathered from all of them), but only the chief writes the
run directory; the others write to a scratch directory and read the chief's state when they resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import weakref
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import keras
from absl import logging

from terse_tf import compositor as compositor_lib
from terse_tf import files, losses, tasks
from terse_tf import progress as progress_lib
from terse_tf.progress import (PHASE_BASELINE, PHASE_DONE, PHASE_FINETUNE, PHASE_NAMES, PHASE_SYNTHESIZE,
                               Progress)
from terse_tf.cache import HardExampleCache, as_stored
from terse_tf.data import affnist, mnist
from terse_tf.errors import ConfigError, DataError, NonFiniteLossError, WorkerLostError
from terse_tf.networks import discriminator as discriminator_lib
from terse_tf.networks import synthesizer
from terse_tf.tasks import affnist as affnist_task
from terse_tf.tasks import photo_digits

STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
# Where each cycle's added samples come from: TERSE's synthesizer (hard composites against the current T),
# the task's random-placement baseline (affNIST's random affine recipe; Cut-Paste-Learn's random placement
# and blending for detection), or nothing (a control that fine-tunes on the real set alone).
SAMPLE_SOURCES = ("terse", "random_affine", "cut_paste", "none")
# Weight decay as the paper's PyTorch optimizers apply it (an L2 term whose gradient joins the loss's before
# momentum or Adam's moments), or Keras 3's own decoupled decay (w -= lr * decay * w after the update).
WEIGHT_DECAY_MODES = ("coupled", "decoupled")
# What --fresh removes: only the paths a run writes, never the rest of the run directory.
RUN_OUTPUTS = ("checkpoints", "cache", "tensorboard", "export", "results.json", "config.json")
# Hard composites per cycle shown in TensorBoard's grid.
PREVIEW_COUNT = 64


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  run_dir: str
  task: str = "affnist"
  data: mnist.DataConfig = mnist.DataConfig()
  affnist: affnist.AffnistConfig = affnist.AffnistConfig()
  photo_digits: photo_digits.PhotoDigitsConfig = photo_digits.PhotoDigitsConfig()
  compositor: compositor_lib.CompositorConfig = compositor_lib.CompositorConfig()
  # T's architecture, one the task accepts (affnist: paper, itn_swish; photo_digits: ssd_compact, ssd_vgg16);
  # "" for the task's first.
  target: str = ""
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
  # rest from the real set; 0 draws from both in proportion to their sizes, as one shuffled pool (A.1).
  # With many real examples and a fixed step count, the one pool shows T few of the added samples.
  cache_fraction: float = 0.0
  # Examples of the on-disk cache held in T's shuffle buffer (the cache streams shard by shard).
  cache_shuffle_buffer: int = 20000
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
  # (normalised to the clamp box) and as many drawn uniformly from the box. 0 is the paper's loss. Without
  # it S spends a cycle on one transform (BENCHMARKS.md).
  diversity_weight: float = 0.0
  # Measure the penalty per class (each class's transforms against the whole range) rather than on the
  # pooled batch: pooled, S can give each class its own corner while the classes together look uniform.
  diversity_per_class: bool = False
  # Discriminator D (§3.3): on/off, the weight of its realism term in S's loss, Adam's rate, its width and
  # number of scales (pix2pixHD's multi-scale PatchGAN).
  discriminator: bool = False
  discriminator_weight: float = 0.1
  discriminator_lr: float = 2e-4
  discriminator_width: int = 32
  discriminator_scales: int = 2
  # A composite is hard (and cached) when T's hardness score is below this; None: the target's own default
  # (0 for a classifier's p_gt - max_other, 0.5 for a detector's confidence).
  hard_threshold: float | None = None
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
    for name, value in _float_settings(dataclasses.asdict(self)):
      if not np.isfinite(value):  # Checked first: NaN passes every bound below (nan < 0 is False).
        raise ConfigError(f"--{name} must be a finite number, got {value}")
    if self.task not in (*tasks.TASKS, *tasks.CUSTOM_TASKS):
      raise ConfigError(f"--task must be one of {tasks.TASKS}, got {self.task!r}")
    if not self.target:
      object.__setattr__(self, "target", tasks.TARGETS[self.task][0])
    if self.strategy not in STRATEGIES:
      raise ConfigError(f"--strategy must be one of {STRATEGIES}, got {self.strategy!r}")
    if self.target not in tasks.TARGETS[self.task]:
      raise ConfigError(f"--target must be one of {tasks.TARGETS[self.task]} for --task={self.task}, got "
                        f"{self.target!r}")
    if self.weight_decay_mode not in WEIGHT_DECAY_MODES:
      raise ConfigError(f"--weight_decay_mode must be one of {WEIGHT_DECAY_MODES}, got "
                        f"{self.weight_decay_mode!r}")
    allowed_sources = ("terse", tasks.RANDOM_SOURCES[self.task], "none")
    if self.sample_source not in allowed_sources:
      raise ConfigError(f"--sample_source must be one of {allowed_sources} for --task={self.task}, got "
                        f"{self.sample_source!r}")
    if not self.hard_per_class or min(self.hard_per_class) < 1:
      raise ConfigError(f"--hard_per_class needs values >= 1, got {list(self.hard_per_class)}")
    if len(self.hard_per_class) not in (1, self.cycles):
      raise ConfigError(f"--hard_per_class has {len(self.hard_per_class)} values; expected one, or one per "
                        f"cycle (--cycles={self.cycles})")
    for name in ("batch_size", "synth_batch_size", "synth_max_steps", "checkpoint_every_steps",
                 "eval_batch_size", "cache_shuffle_buffer", "discriminator_width", "discriminator_scales"):
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
    for name in ("diversity_weight", "discriminator_weight"):
      if getattr(self, name) < 0:
        raise ConfigError(f"--{name} must be >= 0, got {getattr(self, name)}")

  def quota(self, cycle: int) -> int:
    """Samples to add per class in `cycle` (1-based)."""
    return self.hard_per_class[0] if len(self.hard_per_class) == 1 else self.hard_per_class[cycle - 1]


def _float_settings(settings: dict | list | tuple, name: str = ""):
  """(name, value) of every float in a config's asdict(), nested settings and tuples included; a nested
  setting goes by its own field's name, which is its flag's."""
  items = settings.items() if isinstance(settings, dict) else ((name, value) for value in settings)
  for key, value in items:
    if isinstance(value, float):
      yield key, value
    elif isinstance(value, (dict, list, tuple)):
      yield from _float_settings(value, key)


class SynthStepOutputs(NamedTuple):
  """What one synthesizer step produces, gathered over replicas."""
  loss: tf.Tensor                # scalar, S's loss (without decay).
  target_loss: tf.Tensor         # scalar, T's loss on the composites, which S maximises.
  diversity: tf.Tensor           # scalar, energy distance of the batch's transforms to the uniform box.
  adversarial: tf.Tensor         # scalar, S's realism term (0 without D).
  params: tf.Tensor              # [B, ..., 6] clamped affine parameters.
  pasted: tf.Tensor              # [B, ...] int32, 1 where a row of params is an object (not an empty slot).
  composites: tf.Tensor          # [B, H, W, C] on the cache's 8-bit grid, as T judged them.
  labels: dict                   # The composites' labels, as T takes them.
  hardness: tf.Tensor            # [B] T's hardness score.
  quota_class: tf.Tensor         # [B]


def synthesizer_settings(config: TrainConfig) -> tasks.SynthesizerSettings:
  """How the task is to build S and composite for it."""
  return tasks.SynthesizerSettings(width=config.synth_width, dropout=config.synth_dropout,
                                   noise_dim=config.synth_noise_dim, jit_compile=config.jit_compile)


def task_config(config: TrainConfig) -> affnist_task.AffnistTaskConfig | photo_digits.PhotoDigitsTaskConfig:
  """The settings of the task `config` names, for tasks.build."""
  if config.task == "affnist":
    return affnist_task.AffnistTaskConfig(
        data=config.data, affnist=config.affnist, compositor=config.compositor, target=config.target,
        synthesizer=synthesizer_settings(config))
  return photo_digits.PhotoDigitsTaskConfig(
      data=config.data, photo_digits=config.photo_digits, compositor=config.compositor, target=config.target,
      synthesizer=synthesizer_settings(config), data_seed=config.data.seed)


def _flatten(settings: dict, prefix: str = "") -> dict:
  """{"data": {"seed": 0}} -> {"data.seed": 0}: nested settings by their full names, to say which differ."""
  flat = {}
  for key, value in settings.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def remove_outputs(run_dir: str, names: list[str]) -> None:
  """Removes these of a run directory's outputs (files or folders) where they exist."""
  for name in names:
    path = os.path.join(run_dir, name)
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path)
    elif os.path.lexists(path):
      os.remove(path)


def build_strategy(name: str) -> tf.distribute.Strategy:
  """The one place the distribution strategy is chosen: mirrored over several GPUs, else the default;
  "multi_worker" mirrors over every device of every worker process that TF_CONFIG lists.

  An explicit "mirrored" with no GPU mirrors over the logical CPU devices (how the tests run it). The
  multi-worker strategy must be built before the process runs any TensorFlow op (it configures the
  collective ops of the runtime), so the Trainer builds its strategy first.
  """
  if name == "multi_worker":
    if not os.environ.get("TF_CONFIG"):
      raise ConfigError("--strategy=multi_worker needs the TF_CONFIG environment variable: the cluster "
                        '({"worker": ["host:port", ...]}) and this process\'s task ({"type": "worker", '
                        '"index": i}); see README "Several devices"')
    return _multi_worker_strategy()
  gpus = tf.config.list_logical_devices("GPU")
  if name == "mirrored" or (name == "auto" and len(gpus) > 1):
    devices = gpus or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([device.name for device in devices])
  return tf.distribute.get_strategy()


@functools.lru_cache(maxsize=1)
def _multi_worker_strategy() -> tf.distribute.MultiWorkerMirroredStrategy:
  """The process's one multi-worker strategy (it can be configured only once, before any other op)."""
  try:
    return tf.distribute.MultiWorkerMirroredStrategy()
  except RuntimeError as e:
    raise ConfigError("--strategy=multi_worker must be chosen before the process runs any TensorFlow op "
                      f"({e}): start the run (terse_tf.train, terse_tf.api) before making models or "
                      "tensors") from e


def worker_count(strategy: tf.distribute.Strategy) -> int:
  """Processes that take each step together: the tasks TF_CONFIG lists for a multi-worker strategy, else 1."""
  resolver = strategy.cluster_resolver
  if resolver is None or not resolver.task_type:
    return 1
  jobs = resolver.cluster_spec().as_dict()
  return len(jobs.get("chief", ())) + len(jobs.get("worker", ()))


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Whether this process writes the run's outputs: the only process of a single-worker run; with several
  workers the "chief" task, or worker 0 when the cluster names no chief (TF's convention)."""
  resolver = strategy.cluster_resolver
  if resolver is None or not resolver.task_type or resolver.task_type == "chief":
    return True
  return (resolver.task_type == "worker" and resolver.task_id == 0 and
          "chief" not in resolver.cluster_spec().as_dict())


class Trainer:
  """Runs (or resumes) the whole TERSE schedule for one run directory."""

  def __init__(self, config: TrainConfig, task: tasks.Task | None = None):
    """Checks the run directory, loads the data, builds the players and restores their state, in that
    order; only then does it touch the run directory (and with --fresh remove the previous run's outputs),
    so a start that fails on bad input loses nothing and leaves nothing behind.

    `task`: a task built in Python (terse_tf.api, with config.task one of tasks.CUSTOM_TASKS) instead of
    one the config names."""
    self.config = config
    self._check_run_dir_path()
    self.strategy = build_strategy(config.strategy)  # First: multi-worker must precede every other op.
    # Every worker takes every step (saves included: they may read variables through collectives), but
    # only the chief writes to the run directory; the others write to a private scratch directory made by
    # _prepare_run_dir and removed by close().
    self.is_chief = is_chief(self.strategy)
    self.multi_worker = worker_count(self.strategy) > 1
    self.output_dir = config.run_dir
    keras.utils.set_random_seed(config.seed)

    if (task is not None) != (config.task in tasks.CUSTOM_TASKS):
      raise ConfigError(f"task {config.task!r} with {'a' if task else 'no'} Python task object: a custom task "
                        f"comes from terse_tf.api, the named ones ({tasks.TASKS}) from their flags")
    self.task = task or tasks.build(task_config(config))
    logging.info("task %s: %s", config.task, self.task.describe())

    # With coupled decay the optimizers decay nothing themselves: the L2 term joins each player's loss.
    decoupled = config.weight_decay_mode == "decoupled"
    with self.strategy.scope():
      self.target = self.task.build_target()
      self.hard_threshold = self.target.resolve_hard_threshold(config.hard_threshold,
                                                               f"target {type(self.target).__name__}")
      self.synthesizer = self.task.build_synthesizer(seed=config.seed)
      self.target_optimizer = keras.optimizers.SGD(
          config.target_lr, momentum=config.target_momentum,
          weight_decay=config.target_weight_decay if decoupled else None)
      self.synth_optimizer = keras.optimizers.Adam(
          config.synth_lr, weight_decay=config.synth_weight_decay if decoupled else None)
      # Built here, before any tf.function step: under MirroredStrategy a lazily built Keras 3 optimizer
      # fails inside the first step ("You must feed a value for placeholder tensor").
      self.target_optimizer.build(self.target.model.trainable_variables)
      self.synth_optimizer.build(self.synthesizer.trainable_variables)
      self.discriminator = self.discriminator_optimizer = None
      if config.discriminator:
        self.discriminator = discriminator_lib.build_discriminator(
            self.task.image_shape, config.discriminator_scales, config.discriminator_width,
            seed=config.seed + 7)
        # pix2pixHD's Adam: beta_1 0.5.
        self.discriminator_optimizer = keras.optimizers.Adam(config.discriminator_lr, beta_1=0.5)
        self.discriminator_optimizer.build(self.discriminator.trainable_variables)
    self.cache = HardExampleCache(os.path.join(config.run_dir, "cache"), self.task.num_classes)
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
    players = {}
    if self.discriminator is not None:
      players = {"discriminator": self.discriminator, "discriminator_optimizer": self.discriminator_optimizer}
    state = dict(
        synthesizer=self.synthesizer, target=self.target.model, synth_optimizer=self.synth_optimizer,
        target_optimizer=self.target_optimizer, cache=self.cache, phase=self.phase, cycle=self.cycle,
        epoch_in_phase=self.epoch_in_phase, synth_step=self.synth_step,
        target_global_step=self.target_global_step, synth_global_step=self.synth_global_step,
        elapsed_s=self.elapsed_s, history_json=self.history_json, run_identity=self.run_identity, **players)
    self.dropout_seeds = self._dropout_seed_states()
    self.checkpoint = tf.train.Checkpoint(dropout_seeds=self.dropout_seeds, **state)
    # What checkpoints written before they kept the dropout seeds hold: those runs resume too.
    self._checkpoint_without_dropout_seeds = tf.train.Checkpoint(**state)
    checkpoint_dir = os.path.join(config.run_dir, "checkpoints")
    self.history: list[dict] = []
    # The checkpoint this run resumes (None: it starts afresh).
    self.resumed_from = None if config.fresh else tf.train.latest_checkpoint(checkpoint_dir)
    self._restore(self.resumed_from)

    self._prepare_run_dir()
    self.cache.sync()  # Drops cache shards written after the restored checkpoint (a kill between the two).
    self.checkpoint_manager = tf.train.CheckpointManager(
        self.checkpoint, os.path.join(self.output_dir, "checkpoints"), max_to_keep=3)
    self.writer = (tf.summary.create_file_writer(os.path.join(config.run_dir, "tensorboard")) if self.is_chief
                   else tf.summary.create_noop_writer())
    self.results_path = os.path.join(self.output_dir, "results.json")
    self.progress = Progress(config.cycles, float(self.elapsed_s.numpy()))
    self._target_step = tf.function(self._target_step_fn)
    self._synth_step = tf.function(self._synth_step_fn)
    self._discriminator_step = tf.function(self._discriminator_step_fn)
    self._barrier = tf.function(lambda: self.strategy.reduce(
        tf.distribute.ReduceOp.SUM, self.strategy.run(lambda: tf.constant(1)), axis=None))
    self._judge = tf.function(
        lambda images, labels: self.target.judge(self.target.model(images, training=False), labels))

  def _dropout_seed_states(self) -> list:
    """Where the players' dropout layers are in their random streams (Keras seed generators, which a
    model's checkpoint leaves out): kept in ours, so that a resumed run draws the masks an uninterrupted
    one would."""
    models = [self.synthesizer, self.target.model] + ([self.discriminator] if self.discriminator else [])
    return [variable for model in models for variable in model.variables
            if getattr(variable, "path", "").endswith("seed_generator_state")]

  @property
  def complete(self) -> bool:
    """Whether every phase is done (a rerun has nothing to train)."""
    return int(self.phase.numpy()) == PHASE_DONE

  # ----------------------------------------------------------------------------------------- state
  def _restore(self, latest: str | None) -> None:
    """Resume order: the run directory's `latest` checkpoint -> --init_checkpoint (S and T only) -> scratch."""
    if latest:
      key = "run_identity/.ATTRIBUTES/VARIABLE_VALUE"
      try:
        reader = tf.train.load_checkpoint(latest)
        saved_identity = reader.get_tensor(key).decode() if reader.has_tensor(key) else "{}"
      except (tf.errors.OpError, ValueError, IndexError, OSError) as e:  # A truncated or garbled file.
        raise DataError(f"{latest}: damaged checkpoint ({type(e).__name__}: {e}); the run cannot resume from "
                        "it. Rerun with --fresh to start over") from e
      if saved_identity != self._identity():
        saved, asked = _flatten(json.loads(saved_identity)), _flatten(json.loads(self._identity()))
        differences = "; ".join(f"{name}: {saved.get(name, 'unset')} there, {asked.get(name, 'unset')} now"
                                for name in sorted(set(saved) | set(asked)) if saved.get(name) != asked.get(name))
        raise ConfigError(f"--run_dir={self.config.run_dir} holds a run on other data or another target "
                          f"({differences}). Use another --run_dir, or --fresh to replace it")
      checkpoint = self.checkpoint
      if self.dropout_seeds and not reader.has_tensor("dropout_seeds/0/.ATTRIBUTES/VARIABLE_VALUE"):
        logging.warning("%s predates checkpoints that keep the dropout layers' random streams: the run resumes, "
                        "but its dropout masks from here on are not those an uninterrupted run would draw", latest)
        checkpoint = self._checkpoint_without_dropout_seeds
      try:
        checkpoint.restore(latest).assert_existing_objects_matched()
      except (AssertionError, ValueError, tf.errors.OpError) as e:
        raise ConfigError(f"--run_dir={self.config.run_dir} holds a checkpoint ({latest}) from a different "
                          "configuration (networks or players differ); rerun with the flags that made "
                          f"it, or add --fresh to start over ({type(e).__name__})") from e
      self.history = json.loads(self.history_json.numpy().decode())
      logging.info("resumed from %s: phase %s, cycle %d, %d cache shards", latest,
                   PHASE_NAMES[int(self.phase.numpy())], int(self.cycle.numpy()),
                   int(self.cache.committed_shards.numpy()))
    elif self.config.init_checkpoint:
      try:
        tf.train.Checkpoint(synthesizer=self.synthesizer, target=self.target.model).restore(
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
    """Creates the run directory, proves it writable and locks it (a second process is refused; with several
    workers, the others wait at their first collective until the chief's refusal ends the run), then (--fresh)
    removes the previous run's outputs, or the TensorBoard events of a start killed before its first
    checkpoint.

    A directory this call created is removed again if it cannot be used, so a failed start leaves none.
    A worker other than the chief makes its scratch directory instead, with a copy of the cache shards the
    restored checkpoint counts (the chief's, read from the shared run directory).
    """
    if not self.is_chief:
      self.output_dir = self._scratch_dir()
      shutil.rmtree(self.output_dir, ignore_errors=True)  # What a killed worker left.
      scratch_cache = os.path.join(self.output_dir, "cache")
      os.makedirs(scratch_cache)
      for path in self.cache.shard_paths():
        shutil.copy(path, scratch_cache)
      self.cache.directory = scratch_cache
      logging.info("worker (not the chief): writes go to the scratch directory %s", self.output_dir)
      return
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
    # One process writes a run directory at a time (two would interleave checkpoints, event files and export
    # versions); taken before --fresh removes anything.
    self._lock = files.DirectoryLock(run_dir)
    try:
      self._lock.acquire()
    except files.DirectoryInUseError as e:
      raise ConfigError(f"--run_dir={run_dir} is {e}, a run still going: wait for it to end (or stop it), "
                        "or use another --run_dir") from None
    weakref.finalize(self, self._lock.release)
    if self.config.fresh:
      removed = [name for name in RUN_OUTPUTS if os.path.lexists(os.path.join(run_dir, name))]
      if removed:
        logging.info("--fresh: removing the previous run's %s from %s", ", ".join(removed), run_dir)
      remove_outputs(run_dir, removed)
    elif self.resumed_from is None and os.path.exists(os.path.join(run_dir, "config.json")):
      # A terse_tf start (it wrote config.json) killed before its first checkpoint: its TensorBoard events
      # describe steps this run takes again.
      logging.info("no checkpoint to resume in %s: removing the TensorBoard events of a start that ended "
                   "before its first checkpoint", run_dir)
      remove_outputs(run_dir, ["tensorboard"])

  def _scratch_dir(self) -> str:
    """A worker's scratch directory: one per run directory and task, so a relaunch finds (and clears) the
    one a killed worker left."""
    resolver = self.strategy.cluster_resolver
    run = hashlib.sha1(os.path.abspath(self.config.run_dir).encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), f"terse_tf_{run}_{resolver.task_type}{resolver.task_id}")

  def close(self) -> None:
    """Ends the run's use of the disk: flushes TensorBoard; a worker other than the chief removes its
    scratch directory."""
    self.writer.flush()
    if not self.is_chief:
      shutil.rmtree(self.output_dir, ignore_errors=True)
    elif hasattr(self, "_lock"):
      self._lock.release()

  def _identity(self) -> str:
    """The settings a checkpoint must share to be resumed: task, data, test set and target architecture."""
    identity = self.task.identity()
    if self.config.task != "affnist":  # affNIST runs predate tasks; their identity stays as it was.
      identity["task"] = self.config.task
    return json.dumps(identity, sort_keys=True)

  def _save(self) -> None:
    """Writes pending cache entries as a shard, then the checkpoint that counts it."""
    self.elapsed_s.assign(self.progress.elapsed())
    self.cache.commit()
    self.checkpoint_manager.save()

  def _check_finite(self, loss: float, what: str) -> None:
    if not np.isfinite(loss):
      raise NonFiniteLossError(
          f"{what} loss became {loss} at cycle {int(self.cycle.numpy())}; stopped without saving, the last "
          f"good checkpoint ({self.checkpoint_manager.latest_checkpoint or 'none yet'}) is kept. Lower "
          "the learning rates or check the data.")

  # ----------------------------------------------------------------------------------------- data
  def _real_dataset(self, context: tf.distribute.InputContext, seed: int) -> tf.data.Dataset:
    """The task's real training set, this input pipeline's share, shuffled (one pass)."""
    images, labels = self.task.real_examples()
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).shard(
        context.num_input_pipelines, context.input_pipeline_id)
    return ds.shuffle(len(images), seed=seed)

  def _target_dataset(self, epoch_seed: int, steps: int = 0) -> tf.distribute.DistributedDataset:
    """The real training set plus every cached hard example, shuffled: one epoch of T, or `steps` batches.

    An epoch is as many batches as one pass over both would take; its examples come from the two in
    proportion to their sizes (one pool, A.1), or with --cache_fraction from the cache at that share.
    """
    num_real, num_cached = len(self.task.real_examples()[0]), len(self.cache)
    total = num_real + num_cached
    fraction = self.config.cache_fraction or num_cached / total

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
      batch = context.get_per_replica_batch_size(self.config.batch_size)
      # Each global step takes one batch from this pipeline per replica it feeds.
      batches = (steps or total // self.config.batch_size) * (
          self.strategy.num_replicas_in_sync // context.num_input_pipelines)
      ds = self._real_dataset(context, epoch_seed)
      cached = self.cache.dataset()
      if cached is not None:
        cached = cached.shard(context.num_input_pipelines, context.input_pipeline_id)
        cached = cached.shuffle(min(num_cached, self.config.cache_shuffle_buffer), seed=epoch_seed + 1)
        ds = tf.data.Dataset.sample_from_datasets([ds.repeat(), cached.repeat()],
                                                  weights=[1.0 - fraction, fraction], seed=epoch_seed)
      elif steps:
        ds = ds.repeat()
      ds = ds.batch(batch, drop_remainder=True).take(batches)
      return ds.map(lambda x, y: (tf.image.convert_image_dtype(x, tf.float32), y)).prefetch(tf.data.AUTOTUNE)

    return self.strategy.distribute_datasets_from_function(dataset_fn)

  def _synth_dataset(self, seed: int, skip_steps: int = 0) -> tf.distribute.DistributedDataset:
    """Endless batches for S; with D, (S's batch, real images for D's step) pairs. `skip_steps`: the global
    steps a resumed cycle had taken, whose batches it skips, so that it goes on with the batches an
    uninterrupted run would take (the stream is a function of the seed)."""
    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
      batch = context.get_per_replica_batch_size(self.config.synth_batch_size)
      ds = self.task.synth_dataset(batch, seed, context)
      if self.discriminator is not None:
        real = self._real_dataset(context, seed + 1).repeat().batch(batch, drop_remainder=True)
        real = real.map(lambda x, _: tf.image.convert_image_dtype(x, tf.float32))
        ds = tf.data.Dataset.zip((ds, real))
      # Each global step takes one batch from this pipeline per replica it feeds.
      ds = ds.skip(skip_steps * (self.strategy.num_replicas_in_sync // context.num_input_pipelines))
      return ds.prefetch(2)

    return self.strategy.distribute_datasets_from_function(dataset_fn)

  # ----------------------------------------------------------------------------------------- steps
  def _coupled_decay(self, variables: list[tf.Variable], weight: float) -> tf.Tensor:
    """This replica's share of the coupled L2 term (0 under decoupled decay): 1/replicas of it, since the
    optimizer sums the replicas' gradients."""
    if self.config.weight_decay_mode != "coupled" or not weight:
      return tf.constant(0.0)
    return losses.l2_penalty(variables, weight) / self.strategy.num_replicas_in_sync

  def _model_penalties(self, model: keras.Model) -> tf.Tensor:
    """This replica's share of the penalties a model's own layers add (Keras `losses`: a user's
    kernel_regularizer, say), read after the model's call: 1/replicas of them, as for the coupled decay."""
    if not model.losses:
      return tf.constant(0.0)
    return tf.add_n(model.losses) / self.strategy.num_replicas_in_sync

  def _target_step_fn(self, batch) -> tf.Tensor:
    """One SGD step of T on a global batch; returns T's mean loss on it (without the decay term and the
    model's own penalties)."""
    def replica_step(images, labels):
      variables = self.target.model.trainable_variables
      with tf.GradientTape() as tape:
        loss = self.target.replica_loss(self.target.model(images, training=True), labels)
        regularized = (loss + self._coupled_decay(variables, self.config.target_weight_decay) +
                       self._model_penalties(self.target.model))
      self.target_optimizer.apply_gradients(zip(tape.gradient(regularized, variables), variables))
      return loss

    per_replica = self.strategy.run(replica_step, args=batch)
    return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

  def _diversity(self, composition: tasks.Composition, seed: tf.Tensor) -> tf.Tensor:
    uniform = tf.random.stateless_uniform(tf.shape(composition.normalized), seed, -1.0, 1.0)
    if self.config.diversity_per_class:
      return losses.class_conditional_energy_distance(composition.normalized, uniform,
                                                      composition.object_classes, self.task.num_classes)
    return losses.energy_distance(composition.normalized, uniform)

  def _discriminator_step_fn(self, real, composites) -> tuple[tf.Tensor, tf.Tensor]:
    """One Adam step of D (eq. 2) on real images against S's composites, S and T frozen; returns D's mean
    loss and the share of its patches it got right."""
    replicas = self.strategy.num_replicas_in_sync

    def replica_step(real_images, composite_images):
      variables = self.discriminator.trainable_variables
      with tf.GradientTape() as tape:
        real_logits = self.discriminator(real_images, training=True)
        composite_logits = self.discriminator(composite_images, training=True)
        loss = tf.nn.compute_average_loss(losses.discriminator_loss(real_logits, composite_logits))
      self.discriminator_optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
      return loss, losses.discriminator_accuracy(real_logits, composite_logits) / replicas

    per_replica = self.strategy.run(replica_step, args=(real, composites))
    return tuple(self.strategy.reduce(tf.distribute.ReduceOp.SUM, x, axis=None) for x in per_replica)

  def _synth_step_fn(self, batch) -> SynthStepOutputs:
    """One Adam step of S against T and D (eq. 3), T and D frozen. Returns the composites per replica too
    (`per_replica_composites`), which D's step in lockstep takes."""
    config = self.config
    replicas = self.strategy.num_replicas_in_sync

    def replica_step(synth_batch, step_seed):
      variables = self.synthesizer.trainable_variables
      replica_seed = tf.random.experimental.stateless_fold_in(
          step_seed, tf.distribute.get_replica_context().replica_id_in_sync_group)
      noise_seed, diversity_seed = tf.unstack(tf.random.split(replica_seed, 2))
      with tf.GradientTape() as tape:
        composition = self.task.compose(
            lambda foreground, background: synthesizer.raw_params(self.synthesizer, foreground, background,
                                                                  training=True, noise_seed=noise_seed),
            synth_batch)
        # T judges the composite the cache would store (8-bit), so what is cached as hard is hard.
        images = as_stored(composition.images)
        target_outputs = self.target.model(images, training=False)  # T frozen: inference mode, no update.
        target_loss = self.target.replica_loss(target_outputs, composition.labels)
        # Each replica's batch-level penalty counts 1/replicas, so the sum over replicas is their mean.
        diversity = self._diversity(composition, diversity_seed) / replicas
        adversarial = tf.constant(0.0)
        if self.discriminator is not None:  # D frozen: called in inference mode, its variables not updated.
          adversarial = tf.nn.compute_average_loss(
              losses.synthesizer_adversarial_loss(self.discriminator(images, training=False)))
        loss = -target_loss + config.diversity_weight * diversity + config.discriminator_weight * adversarial
        regularized = (loss + self._coupled_decay(variables, config.synth_weight_decay) +
                       self._model_penalties(self.synthesizer))
      self.synth_optimizer.apply_gradients(zip(tape.gradient(regularized, variables), variables))
      judgement = self.target.judge(target_outputs, composition.labels)
      pasted = tf.cast(composition.pasted, tf.int32)  # strategy.gather takes no bool.
      return ((loss, target_loss, diversity, adversarial),
              (composition.params, pasted, images, composition.labels, judgement.hardness, judgement.quota_class))

    # The step's random draws (S's noise, the diversity penalty's uniform sample) are a function of the seed
    # and the step's number, which the checkpoint keeps: a resumed run draws what an uninterrupted one would.
    step_seed = tf.stack([tf.constant(config.seed, tf.int64), self.synth_global_step.read_value()])
    scalars, per_example = self.strategy.run(replica_step, args=(batch, step_seed))
    self.synth_global_step.assign_add(1)
    summed = [self.strategy.reduce(tf.distribute.ReduceOp.SUM, x, axis=None) for x in scalars]
    gathered = tf.nest.map_structure(lambda x: self.strategy.gather(x, axis=0), per_example)
    return SynthStepOutputs(*summed, *gathered), per_example[2]

  # ----------------------------------------------------------------------------------------- phases
  def _where(self) -> str:
    return progress_lib.where(int(self.phase.numpy()), int(self.cycle.numpy()), self.config.cycles)

  def _progress(self, phase_done: float) -> str:
    return self.progress.describe(phase_done, progress_lib.cycles_done(
        int(self.phase.numpy()), int(self.cycle.numpy()), phase_done))

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
    fresh = self.task.build_synthesizer(seed=self.config.seed * 1000 + cycle)
    for variable, value in zip(self.synthesizer.variables, fresh.variables):
      variable.assign(value)
    for variable in self.synth_optimizer.variables:
      if variable.name != "learning_rate":  # The step count and Adam's moments start over; the rate stays.
        variable.assign(tf.zeros_like(variable))

  def _summarize_synth_step(self, outputs: SynthStepOutputs, discriminator: tuple | None, hard: np.ndarray,
                            added: int) -> None:
    step = int(self.synth_global_step.numpy())
    with self.writer.as_default(step=step):
      tf.summary.scalar("train/synth_loss", float(outputs.loss.numpy()))
      tf.summary.scalar("train/synth_target_loss", float(outputs.target_loss.numpy()))
      tf.summary.scalar("train/synth_diversity_energy_distance", float(outputs.diversity.numpy()))
      if discriminator is not None:
        tf.summary.scalar("train/synth_adversarial_loss", float(outputs.adversarial.numpy()))
        tf.summary.scalar("train/discriminator_loss", float(discriminator[0].numpy()))
        tf.summary.scalar("train/discriminator_accuracy", float(discriminator[1].numpy()))
      tf.summary.scalar("train/hard_yield", float(hard.mean()))
      tf.summary.scalar("train/hard_added", added)
      tf.summary.scalar("cache/size", len(self.cache))
      if step % self.config.image_summary_every_steps == 0:
        tf.summary.image("composites/during_synthesis", self.task.preview(outputs.composites, outputs.labels))

  def _synthesize(self, cycle: int) -> None:
    config = self.config
    quota = config.quota(cycle)
    quota_total = quota * self.task.num_classes
    self.progress.start_phase()
    start_step = int(self.synth_step.numpy())
    if config.reset_synthesizer_each_cycle and int(self.synth_step.numpy()) == 0:
      self._reset_synthesizer(cycle)
    iterator = iter(self._synth_dataset(config.seed * 1000 + cycle * 100, skip_steps=start_step))
    warmup = config.synth_warmup_steps if cycle == 1 or config.reset_synthesizer_each_cycle else 0
    # The cycle's first PREVIEW_COUNT hard composites with their labels, for TensorBoard's grid.
    hardness_seen, params_seen, examples = [], [], []
    while (int(self.synth_step.numpy()) < warmup + config.synth_max_steps and
           self.cache.class_counts(cycle).min() < quota):
      batch = next(iterator)
      discriminator = None
      if self.discriminator is None:
        outputs, _ = self._synth_step(batch)
      else:  # S's step, then D's in lockstep on S's composites and real images.
        synth_batch, real = batch
        outputs, composites = self._synth_step(synth_batch)
        discriminator = self._discriminator_step(real, composites)
      loss = float(outputs.loss.numpy())
      self._check_finite(loss, "synthesizer")
      hardness = outputs.hardness.numpy()
      hard = losses.is_hard(hardness, self.hard_threshold)
      hard &= int(self.synth_step.numpy()) >= warmup
      hard_composites = outputs.composites.numpy()[hard]
      labels = {key: value.numpy()[hard] for key, value in outputs.labels.items()}
      added = self.cache.add(hard_composites, labels, outputs.quota_class.numpy()[hard], hardness[hard], cycle,
                             quota)
      room = PREVIEW_COUNT - sum(len(composites) for composites, _ in examples)
      if room > 0 and len(hard_composites):
        examples.append((hard_composites[:room], {key: value[:room] for key, value in labels.items()}))
      hardness_seen.append(hardness)
      params_seen.append(outputs.params.numpy()[hard][outputs.pasted.numpy()[hard] > 0])  # Objects, not slots.
      self.synth_step.assign_add(1)  # (The step counted itself in synth_global_step.)
      self._summarize_synth_step(outputs, discriminator, hard, added)
      in_cycle = int(self.synth_step.numpy())
      if in_cycle % config.checkpoint_every_steps == 0:
        counts = self.cache.class_counts(cycle)
        # Done when the emptiest class fills its quota or the step cap is reached, whichever comes first.
        step_cap = warmup + config.synth_max_steps
        phase_done = max(counts.min() / quota, (in_cycle - start_step) / max(step_cap - start_step, 1))
        d_accuracy = (f", D accuracy {float(discriminator[1].numpy()):.2f}" if discriminator is not None else "")
        logging.info("%s step %d/%d: S loss %.3f%s, %.0f%% of batch hard, cycle quota %d/%d (fewest in a "
                     "class %d); %s", self._where(), in_cycle, step_cap, loss, d_accuracy, 100 * hard.mean(),
                     counts.sum(), quota_total, counts.min(), self._progress(min(phase_done, 1.0)))
        self._save()

    counts = self.cache.class_counts(cycle)
    if not counts.sum():
      # A normal event (T already gets every composite S can make right, or a strict --hard_threshold):
      # the cycle adds nothing and T fine-tunes on what it had.
      logging.warning("cycle %d: S found no composite T finds hard (hardness below %g) in %d steps; the cycle "
                      "adds nothing to the cache", cycle, self.hard_threshold, int(self.synth_step.numpy()))
    elif counts.min() < quota:
      logging.warning("cycle %d: step cap --synth_max_steps=%d reached with %d/%d hard examples (fewest in a "
                      "class: %d)", cycle, config.synth_max_steps, counts.sum(), quota_total, counts.min())
    with self.writer.as_default(step=cycle):
      tf.summary.scalar("synth/steps_to_fill_cache", int(self.synth_step.numpy()))
      if examples:
        composites = np.concatenate([composites for composites, _ in examples])
        labels = {key: np.concatenate([example_labels[key] for _, example_labels in examples])
                  for key in examples[0][1]}
        tf.summary.image("composites/hard_examples_by_cycle", self.task.preview(composites, labels))
      if hardness_seen:
        self._summarize_hardness("terse", np.concatenate(hardness_seen))
        # One mode per cycle (every digit sent to the same corner) shows up as a narrow histogram here.
        params = np.concatenate(params_seen).reshape([-1, compositor_lib.NUM_PARAMS])
        for name, values in zip(compositor_lib.PARAM_NAMES, params.T):
          tf.summary.histogram(f"synth/hard_params/{name}", values)

  def _summarize_hardness(self, source: str, hardness: np.ndarray) -> None:
    """The hardness histogram of Fig. 8 for one sample source: the share of its samples per bin of T's
    score (written inside a writer's default step)."""
    tf.summary.histogram(f"synth/hardness/{source}", hardness)
    shares, _ = np.histogram(hardness, bins=10, range=self.target.hardness_range)
    for index, share in enumerate(shares / max(len(hardness), 1)):
      tf.summary.scalar(f"hardness_share/{source}/bin{index}", share)

  def _add_random(self, cycle: int) -> None:
    """The random-placement baseline: `quota` samples per class from the task's random source.

    Every sample is kept, hard or not; their hardness under the current T is logged beside TERSE's.
    """
    quota = self.config.quota(cycle)
    images, labels = self.task.random_samples(quota, seed=(self.config.seed, cycle))
    judgement = self._judge_in_batches(images, labels)
    self.cache.add(images, labels, judgement.quota_class, judgement.hardness, cycle, quota)
    logging.info("%s: added %d %s samples (%.0f%% of them hard for T); %s", self._where(), len(images),
                 self.config.sample_source,
                 100 * float(np.mean(judgement.hardness < self.hard_threshold)), self._progress(1.0))
    with self.writer.as_default(step=cycle):
      tf.summary.scalar("cache/size", len(self.cache))
      self._summarize_hardness(self.config.sample_source, judgement.hardness)
      if len(images):
        tf.summary.image("composites/added_by_cycle", self.task.preview(
            tf.constant(images[:PREVIEW_COUNT], tf.float32), {k: v[:PREVIEW_COUNT] for k, v in labels.items()}))

  def _judge_in_batches(self, images: np.ndarray, labels: dict[str, np.ndarray]):
    """T's judgement of float images [N, H, W, C] with their labels, --eval_batch_size at a time (numpy)."""
    step = self.config.eval_batch_size
    parts = [self._judge(tf.constant(images[start:start + step], tf.float32),
                         {k: tf.constant(v[start:start + step]) for k, v in labels.items()})
             for start in range(0, len(images), step)]
    return type(parts[0])(*(np.concatenate([getattr(p, f).numpy() for p in parts]) for f in parts[0]._fields))

  def _add_samples(self, cycle: int) -> None:
    if self.config.sample_source == "terse":
      self._synthesize(cycle)
    elif self.config.sample_source != "none":
      self._add_random(cycle)

  def _evaluate(self, label: str) -> dict:
    cycle = int(self.cycle.numpy())
    metrics = self.task.evaluate(self.target, self.config.eval_batch_size)
    record = {"after": label, "cycle": cycle, "cache_size": len(self.cache), **metrics}
    with self.writer.as_default(step=cycle):
      for key, value in metrics.items():
        tf.summary.scalar(f"eval/{key}", value)
      tf.summary.scalar("eval/cache_size", record["cache_size"])
    logging.info("eval after %s: %s", label, ", ".join(f"{key} {value:.4f}" for key, value in metrics.items()))
    self.history = [h for h in self.history if h["after"] != label] + [record]
    self.history_json.assign(json.dumps(self.history))
    self._write_results()
    return record

  def _write_results(self) -> None:
    """results.json: each metric before TERSE (after the baseline) and after the last cycle, and the
    whole history."""
    before = next((h for h in self.history if h["after"] == "baseline"), None)
    final = self.history[-1] if self.history and self.history[-1]["after"] != "baseline" else None
    metric_names = [key for key in (before or final or {}) if key not in ("after", "cycle", "cache_size")]
    figures = {}
    for name in metric_names:
      figures[f"{name}_before"] = before and before[name]
      figures[f"{name}_after"] = final and final[name]
    files.write_json(self.results_path, {
        "task": self.config.task,
        "headline": self.task.headline,
        **figures,
        "cycles_completed": sum(1 for h in self.history if h["after"] != "baseline"),
        "hard_examples": len(self.cache),
        "data": self.task.describe(),
        "wall_time_s": round(self.progress.elapsed(), 1),
        "history": self.history,
    })

  # ----------------------------------------------------------------------------------------- driver
  def run(self) -> dict:
    """Runs every remaining phase; returns the results written to results.json."""
    with self._lost_workers_reported():
      return self._run_phases()

  def sync_workers(self) -> None:
    """Waits until every worker gets here (a collective; nothing with a single worker): so that none exits
    while another still works (the survivors would take the exit for a crash), and so that all of them have
    decided before one of them starts something collective."""
    if self.multi_worker:
      with self._lost_workers_reported():
        self._barrier()

  @contextlib.contextmanager
  def _lost_workers_reported(self):
    """Turns the collective ops' error for a worker that died into one line that says what to do."""
    try:
      yield
    except tf.errors.UnavailableError as e:
      if not self.multi_worker:
        raise
      # The first line, without the name of the graph node that noticed.
      first_line = re.sub(r"\{\{[^}]*\}\}\s*", "", (e.message or str(e)).strip()).splitlines()[0]
      raise WorkerLostError(
          f"another worker of this multi-worker run stopped or cannot be reached ({first_line}). Stop every "
          f"worker and relaunch them all with the same command: they resume from the chief's last checkpoint "
          f"in --run_dir={self.config.run_dir}") from e

  def _run_phases(self) -> dict:
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
