"""What every experiment shares: runs that differ from the base config only where the experiment says, run in
this process or in worker processes, and the launcher's error handling."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging as std_logging
import multiprocessing
import os
import signal
import shlex
import sys
from typing import Any, Callable, ClassVar

import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from terse_tf import config as config_lib
from terse_tf import evaluation
from terse_tf import launch, train
from terse_tf.cache import HardExampleCache
from terse_tf.config import TrainConfig
from terse_tf.errors import ConfigError, TerseError
from terse_tf.tasks.base import Task
from terse_tf.trainer import Trainer


def seeded(config: TrainConfig, seed: int, run_dir: str, **changes) -> TrainConfig:
  """The training seed varies (initialisation, shuffling, synthesis); the data split and test set do not,
  so every seed is scored on the same test images. With --fresh every run of the experiment starts over."""
  return dataclasses.replace(config, run_dir=run_dir, seed=seed, export=False, **changes)


class Trainers:
  """Makes an experiment's trainers, building each distinct task once: the runs differ in training settings,
  not in data, and rendering a detection task's scenes costs about as much as one of its short runs. The
  first trainer of a task builds it (after its strategy exists, which multi-worker training needs first)."""

  def __init__(self, command_line: str = ""):
    self.command_line = command_line
    self._tasks: dict[str, Task] = {}

  def __call__(self, config: TrainConfig) -> Trainer:
    key = task_key(config)
    trainer = Trainer(config, task=self._tasks.get(key), command_line=self.command_line)
    self._tasks[key] = trainer.task
    return trainer

  def run_arm(self, config: TrainConfig, baseline_config: TrainConfig, baseline_record: dict
              ) -> tuple[Trainer, dict]:
    """Makes and runs an arm that starts from the T of the run `baseline_config` made (its --init_checkpoint);
    on an equal task the arm takes that baseline's evaluation `baseline_record` instead of recomputing it.
    Returns it and its results."""
    trainer = self(config)
    same_task = task_key(config) == task_key(baseline_config)
    return trainer, trainer.run(baseline_record=baseline_record if same_task else None)


def task_key(config: TrainConfig) -> str:
  """Everything a task is built from: two configs with equal keys build equal tasks."""
  return repr((config.task, config.task_settings, config_lib.common_settings(config)))


def baseline_record(results: dict) -> dict:
  """The "baseline" evaluation record in a run's results."""
  return next(record for record in results["history"] if record["after"] == "baseline")


BASELINE = "baseline"
# What an experiment keeps of an arm's run, made by the experiment's function from (arm, seed, trainer,
# results) in the process that ran it: with --workers a worker process, so it must pickle.
ArmSummariser = Callable[[str, int, Trainer, dict], Any]


@dataclasses.dataclass(frozen=True)
class ArmsExperiment:
  """An arms-from-a-baseline experiment's settings: a subclass names its task (TASK) and arms (ARMS) and adds
  fields of its own; the checks every such experiment makes of its flags raise one ConfigError naming the
  flag."""
  TASK: ClassVar[str]
  ARMS: ClassVar[tuple[str, ...]]
  base: TrainConfig
  seeds: tuple[int, ...]
  arms: tuple[str, ...]
  results_dir: str
  label: str
  workers: int = 1

  def __post_init__(self):
    if self.base.task != self.TASK:
      raise ConfigError(f"this experiment runs --task={self.TASK}, got --task={self.base.task}")
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ConfigError(f"--seeds needs at least one seed and no repeats, got {list(self.seeds)}")
    if not self.arms or set(self.arms) - set(self.ARMS) or len(set(self.arms)) != len(self.arms):
      raise ConfigError(f"--arms must be distinct arms from {list(self.ARMS)}, got {list(self.arms)}")
    if not self.base.cycles:
      raise ConfigError("--cycles must be >= 1: the arms differ only in what their cycles add")
    check_workers(self.workers, self.base)

  def seed_dir(self, seed: int) -> str:
    """Where a seed's runs live: <run_dir>/<label>/seed<N>, one folder per arm and the baseline's."""
    return os.path.join(self.base.run_dir, self.label, f"seed{seed}")

  def runs(self, arms: dict[str, dict[str, Any]], summarise: ArmSummariser, command: str = ""
           ) -> dict[int, dict[str, Any]]:
    """run_arms over this experiment's seeds, in its seed folders, on its --workers."""
    return run_arms(self.base, self.seeds, self.seed_dir, arms, summarise, self.workers, command)

  @staticmethod
  def fields_from_flags(flag_values) -> dict[str, Any]:
    """The shared fields' values from the experiment's flags (--seeds, --arms, --results_dir, --label) and
    terse_tf.train's."""
    return dict(base=train.config_from_flags(flag_values), seeds=train.integers_flag("seeds", flag_values.seeds),
                arms=tuple(flag_values.arms), results_dir=flag_values.results_dir, label=flag_values.label,
                workers=flag_values.workers)


