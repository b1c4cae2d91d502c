r"""What an experiment's --workers buys: one short photo_digits run alone on every CPU against as many runs as
there are workers side by side, each pinned to its own share of the CPUs (as experiments/common.run_arms pins
its workers).

    python bench/experiment_workers.py [--workers=2] [--rounds=2] [--out=bench/results/experiment_workers.json]

A run is `python -m terse_tf.train` with --run_flags (default: the photo_digits flagfile at its experiment's
scale, one baseline epoch and one sleep cycle with S, without D), each in a fresh run directory and process,
so the figures include what a worker pays once (imports, building the task). The two layouts alternate for
--rounds rounds. Figure: throughput ratio = workers x (one run alone) / (the side-by-side runs' wall time);
goal >= 1.2, the gain for which --workers=2 is the experiment flagfile's setting.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import report as bench_report  # pylint: disable=wrong-import-position
from terse_tf.experiments import common  # pylint: disable=wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
flags.DEFINE_integer("workers", 2, "Runs side by side, each pinned to its own CPUs.", lower_bound=2)
flags.DEFINE_integer("rounds", 2, "Rounds of (one run alone, the runs side by side).", lower_bound=1)
flags.DEFINE_list("run_flags", [f"--flagfile={REPO}/configs/photo_digits.flags", "--photo_num_test=400",
                                "--photo_num_val=200", "--baseline_epochs=1", "--cycles=1", "--nodiscriminator",
                                "--synth_warmup_steps=0", "--synth_max_steps=20", "--hard_per_class=100",
                                "--finetune_steps=40", "--noexport"], "terse_tf.train's flags for one run.")
flags.DEFINE_string("out", os.path.join(REPO, "bench", "results", "experiment_workers.json"),
                    "Where to write the figures.")
FLAGS = flags.FLAGS
GOAL_RATIO = 1.2


def run_side_by_side(root: str, cpu_shares: list[set[int] | None]) -> float:
  """Wall time of one run per entry of `cpu_shares` (None: not pinned), started together."""
  started = time.monotonic()
  processes = []
  for index, share in enumerate(cpu_shares):
    command = [sys.executable, "-m", "terse_tf.train", *FLAGS.run_flags, f"--run_dir={root}/run{index}",
               f"--seed={index}"]
    pin = (lambda cpus=share: os.sched_setaffinity(0, cpus)) if share is not None else None
    processes.append(subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      preexec_fn=pin))
  for process in processes:
    _, stderr = process.communicate()
    if process.returncode:
      raise SystemExit(f"a run failed:\n{stderr.decode()[-3000:]}")
  return time.monotonic() - started


def main(argv):
  del argv
  shares = common.cpu_shares(FLAGS.workers)
  alone, together = [], []
  for _ in range(FLAGS.rounds):
    with tempfile.TemporaryDirectory() as root:
      alone.append(run_side_by_side(f"{root}/alone", [None]))
      together.append(run_side_by_side(f"{root}/together", shares))
  ratios = [FLAGS.workers * a / t for a, t in zip(alone, together)]
  report = {**bench_report.header(GOAL_RATIO), "workers": FLAGS.workers,
            "cpu_shares": [sorted(share) for share in shares], "run_flags": FLAGS.run_flags,
            "one_run_alone_s": [round(a, 1) for a in alone], "side_by_side_s": [round(t, 1) for t in together],
            "throughput_ratio_per_round": [round(r, 2) for r in ratios],
            "throughput_ratio": round(sum(ratios) / len(ratios), 2)}
  print(f"one run alone {alone} s; {FLAGS.workers} pinned runs side by side {together} s: throughput ratio "
        f"{report['throughput_ratio']:.2f}x (goal >= {GOAL_RATIO}x)")
  bench_report.write(report, FLAGS.out)


if __name__ == "__main__":
  app.run(main)
