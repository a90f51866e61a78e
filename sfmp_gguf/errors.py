"""The one error type the command line turns into a one-line message (never a traceback)."""


class InputError(RuntimeError):
    """A user-facing problem with an input or output, worded as ``<path>: <problem>``."""
