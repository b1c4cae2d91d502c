"""What a run owns on disk, and the rules for resuming it.

Layout of a run directory: checkpoints/ (the latest three), cache/ (the hard-example shards), tensorboard/,
export/ (SavedModels), config.json (the command and the resolved settings), results.json. Resume order: the
latest checkpoint in the run directory -> --init_checkpoint (S and T only) -> scratch. A resume must find the
run it left: the same task, data and target (the checkpoint's identity) and the same settings wherever they
change what the run computes (config.json); anything else is refused before the directory is touched.

One process writes a run directory at a time (a lock). With several workers only the chief writes it; the
others write a private scratch directory and read the chief's state when they resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import weakref

import tensorflow as tf
from absl import logging

from terse_tf import files
from terse_tf.cache import HardExampleCache
from terse_tf.errors import ConfigError, DataError
from terse_tf.tasks import Task

# What --fresh removes: only the paths a run writes, never the rest of the run directory.
RUN_OUTPUTS = ("checkpoints", "cache", "tensorboard", "export", "results.json", "config.json")
CONFIG_FILE, RESULTS_FILE = "config.json", "results.json"
_IDENTITY_KEY = "run_identity/.ATTRIBUTES/VARIABLE_VALUE"
_DROPOUT_SEEDS_KEY = "dropout_seeds/0/.ATTRIBUTES/VARIABLE_VALUE"


def remove_outputs(run_dir: str, names: list[str]) -> None:
  """Removes these of a run directory's outputs (files or folders) where they exist."""
  for name in names:
    path = os.path.join(run_dir, name)
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path)
    elif os.path.lexists(path):
      os.remove(path)


def _flatten(settings: dict, prefix: str = "") -> dict:
  """{"data": {"seed": 0}} -> {"data.seed": 0}: nested settings by their full names, to say which differ."""
  flat = {}
  for key, value in settings.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _differences(there: dict, now: dict) -> str:
  """"a: 1 there, 2 now; ..." for the keys whose values differ."""
  return "; ".join(f"{key}: {there.get(key, 'unset')} there, {now.get(key, 'unset')} now"
                   for key in sorted(set(there) | set(now)) if there.get(key) != now.get(key))
# What an evaluation record of the history holds beside T's figures.
RECORD_KEYS = ("after", "cycle", "cache_size")


