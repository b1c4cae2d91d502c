"""The launcher as a user runs it: the smoke flagfile end to end, kill-and-resume, and bad input."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO_ROOT, SMOKE_FLAGFILE, run_cli

pytestmark = pytest.mark.slow


def test_smoke_flagfile_runs_end_to_end_and_exports_signatures(tmp_path):
  run_dir = tmp_path / "run"
  result = run_cli(f"--flagfile={SMOKE_FLAGFILE}", f"--run_dir={run_dir}", "--affnist_cache_dir=")
  assert "affnist_test_accuracy: " in result.stderr and "before TERSE" in result.stderr
  # Each phase's log line says where the run is and how long is left.
  assert re.search(r"baseline epoch 1/1: .*; elapsed \d+s", result.stderr)
  assert re.search(r"cycle 1/2 synthesize step 3/12: .*; elapsed \d+s, phase ETA \d+s", result.stderr)
  assert re.search(r"cycle 2/2 finetune epoch 1/1: .*; elapsed \d+s, phase ETA \d+s, run ETA \d+s",
                   result.stderr)
  with open(run_dir / "results.json") as f:
    results = json.load(f)
  assert results["cycles_completed"] == 2 and results["affnist_test_accuracy_after"] is not None

  cli = shutil.which("saved_model_cli") or os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
  for name, inputs, outputs in (("synthesizer", ("foreground", "background"),
                                 ("params", "composite", "warped_mask")),
                                ("target", ("images",), ("probabilities",))):
    shown = subprocess.run([cli, "show", "--all", "--dir", str(run_dir / "export" / name / "1")],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "signature_def['serving_default']" in shown.stdout
    for key in inputs + outputs:
      assert f"['{key}']" in shown.stdout, (name, key)


def read_cache(run_dir):
  """(phase, cache images, labels) as the latest checkpoint sees them (it counts the cache's shards on
  disk), or None while none is readable."""
  try:
    reader = tf.train.load_checkpoint(str(run_dir / "checkpoints"))
    phase = int(reader.get_tensor("phase/.ATTRIBUTES/VARIABLE_VALUE"))
    shards = int(reader.get_tensor("cache/committed_shards/.ATTRIBUTES/VARIABLE_VALUE"))
    images, labels = [np.zeros([0, 40, 40, 1], np.uint8)], [np.zeros([0], np.int64)]
    for index in range(shards):
      with np.load(run_dir / "cache" / f"shard-{index:05d}.npz") as shard:
        images.append(shard["image"])
        labels.append(shard["label/label"])
    return phase, np.concatenate(images), np.concatenate(labels)
  except (ValueError, OSError, tf.errors.OpError):  # Not written yet, or rotated away mid-read.
    return None


def test_killed_run_resumes_without_losing_cache_entries(tmp_path):
  run_dir = tmp_path / "run"
  args = [f"--flagfile={SMOKE_FLAGFILE}", f"--run_dir={run_dir}", "--affnist_cache_dir=", "--export=false",
          "--hard_per_class=40", "--synth_max_steps=200", "--checkpoint_every_steps=1", "--cycles=1"]
  process = subprocess.Popen([sys.executable, "-m", "terse_tf.train", *args], cwd=REPO_ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  seen = None
  deadline = time.time() + 240
  try:
    while time.time() < deadline and process.poll() is None:
      state = read_cache(run_dir)
      if state is not None and state[0] == 1 and len(state[2]) > 0:  # mid-synthesis, entries cached
        seen = state
        break
      time.sleep(0.05)
  finally:
    process.send_signal(signal.SIGKILL)
    process.wait()
  assert seen is not None, "the run never checkpointed a partly filled cache before it ended"
  _, images_at_kill, labels_at_kill = seen

  run_cli(*args)  # The same command again resumes.
  phase, images, labels = read_cache(run_dir)
  assert phase == 3  # done
  assert len(labels) >= len(labels_at_kill)
  np.testing.assert_array_equal(images[:len(labels_at_kill)], images_at_kill)
  np.testing.assert_array_equal(labels[:len(labels_at_kill)], labels_at_kill)
  with open(run_dir / "results.json") as f:
    assert json.load(f)["cycles_completed"] == 1


@pytest.mark.parametrize("args,message", [
    (["--mnist_dir=/nonexistent/mnist"], "--mnist_dir=/nonexistent/mnist: not a directory"),
    (["--affnist_dir=/nonexistent/affnist"], "--affnist_dir=/nonexistent/affnist: expected affNIST's"),
    (["--target=resnet"], "--target must be one of ('paper', 'itn_swish') for --task=affnist, got 'resnet'"),
    (["--cycles=-1"], "flag --cycles=-1: -1 is not a non-negative integer"),
])
def test_bad_input_gets_one_clear_error_and_no_traceback(tmp_path, args, message):
  result = run_cli(f"--flagfile={SMOKE_FLAGFILE}", f"--run_dir={tmp_path}", *args, check=False)
  assert result.returncode != 0
  assert message in result.stderr
  assert "Traceback" not in result.stderr


def test_malformed_mnist_file_names_the_file(tmp_path):
  for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
               "t10k-labels-idx1-ubyte.gz"):
    (tmp_path / name).write_bytes(b"this is not gzip")
  result = run_cli(f"--flagfile={SMOKE_FLAGFILE}", f"--run_dir={tmp_path / 'run'}",
                   f"--mnist_dir={tmp_path}", check=False)
  assert result.returncode != 0 and "Traceback" not in result.stderr
  assert "train-images-idx3-ubyte.gz: cannot read IDX file" in result.stderr


def test_fresh_with_a_missing_mnist_dir_keeps_the_previous_run(tmp_path):
  run_dir = tmp_path / "run"
  base = [f"--flagfile={SMOKE_FLAGFILE}", f"--run_dir={run_dir}", "--cycles=0", "--baseline_epochs=1"]
  run_cli(*base)
  kept = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))
  assert "results.json" in kept and "export/target/1/saved_model.pb" in kept
  result = run_cli(*base, "--fresh", "--mnist_dir=/nonexistent/mnist", check=False)
  assert result.returncode != 0 and "--mnist_dir=/nonexistent/mnist" in result.stderr
  assert sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")) == kept
  result = run_cli(*base, "--fresh", "--target_lr=nan", check=False)  # A NaN passes every bound...
  assert result.returncode != 0 and "--target_lr must be a finite number, got nan" in result.stderr
  assert sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")) == kept  # ...but not this check.
  # Rerun, the finished run says so and exports nothing new; --fresh says what it removes.
  result = run_cli(*base)
  assert "holds a finished run: nothing left to train" in result.stderr
  assert os.listdir(run_dir / "export" / "target") == ["1"]
  result = run_cli(*base, "--fresh")
  assert re.search(r"--fresh: removing the previous run's checkpoints, .*export, results.json, config.json",
                   result.stderr)
  assert os.listdir(run_dir / "export" / "target") == ["1"]


def test_a_run_directory_in_use_is_refused_and_a_killed_holder_leaves_no_lock(tmp_path):
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  holder = subprocess.Popen(  # Another process holding the run directory, as a run in progress does.
      [sys.executable, "-c", "import sys, time; from terse_tf import files; "
       "files.DirectoryLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(300)", str(run_dir)],
      cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    args = [f"--flagfile={SMOKE_FLAGFILE}", f"--run_dir={run_dir}", "--cycles=0", "--baseline_epochs=1"]
    result = run_cli(*args, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"terse_tf: error: --run_dir={run_dir} is in use by another process (pid {holder.pid} on "
        f"{socket.gethostname()}), a run still going: wait for it to end (or stop it), or use another --run_dir")
    assert not os.path.exists(run_dir / "tensorboard")
  finally:
    holder.kill()
    holder.wait()
  run_cli(*args)  # Killed, the holder left no lock behind.


def test_ctrl_c_ends_with_one_line_that_says_the_run_can_be_resumed(tmp_path):
  run_dir = tmp_path / "run"
  # A quota S cannot fill in minutes: the run is still synthesizing when the signal comes, however fast the
  # machine (with 200 per class a fast run finished before the test read a checkpoint past the baseline).
  args = [f"--flagfile={SMOKE_FLAGFILE}", f"--run_dir={run_dir}", "--export=false", "--hard_per_class=5000",
          "--synth_max_steps=2000", "--checkpoint_every_steps=1", "--cycles=1"]
  # The run gets Ctrl-C's default handling even where the tests run with SIGINT ignored (a shell's background
  # job, `cmd &`): a process that starts with SIGINT ignored never turns it into KeyboardInterrupt.
  process = subprocess.Popen([sys.executable, "-m", "terse_tf.train", *args], cwd=REPO_ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  deadline = time.time() + 240
  while time.time() < deadline and process.poll() is None and (read_cache(run_dir) or [0])[0] != 1:
    time.sleep(0.1)  # Until the run checkpoints mid-synthesis.
  process.send_signal(signal.SIGINT)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 130  # A shell's status for a command Ctrl-C ended.
  assert "Traceback" not in stderr
  assert stderr.strip().splitlines()[-1] == (
      f"terse_tf: interrupted. Rerun the same command to resume {run_dir} from its last checkpoint "
      "(without --fresh, which would start over).")
  # ...and the same command resumes it (stopped once it says so: the quota keeps it going for minutes).
  resumed = subprocess.Popen([sys.executable, "-m", "terse_tf.train", *args], cwd=REPO_ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    assert any("resumed from" in line for line in resumed.stderr)
  finally:
    resumed.kill()
    resumed.wait()


@pytest.mark.parametrize("module,flag", [("train", "--run_dir"), ("train", "--photo_num_real"),
                                         ("generate", "--synthesizer"), ("serve", "--foreground")])
def test_console_scripts_list_their_flags_in_help(module, flag):
  """A console script's sys.argv[0] is its wrapper (terse-train), not the module that defines the flags; the
  tasks' flags (defined by their modules) are listed with the launcher's."""
  script = f"import sys; sys.argv[0] = 'terse-{module}'; from terse_tf.{module} import run; run()"
  result = subprocess.run([sys.executable, "-c", script, "--help"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
  assert flag in result.stdout, result.stdout[-2000:]


@pytest.mark.slow
def test_a_rerun_with_other_settings_is_refused_and_the_finished_run_stays_as_it_was(tmp_path):
  run_dir = tmp_path / "run"
  args = [f"--flagfile={SMOKE_FLAGFILE}", f"--run_dir={run_dir}", "--cycles=1"]
  run_cli(*args)
  finished = {name: (run_dir / name).read_bytes() for name in ("results.json", "config.json")}
  result = run_cli(*args, "--synth_lr=0.002", "--hard_threshold=-0.2", check=False)
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      f"terse_tf: error: --run_dir={run_dir} holds a run with other settings (--hard_threshold: 0.0 there, -0.2 "
      "now; --synth_lr: 0.001 there, 0.002 now): resuming would mix two runs. Rerun with its settings (its "
      f"command is in {run_dir}/config.json), use another --run_dir, or add --fresh to start over")
  assert {name: (run_dir / name).read_bytes() for name in finished} == finished
  # Where and how often a run writes changes nothing it computes: the finished run says it is finished.
  result = run_cli(*args, "--checkpoint_every_steps=7", "--eval_batch_size=100")
  assert "holds a finished run" in result.stderr
  assert (run_dir / "config.json").read_bytes() == finished["config.json"]  # Still the command that made it.


def test_config_json_records_the_command_that_resumes_the_run():
  """Rerun as config.json has it, the command resumes the run: the module, not the path of the file it ran
  from, and without --fresh, which would start it over."""
  from terse_tf import train

  argv = [os.path.join(REPO_ROOT, "terse_tf", "train.py"), "--flagfile=configs/my run.flags", "--fresh",
          "--seed=2"]
  assert train.resume_command(argv) == "python -m terse_tf.train '--flagfile=configs/my run.flags' --seed=2"
  assert train.resume_command(["/usr/bin/terse-train", "--fresh=true"]) == "python -m terse_tf.train"