def define_workers_flag() -> None:
  """--workers, read by ArmsExperiment.fields_from_flags and run by run_arms (an experiment declares it a key
  flag, so that its --helpshort lists it)."""
  flags.DEFINE_integer("workers", 1, "Processes the runs go to, each pinned to its own share of the CPUs "
                       "(at most one per CPU); 1 runs them in this process, one after another.", lower_bound=1)


def cpu_shares(workers: int) -> list[set[int]]:
  """The CPUs this process may use, dealt out to `workers` processes; one ConfigError naming --workers when
  there are fewer CPUs than workers."""
  available = (sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else list(range(os.cpu_count())))
  if workers > len(available):
    raise ConfigError(f"--workers={workers}: this process may use {len(available)} CPUs, and each worker "
                      "needs one of its own")
  return [set(available[index::workers]) for index in range(workers)]


def check_workers(workers: int, base: TrainConfig) -> None:
  """One ConfigError naming --workers where worker processes cannot share the machine: more workers than
  CPUs, a GPU (each worker's TensorFlow would take the whole device), or a strategy that spans processes."""
  if workers == 1:
    return
  cpu_shares(workers)
  if base.strategy == "multi_worker":
    raise ConfigError(f"--workers={workers} runs the experiment's runs in processes of one machine; with "
                      "--strategy=multi_worker keep --workers=1")
  if tf.config.list_physical_devices("GPU"):
    raise ConfigError(f"--workers={workers} splits the CPUs between worker processes, which would each take "
                      "the whole GPU: pass --workers=1 on a machine with a GPU")


def baseline_config(base: TrainConfig, seed: int, seed_dir: str) -> TrainConfig:
  """A seed's baseline: T trained on the real set alone (no cycles, no D), under `seed_dir`/baseline."""
  return seeded(base, seed, os.path.join(seed_dir, BASELINE), cycles=0, discriminator=False,
                sample_source=config_lib.NO_SAMPLES)


def _run_baseline(trainers: Trainers, base: TrainConfig, seed: int, seed_dir: str) -> tuple[dict, str]:
  """Trains a seed's baseline T; its results and its checkpoint."""
  trainer = trainers(baseline_config(base, seed, seed_dir))
  return trainer.run(), trainer.checkpoint_manager.latest_checkpoint


def _run_arm(trainers: Trainers, base: TrainConfig, seed: int, seed_dir: str, arm: str,
             changes: dict[str, Any], checkpoint: str, baseline_results: dict, summarise: ArmSummariser) -> Any:
  """An arm of a seed: a run from its baseline's checkpoint with no baseline epochs of its own and `changes`
  to `base`, under `seed_dir`/<arm>; what `summarise` keeps of it."""
  config = seeded(base, seed, os.path.join(seed_dir, arm), baseline_epochs=0, init_checkpoint=checkpoint,
                  **changes)
  trainer, results = trainers.run_arm(config, baseline_config(base, seed, seed_dir), baseline_record(
      baseline_results))
  return summarise(arm, seed, trainer, results)


