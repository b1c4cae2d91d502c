"""What every benchmark's JSON starts with (the command, the machine, the time) and how it is written."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time

import tensorflow as tf

from terse_tf import provenance  # The benchmark scripts put the repository on sys.path first.


def header(goal_ratio: float) -> dict:
  gpus = tf.config.list_physical_devices("GPU")
  machine = provenance.describe()
  return {"command": shlex.join(["python", *sys.argv]),
          "device": f"GPU: {gpus[0].name}" if gpus else f"CPU: {machine['cpu']}", "tensorflow": tf.__version__,
          "commit": machine["commit"], "date": machine["date"], "unix_time": int(time.time()),
          "goal_ratio": goal_ratio}


def write(report: dict, path: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(report, f, indent=2)
  print(f"wrote {path}")
