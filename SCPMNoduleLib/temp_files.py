"""Our temporary files and folders, and the output folder check made before any work.

Writers put a file (or a dataset's folder) beside its target under a hidden temporary name,
``.<target>.<pid>.<8 random characters>.tmp`` (plus an image suffix where ITK needs one), and
rename it onto the target once complete (:func:`~SCPMNoduleLib.io.atomic_write`,
:func:`atomic_write_image`, :func:`temp_dir_beside`): a reader never sees half a file. A run
killed by SIGKILL or a power cut cannot remove its temporaries; the next run into the same folder
does (:func:`remove_stale_temps`, called by :func:`check_output_folder`), recognising them by
that name and a process id that no longer runs.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

from .errors import UserInputError

__all__ = ["STALE_TEMP_AGE_S", "atomic_write_image", "check_output_folder", "current_umask",
           "remove_stale_temps", "temp_dir_beside", "temp_prefix", "write_image"]

log = logging.getLogger(__name__)


def current_umask() -> int:
    """The process's umask (read by setting it, and setting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)*$")
"""Our temporary entries: ``.<target>.<pid>.<8 random characters>.tmp`` (+ an image suffix)."""
STALE_TEMP_AGE_S = 24 * 3600.0
"""A temporary entry this old is stale whatever its process id says (ids are reused)."""


def temp_prefix(path: Path) -> str:
    """The start of a temporary name for ``path`` (``mkstemp``/``mkdtemp`` add the rest)."""
    return f".{path.name}.{os.getpid()}."


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
    was killed (SIGKILL, a power cut): entries named as :func:`temp_prefix` starts them, whose
    process is gone, or older than :data:`STALE_TEMP_AGE_S`; with ``target``, only those for that
    name. A live run's temporaries are left alone. Returns what was removed (logged)."""
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
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


def check_output_folder(path: str | os.PathLike) -> Path:
    """Check, before any work starts, that ``path`` is a folder we can write in, or can be made one.

    It is not created here (a run that fails on its input leaves nothing); the temporaries that
    killed runs left in it are removed (:func:`remove_stale_temps`).

    Raises:
        UserInputError: ``path`` or a folder above it is a file, or the nearest existing folder
            cannot be written in (permissions, a read-only file system).
    """
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "the output folder" if existing == path else f"a folder above the output folder {path}"
        raise UserInputError(f"{existing}: {what} is an existing file; choose a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = hasattr(os, "statvfs") and os.statvfs(existing).f_flag & getattr(os, "ST_RDONLY", 1)
        reason = "the file system is read-only" if read_only else "permission denied"
        raise UserInputError(f"{existing}: cannot write the outputs into it ({reason}).")
    if existing == path:
        remove_stale_temps(path)
    return path


def atomic_write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = False) -> None:
    """``sitk.WriteImage`` into a temporary file beside ``path``, renamed onto it when complete.

    For single-file formats (``.mha``, ``.nrrd``, ``.nii(.gz)``); an error or interrupt leaves
    no file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.lower().endswith(".nii.gz") else path.suffix
    fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    try:
        write_image(image, tmp_name, compress, shown_as=path)
        os.chmod(tmp_name, 0o666 & ~current_umask())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


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
