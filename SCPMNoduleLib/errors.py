"""The one exception type for bad input, and the one way operating-system errors become it.

Every entry point (command line, Slicer logic, training) raises :class:`UserInputError` with one
sentence that names the file or value and says what is wrong; the command line prints that
sentence and exits with :data:`EXIT_BAD_INPUT`, the Slicer module shows it in a message box.

An :class:`OSError` (a read-only folder, a full disk, a file where a folder should be) becomes
such a sentence through :func:`os_error_message` (:func:`reported_os_errors` around a block), and
:func:`check_output_folder` and :func:`check_output_file` find the output problems before any work
starts. Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "EXIT_BAD_INPUT", "UserInputError", "check_output_file", "check_output_folder", "os_error_message",
    "os_error", "reported_os_errors",
]

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


def _user_path(name: str | bytes | os.PathLike) -> str:
    """The path a user knows: our temporary file ``folder/.NAME.XXXXXX.tmp`` (the naming of
    :func:`SCPMNoduleLib.io.atomic_write`) stands for the file it was to become, ``folder/NAME``."""
    path = Path(os.fsdecode(name))
    stem = path.name
    if stem.startswith(".") and stem.endswith(".tmp") and stem.count(".") >= 3:
        return str(path.parent / stem[1:].rsplit(".", 2)[0])
    return str(path)


def os_error_message(error: OSError, done: str | None = None, path: str | os.PathLike | None = None) -> str:
    """One sentence for an operating-system error: ``"<path>: could not be <done> (<reason>)."``,
    or ``"<path>: <reason>."`` without ``done``.

    Args:
        error: the error; its ``filename2`` (a rename's target), else its ``filename``, names the path
            (our temporary file ``.NAME.XXXXXX.tmp`` is named as the file ``NAME`` it was to become).
        done: what was being done to it, as a past participle (``"written"``, ``"read"``, ``"created"``).
        path: the path to name when the error carries none.
    """
    name = error.filename2 if error.filename2 is not None else error.filename
    name = name if name is not None else path
    where = _user_path(name) if name is not None else "a file"
    reason = error.strerror or str(error) or type(error).__name__
    return f"{where}: could not be {done} ({reason})." if done else f"{where}: {reason}."


@contextlib.contextmanager
def reported_os_errors(done: str | None = None, path: str | os.PathLike | None = None) -> Iterator[None]:
    """Turn an :class:`OSError` raised in the block into a :class:`UserInputError` (:func:`os_error_message`)."""
    try:
        yield
    except OSError as error:
        raise UserInputError(os_error_message(error, done, path)) from None


def _check_creatable(folder: Path, option: str, shown: Path) -> None:
    """Refuse when files cannot be created in ``folder`` (or, if it does not exist, the nearest
    existing folder above it, where it would be created); ``option shown`` starts the sentence."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():  # a dangling link: creating the folder would fail
            raise UserInputError(f"{option} {shown}: {existing} is a broken symbolic link.")
        existing = existing.parent
    if not existing.is_dir():
        what = "the output folder is an existing file" if existing == shown else f"{existing} is a file"
        raise UserInputError(f"{option} {shown}: {what}, not a folder.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".scpm-probe.", suffix=".tmp", dir=existing)
    except OSError as error:
        raise UserInputError(f"{option} {shown}: no file can be created in {existing} "
                             f"({error.strerror or error}).") from None
    os.close(fd)
    os.unlink(probe)


def check_output_folder(path: str | os.PathLike, option: str = "--out") -> None:
    """Refuse an output folder that cannot be written, before any work starts; create nothing.

    The folder, or (when it does not exist yet) the nearest existing folder above it, must be a
    folder in which a file can be created: a probe file is created and removed at once (permission
    bits are not asked, because they say nothing for root or on a read-only file system).

    Raises:
        UserInputError: ``path`` (or a part of it) is an existing file, or the folder is not writable;
            the sentence starts with ``option`` and ``path``.
    """
    _check_creatable(Path(path), option, Path(path))


def check_output_file(path: str | os.PathLike, option: str = "--out") -> None:
    """Refuse an output file that cannot be written, before any work starts; create nothing.

    Raises:
        UserInputError: ``path`` is an existing folder, or its folder cannot be written
            (:func:`check_output_folder`).
    """
    path = Path(path)
    if path.is_dir():
        raise UserInputError(f"{option} {path}: an existing folder, not a file.")
    _check_creatable(path.parent, option, path)
