"""Where a run is in the schedule and how long is left, as its log lines say."""

import pytest

from terse_tf import progress as progress_lib
from terse_tf.progress import PHASE_BASELINE, PHASE_FINETUNE, PHASE_SYNTHESIZE


@pytest.mark.parametrize("seconds,text", [(0.4, "0s"), (37, "37s"), (727, "12m07s"), (14520, "4h02m"),
                                          (float("inf"), "unknown time")])
def test_durations_read_at_a_glance(seconds, text):
  assert progress_lib.format_duration(seconds) == text


def test_run_eta_extrapolates_the_rate_through_the_cycles():
  progress = progress_lib.Progress(cycles=8, elapsed_before=100.0)
  assert "run ETA" not in progress.describe(0.0, cycles_done=2.0)  # Nothing timed yet.
  progress._first_mark = (progress._first_mark[0] - 60.0, 2.0)  # One cycle took a minute...
  assert progress.describe(0.5, cycles_done=3.0).endswith("run ETA 5m00s")  # ...five remain.
  assert progress.describe(0.5).startswith("elapsed 1m4")  # Time before a resume counts.


def test_a_cycles_synthesis_and_fine_tuning_count_a_half_each():
  assert progress_lib.cycles_done(PHASE_BASELINE, 0, 0.5) is None
  assert progress_lib.cycles_done(PHASE_SYNTHESIZE, 3, 0.5) == 2.25
  assert progress_lib.cycles_done(PHASE_FINETUNE, 3, 1.0) == 3.0
  assert progress_lib.where(PHASE_BASELINE, 0, 8) == "baseline"
  assert progress_lib.where(PHASE_FINETUNE, 3, 8) == "cycle 3/8 finetune"
