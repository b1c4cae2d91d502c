"""The TERSE trainer: three players in sleep cycles, for any task (paper §3, A.1, A.2).

The schedule, which this file is:
  1. baseline: T trained on the task's real training set (eq. 1 without composites);
  2. C sleep cycles, each
     a. synthesize: S trained with T and D frozen to maximise T's loss on its composites while D calls them
        real (eq. 3), and in lockstep D trained with S frozen on real images against those composites
        (eq. 2); every composite T finds hard goes to the cache until each class has its quota (or a step
        cap). As A.2 has it, optionally: D pre-trained before S's first step, and the cache filled by a
        generation pass of the trained S instead of from its training steps. With --sample_source set to
        the task's random source the quota is filled by random placements instead (the in-tree baseline);
        with filtered by random placements that T finds hard (the control for what S's learning adds); with
        none nothing is added;
     b. fine-tune: T trained on the real set plus the whole cache with S frozen (eq. 1), and optionally D
        beside it (A.2);
  3. (train_lib) export S and T as SavedModels.

Around it: the task (tasks/, found by name in the registry) knows the data, the networks and the figures;
steps.py holds one step of each player; pipelines.py their inputs; run_dir.py what the run owns on disk and
the resume rules; distribute.py the strategy and the workers; progress.py and summaries.py the log and
TensorBoard. Every phase is resumable: the checkpoint carries the phase, cycle, epoch and step it reached,
and the number of cache shards it saw.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from terse_tf import config as config_lib
from terse_tf import distribute, losses, pipelines, progress, steps, summaries
from terse_tf.cache import HardExampleCache, as_stored
from terse_tf.config import TrainConfig
from terse_tf.errors import ConfigError, NonFiniteLossError
from terse_tf.networks import synthesizer as synthesizer_lib
from terse_tf.progress import PHASE_BASELINE, PHASE_DONE, PHASE_FINETUNE, PHASE_NAMES, PHASE_SYNTHESIZE
from terse_tf.run_dir import RECORD_KEYS, RunDirectory
from terse_tf.tasks import Task, registry


class Trainer:
  """Runs (or resumes) the whole TERSE schedule for one run directory."""

  def __init__(self, config: TrainConfig, task: Task | None = None, command_line: str = ""):
    """Loads the data, builds the players and restores their state, in that order; only then does it touch
    the run directory (and with --fresh remove the previous run's outputs), so a start that fails on bad
    input loses nothing and leaves nothing behind.

    `task`: one built in Python (terse_tf.api's, registered without flags) instead of one the config names,
    or the task the config names already built from the config's settings (an experiment's runs share one).
    `command_line`: what config.json records as the run's command."""
    self.config = config
    self.strategy = distribute.build_strategy(config.strategy)  # First: multi-worker must precede every op.
    # Every worker takes every step (saves included: they may read variables through collectives), but only
    # the chief writes to the run directory; the others write to a private scratch directory.
    self.workers = distribute.Workers(self.strategy, config.run_dir)
    self.run_dir = RunDirectory(config.run_dir, config.fresh, self.strategy, self.workers.is_chief)
    self.run_dir.check_task(config.task)  # Before any data is loaded.
    keras.utils.set_random_seed(config.seed)

    registration = registry.get(config.task)
    if task is None and not registration.from_flags:
      raise ConfigError(f"task {config.task!r} is built in Python (terse_tf.api): the run needs its task object")
    if task is not None and not isinstance(task, registration.task_cls):
      raise ConfigError(f"task {config.task!r} is a {registration.task_cls.__name__}, not the "
                        f"{type(task).__name__} given")
    self.task = task or registry.build(config.task, config.task_settings, config_lib.common_settings(config))
    logging.info("task %s: %s", config.task, self.task.describe())
    with self.strategy.scope():
      self.players = steps.build_players(self.task, config)
    self.synthesizer, self.target, self.discriminator = self.players[:3]
    self.hard_threshold = self.target.resolve_hard_threshold(config.hard_threshold, f"--target={config.target}")
    if config.sample_source != config_lib.TERSE and (config.generation_batches or (
        self.discriminator is not None and (config.discriminator_pretrain_steps
                                            or config.discriminator_trains_with_target))):
      logging.warning("--sample_source=%s adds samples without S: --generation_batches and D's training beside "
                      "T or before S have no effect on this run", config.sample_source)
    self.cache = HardExampleCache(os.path.join(config.run_dir, "cache"), self.task.num_classes)
    self._build_checkpoint()
    self._resume_or_start(command_line)

    self.checkpoint_manager = self.run_dir.checkpoint_manager(self.checkpoint)
    self.writer = (tf.summary.create_file_writer(os.path.join(config.run_dir, "tensorboard"))
                   if self.workers.is_chief else tf.summary.create_noop_writer())
    self.progress = progress.Progress(config.cycles, float(self.elapsed_s.numpy()))
    settings = steps.StepSettings.of(config, self.task.num_classes)
    self._target_step = tf.function(functools.partial(steps.target_step, self.players, self.strategy, settings))
    self._discriminator_step = tf.function(functools.partial(steps.discriminator_step, self.players,
                                                             self.strategy))

    def synth_step(batch):
      # The step's random draws are a function of the seed and the step's number, which the checkpoint
      # keeps: a resumed run draws what an uninterrupted one would. The step counts itself.
      step_seed = self._step_seed(self.synth_global_step)
      outputs = steps.synth_step(self.players, self.strategy, settings, self.task.compose, batch, step_seed)
      self.synth_global_step.assign_add(1)
      return outputs

    self._synth_step = tf.function(synth_step)
    # S frozen, as the export's sampler: A.2's generation pass, and the fakes D trains on while S is fixed.
    sample = synthesizer_lib.seeded_sampler(self.synthesizer)
    self._generate = tf.function(functools.partial(steps.generation_step, self.players, self.strategy, sample,
                                                   self.task.compose))
    self._frozen_composites = tf.function(functools.partial(steps.frozen_composites, self.strategy, sample,
                                                            self.task.compose))
    self._judge = tf.function(self.target.verdict)

  # ----------------------------------------------------------------------------------------- state
  def _build_checkpoint(self) -> None:
    """The schedule's counters and everything a resume needs, in one checkpoint."""
    def state_variable(name: str, value=0, dtype=tf.int64) -> tf.Variable:
      return tf.Variable(value, dtype=dtype, trainable=False, name=name)

    self.phase, self.cycle = state_variable("phase", PHASE_BASELINE), state_variable("cycle")
    self.epoch_in_phase = state_variable("epoch_in_phase")
    self.synth_step = state_variable("synth_step_in_cycle")
    self.target_global_step = state_variable("target_global_step")
    self.synth_global_step = state_variable("synth_global_step")
    self.elapsed_s = state_variable("elapsed_s", 0.0, tf.float64)
    # The evaluation history rides in the checkpoint, so results always agree with the restored state.
    self.history: list[dict] = []
    self.history_json = state_variable("history_json", "[]", tf.string)
    # What the run trains on and for: resuming it with other data or another target would mix two runs.
    self.identity = json.dumps(self.task.identity(), sort_keys=True)
    self.run_identity = state_variable("run_identity", self.identity, tf.string)
    p = self.players
    state = dict(
        synthesizer=p.synthesizer, target=p.target.model, synth_optimizer=p.synth_optimizer,
        target_optimizer=p.target_optimizer, cache=self.cache, phase=self.phase, cycle=self.cycle,
        epoch_in_phase=self.epoch_in_phase, synth_step=self.synth_step, target_global_step=self.target_global_step,
        synth_global_step=self.synth_global_step, elapsed_s=self.elapsed_s, history_json=self.history_json,
        run_identity=self.run_identity)
    if p.discriminator is not None:
      state.update(discriminator=p.discriminator, discriminator_optimizer=p.discriminator_optimizer)
    self.dropout_seeds = steps.dropout_seed_states(p)
    self.checkpoint = tf.train.Checkpoint(dropout_seeds=self.dropout_seeds, **state)
    # What checkpoints written before they kept the dropout seeds hold: those runs resume too.
    self._checkpoint_without_dropout_seeds = tf.train.Checkpoint(**state) if self.dropout_seeds else None

  def _resume_or_start(self, command_line: str) -> None:
    """Resume order: the run directory's latest checkpoint -> --init_checkpoint (S and T only) -> scratch;
    then the run directory is opened and its config.json written."""
    config = self.config
    resolved = dataclasses.replace(config, hard_threshold=self.hard_threshold)  # The target's default.
    settings = config_lib.result_settings(resolved)
    self.resumed_from = self.run_dir.latest_checkpoint()
    if self.resumed_from:
      self.run_dir.check_resumable(self.resumed_from, self.identity, settings, config_lib.setting_flags(resolved),
                                   config_lib.setting_defaults(resolved))
      self.run_dir.restore(self.resumed_from, self.checkpoint, self._checkpoint_without_dropout_seeds)
      self.history = json.loads(self.history_json.numpy().decode())
      logging.info("resumed from %s: phase %s, cycle %d, %d cache shards", self.resumed_from,
                   PHASE_NAMES[int(self.phase.numpy())], int(self.cycle.numpy()),
                   int(self.cache.committed_shards.numpy()))
    elif config.init_checkpoint:
      RunDirectory.load_init_checkpoint(config.init_checkpoint, synthesizer=self.synthesizer,
                                        target=self.target.model)
    self.run_dir.open(self.cache, resuming=self.resumed_from is not None)
    self.cache.sync()  # Drops cache shards written after the restored checkpoint (a kill between the two).
    if not self.complete:  # A finished run's config.json stays the record of the command that made it.
      self.run_dir.write_config(dataclasses.asdict(resolved), settings, command_line)

  @property
  def output_dir(self) -> str:
    """Where this process writes: the run directory, or a worker's scratch directory."""
    return self.run_dir.output_dir

  @property
  def is_chief(self) -> bool:
    return self.workers.is_chief

  @property
  def complete(self) -> bool:
    """Whether every phase is done (a rerun has nothing to train)."""
    return int(self.phase.numpy()) == PHASE_DONE

  def _save(self) -> None:
    """Writes pending cache entries as a shard, then the checkpoint that counts it."""
    self.elapsed_s.assign(self.progress.elapsed())
    self.cache.commit()
    self.checkpoint_manager.save()

  def _check_finite(self, loss: float, what: str) -> None:
    if not np.isfinite(loss):
      raise NonFiniteLossError(
          f"{what} loss became {loss} at cycle {int(self.cycle.numpy())}; stopped without saving, the last good "
          f"checkpoint ({self.checkpoint_manager.latest_checkpoint or 'none yet'}) is kept. Lower the learning "
          "rates or check the data.")

  def close(self) -> None:
    """Ends the run's use of the disk: flushes TensorBoard, releases the run directory."""
    self.writer.flush()
    self.run_dir.close()

  def _where(self) -> str:
    return progress.where(int(self.phase.numpy()), int(self.cycle.numpy()), self.config.cycles)

  def _progress(self, phase_done: float) -> str:
    return self.progress.describe(phase_done, progress.cycles_done(
        int(self.phase.numpy()), int(self.cycle.numpy()), phase_done))

  # ----------------------------------------------------------------------------------------- the schedule
  def run(self, baseline_record: dict | None = None) -> dict:
    """Runs every remaining phase; returns the results written to results.json. `baseline_record`: the
    "baseline" evaluation record of the T in --init_checkpoint, made on an equal task; a fresh run
    with no baseline epochs records it instead of evaluating that T again (an experiment's arms start from
    its baseline's T, whose figures they would otherwise each recompute); any other run evaluates."""
    if baseline_record is not None and baseline_record.get("after") != "baseline":
      raise ValueError(f"baseline_record must be a baseline's evaluation record, got one after "
                       f"{baseline_record.get('after')!r}")
    with self.workers.lost_reported():
      config = self.config
      if int(self.phase.numpy()) == PHASE_BASELINE:
        self._train_target(config.baseline_epochs, seed_base=config.seed * 1000)
        if (baseline_record is not None and not config.baseline_epochs and config.init_checkpoint
            and not self.resumed_from):
          self._record({key: value for key, value in baseline_record.items() if key not in RECORD_KEYS},
                       "baseline")
        else:
          self._evaluate("baseline")
        self._advance(PHASE_SYNTHESIZE if config.cycles else PHASE_DONE, next_cycle=1)

      while int(self.phase.numpy()) in (PHASE_SYNTHESIZE, PHASE_FINETUNE):
        cycle = int(self.cycle.numpy())
        if int(self.phase.numpy()) == PHASE_SYNTHESIZE:
          self._add_samples(cycle)
          self._advance(PHASE_FINETUNE, next_cycle=cycle)
        if config.finetune_steps:  # A fixed cost per cycle, however large the cache.
          self._train_target(1, seed_base=config.seed * 1000 + 10 * cycle, steps_per_epoch=config.finetune_steps)
        else:
          self._train_target(config.finetune_epochs, seed_base=config.seed * 1000 + 10 * cycle)
        if not config.eval_after_cycles or cycle in config.eval_after_cycles or cycle == config.cycles:
          self._evaluate(f"cycle {cycle}")
        self._advance(PHASE_SYNTHESIZE if cycle < config.cycles else PHASE_DONE,
                      next_cycle=cycle + 1 if cycle < config.cycles else cycle)
    self.writer.flush()
    return self._write_results()

  def _advance(self, phase: int, next_cycle: int) -> None:
    self.phase.assign(phase)
    self.cycle.assign(next_cycle)
    self.epoch_in_phase.assign(0)
    if phase == PHASE_SYNTHESIZE:
      self.synth_step.assign(0)
    self._save()

  def _train_target(self, epochs: int, seed_base: int, steps_per_epoch: int = 0) -> None:
    """Eq. 1: `epochs` passes of T over real + cache (or of `steps_per_epoch` batches each), S frozen,
    checkpointed after each."""
    config = self.config
    self.progress.start_phase()
    start_epoch = int(self.epoch_in_phase.numpy())
    per_epoch = pipelines.target_steps(self.task, self.cache, config.batch_size, steps_per_epoch)
    # D trains beside T only where S trains after this phase: after the last cycle no S step is left for D to
    # judge, and D's steps would cost as much as T's for nothing.
    s_trains_next = config.sample_source == config_lib.TERSE and (
        self.cycle.numpy() < config.cycles if int(self.phase.numpy()) == PHASE_FINETUNE else config.cycles > 0)
    with_discriminator = (self.discriminator is not None and config.discriminator_trains_with_target
                          and s_trains_next)
    while int(self.epoch_in_phase.numpy()) < epochs:
      epoch = int(self.epoch_in_phase.numpy())
      total, step_count, d_accuracy = 0.0, 0, []
      # A.2: D trains beside T, on real images against S's composites with S fixed; a stream per epoch, so
      # that a run resumed at the epoch's checkpoint draws what an uninterrupted one would.
      d_batches = None
      if with_discriminator:
        d_batches = iter(pipelines.synth_dataset(self.task, self.strategy, config.synth_batch_size,
                                                 500_000 + seed_base + epoch, with_real=True))
      for batch in pipelines.target_dataset(self.task, self.cache, self.strategy, config.batch_size,
                                            seed_base + epoch, steps_per_epoch, config.cache_fraction,
                                            config.cache_shuffle_buffer):
        self.players.target_optimizer.learning_rate.assign(
            config.target_learning_rate(epoch * per_epoch + step_count, epochs * per_epoch))
        loss = float(self._target_step(batch).numpy())
        self._check_finite(loss, "target")
        if d_batches is not None:
          synth_batch, real = next(d_batches)
          d_accuracy.append(self._discriminator_step_against_frozen_s(
              synth_batch, real, self._step_seed(self.target_global_step, stream=1)))
        total, step_count = total + loss, step_count + 1
        self.target_global_step.assign_add(1)
      mean = total / max(step_count, 1)
      summaries.target_epoch(self.writer, int(self.target_global_step.numpy()), mean)
      self.epoch_in_phase.assign_add(1)
      phase_done = (epoch + 1 - start_epoch) / (epochs - start_epoch)
      beside = f", D accuracy {np.mean(d_accuracy):.2f} beside it" if d_accuracy else ""
      logging.info("%s epoch %d/%d: target loss %.4f over %d steps%s (%d cached hard examples); %s",
                   self._where(), epoch + 1, epochs, mean, step_count, beside, len(self.cache),
                   self._progress(phase_done))
      self._save()

  def _add_samples(self, cycle: int) -> None:
    if self.config.sample_source == config_lib.TERSE:
      self._synthesize(cycle)
    elif self.config.sample_source == config_lib.FILTERED:
      self._add_filtered(cycle)
    elif self.config.sample_source != config_lib.NO_SAMPLES:
      self._add_random(cycle)

  def _synthesize(self, cycle: int) -> None:
    """Eq. 2 and 3 in lockstep: S's step, then D's on S's composites and real images, until every class
    has its quota of hard composites in the cache (or the step cap). The cycle's steps, one counter:
      [S's warm-up: S trains, nothing is cached (--synth_warmup_steps, when S starts afresh)]
      S's steps: S trains; its hard composites are cached (--synth_max_steps), unless
      [A.2's generation pass follows: S frozen composes --generation_batches batches, the hard ones cached].
    Before the first cycle's steps, D's pre-training."""
    config = self.config
    quota = config.quota(cycle)
    self.progress.start_phase()
    start_step = int(self.synth_step.numpy())
    if config.reset_synthesizer_each_cycle and start_step == 0:
      steps.reset_synthesizer(self.players, self.task.build_synthesizer(seed=config.seed * 1000 + cycle))
    if cycle == 1 and start_step == 0:
      self._pretrain_discriminator()
    batches = iter(pipelines.synth_dataset(self.task, self.strategy, config.synth_batch_size,
                                           config.seed * 1000 + cycle * 100, self.discriminator is not None,
                                           skip_steps=start_step))
    warmup = config.synth_warmup_steps if cycle == 1 or config.reset_synthesizer_each_cycle else 0
    training_end = warmup + config.synth_max_steps
    step_cap = training_end + config.generation_batches
    caches_from = training_end if config.generation_batches else warmup
    hard_examples = summaries.HardExamples()
    while int(self.synth_step.numpy()) < step_cap and self.cache.quota_filled(cycle).min() < quota:
      in_cycle = int(self.synth_step.numpy())
      batch = next(batches)
      synth_batch, real = batch if self.discriminator is not None else (batch, None)
      discriminator, loss = None, None
      if in_cycle < training_end:
        outputs, composites = self._synth_step(synth_batch)
        loss = float(outputs.loss.numpy())
        self._check_finite(loss, "synthesizer")
        if self.discriminator is not None:
          discriminator = self._discriminator_step(real, composites)
      else:  # The generation pass: S frozen.
        outputs = self._generate(synth_batch, self._step_seed(self.synth_global_step))
        self.synth_global_step.assign_add(1)
      hardness = outputs.hardness.numpy()
      hard = losses.is_hard(hardness, self.hard_threshold) & (in_cycle >= caches_from)
      composites = outputs.composites.numpy()[hard]
      labels = {key: value.numpy()[hard] for key, value in outputs.labels.items()}
      added = self.cache.add(composites, labels, outputs.quota_class.numpy()[hard], hardness[hard], cycle, quota,
                             self._quota_weights(labels))
      objects = outputs.pasted.numpy()[hard] > 0  # The parameter rows of objects, not of empty slots.
      hard_examples.add(composites, labels, hardness, outputs.params.numpy()[hard][objects])
      self.synth_step.assign_add(1)
      step = int(self.synth_global_step.numpy())
      if loss is not None:
        summaries.synth_step(self.writer, step, outputs, discriminator, hard, added, len(self.cache),
                             self.task.preview if step % config.image_summary_every_steps == 0 else None)
      in_cycle += 1
      if in_cycle % config.checkpoint_every_steps == 0:
        filled = self.cache.quota_filled(cycle)
        # Done when the emptiest class fills its quota or the step cap is reached, whichever comes first.
        phase_done = max(filled.min() / quota, (in_cycle - start_step) / max(step_cap - start_step, 1))
        stage = f"S loss {loss:.3f}" if loss is not None else "generation pass"
        if in_cycle <= caches_from:
          stage += " (warm-up: nothing cached)" if in_cycle <= warmup else " (training S: nothing cached)"
        d_accuracy = f", D accuracy {float(discriminator[1].numpy()):.2f}" if discriminator is not None else ""
        logging.info("%s step %d/%d: %s%s, %.0f%% of batch hard, cycle quota %d/%d %s (fewest in a class %d); "
                     "%s",
                     self._where(), in_cycle, step_cap, stage, d_accuracy,
                     100 * losses.is_hard(hardness, self.hard_threshold).mean(), filled.sum(),
                     quota * self.task.num_classes, self._quota_items(), filled.min(),
                     self._progress(min(phase_done, 1)))
        self._save()

    counts, filled = self.cache.class_counts(cycle), self.cache.quota_filled(cycle)
    logging.info("%s: %d hard composites cached in %d steps (%d/%d %s of the quota); %s", self._where(),
                 counts.sum(), int(self.synth_step.numpy()), filled.sum(), quota * self.task.num_classes,
                 self._quota_items(), self._progress(1.0))
    if not counts.sum():
      # A normal event (T already gets every composite S can make right, or a strict --hard_threshold): the
      # cycle adds nothing and T fine-tunes on what it had.
      logging.warning("cycle %d: S found no composite T finds hard (hardness below %g) in %d steps; the cycle "
                      "adds nothing to the cache", cycle, self.hard_threshold, int(self.synth_step.numpy()))
    elif filled.min() < quota:
      cap = (f"--generation_batches={config.generation_batches}" if config.generation_batches
             else f"step cap --synth_max_steps={config.synth_max_steps}")
      logging.warning("cycle %d: %s reached with %d/%d hard %s (fewest in a class: %d)", cycle, cap,
                      filled.sum(), quota * self.task.num_classes, self._quota_items(), filled.min())
    hard_examples.write(self.writer, cycle, int(self.synth_step.numpy()), self.task.preview,
                        self.target.hardness_range)

  def _pretrain_discriminator(self) -> None:
    """D's steps on real images against the composites of S as it starts (frozen), until D has taken
    --discriminator_pretrain_steps steps (those it took beside T in the baseline count). On a stream of its
    own, which leaves S's batches and random draws as they are without it: with --discriminator_weight=0 S
    learns exactly what it learns without D. A run killed here redoes the whole pre-training from the
    checkpoint before it, on the same batches."""
    config = self.config
    if self.discriminator is None:
      return
    done = int(self.players.discriminator_optimizer.iterations.numpy())
    if done >= config.discriminator_pretrain_steps:
      if config.discriminator_pretrain_steps:
        logging.info("D's pre-training skipped: D has taken %d steps already (beside T), of the %d asked", done,
                     config.discriminator_pretrain_steps)
      return
    batches = iter(pipelines.synth_dataset(self.task, self.strategy, config.synth_batch_size,
                                           config.seed * 1000 + 99, True))
    accuracy = []
    for index in range(done, config.discriminator_pretrain_steps):
      synth_batch, real = next(batches)
      accuracy.append(self._discriminator_step_against_frozen_s(synth_batch, real,
                                                                self._step_seed(index, stream=2)))
    logging.info("%s: D pre-trained for %d steps against S as it starts (D's patch accuracy %.2f over its last "
                 "%d steps; 0.5 is chance)", self._where(), len(accuracy), np.mean(accuracy[-10:]),
                 len(accuracy[-10:]))
    self._save()

  def _discriminator_step_against_frozen_s(self, synth_batch, real, seed: tf.Tensor) -> float:
    """One D step on `real` images against S's frozen composites of `synth_batch` (drawn with `seed`), as in
    D's pre-training and beside T; returns D's patch accuracy."""
    composites = self._frozen_composites(synth_batch, seed)
    return float(self._discriminator_step(real, composites)[1].numpy())

  def _step_seed(self, step: tf.Variable | int, stream: int = 0) -> tf.Tensor:
    """A step's random key: the run's seed and a step number (a counter the checkpoint keeps, or an index),
    and a `stream` > 0 for a second use of one counter."""
    seed = tf.stack([tf.constant(self.config.seed, tf.int64), tf.cast(step, tf.int64)])
    return tf.random.experimental.stateless_fold_in(seed, stream) if stream else seed

  def _add_random(self, cycle: int) -> None:
    """The random-placement baseline: `quota` samples per class from the task's random source, every one
    kept, hard or not (under an instance quota, the first ones until their objects fill it, which `quota`
    samples do unless --min_visible leaves many without a box); their hardness under the current T is logged
    beside TERSE's."""
    quota = self.config.quota(cycle)
    images, labels = self._random_samples(quota, seed=(self.config.seed, cycle),
                                          source=self.config.sample_source)
    judgement = self._judge_in_batches(images, labels)
    added = self.cache.add(images, labels, judgement.quota_class, judgement.hardness, cycle, quota,
                           self._quota_weights(labels))
    logging.info("%s: added %d %s samples (%.0f%% of the drawn hard for T); %s", self._where(), added,
                 self.config.sample_source, 100 * float(np.mean(judgement.hardness < self.hard_threshold)),
                 self._progress(1.0))
    summaries.random_samples(self.writer, cycle, self.config.sample_source, images, labels, judgement.hardness,
                             len(self.cache), self.task.preview, self.target.hardness_range)

  def _random_samples(self, per_class: int, seed, source: str | None = None):
    """The task's random samples on the 8-bit grid the cache stores, so that T judges what it will train on
    (as TERSE's composites are judged)."""
    images, labels = self.task.random_samples(per_class, seed=seed, source=source)
    return as_stored(tf.constant(images, tf.float32)).numpy(), labels

  def _add_filtered(self, cycle: int) -> None:
    """The control for S's learning: the task's random baseline, kept only where T finds a sample hard by the
    criterion TERSE's composites pass, until each class has its quota or as many samples were drawn as S
    may keep from in a cycle (its steps after the warm-up, whose composites never count, or its generation
    pass's batches, x its batch)."""
    config = self.config
    quota = config.quota(cycle)
    self.progress.start_phase()
    budget = config.synthesis_batches() * config.synth_batch_size
    drawn = draw = 0
    while drawn < budget and self.cache.quota_filled(cycle).min() < quota:
      per_class = max(1, min(quota, (budget - drawn) // self.task.num_classes))
      # The first draw is the random arm's own (its seed): the two arms are paired, the filter only removes.
      seed = (config.seed, cycle, draw) if draw else (config.seed, cycle)
      images, labels = self._random_samples(per_class, seed=seed)
      judgement = self._judge_in_batches(images, labels)
      hard = losses.is_hard(judgement.hardness, self.hard_threshold)
      hard_labels = {key: value[hard] for key, value in labels.items()}
      self.cache.add(images[hard], hard_labels, judgement.quota_class[hard], judgement.hardness[hard], cycle,
                     quota, self._quota_weights(hard_labels))
      drawn, draw = drawn + len(images), draw + 1
    counts, filled = self.cache.class_counts(cycle), self.cache.quota_filled(cycle)
    logging.info("%s: kept %d of %d random samples T finds hard (hardness below %g); %s", self._where(),
                 counts.sum(), drawn, self.hard_threshold, self._progress(1.0))
    if filled.min() < quota:
      logging.warning("cycle %d: %d random draws (S's step cap x batch) gave %d/%d hard %s (fewest in a "
                      "class: %d)", cycle, drawn, filled.sum(), quota * self.task.num_classes, self._quota_items(),
                      filled.min())

  def _quota_items(self) -> str:
    """What the quota counts, for the log: "samples", or "objects" (--quota_unit=instances)."""
    return "objects" if self.config.quota_unit == config_lib.QUOTA_INSTANCES else "samples"

  def _quota_weights(self, labels: dict[str, np.ndarray]) -> np.ndarray | None:
    """What each sample counts for towards its class's quota: 1 (None) unless quotas count instances."""
    return self.task.instances(labels) if self.config.quota_unit == config_lib.QUOTA_INSTANCES else None

  def _judge_in_batches(self, images: np.ndarray, labels: dict[str, np.ndarray]):
    """T's judgement of float images [N, H, W, C] with their labels, --eval_batch_size at a time (numpy)."""
    step = self.config.eval_batch_size
    parts = [self._judge(tf.constant(images[start:start + step], tf.float32),
                         {k: tf.constant(v[start:start + step]) for k, v in labels.items()})
             for start in range(0, len(images), step)]
    return type(parts[0])(*(np.concatenate([getattr(p, f).numpy() for p in parts]) for f in parts[0]._fields))

  def _evaluate(self, label: str) -> dict:
    return self._record(self.task.evaluate(self.target, self.config.eval_batch_size), label)

  def _record(self, metrics: dict[str, float], label: str) -> dict:
    """Logs T's `metrics` after `label` (to TensorBoard, the log and results.json); returns the record."""
    record = {"after": label, "cycle": int(self.cycle.numpy()), "cache_size": len(self.cache), **metrics}
    summaries.evaluation(self.writer, record["cycle"], metrics, record["cache_size"])
    logging.info("eval after %s: %s", label, ", ".join(f"{key} {value:.4f}" for key, value in metrics.items()))
    self.history = [h for h in self.history if h["after"] != label] + [record]
    self.history_json.assign(json.dumps(self.history))
    self._write_results()
    return record

  def _write_results(self) -> dict:
    return self.run_dir.write_results(self.config.task, self.task, self.history, len(self.cache),
                                      self.progress.elapsed())