class RunDirectory:
  """One run's directory: its checks, its lock, its checkpoints' resume rules, its config and results."""

  def __init__(self, path: str, fresh: bool, strategy: tf.distribute.Strategy, is_chief: bool):
    if os.path.exists(path) and not os.path.isdir(path):
      raise ConfigError(f"--run_dir={path} is an existing file; expected a directory (or a path to create one "
                        "at)")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
      existing = os.path.dirname(existing)
    if not os.path.isdir(existing):  # Checked here, before any data is loaded; open() proves it writable.
      raise ConfigError(f"--run_dir={path} cannot be made: {existing} is a file, not a directory")
    self.path, self.fresh, self.is_chief, self._strategy = path, fresh, is_chief, strategy
    # Where this process writes: the run directory, or for a worker other than the chief its scratch directory.
    self.output_dir = path
    self._lock: files.DirectoryLock | None = None

  def latest_checkpoint(self) -> str | None:
    """The checkpoint a run resumes (None: it starts afresh)."""
    return None if self.fresh else tf.train.latest_checkpoint(os.path.join(self.path, "checkpoints"))

  def check_task(self, task: str) -> None:
    """Refuses, before any data is loaded, a run directory that holds a run of another task (as its
    config.json records it)."""
    recorded = self._recorded().get("config", {}).get("task")
    if not self.fresh and recorded not in (None, task) and self.latest_checkpoint():
      raise ConfigError(f"--run_dir={self.path} holds a run of --task={recorded}, not --task={task} (a task of "
                        "your own: import its module in your launcher before terse_tf.train.run()). Use another "
                        "--run_dir, or --fresh to replace it")

  def check_resumable(self, latest: str, identity: str, settings: dict, flags: dict[str, str],
                      defaults: dict | None = None) -> None:
    """Refuses to resume `latest` with other settings where they change results (`settings`,
    config.result_settings, against those config.json recorded; each named by its flag, `flags`; a setting
    it did not record, against its default in `defaults`, config.setting_defaults), or for a run on other
    data or another target (`identity`, the task's, against the checkpoint's)."""
    try:
      reader = tf.train.load_checkpoint(latest)
      saved_identity = reader.get_tensor(_IDENTITY_KEY).decode() if reader.has_tensor(_IDENTITY_KEY) else "{}"
    except (tf.errors.OpError, ValueError, IndexError, OSError) as e:  # A truncated or garbled file.
      raise DataError(f"{latest}: damaged checkpoint ({type(e).__name__}: {e}); the run cannot resume from it. "
                      "Rerun with --fresh to start over") from e
    recorded = self._recorded_settings()
    if recorded is not None:
      # A setting added to terse_tf since the run started is compared with its default, which the run ran
      # with (comparing nothing would let `--quota_unit=instances` resume a run that counted samples); one
      # without a default, or one since removed, is not compared: it would refuse every older run.
      recorded = {**{name: value for name, value in (defaults or {}).items() if name in settings}, **recorded}
      differing = sorted(name for name in set(recorded) & set(settings) if recorded[name] != settings[name])
      if differing:
        differences = "; ".join(dict.fromkeys(  # (Two settings read from one flag, --seed, say it once.)
            f"--{flags.get(name, name)}: {recorded[name]} there, {settings[name]} now" for name in differing))
        raise ConfigError(f"--run_dir={self.path} holds a run with other settings ({differences}): resuming would "
                          f"mix two runs. Rerun with its settings (its command is in "
                          f"{os.path.join(self.path, CONFIG_FILE)}), use another --run_dir, or add --fresh to "
                          "start over")
    if saved_identity != identity:  # What no setting says: the data a task was handed (terse_tf.api's arrays).
      differences = _differences(_flatten(json.loads(saved_identity)), _flatten(json.loads(identity)))
      raise ConfigError(f"--run_dir={self.path} holds a run on other data or another target ({differences}). "
                        "Use another --run_dir, or --fresh to replace it")

  def _recorded(self) -> dict:
    """config.json as the run wrote it ({} where there is none)."""
    path = os.path.join(self.path, CONFIG_FILE)
    try:
      with open(path) as f:
        recorded = json.load(f)
    except FileNotFoundError:
      return {}
    except ValueError as e:
      raise DataError(f"{path}: damaged ({e}); rerun with --fresh to start over") from e
    if not isinstance(recorded, dict):
      raise DataError(f"{path}: damaged (not a JSON object); rerun with --fresh to start over")
    return recorded

  def _recorded_settings(self) -> dict | None:
    """The result-changing settings config.json recorded; None where it recorded none (a run started by a
    terse_tf that did not keep them is checked by its checkpoint's identity alone: its data and target)."""
    recorded = self._recorded()
    if recorded and "results_depend_on" not in recorded:
      logging.warning("%s does not record the settings the run was started with: its resume is checked against "
                      "its data and target only", os.path.join(self.path, CONFIG_FILE))
    return recorded.get("results_depend_on")

  def restore(self, latest: str, checkpoint: tf.train.Checkpoint,
              without_dropout_seeds: tf.train.Checkpoint | None) -> None:
    """Restores `checkpoint` from `latest` (checked by check_resumable); one written before checkpoints kept
    the dropout layers' random streams through `without_dropout_seeds`."""
    if without_dropout_seeds is not None and not tf.train.load_checkpoint(latest).has_tensor(_DROPOUT_SEEDS_KEY):
      logging.warning("%s predates checkpoints that keep the dropout layers' random streams: the run resumes, "
                      "but its dropout masks from here on are not those an uninterrupted run would draw", latest)
      checkpoint = without_dropout_seeds
    try:
      checkpoint.restore(latest).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
      raise ConfigError(f"--run_dir={self.path} holds a checkpoint ({latest}) from a different configuration "
                        "(networks or players differ); rerun with the flags that made it, or add --fresh to "
                        f"start over ({type(e).__name__})") from e

  @staticmethod
  def load_init_checkpoint(init_checkpoint: str, **objects) -> None:
    """Restores `objects` (S and T) from --init_checkpoint, a terse_tf checkpoint's prefix."""
    try:
      tf.train.Checkpoint(**objects).restore(init_checkpoint).expect_partial().assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
      raise DataError(f"--init_checkpoint={init_checkpoint}: expected the prefix of a terse_tf checkpoint with "
                      f"matching {' and '.join(objects)}, e.g. <run_dir>/checkpoints/ckpt-3 "
                      f"({type(e).__name__})") from e
    logging.info("initialised %s from --init_checkpoint=%s", " and ".join(objects), init_checkpoint)

  def open(self, cache: HardExampleCache, resuming: bool) -> None:
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
      for path in cache.shard_paths():
        shutil.copy(path, scratch_cache)
      cache.directory = scratch_cache
      logging.info("worker (not the chief): writes go to the scratch directory %s", self.output_dir)
      return
    created = not os.path.exists(self.path)
    try:
      os.makedirs(self.path, exist_ok=True)
      with tempfile.TemporaryFile(dir=self.path):
        pass
    except OSError as e:
      if created:
        shutil.rmtree(self.path, ignore_errors=True)
      raise ConfigError(f"--run_dir={self.path} cannot be written ({e.strerror or e}); expected a writable "
                        "directory") from e
    # One process writes a run directory at a time (two would interleave checkpoints, event files and export
    # versions); taken before --fresh removes anything.
    self._lock = files.DirectoryLock(self.path)
    try:
      self._lock.acquire()
    except files.DirectoryInUseError as e:
      raise ConfigError(f"--run_dir={self.path} is {e}, a run still going: wait for it to end (or stop it), or "
                        "use another --run_dir") from None
    weakref.finalize(self, self._lock.release)
    if self.fresh:
      removed = [name for name in RUN_OUTPUTS if os.path.lexists(os.path.join(self.path, name))]
      if removed:
        logging.info("--fresh: removing the previous run's %s from %s", ", ".join(removed), self.path)
      remove_outputs(self.path, removed)
    elif not resuming and os.path.exists(os.path.join(self.path, CONFIG_FILE)):
      # A terse_tf start (it wrote config.json) killed before its first checkpoint: its TensorBoard events
      # describe steps this run takes again.
      logging.info("no checkpoint to resume in %s: removing the TensorBoard events of a start that ended "
                   "before its first checkpoint", self.path)
      remove_outputs(self.path, ["tensorboard"])

  def _scratch_dir(self) -> str:
    """A worker's scratch directory: one per run directory and task, so a relaunch finds (and clears) the
    one a killed worker left."""
    resolver = self._strategy.cluster_resolver
    run = hashlib.sha1(os.path.abspath(self.path).encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), f"terse_tf_{run}_{resolver.task_type}{resolver.task_id}")

  def checkpoint_manager(self, checkpoint: tf.train.Checkpoint) -> tf.train.CheckpointManager:
    return tf.train.CheckpointManager(checkpoint, os.path.join(self.output_dir, "checkpoints"), max_to_keep=3)

  def write_config(self, config: dict, settings: dict, command_line: str) -> None:
    """config.json: the command, the resolved config, and the settings a resume must keep."""
    files.write_json(os.path.join(self.output_dir, CONFIG_FILE),
                     {"command": command_line, "config": config, "results_depend_on": settings})

  def write_results(self, task_name: str, task: Task, history: list[dict], hard_examples: int,
                    wall_time_s: float) -> dict:
    """results.json: each of the task's figures before TERSE (after the baseline) and after the last cycle,
    and the evaluation history; returned as a reader of the file gets it."""
    before = next((h for h in history if h["after"] == "baseline"), None)
    final = history[-1] if history and history[-1]["after"] != "baseline" else None
    figures = {}
    for name in (key for key in (before or final or {}) if key not in RECORD_KEYS):
      figures[f"{name}_before"] = before and before[name]
      figures[f"{name}_after"] = final and final[name]
    results = {"task": task_name, "headline": task.headline, **figures,
               "cycles_completed": sum(1 for h in history if h["after"] != "baseline"),
               "hard_examples": hard_examples, "data": task.describe(), "wall_time_s": round(wall_time_s, 1),
               "history": history}
    files.write_json(os.path.join(self.output_dir, RESULTS_FILE), results)
    return json.loads(json.dumps(results))

  def close(self) -> None:
    """Ends the run's use of the disk: a worker other than the chief removes its scratch directory; the
    chief releases the lock."""
    if not self.is_chief:
      shutil.rmtree(self.output_dir, ignore_errors=True)
    elif self._lock is not None:
      self._lock.release()
