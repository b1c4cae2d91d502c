"""What every benchmark's JSON starts with (the command, the machine, the time) and how it is written."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time

import tensorflow as tf


def header(goal_ratio: float) -> dict:
  gpus = tf.config.list_physical_devices("GPU")
  device = (f"GPU: {gpus[0].name}" if gpus else
            f"CPU ({os.cpu_count()} cores, {cpu_model() or platform.processor() or platform.machine()})")
  return {"command": shlex.join(["python", *sys.argv]), "device": device, "tensorflow": tf.__version__,
          "commit": commit(), "date": time.strftime("%Y-%m-%d", time.gmtime()), "unix_time": int(time.time()),
          "goal_ratio": goal_ratio}


def cpu_model() -> str:
  """The CPU's model name on Linux (platform.processor() there says only x86_64); "" elsewhere."""
  try:
    with open("/proc/cpuinfo") as f:
      return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
  except OSError:
    return ""


def commit() -> str:
  """The repository's commit, with "+changes" when the working tree differs from it; "" outside git."""
  def git(*arguments: str) -> str:
    return subprocess.run(["git", *arguments], cwd=os.path.dirname(os.path.abspath(__file__)),
                          capture_output=True, text=True, check=True).stdout.strip()
  try:
    return git("rev-parse", "--short", "HEAD") + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")
  except (OSError, subprocess.CalledProcessError):
    return ""


def write(report: dict, path: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(report, f, indent=2)
  print(f"wrote {path}")
