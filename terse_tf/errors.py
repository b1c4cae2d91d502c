"""Errors a user can act on: each names the flag or file at fault and what was expected."""


class TerseError(Exception):
  """Base class; the launcher prints these as one line instead of a traceback."""


class ConfigError(TerseError):
  """A flag value that cannot work (names the flag)."""


class DataError(TerseError):
  """A missing or malformed data file (names the file and what was expected)."""


class NonFiniteLossError(TerseError):
  """A loss became NaN or inf; training stopped and the last good checkpoint is kept."""


class WorkerLostError(TerseError):
  """A worker of a multi-worker run stopped or cannot be reached; every worker must be relaunched."""
