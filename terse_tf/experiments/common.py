"""What every experiment shares: runs that differ from the base config only where the experiment says, and
the launcher's error handling."""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from typing import Any, Callable, ClassVar, Iterator

import numpy as np
from absl import app

from terse_tf import config as config_lib
from terse_tf import evaluation
from terse_tf import train
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
    # Everything a task is built from; two configs with equal keys build equal tasks.
    key = repr((config.task, config.task_settings, config_lib.common_settings(config)))
    trainer = Trainer(config, task=self._tasks.get(key), command_line=self.command_line)
    self._tasks[key] = trainer.task
    return trainer

  def run_arm(self, config: TrainConfig, baseline: Trainer, baseline_results: dict) -> tuple[Trainer, dict]:
    """Makes and runs an arm that starts from `baseline`'s T (its --init_checkpoint); on the baseline's task
    object the arm takes the baseline's evaluation instead of recomputing it. Returns it and its results."""
    trainer = self(config)
    record = (next(r for r in baseline_results["history"] if r["after"] == "baseline")
              if trainer.task is baseline.task else None)
    return trainer, trainer.run(baseline_record=record)


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

  def __post_init__(self):
    if self.base.task != self.TASK:
      raise ConfigError(f"this experiment runs --task={self.TASK}, got --task={self.base.task}")
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ConfigError(f"--seeds needs at least one seed and no repeats, got {list(self.seeds)}")
    if not self.arms or set(self.arms) - set(self.ARMS) or len(set(self.arms)) != len(self.arms):
      raise ConfigError(f"--arms must be distinct arms from {list(self.ARMS)}, got {list(self.arms)}")
    if not self.base.cycles:
      raise ConfigError("--cycles must be >= 1: the arms differ only in what their cycles add")

  @staticmethod
  def fields_from_flags(flag_values) -> dict[str, Any]:
    """The shared fields' values from the experiment's flags (--seeds, --arms, --results_dir, --label) and
    terse_tf.train's."""
    return dict(base=train.config_from_flags(flag_values), seeds=train.integers_flag("seeds", flag_values.seeds),
                arms=tuple(flag_values.arms), results_dir=flag_values.results_dir, label=flag_values.label)


def baseline_and_arms(base: TrainConfig, seed: int, seed_dir: str, arms: dict[str, dict[str, Any]],
                      trainers: Trainers) -> Iterator[tuple[str, Trainer, dict]]:
  """One seed of a detection experiment: ("baseline", its trainer, its results) for a T trained on the real
  set alone (no cycles, no D), then (arm, trainer, results) for each arm, in order, each a run from the
  baseline's checkpoint with no baseline epochs of its own and `arms[arm]`'s changes to `base`. Runs live
  under `seed_dir`/<arm>."""
  baseline = trainers(seeded(base, seed, os.path.join(seed_dir, "baseline"), cycles=0, discriminator=False,
                             sample_source=config_lib.NO_SAMPLES))
  baseline_results = baseline.run()
  yield "baseline", baseline, baseline_results
  checkpoint = baseline.checkpoint_manager.latest_checkpoint
  for arm, changes in arms.items():
    config = seeded(base, seed, os.path.join(seed_dir, arm), baseline_epochs=0, init_checkpoint=checkpoint,
                    **changes)
    yield (arm, *trainers.run_arm(config, baseline, baseline_results))


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
    sys.exit(train.interrupted_message(experiment and experiment.base))


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
