"""The one base class of every error that describes bad input rather than a bug.

A file that is not a checkpoint, weights that do not fit, a value a command cannot use: each is a subclass of
:class:`VHeatError` (and of the built-in error it always was, ``ValueError`` or ``RuntimeError``), so that a
command line reports it in one line (``classification.core.cli.exit_on_errors``) and a library user can catch
them all at once.
"""


class VHeatError(Exception):
    """Bad input the user can fix: the message names it (a path, a key, a shape) in one line."""
