"""The error hierarchy and the exit statuses of the ``archsim`` command.

Every error a user can cause is an :class:`ArchsimError`; the CLI prints it on one line and exits
with status 2. Anything else is a bug: the CLI prints one line asking for a report and writes the
traceback to a log file it names (status 3).
"""

from __future__ import annotations

# Exit statuses of the archsim command (README "Exit statuses")
EXIT_OK = 0
EXIT_REGRESSION = 1      # archsim regress: a cycle count moved (only regress uses it)
EXIT_BAD_INPUT = 2       # an ArchsimError: bad file, option or value; unwritable output
EXIT_INTERNAL = 3        # a bug in archsim (traceback in the log file the message names)
EXIT_INTERRUPTED = 130   # Ctrl-C (SIGINT); 128 + 15 for SIGTERM


class ArchsimError(Exception):
    """Base of all user-facing errors."""


class ConfigError(ArchsimError):
    """A chip (or workload) YAML file is wrong. Names the file, the YAML path and what was expected."""

    def __init__(self, file: str | None, yaml_path: str, message: str, line: int | None = None, *,
                 where: str | None = None):
        self.file = file
        self.yaml_path = yaml_path
        self.message = message
        self.line = line
        if where is None:   # e.g. "--set chip.tiles.count=3" for a value given on the command line
            where = file or "<config>"
            if line is not None:
                where += f":{line}"
            if yaml_path:
                where += f": {yaml_path}"
        self.where = where
        super().__init__(f"{where}: {message}")


class WorkloadError(ArchsimError):
    """A workload (network, weights file) is wrong or does not fit."""


class MappingError(ArchsimError):
    """A network cannot be placed on the chip as configured."""


class DataError(ArchsimError):
    """A data file (dataset, weights, golden file) is missing or malformed."""


class OutputError(ArchsimError):
    """An output (``--out`` folder, golden file, weights file) cannot be written."""


class OptionError(ArchsimError):
    """A command-line option (or the API argument behind it) is out of range: names the option."""

    def __init__(self, option: str, value, expected: str):
        self.option, self.value, self.expected = option, value, expected
        super().__init__(f"{option} {value}: expected {expected}")
