"""Our temporary files and folders, and the output places checked before any work.

Writers put a file (or a dataset's folder) beside its target under a hidden temporary name
(:mod:`~SCPMNoduleLib.temp_names`: ``.<target>.<pid>.<8 random characters>.tmp``, plus an
image suffix where ITK needs one), and rename it onto the target once complete
(:func:`~SCPMNoduleLib.io.atomic_write`, :func:`atomic_write_image`, :func:`temp_dir_beside`): a
reader never sees half a file. A run killed by SIGKILL or a power cut cannot remove its
temporaries; the next run into the same place does (:func:`remove_stale_temps`, called by
:func:`check_output_folder` and :func:`check_output_file`), recognising them by that name and a
process id that no longer runs.

The output checks live here, not in :mod:`~SCPMNoduleLib.errors`, because they are about the
output place (a probe file, the stale temporaries) and only their sentence is an error.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import SimpleITK as sitk

from .errors import UserInputError, os_error, os_error_reason
from .temp_names import TEMP_NAME, temp_prefix

__all__ = ["STALE_TEMP_AGE_S", "atomic_write_image", "check_output_file", "check_output_folder", "current_umask",
           "file_replaced_on_success", "folder_built_in_place", "remove_stale_temps", "temp_dir_beside", "write_image"]

log = logging.getLogger(__name__)


def current_umask() -> int:
    """The process's umask (read by setting it, and setting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


STALE_TEMP_AGE_S = 24 * 3600.0
"""A temporary entry this old is stale whatever its process id says (ids are reused)."""


def _process_gone(pid: int) -> bool:
    if os.name != "posix":  # Windows' os.kill terminates; only the age tells there
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: another user's live process
        return False
    return False


def remove_stale_temps(folder: str | os.PathLike, target: str | None = None) -> list[Path]:
    """Remove the temporary files and folders our writers left in ``folder`` when their process
    was killed (SIGKILL, a power cut): entries named as :data:`~SCPMNoduleLib.temp_names.TEMP_NAME`
    says, whose process is gone, or older than :data:`STALE_TEMP_AGE_S`; with ``target``, only
    those for that name. A live run's temporaries are left alone. Returns what was removed (logged)."""
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = TEMP_NAME.match(entry.name)
        if match is None or (target is not None and match["target"] != target):
            continue
        with contextlib.suppress(OSError):
            if not (_process_gone(int(match["pid"])) or now - entry.lstat().st_mtime > STALE_TEMP_AGE_S):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
            log.info("removed %s, left by a run that was stopped", entry)
    return removed


def _check_creatable(path: Path, folder: Path, option: str | None) -> None:
    """Refuse when no file can be created in ``folder`` or, if it does not exist yet, in the nearest
    existing folder above it (where it would be created); the sentence starts with ``option path``."""
    shown = f"{option} {path}" if option else str(path)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():  # a dangling link: creating the folder would fail
            raise UserInputError(f"{shown}: {existing} is a broken symbolic link.")
        existing = existing.parent
    if not existing.is_dir():
        what = "the output folder is an existing file" if existing == path else f"{existing} is a file"
        raise UserInputError(f"{shown}: {what}, not a folder.")
    try:  # permission bits say nothing for root or on a read-only file system: try it
        fd, probe = tempfile.mkstemp(prefix=temp_prefix(Path("probe")), suffix=".tmp", dir=existing)
    except OSError as error:
        raise UserInputError(f"{shown}: no file can be created in {existing} ({os_error_reason(error)}).") from None
    os.close(fd)
    os.unlink(probe)


def check_output_folder(path: str | os.PathLike, option: str | None = "--out") -> Path:
    """Check, before any work starts, that ``path`` is a folder we can write in, or can be made one.

    A probe file is created in the folder (or, when it does not exist yet, in the nearest existing
    folder above it) and removed at once; nothing else is created (a run that fails on its input
    leaves nothing). The temporaries that killed runs left in it, or left for it beside it, are
    removed (:func:`remove_stale_temps`).

    Args:
        path: the output folder.
        option: the command-line option that gave ``path``, which starts the sentence (``None``
            for a library call: the sentence starts with ``path``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        UserInputError: ``path`` or a folder above it is a file, or no file can be created there
            (permissions, a read-only file system), e.g. ``"--out det: the output folder is an
            existing file, not a folder."``.
    """
    path = Path(path)
    _check_creatable(path, path, option)
    if path.exists():
        remove_stale_temps(path)
    if path.parent.exists():
        remove_stale_temps(path.parent, target=path.name)
    return path