def run_arms(base: TrainConfig, seeds: tuple[int, ...], seed_dir_of: Callable[[int], str],
             arms: dict[str, dict[str, Any]], summarise: ArmSummariser, workers: int = 1, command: str = ""
             ) -> dict[int, dict[str, Any]]:
  """An arms-from-a-baseline experiment's runs: for each seed a baseline T (baseline_config), then each arm
  (_run_arm: `arms[arm]`'s changes to `base`). Returns {seed: {BASELINE: the baseline's results, arm: what
  `summarise` kept of its run, ...}}, arms in `arms`' order.

  With workers > 1 the runs go to that many worker processes, each pinned to its own CPUs (cpu_shares):
  photo_digits' runs are small, and two single-core runs side by side do more work than the same runs one
  after another on both cores (bench/experiment_workers.py). Every baseline is queued first, and a seed's arms
  as soon as its baseline is done, so the workers stay busy to the end. Runs do not depend on the process
  they ran in (each seeds its own streams), but multi-threaded CPU training is not bit-reproducible:
  single-core workers are, run for run."""
  if workers == 1:
    trainers, runs = Trainers(command), {}
    for seed in seeds:
      baseline_results, checkpoint = _run_baseline(trainers, base, seed, seed_dir_of(seed))
      runs[seed] = {BASELINE: baseline_results}
      for arm, changes in arms.items():
        runs[seed][arm] = _run_arm(trainers, base, seed, seed_dir_of(seed), arm, changes, checkpoint,
                                   baseline_results, summarise)
    return runs

  context = multiprocessing.get_context("spawn")  # Forking a process that has started TensorFlow is unsafe.
  shares = context.SimpleQueue()
  for share in cpu_shares(workers):
    shares.put(share)
  others = set(multiprocessing.active_children())
  executor = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                                    initargs=(shares, command, logging.get_verbosity()))
  pending: dict[concurrent.futures.Future, tuple[int, str]] = {}

  def submit(seed: int, arm: str, job: Callable, *args) -> None:
    pending[executor.submit(_in_worker, job, *args)] = seed, arm

  outcomes: dict[tuple[int, str], Any] = {}
  try:
    for seed in seeds:
      submit(seed, BASELINE, _run_baseline, base, seed, seed_dir_of(seed))
    while pending:
      done, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
      for future in done:
        seed, arm = pending.pop(future)
        try:
          outcome = future.result()  # A run's own error ends the experiment as it would in one process.
        except concurrent.futures.BrokenExecutor as e:  # A worker killed (BrokenProcessPool).
          raise TerseError(f"a worker process died during seed {seed}'s {arm} run (out of memory?); the same "
                           "command resumes every run where its last checkpoint left it") from e
        if arm == BASELINE:
          outcome, checkpoint = outcome
          for other, changes in arms.items():
            submit(seed, other, _run_arm, base, seed, seed_dir_of(seed), other, changes, checkpoint, outcome,
                   summarise)
        outcomes[seed, arm] = outcome
  finally:
    if pending:  # A run's error or Ctrl-C: the runs under way stop too, as in one process (each resumes).
      for worker in set(multiprocessing.active_children()) - others:
        worker.terminate()
    executor.shutdown(cancel_futures=True)
  return {seed: {arm: outcomes[seed, arm] for arm in (BASELINE, *arms)} for seed in seeds}


# A worker process's trainers: it builds each distinct task once, for every run it is given.
_worker_trainers: Trainers | None = None


class _RunLabel(std_logging.Filter):
  """Starts each log line of a worker with the run it belongs to ("[seed 1 cut_paste] ..."): two workers'
  lines interleave in one log."""
  label = ""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if self.label and isinstance(record.msg, str):
      record.msg = f"[{self.label}] {record.msg}"
    return True


_run_label = _RunLabel()


def _start_worker(shares: multiprocessing.queues.SimpleQueue, command: str, verbosity: int) -> None:
  global _worker_trainers
  # Ctrl-C reaches every process of the terminal's group: the parent alone handles it, stopping the workers.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  share = shares.get()
  if hasattr(os, "sched_setaffinity"):  # Linux; elsewhere the workers share every CPU.
    os.sched_setaffinity(0, share)  # Before TensorFlow sizes its thread pools by the CPUs it may use.
  # The parent read every flag into the configs each job carries, and nothing a run calls reads FLAGS;
  # marked parsed, the absl logging below does not warn that it runs before flag parsing.
  flags.FLAGS.mark_as_parsed()
  logging.use_absl_handler()  # As app.run installs it in the parent: the same log format.
  logging.get_absl_handler().addFilter(_run_label)
  logging.set_verbosity(verbosity)
  _worker_trainers = Trainers(command)


