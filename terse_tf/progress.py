"""Where a run is in the sleep-cycle schedule (its phases) and how long is left, for the log."""

from __future__ import annotations

import math
import time

# The schedule's phases, in order (paper §3): T's baseline, then per cycle S's synthesis and T's fine-tuning.
PHASE_BASELINE, PHASE_SYNTHESIZE, PHASE_FINETUNE, PHASE_DONE = range(4)
PHASE_NAMES = ("baseline", "synthesize", "finetune", "done")


def format_duration(seconds: float) -> str:
  """4h02m, 12m07s or 37s; "unknown time" for an infinite or undefined one."""
  if not math.isfinite(seconds):
    return "unknown time"
  seconds = int(round(seconds))
  if seconds >= 3600:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
  if seconds >= 60:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds}s"


def cycles_done(phase: int, cycle: int, phase_done: float) -> float | None:
  """Cycles completed, fractionally (a cycle's synthesis and its fine-tuning count as a half each), in
  `phase` of `cycle` with `phase_done` of it done; None during the baseline."""
  if phase == PHASE_BASELINE:
    return None
  half = 0.0 if phase == PHASE_SYNTHESIZE else 0.5
  return cycle - 1 + half + 0.5 * phase_done


def where(phase: int, cycle: int, cycles: int) -> str:
  """"baseline" or "cycle 3/8 synthesize": the part of the schedule a run is in."""
  if phase == PHASE_BASELINE:
    return PHASE_NAMES[phase]
  return f"cycle {cycle}/{cycles} {PHASE_NAMES[phase]}"


class Progress:
  """Where a run is and how long is left, for its log lines.

  A phase's ETA extrapolates the time it has taken so far over the share of it done. The run's ETA
  extrapolates the rate at which this process has gone through cycles (a cycle's synthesis and its
  fine-tuning count as a half each), so it exists once some cycle work has been timed.
  """

  def __init__(self, cycles: int, elapsed_before: float):
    self.cycles = cycles
    self._started, self._elapsed_before = time.monotonic(), elapsed_before
    self._phase_started = self._started
    self._first_mark: tuple[float, float] | None = None  # (time, cycles done) when cycle work was first seen.

  def elapsed(self) -> float:
    """Seconds the run has trained, across resumes."""
    return self._elapsed_before + time.monotonic() - self._started

  def start_phase(self) -> None:
    self._phase_started = time.monotonic()

  def describe(self, phase_done: float, cycles_done: float | None = None) -> str:
    """`phase_done` in [0, 1] of the current phase; `cycles_done` (fractional), None before cycle 1."""
    now = time.monotonic()
    phase_elapsed = now - self._phase_started
    parts = [f"elapsed {format_duration(self.elapsed())}"]
    if phase_done > 0:
      parts.append(f"phase ETA {format_duration(phase_elapsed * (1 - phase_done) / phase_done)}")
    if cycles_done is not None:
      if self._first_mark is None:
        self._first_mark = (now, cycles_done)
      mark_time, mark_cycles = self._first_mark
      if cycles_done > mark_cycles:
        rate = (now - mark_time) / (cycles_done - mark_cycles)
        parts.append(f"run ETA {format_duration(rate * (self.cycles - cycles_done))}")
    return ", ".join(parts)
