"""How our temporary files and folders are named, and the file each one stands for.

A writer puts its work beside the target under ``.<target>.<pid>.<8 random characters>.tmp``
(plus an image suffix where ITK needs one; :func:`temp_prefix` starts the name, ``mkstemp`` or
``mkdtemp`` adds the rest), then renames it onto the target. The name is read back in two places:
:func:`SCPMNoduleLib.temp_files.remove_stale_temps` recognises what a killed run left, and
:func:`SCPMNoduleLib.errors.os_error` names the target, which the user knows, instead of the
temporary. Standard library only, so that :mod:`~SCPMNoduleLib.errors` can use it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["TEMP_NAME", "temp_prefix", "temp_target"]

TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)*$")
"""Our temporary entries: ``.<target>.<pid>.<8 random characters>.tmp`` (+ an image suffix);
the groups ``target`` and ``pid``."""


def temp_prefix(path: Path) -> str:
    """The start of a temporary name for ``path`` (``mkstemp``/``mkdtemp`` add the rest)."""
    return f".{path.name}.{os.getpid()}."


def temp_target(path: str | os.PathLike) -> Path:
    """The file ``path`` stands for: the target when ``path`` is one of our temporaries (followed
    through a temporary of a temporary), else ``path`` itself."""
    path = Path(path)
    while (match := TEMP_NAME.match(path.name)) is not None:
        path = path.parent / match["target"]
    return path