def _in_worker(job: Callable, base: TrainConfig, seed: int, seed_dir: str, *args) -> Any:
  """Runs `job` (_run_baseline, or _run_arm with the arm first in `args`) with this worker's trainers, its
  log lines labelled with the run."""
  _run_label.label = f"seed {seed} {args[0] if args else BASELINE}"
  try:
    return job(_worker_trainers, base, seed, seed_dir, *args)
  finally:
    _run_label.label = ""


# Fig. 8's bins of the baseline T's confidence.
HARDNESS_BINS = np.linspace(0.0, 1.0, 11)


def first_cycle_hardness(cache: HardExampleCache) -> list[float]:
  """The hardness of an arm's first-cycle samples: the confidence of the T that judged them, the baseline's."""
  return [float(h) for h in cache.margins()[cache.cycles() == 1]]


def hardness_histogram(hardness: dict[str, list[list[float]]]) -> dict:
  """Fig. 8: {"bins": HARDNESS_BINS, arm: the share of its first-cycle samples (first_cycle_hardness, pooled
  over seeds) in each bin}; an arm that added nothing has no entry."""
  histogram = {"bins": HARDNESS_BINS.tolist()}
  for arm, per_seed in hardness.items():
    values = np.concatenate([np.asarray(v, np.float64) for v in per_seed]) if per_seed else np.zeros(0)
    if values.size:
      counts, _ = np.histogram(np.clip(values, 0, 1), HARDNESS_BINS)
      histogram[arm] = (counts / values.size).tolist()
  return histogram


def run_seeds(seeds: tuple[int, ...], run_seed: Callable[[int], tuple[list[dict], float]]
              ) -> tuple[list[dict], float]:
  """Every seed's rows, in order, and the runs' training time in seconds summed over seeds."""
  rows, training_s = [], 0.0
  for seed in seeds:
    seed_rows, seconds = run_seed(seed)
    rows += seed_rows
    training_s += seconds
  return rows, training_s


def main(argv: list[str], module: str, experiment_from_flags: Callable[[], Any],
         run: Callable[..., dict]) -> None:
  """An experiment's absl main: reads its flags, runs it with its command line recorded, and ends a bad
  input or a Ctrl-C with one line (the experiment config's `base` is the TrainConfig it resumes)."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  experiment = None
  try:
    experiment = experiment_from_flags()
    run(experiment, command=shlex.join(["python", "-m", module, *sys.argv[1:]]))
  except TerseError as e:  # One line on stderr, as terse_tf.train ends: a log line too would print it twice.
    sys.exit(f"terse_tf: error: {e}")
  except KeyboardInterrupt:
    launch.exit_interrupted(train.interrupted_message(experiment and experiment.base))


def per_class_summary(rows: list[dict], arms: tuple[str, ...], class_names: list[str], sets: tuple[str, ...]
                      ) -> dict:
  """{set: {arm: {class: AP@0.5, "mAP": AP@0.5}}} after each arm's last cycle, means over seeds
  (evaluation.mean_row: a class without a box in a seed's set is left out of its mean), for the `sets` whose
  rows (one per arm, seed and cycle) carry per-class figures (<set>_ap50_<class>)."""
  summary = {}
  for name in sets:
    if not any(key.startswith(f"{name}_ap50_") for key in rows[0]):
      continue
    for arm in arms:
      last = max(r["cycle"] for r in rows if r["arm"] == arm)
      summary.setdefault(name, {})[arm] = evaluation.mean_row(
          [{**{label: r[f"{name}_ap50_{label}"] for label in class_names}, "mAP": r[f"{name}_ap50"]}
           for r in rows if r["arm"] == arm and r["cycle"] == last])
  return summary
