"""What the three launchers (train, generate, serve) share: how they start and how they end."""

from __future__ import annotations

import sys
from typing import Callable, Iterable, NoReturn

from absl import app, flags

# A shell's status for a command that Ctrl-C (SIGINT) ended: 128 + the signal's number.
INTERRUPTED_EXIT_STATUS = 130


def run(main: Callable[[list[str]], None], module_name: str, other_flags: Iterable[str] = ()) -> None:
  """app.run(main), with `--help` listing the flags `module_name` defines and `other_flags` (those the
  launcher reads that other modules define). absl lists the flags of the module sys.argv[0] names, which for a
  console script (terse-train, ...) is its wrapper, not ours."""
  for flag in flags.FLAGS.get_key_flags_for_module(module_name):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  for name in other_flags:
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
  app.run(main)


def exit_interrupted(message: str) -> NoReturn:
  """Ends a Ctrl-C'd launcher with one line on stderr and the status a shell expects of it."""
  print(message, file=sys.stderr)
  sys.exit(INTERRUPTED_EXIT_STATUS)
