"""Test set-up shared by every test file."""

import atexit
import copy
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile

# Repository root on the path so `terse_tf` imports without an install; quiet TF start-up logs.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tests leave the user's home alone: the default cache directory (terse_tf.train reads XDG_CACHE_HOME when
# it declares its flags) is a temporary one for this session, in this process and every subprocess.
_CACHE_HOME = tempfile.mkdtemp(prefix="terse_tf_test_cache_")
os.environ["XDG_CACHE_HOME"] = _CACHE_HOME
atexit.register(shutil.rmtree, _CACHE_HOME, ignore_errors=True)
SMOKE_FLAGFILE = os.path.join(REPO_ROOT, "configs", "affnist_smoke.flags")
DETECTION_SMOKE_FLAGFILE = os.path.join(REPO_ROOT, "configs", "photo_digits_smoke.flags")


def smoke_config(run_dir, flagfile=SMOKE_FLAGFILE, **overrides):
  """The TrainConfig of a smoke flagfile (configs/affnist_smoke.flags unless given), parsed by the real
  launcher, with overrides: a TrainConfig field by its name, a nested setting by its path with "__" between
  the names ("task_settings__data__num_train")."""
  from terse_tf import train

  flag_values = copy.deepcopy(train.FLAGS)  # A private copy: the global FLAGS stay unparsed.
  flag_values(["test", f"--flagfile={flagfile}", f"--run_dir={run_dir}", "--affnist_cache_dir="])
  config = train.config_from_flags(flag_values)
  config = dataclasses.replace(config, **{key: value for key, value in overrides.items() if "__" not in key})
  for key, value in overrides.items():
    if "__" in key:
      config = _replace_nested(config, key.split("__"), value)
  return config


def _replace_nested(settings, path, value):
  """`settings` (a frozen dataclass) with the field at `path` (names, outermost first) set to `value`."""
  head, *rest = path
  return dataclasses.replace(settings, **{head: _replace_nested(getattr(settings, head), rest, value) if rest
                                          else value})


def run_cli(*args, timeout=300, check=True):
  """Runs `python -m terse_tf.train ARGS` from the repository root; returns the CompletedProcess."""
  result = subprocess.run([sys.executable, "-m", "terse_tf.train", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)
  if check and result.returncode != 0:
    raise AssertionError(f"exit {result.returncode}\n{result.stderr[-4000:]}")
  return result


def synth_batches(trainer, seed):
  """S's input stream of a trainer (with D: paired with real images), as its synthesis phase takes it."""
  from terse_tf import pipelines

  return pipelines.synth_dataset(trainer.task, trainer.strategy, trainer.config.synth_batch_size, seed,
                                 with_real=trainer.discriminator is not None)
