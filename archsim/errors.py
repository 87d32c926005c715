"""The error hierarchy. Every error a user can cause is an ArchsimError; the CLI prints it on one
line and exits with status 2. Anything else is a bug and keeps its traceback."""

from __future__ import annotations


class ArchsimError(Exception):
    """Base of all user-facing errors."""


class ConfigError(ArchsimError):
    """A chip (or workload) YAML file is wrong. Names the file, the YAML path and what was expected."""

    def __init__(self, file: str | None, yaml_path: str, message: str, line: int | None = None):
        self.file = file
        self.yaml_path = yaml_path
        self.message = message
        self.line = line
        where = file or "<config>"
        if line is not None:
            where += f":{line}"
        if yaml_path:
            where += f": {yaml_path}"
        super().__init__(f"{where}: {message}")


class WorkloadError(ArchsimError):
    """A workload (network, weights file) is wrong or does not fit."""


class MappingError(ArchsimError):
    """A network cannot be placed on the chip as configured."""


class DataError(ArchsimError):
    """A data file (dataset, weights, golden file) is missing or malformed."""
