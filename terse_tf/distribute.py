"""Distribution in one place: which strategy a run takes, which process is the chief, and workers that stop
together (STYLE 8: the strategy built from one flag value)."""

from __future__ import annotations

import contextlib
import functools
import os
import re
from typing import Iterator

import tensorflow as tf

from terse_tf.errors import ConfigError, WorkerLostError

STRATEGIES = ("auto", "default", "mirrored", "multi_worker")


def build_strategy(name: str) -> tf.distribute.Strategy:
  """The one place the distribution strategy is chosen: mirrored over several GPUs, else the default;
  "multi_worker" mirrors over every device of every worker process that TF_CONFIG lists.

  An explicit "mirrored" with no GPU mirrors over the logical CPU devices (how the tests run it). The
  multi-worker strategy must be built before the process runs any TensorFlow op (it configures the
  collective ops of the runtime), so the Trainer builds its strategy first.
  """
  if name not in STRATEGIES:
    raise ConfigError(f"--strategy must be one of {STRATEGIES}, got {name!r}")
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


class Workers:
  """The processes that take every step together (one, unless --strategy=multi_worker), and what they do
  so that none is left alone: wait for each other, and report one that died."""

  def __init__(self, strategy: tf.distribute.Strategy, run_dir: str):
    self.strategy, self.run_dir = strategy, run_dir
    self.is_chief = is_chief(strategy)
    self.several = worker_count(strategy) > 1
    self._barrier = tf.function(lambda: strategy.reduce(
        tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1)), axis=None))

  def sync(self) -> None:
    """Waits until every worker gets here (a collective; nothing with a single worker): so that none exits
    while another still works (the survivors would take the exit for a crash), and so that all of them have
    decided before one of them starts something collective."""
    if self.several:
      with self.lost_reported():
        self._barrier()

  @contextlib.contextmanager
  def lost_reported(self) -> Iterator[None]:
    """Turns the collective ops' error for a worker that died into one line that says what to do."""
    try:
      yield
    except tf.errors.UnavailableError as e:
      if not self.several:
        raise
      # The first line, without the name of the graph node that noticed.
      first_line = re.sub(r"\{\{[^}]*\}\}\s*", "", (e.message or str(e)).strip()).splitlines()[0]
      raise WorkerLostError(
          f"another worker of this multi-worker run stopped or cannot be reached ({first_line}). Stop every "
          f"worker and relaunch them all with the same command: they resume from the chief's last checkpoint "
          f"in --run_dir={self.run_dir}") from e
