"""Errors that carry a message meant for the user.

Every problem a user can fix (a bad config value, a missing file, a run directory that already
exists) raises :class:`BetaVAEError`. The CLI prints its message on one line and exits with code 2;
the Python API lets it propagate. Its message always names the problem and the fix.
"""

from __future__ import annotations


class BetaVAEError(Exception):
    """A problem the user can fix; the message says what is wrong and how to fix it."""


class ConfigError(BetaVAEError, ValueError):
    """A configuration value or command-line argument is invalid."""


class DataError(BetaVAEError):
    """A dataset file or directory is missing, unreadable or malformed."""


class CheckpointError(BetaVAEError):
    """A run directory or checkpoint is missing, malformed or incompatible."""


class RunInUseError(BetaVAEError):
    """Another process is writing the run directory (it holds the directory's lock)."""


class TrainingError(BetaVAEError):
    """Training cannot go on (for example the loss became NaN)."""
