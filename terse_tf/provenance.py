"""Where a figure came from: the commit, the date and the machine, recorded beside benchmark and experiment
results (machines here differ up to 3x in speed, so a time means little without them)."""

from __future__ import annotations

import os
import platform
import subprocess
import time


def cpu_model() -> str:
  """The CPU's model name on Linux (platform.processor() there says only x86_64); "" elsewhere."""
  try:
    with open("/proc/cpuinfo") as f:
      return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
  except OSError:
    return ""


def commit() -> str:
  """The commit of the checkout terse_tf runs from, with "+changes" when tracked files differ from it; ""
  for an installed package (no git checkout) or without git."""
  def git(*arguments: str) -> str:
    return subprocess.run(["git", *arguments], cwd=os.path.dirname(os.path.abspath(__file__)),
                          capture_output=True, text=True, check=True).stdout.strip()
  try:
    return git("rev-parse", "--short", "HEAD") + ("+changes" if git("status", "--porcelain",
                                                                       "--untracked-files=no") else "")
  except (OSError, subprocess.CalledProcessError):
    return ""


def describe() -> dict:
  """{"commit", "date" (UTC), "cpu": model and cores} of this run."""
  return {"commit": commit(), "date": time.strftime("%Y-%m-%d", time.gmtime()),
          "cpu": f"{cpu_model() or platform.processor() or platform.machine()} ({os.cpu_count()} cores)"}
