"""The run directory on its own: what a start refuses before it touches anything, the lock, what --fresh
removes, and the resume rules (the checkpoint's identity, the settings config.json recorded)."""

import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from conftest import REPO_ROOT
from terse_tf.cache import HardExampleCache
from terse_tf.errors import ConfigError, DataError
from terse_tf.run_dir import RUN_OUTPUTS, RunDirectory

STRATEGY = tf.distribute.get_strategy()
# Another process holding a run directory's lock until it is killed.
HOLD_LOCK = ("import sys, time; from terse_tf import files; files.DirectoryLock(sys.argv[1]).acquire(); "
             "print('locked', flush=True); time.sleep(300)")
IDENTITY = json.dumps({"data": {"seed": 0}, "target": "paper"}, sort_keys=True)


def opened(path, fresh=False, resuming=False) -> RunDirectory:
  run_dir = RunDirectory(str(path), fresh, STRATEGY, is_chief=True)
  run_dir.open(HardExampleCache(os.path.join(path, "cache"), 2), resuming)
  return run_dir


def saved_run(path, identity=IDENTITY, settings=None) -> str:
  """A run directory with one checkpoint of this identity and a config.json with these settings."""
  run_dir = opened(path)
  checkpoint = tf.train.Checkpoint(run_identity=tf.Variable(identity), step=tf.Variable(3))
  latest = run_dir.checkpoint_manager(checkpoint).save()
  run_dir.write_config({"seed": 0}, settings or {"synth_lr": 0.001, "task_settings.data.seed": 0}, "train ...")
  run_dir.close()
  return latest


def test_a_file_in_the_way_is_refused_before_anything_is_made(tmp_path):
  (tmp_path / "run").write_text("")
  with pytest.raises(ConfigError, match="--run_dir=.*run is an existing file"):
    RunDirectory(str(tmp_path / "run"), False, STRATEGY, is_chief=True)
  with pytest.raises(ConfigError, match="--run_dir=.*run/sub/dir cannot be made: .*run is a file"):
    RunDirectory(str(tmp_path / "run" / "sub" / "dir"), False, STRATEGY, is_chief=True)


def test_one_process_at_a_time(tmp_path):
  holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(ConfigError, match=f"is in use by another process \\(pid {holder.pid} .*a run still going"):
      opened(tmp_path)
  finally:
    holder.kill()
    holder.wait()
  opened(tmp_path).close()  # The killed holder left no lock behind.


def test_fresh_removes_the_runs_outputs_only(tmp_path):
  for name in RUN_OUTPUTS:
    (tmp_path / name).mkdir() if "." not in name else (tmp_path / name).write_text("{}")
  (tmp_path / "notes.txt").write_text("mine")
  opened(tmp_path, fresh=True).close()
  assert sorted(os.listdir(tmp_path)) == [".terse_tf.lock", "notes.txt"]


def test_a_start_killed_before_its_first_checkpoint_leaves_no_stale_events(tmp_path):
  (tmp_path / "tensorboard").mkdir()
  (tmp_path / "config.json").write_text("{}")
  opened(tmp_path, resuming=False).close()
  assert not (tmp_path / "tensorboard").exists()
  (tmp_path / "tensorboard").mkdir()
  opened(tmp_path, resuming=True).close()  # A resumed run keeps its events.
  assert (tmp_path / "tensorboard").exists()


def test_resume_needs_the_same_result_settings_each_named_by_its_flag(tmp_path):
  latest = saved_run(tmp_path)
  run_dir = RunDirectory(str(tmp_path), False, STRATEGY, is_chief=True)
  assert run_dir.latest_checkpoint() == latest
  flags = {"synth_lr": "synth_lr", "task_settings.data.seed": "seed", "task_settings.affnist.seed": "seed"}
  run_dir.check_resumable(latest, IDENTITY, {"synth_lr": 0.001, "task_settings.data.seed": 0}, flags)
  with pytest.raises(ConfigError, match=r"other settings \(--synth_lr: 0.001 there, 0.002 now; "
                                        r"--seed: 0 there, 1 now\).*--fresh"):
    run_dir.check_resumable(latest, IDENTITY, {"synth_lr": 0.002, "task_settings.data.seed": 1}, flags)
  # A setting terse_tf did not have when the run started is not compared without a default (it would lock
  # out every older run), and compared with its default, what the run ran with, where it has one.
  run_dir.check_resumable(latest, IDENTITY, {"synth_lr": 0.001, "task_settings.data.seed": 0, "new": 3}, flags)
  run_dir.check_resumable(latest, IDENTITY, {"synth_lr": 0.001, "task_settings.data.seed": 0, "new": 3}, flags,
                          defaults={"new": 3, "synth_lr": 0.5})
  with pytest.raises(ConfigError, match=r"--new: 2 there, 3 now"):
    run_dir.check_resumable(latest, IDENTITY, {"synth_lr": 0.001, "task_settings.data.seed": 0, "new": 3},
                            flags, defaults={"new": 2})
  assert RunDirectory(str(tmp_path), True, STRATEGY, is_chief=True).latest_checkpoint() is None  # --fresh


def test_the_checkpoints_identity_is_checked_too(tmp_path):
  """The data a task was handed (the API's arrays) is in its identity, not in its settings."""
  latest = saved_run(tmp_path)
  other = json.dumps({"data": {"seed": 1}, "target": "paper"}, sort_keys=True)
  with pytest.raises(ConfigError, match=r"other data or another target \(data.seed: 0 there, 1 now\)"):
    RunDirectory(str(tmp_path), False, STRATEGY, is_chief=True).check_resumable(
        latest, other, {"synth_lr": 0.001, "task_settings.data.seed": 0}, {})


def test_a_run_that_recorded_no_settings_is_checked_by_its_identity(tmp_path):
  latest = saved_run(tmp_path)
  (tmp_path / "config.json").write_text('{"command": "train", "config": {}}')
  run_dir = RunDirectory(str(tmp_path), False, STRATEGY, is_chief=True)
  run_dir.check_resumable(latest, IDENTITY, {"synth_lr": 9.0}, {})
  other = json.dumps({"data": {"seed": 1}, "target": "paper"}, sort_keys=True)
  with pytest.raises(ConfigError, match=r"other data or another target \(data.seed: 0 there, 1 now\)"):
    run_dir.check_resumable(latest, other, {}, {})


def test_a_run_of_another_task_is_refused_before_any_data_is_loaded(tmp_path):
  saved_run(tmp_path)
  (tmp_path / "config.json").write_text('{"config": {"task": "mine"}}')
  run_dir = RunDirectory(str(tmp_path), False, STRATEGY, is_chief=True)
  run_dir.check_task("mine")
  with pytest.raises(ConfigError, match="holds a run of --task=mine, not --task=affnist .*import its module"):
    run_dir.check_task("affnist")
  RunDirectory(str(tmp_path), True, STRATEGY, is_chief=True).check_task("affnist")  # --fresh replaces it.


def test_a_damaged_checkpoint_or_config_is_named(tmp_path):
  latest = saved_run(tmp_path)
  run_dir = RunDirectory(str(tmp_path), False, STRATEGY, is_chief=True)
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(DataError, match="config.json: damaged"):
    run_dir.check_resumable(latest, IDENTITY, {}, {})
  with open(latest + ".index", "r+b") as f:
    f.truncate(10)
  with pytest.raises(DataError, match="damaged checkpoint.*--fresh"):
    run_dir.check_resumable(latest, IDENTITY, {}, {})
