"""Helpers for the fault tests: a small file system to fill, or a read-only one."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def mounted_tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted on ``folder`` for the block (``options`` as for mount(8), e.g. ``size=2m`` or
    ``ro,size=64k``); the test is skipped, with the reason, where mounting is not allowed (it needs
    root with CAP_SYS_ADMIN: root ignores permission bits, so a real read-only or full file system is
    the only honest way to provoke those errors)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.name != "posix" or shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"this machine does not allow mounting a tmpfs ({mounted.stderr.decode(errors='replace').strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
