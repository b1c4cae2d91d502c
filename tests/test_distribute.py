"""The one place a strategy is chosen, who is chief, and the workers' barrier, on one process."""

import pytest
import tensorflow as tf

from terse_tf import distribute
from terse_tf.errors import ConfigError


def test_the_strategy_comes_from_one_flag_value(monkeypatch):
  assert distribute.build_strategy("default") is tf.distribute.get_strategy()
  if not tf.config.list_logical_devices("GPU"):
    assert distribute.build_strategy("auto") is tf.distribute.get_strategy()  # No GPU: one device.
  mirrored = distribute.build_strategy("mirrored")
  assert isinstance(mirrored, tf.distribute.MirroredStrategy) and mirrored.num_replicas_in_sync >= 1
  with pytest.raises(ConfigError, match="--strategy must be one of"):
    distribute.build_strategy("tpu")
  monkeypatch.delenv("TF_CONFIG", raising=False)
  with pytest.raises(ConfigError, match="--strategy=multi_worker needs the TF_CONFIG environment variable"):
    distribute.build_strategy("multi_worker")


def test_a_single_process_is_the_chief_and_waits_for_no_one():
  strategy = tf.distribute.get_strategy()
  assert distribute.worker_count(strategy) == 1 and distribute.is_chief(strategy)
  workers = distribute.Workers(strategy, "runs/x")
  assert workers.is_chief and not workers.several
  workers.sync()  # No collective with one worker.
  with pytest.raises(tf.errors.UnavailableError):  # Only several workers turn a lost peer into one line.
    with workers.lost_reported():
      raise tf.errors.UnavailableError(None, None, "peer gone")
