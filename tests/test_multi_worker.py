"""MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1 run the smoke config, lose a worker,
are relaunched, resume from the chief's checkpoint and finish; only the chief writes the run directory."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from conftest import REPO_ROOT, SMOKE_FLAGFILE

pytestmark = pytest.mark.slow

# Runs the launcher in the second worker behind a Python audit hook that ends the process (exit 97) at its
# first write, rename, removal or directory creation under the run directory.
WATCHED_LAUNCHER = """
import os, runpy, sys
run_dir = os.path.abspath(sys.argv[1])
WRITES = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

def inside(path):
  try:
    return os.path.abspath(os.fsdecode(path)).startswith(run_dir + os.sep)
  except TypeError:  # A file descriptor.
    return False

def hook(event, args):
  if event == "open":
    writes = (args[1] is not None and any(c in args[1] for c in "wax+")) or bool((args[2] or 0) & WRITES)
    paths = [args[0]] if writes else []
  elif event in ("os.rename", "shutil.move"):  # Both ends change.
    paths = args[:2]
  elif event == "shutil.copyfile":  # (source, destination)
    paths = args[1:2]
  elif event in ("os.remove", "os.rmdir", "os.mkdir", "os.chmod", "shutil.rmtree", "os.truncate"):
    paths = args[:1]
  else:
    return
  for path in paths:
    if isinstance(path, (str, bytes, os.PathLike)) and inside(path):
      sys.stderr.write(f"WORKER WROTE IN THE RUN DIRECTORY: {event} {args}\\n")
      sys.stderr.flush()
      os._exit(97)

sys.addaudithook(hook)
sys.argv = ["terse_tf.train", *sys.argv[2:]]
runpy.run_module("terse_tf.train", run_name="__main__", alter_sys=True)
"""


def free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def launch(run_dir, args, log_dir, tag):
  """Starts two workers (worker 0 is the chief; worker 1 runs watched) with the smoke flagfile; returns
  their processes."""
  cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
  flags = [f"--flagfile={SMOKE_FLAGFILE}", f"--run_dir={run_dir}", "--affnist_cache_dir=",
           "--strategy=multi_worker", *args]
  commands = [[sys.executable, "-m", "terse_tf.train", *flags],
              [sys.executable, "-c", WATCHED_LAUNCHER, str(run_dir), *flags]]
  processes = []
  for index, command in enumerate(commands):
    env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
    with open(os.path.join(log_dir, f"{tag}-worker{index}.log"), "w") as log:
      processes.append(subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
  return processes


def read_log(log_dir, tag, index):
  with open(os.path.join(log_dir, f"{tag}-worker{index}.log")) as f:
    return f.read()


def checkpointed_state(run_dir):
  """(phase, committed cache shards) of the chief's latest checkpoint, or None while none is readable."""
  try:
    reader = tf.train.load_checkpoint(os.path.join(run_dir, "checkpoints"))
    return (int(reader.get_tensor("phase/.ATTRIBUTES/VARIABLE_VALUE")),
            int(reader.get_tensor("cache/committed_shards/.ATTRIBUTES/VARIABLE_VALUE")))
  except (ValueError, OSError, tf.errors.OpError):
    return None


def test_two_workers_lose_one_resume_and_finish_with_only_the_chief_writing(tmp_path):
  run_dir, log_dir = str(tmp_path / "run"), str(tmp_path)
  args = ["--hard_per_class=6", "--synth_max_steps=40", "--checkpoint_every_steps=2"]
  # 1. Kill the second worker once the chief has checkpointed cached hard composites mid-synthesis: the
  #    chief must stop with one line that says what to do, soon, instead of waiting forever.
  chief, worker = launch(run_dir, args, log_dir, "first")
  deadline = time.time() + 300
  while time.time() < deadline and chief.poll() is None:
    state = checkpointed_state(run_dir)
    if state is not None and state[0] == 1 and state[1] > 0:
      break
    time.sleep(0.1)
  worker.send_signal(signal.SIGKILL)
  worker.wait()
  try:
    chief.wait(timeout=120)
  finally:
    chief.kill()
  first = read_log(log_dir, "first", 0)
  assert state is not None and state[0] == 1 and state[1] > 0, first[-3000:]
  assert chief.returncode == 1, first[-3000:]
  assert "terse_tf: error: another worker of this multi-worker run stopped" in first, first[-3000:]
  assert "relaunch them all with the same command" in first
  scratch = re.search(r"scratch directory (\S+)", read_log(log_dir, "first", 1)).group(1)
  assert os.path.isdir(os.path.join(scratch, "checkpoints"))  # The second worker saved, but there.

  # 2. Relaunch both with the same command: they resume where the chief's checkpoint is and finish.
  processes = launch(run_dir, args, log_dir, "second")
  for process in processes:
    process.wait(timeout=400)
  logs = [read_log(log_dir, "second", index) for index in range(2)]
  for process, log in zip(processes, logs):
    assert process.returncode == 0, log[-3000:]
    assert "resumed from" in log
    assert "baseline epoch" not in log  # Not redone.
  with open(os.path.join(run_dir, "results.json")) as f:
    results = json.load(f)
  assert results["cycles_completed"] == 2 and results["hard_examples"] == 2 * 6 * 10
  # The workers took the same steps: their T's agree on the test set.
  evaluations = [re.findall(r"eval after cycle 2: .*affnist_test_accuracy ([0-9.]+)", log) for log in logs]
  assert evaluations[0] and evaluations[0] == evaluations[1]

  # 3. Only the chief wrote the run directory. The second worker ran watched (no Python-level write there);
  #    what TensorFlow writes from C++ is checked by its traces: TensorBoard event files only from the
  #    chief's processes, one export version, and the second worker's scratch gone (the relaunch cleared
  #    what the killed worker left, the clean exit removed its own).
  chief_pids = {str(chief.pid), str(processes[0].pid)}
  event_files = os.listdir(os.path.join(run_dir, "tensorboard"))
  # events.out.tfevents.<time>.<host>.<pid>.<count>.v2
  writers = {re.search(r"\.(\d+)\.\d+\.v2$", name).group(1) for name in event_files}
  assert event_files and writers <= chief_pids, (event_files, chief_pids)
  assert sorted(os.listdir(os.path.join(run_dir, "export", "synthesizer"))) == ["1"]
  assert not os.path.exists(scratch)


def test_multi_worker_without_tf_config_or_after_other_ops_is_one_clear_error(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
  result = subprocess.run([sys.executable, "-m", "terse_tf.train", f"--flagfile={SMOKE_FLAGFILE}",
                           f"--run_dir={tmp_path / 'run'}", "--strategy=multi_worker"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 1 and "needs the TF_CONFIG environment variable" in result.stderr
  assert not (tmp_path / "run").exists()
  # The strategy configures the runtime's collective ops, which only a process that has run no op can do.
  late = ("import tensorflow as tf; tf.constant(1.0) + 1; from terse_tf import distribute; "
          "distribute.build_strategy('multi_worker')")
  env["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{free_ports(1)[0]}"]},
                                 "task": {"type": "worker", "index": 0}})
  result = subprocess.run([sys.executable, "-c", late], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
  assert "ConfigError: --strategy=multi_worker must be chosen before the process runs any TensorFlow op" in (
      result.stderr)
