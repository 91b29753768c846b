"""The one exception type for bad input, and the one sentence for an operating-system error.

Every entry point (command line, Slicer logic, training) raises :class:`UserInputError` with one
sentence that names the file or value and says what is wrong; the command line prints that
sentence and exits with :data:`EXIT_BAD_INPUT`, the Slicer module shows it in a message box.
An :class:`OSError` (a full disk, a read-only folder, a file where a folder should be) becomes
such a sentence through :func:`os_error`, the only place that words them.
"""

from __future__ import annotations

import errno
import os

__all__ = ["EXIT_BAD_INPUT", "UserInputError", "os_error"]

EXIT_BAD_INPUT = 2
"""The command line's exit status for bad input (1 is a crash); the Slicer module reads it."""


class UserInputError(Exception):
    """A problem with what the user gave us (a file, a value), not a bug in the program."""


_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "the file system is read-only",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.ENOENT: "no such file or folder",
    errno.EEXIST: "it already exists",
    errno.ENAMETOOLONG: "the name is too long",
}


def os_error(error: OSError, path: str | os.PathLike | None = None, action: str = "write") -> UserInputError:
    """``error`` as one sentence naming the path: ``"out/a.json: could not write (no space left on the device)."``.

    ``path`` defaults to the error's own file name; ``action`` says what was being done
    (``write``, ``read``, ``create the folder``...). Raise the result ``from None``: the sentence
    says all, and no traceback is shown.
    """
    where = path if path is not None else (error.filename if error.filename is not None else "a file")
    reason = _REASONS.get(error.errno or 0) or (error.strerror or str(error) or type(error).__name__).rstrip(".")
    reason = reason[:1].lower() + reason[1:]
    return UserInputError(f"{os.fspath(where)}: could not {action} ({reason}).")
