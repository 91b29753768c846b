"""The one exception type for bad input, and the one way operating-system errors become it.

Every entry point (command line, Slicer logic, training) raises :class:`UserInputError` with one
sentence that names the file or value and says what is wrong; the command line prints that
sentence and exits with :data:`EXIT_BAD_INPUT`, the Slicer module shows it in a message box.

An :class:`OSError` (a full disk, a folder that may not be written) becomes such a sentence
through :func:`os_error` (:func:`reported_os_errors` around a block): it names the file the user
knows, never our temporary file, and says what was being done and why it failed. Output places are
checked before any work by :func:`SCPMNoduleLib.temp_files.check_output_folder`. Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

from .temp_names import temp_target

__all__ = ["EXIT_BAD_INPUT", "UserInputError", "os_error", "os_error_reason", "reported_os_errors"]

EXIT_BAD_INPUT = 2
"""The command line's exit status for bad input (1 is a crash); the Slicer module reads it."""


class UserInputError(Exception):
    """A problem with what the user gave us (a file, a value), not a bug in the program."""


_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file is too large for the file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "the file system is read-only",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.ENOENT: "no such file or folder",
    errno.EEXIST: "it already exists",
    errno.ENAMETOOLONG: "the name is too long",
}
_WRITE_ONLY = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
"""Errors only a write can meet: their sentence says "could not write" even when the caller did not."""


def os_error_reason(error: OSError) -> str:
    """Why ``error`` happened, in words that fit inside a sentence (``"no space left on the device"``)."""
    reason = _REASONS.get(error.errno or 0) or (error.strerror or str(error) or type(error).__name__).rstrip(".")
    return reason[:1].lower() + reason[1:]


def os_error(error: OSError, path: str | os.PathLike | None = None, action: str | None = None) -> UserInputError:
    """``error`` as one sentence naming the file: ``"out/a.json: could not write (no space left on the device)."``.

    Raise the result ``from None``: the sentence says all, and no traceback is shown.

    Args:
        error: the operating-system error.
        path: the file to name; by default the error's ``filename2`` (a rename's target), else its
            ``filename``. Our temporary file ``.NAME.<pid>.<random>.tmp`` is named as the file
            ``NAME`` it was to become (:func:`~SCPMNoduleLib.temp_names.temp_target`).
        action: what was being done, as a verb (``"write"``, ``"read"``, ``"create the folder"``);
            without it the sentence is ``"<path>: <reason>."``, except for the errors only a write
            can meet (a full disk, a read-only file system), which say ``could not write``.
    """
    name = path if path is not None else error.filename2 if error.filename2 is not None else error.filename
    where = str(temp_target(os.fsdecode(name))) if name is not None else "a file"
    if action is None and error.errno in _WRITE_ONLY:
        action = "write"
    reason = os_error_reason(error)
    return UserInputError(f"{where}: could not {action} ({reason})." if action else f"{where}: {reason}.")


@contextlib.contextmanager
def reported_os_errors(action: str | None = None, path: str | os.PathLike | None = None) -> Iterator[None]:
    """Turn an :class:`OSError` raised in the block into a :class:`UserInputError` (:func:`os_error`)."""
    try:
        yield
    except OSError as error:
        raise os_error(error, path, action) from None
