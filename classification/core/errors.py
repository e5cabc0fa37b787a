"""The application's own errors: bad input to a command line, a checkpoint that does not fit.

Both derive from the library's :class:`~classification.models.errors.VHeatError`, which every command line
answers with one line (:func:`classification.core.cli.exit_on_errors`).
"""
from classification.models.errors import VHeatError


class UsageError(VHeatError, ValueError):
    """An argument has a value the command cannot use; the message names the argument."""


class CheckpointError(VHeatError, RuntimeError):
    """A checkpoint does not fit the model built from the config (or its optimizer state this run)."""