def check_output_file(path: str | os.PathLike, option: str | None = "--out") -> Path:
    """Check, before any work starts, that the file ``path`` can be written; create nothing.

    The temporaries that killed runs left for ``path`` beside it are removed.

    Raises:
        UserInputError: ``path`` is an existing folder, a folder above it is a file, or no file
            can be created in its folder (:func:`check_output_folder`).
    """
    path = Path(path)
    shown = f"{option} {path}" if option else str(path)
    if path.is_dir():
        raise UserInputError(f"{shown}: the output file is an existing folder, not a file.")
    _check_creatable(path, path.parent, option)
    if path.parent.exists():
        remove_stale_temps(path.parent, target=path.name)
    return path


@contextlib.contextmanager
def file_replaced_on_success(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """The name of a new, empty temporary file beside ``path`` for the block to write; when the
    block succeeds it gets the mode the umask gives and replaces ``path``, else it is removed.

    A reader never sees a half-written ``path``. An :class:`OSError` about the temporary file (a
    full disk) is raised again naming ``path``, and stays an :class:`OSError` (a batch stops on it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(path), suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield tmp_name
        os.chmod(tmp_name, 0o666 & ~current_umask())
        os.replace(tmp_name, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        if isinstance(error, OSError) and error.filename in (None, tmp_name):
            raise OSError(error.errno, error.strerror or str(error) or type(error).__name__, str(path)) from error
        raise


def atomic_write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = False) -> None:
    """``sitk.WriteImage`` of a single-file format (``.mha``, ``.nrrd``, ``.nii(.gz)``) through
    :func:`file_replaced_on_success`: ``path`` appears complete or not at all."""
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if path.name.lower().endswith(".nii.gz") else path.suffix
    with file_replaced_on_success(path, ".tmp" + suffix) as tmp_name:
        write_image(image, tmp_name, compress, shown_as=path)


def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = False,
                shown_as: str | os.PathLike | None = None) -> None:
    """``sitk.WriteImage``, failing with an :class:`OSError` naming ``shown_as`` (default ``path``):
    ITK raises a bare RuntimeError even for a full disk, which this tells apart."""
    try:
        sitk.WriteImage(image, str(path), compress)
    except RuntimeError:
        full = shutil.disk_usage(Path(path).parent).free < 1 << 20
        raise OSError(errno.ENOSPC if full else errno.EIO, "ITK could not write the image",
                      str(shown_as or path)) from None


def temp_dir_beside(path: str | os.PathLike) -> Path:
    """A new temporary folder beside ``path``, named for it, with the mode the umask gives
    (``mkdtemp``'s 0700 would stay on ``path`` once the folder is renamed onto it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent))
    os.chmod(work, 0o777 & ~current_umask())
    return work


@contextlib.contextmanager
def folder_built_in_place(out_dir: str | os.PathLike) -> Iterator[Path]:
    """A new folder ``out_dir`` (absent or empty) that appears whole or not at all: the block
    builds it in a temporary folder beside it (:func:`temp_dir_beside`), renamed onto ``out_dir``
    when the block ends; an error or an interrupt removes the temporary folder.

    Raises:
        UserInputError: ``out_dir`` exists and is not an empty folder, or cannot be made
            (:func:`check_output_folder`, which also removes what a killed run left beside it); an
            operating-system error while building (a full disk), naming ``out_dir``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserInputError(f"{out_dir}: already exists and is not an empty folder; choose a new one.")
    check_output_folder(out_dir, None)
    work = temp_dir_beside(out_dir)
    try:
        yield work
        if out_dir.exists():
            out_dir.rmdir()
        os.rename(work, out_dir)
    except BaseException as error:
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(error, OSError):  # named by the folder: the files in the temporary one are gone
            raise os_error(error, out_dir, "write") from None
        raise
