"""The one error type the command line turns into a one-line message (never a traceback)."""


class InputError(RuntimeError):
    """A user-facing problem with an input or output, worded as ``<path>: <problem>``."""


def is_full_disk(err: OSError) -> bool:
    """A write that failed for want of space (a full disk, a quota, or a file-size limit)."""
    import errno

    return err.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
