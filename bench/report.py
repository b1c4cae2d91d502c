"""What every benchmark's JSON starts with (the command, the machine, the time) and how it is written."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time

import tensorflow as tf


def header(goal_ratio: float) -> dict:
  gpus = tf.config.list_physical_devices("GPU")
  device = (f"GPU: {gpus[0].name}" if gpus else
            f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})")
  return {"command": shlex.join(["python", *sys.argv]), "device": device, "tensorflow": tf.__version__,
          "unix_time": int(time.time()), "goal_ratio": goal_ratio}


def write(report: dict, path: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(report, f, indent=2)
  print(f"wrote {path}")
