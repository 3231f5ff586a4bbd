"""The errors a stage reports as one line (fix your input, config or install), in one place.
Anything else — a broken import inside sdlab included — keeps its traceback."""

from __future__ import annotations


class ConfigError(ValueError):
    """params.yaml is unreadable or does not match the schema."""


class DataError(ValueError):
    """A data table is missing, malformed or empty where it must not be."""


class WorkerError(RuntimeError):
    """A worker process exited with an error (it printed its own traceback first)."""


class MissingDependency(ImportError):
    """An optional package a setting needs is not installed; the message names the setting and
    the package to install."""


EXPECTED_ERRORS = (ConfigError, DataError, FileNotFoundError, FloatingPointError, MissingDependency, WorkerError)
