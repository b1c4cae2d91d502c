r"""What an experiment's --workers buys: N short photo_digits runs (seeds 0..N-1) one after another, each on
every CPU, against the same N runs side by side, each pinned to its own share of the CPUs (as
experiments/common.run_arms pins its N workers).

    python bench/experiment_workers.py [--workers=2] [--rounds=2] [--out=bench/results/experiment_workers.json]

A run is `python -m terse_tf.train` with --run_flags (default: the photo_digits flagfile at its experiment's
scale on the bundled photos, one baseline epoch and one sleep cycle with S, without D), each in a fresh run
directory and process, so the figures include what an experiment's worker pays once per process (imports,
building the task). The two layouts alternate for --rounds rounds. Figure: throughput ratio = (the runs one
after another) / (the runs side by side), in wall time; goal >= 1.2, the gain for which --workers=2 is the
experiment flagfile's setting.
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
flags.DEFINE_integer("rounds", 1, "Rounds of (the runs one after another, the runs side by side).",
                     lower_bound=1)
flags.DEFINE_list("run_flags", ["--flagfile=configs/photo_digits.flags", "--photo_num_test=400",
                                "--photo_num_val=200", "--baseline_epochs=1", "--cycles=1", "--nodiscriminator",
                                "--synth_warmup_steps=0", "--synth_max_steps=20", "--hard_per_class=100",
                                "--finetune_steps=40", "--noexport"],
                  "terse_tf.train's flags for one run, which runs in the repository root.")
flags.DEFINE_string("out", os.path.join(REPO, "bench", "results", "experiment_workers.json"),
                    "Where to write the figures.")
FLAGS = flags.FLAGS
GOAL_RATIO = 1.2


def start(root: str, seed: int, cpus: set[int] | None) -> subprocess.Popen:
  """Starts the run of `seed` under `root`, pinned to `cpus` (None: every CPU)."""
  command = [sys.executable, "-m", "terse_tf.train", *FLAGS.run_flags, f"--run_dir={root}/seed{seed}",
             f"--seed={seed}"]
  pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus is not None else None
  return subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=pin)


def finish(process: subprocess.Popen) -> None:
  _, stderr = process.communicate()
  if process.returncode:
    raise SystemExit(f"a run failed:\n{stderr.decode()[-3000:]}")


def one_after_another(root: str) -> float:
  started = time.monotonic()
  for seed in range(FLAGS.workers):
    finish(start(root, seed, None))
  return time.monotonic() - started


def side_by_side(root: str, shares: list[set[int]]) -> float:
  started = time.monotonic()
  for process in [start(root, seed, cpus) for seed, cpus in enumerate(shares)]:
    finish(process)
  return time.monotonic() - started


def main(argv):
  del argv
  shares = common.cpu_shares(FLAGS.workers)
  sequential, parallel = [], []
  for _ in range(FLAGS.rounds):
    with tempfile.TemporaryDirectory() as root:
      sequential.append(one_after_another(f"{root}/one_after_another"))
      parallel.append(side_by_side(f"{root}/side_by_side", shares))
  ratios = [s / p for s, p in zip(sequential, parallel)]
  report = {**bench_report.header(GOAL_RATIO), "workers": FLAGS.workers,
            "cpu_shares": [sorted(share) for share in shares], "run_flags": FLAGS.run_flags,
            "one_after_another_s": [round(s, 1) for s in sequential],
            "side_by_side_s": [round(p, 1) for p in parallel],
            "throughput_ratio_per_round": [round(r, 2) for r in ratios],
            "throughput_ratio": round(sum(ratios) / len(ratios), 2)}
  print(f"{FLAGS.workers} runs one after another {report['one_after_another_s']} s, side by side pinned "
        f"{report['side_by_side_s']} s: throughput ratio {report['throughput_ratio']:.2f}x (goal >= "
        f"{GOAL_RATIO}x)")
  bench_report.write(report, FLAGS.out)


if __name__ == "__main__":
  app.run(main)
