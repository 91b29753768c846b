"""Helpers for the bad-input and fault tests: a small or read-only file system, a snapshot of a
folder to show what a command left, and a scan with nothing to find."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SCPMNoduleLib.io import sha256_of


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


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root``, hidden ones too: relative path -> SHA-256 of a file, ``"dir"`` for
    a folder; ``{}`` when ``root`` does not exist. Two equal snapshots are the same tree, byte for byte."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): ("dir" if p.is_dir() else sha256_of(p)) for p in sorted(root.rglob("*"))}


def noise_scan(path: Path, shape_zyx=(20, 40, 36), seed: int = 0, origin_xyz_mm=(-20.0, 10.0, -100.0)) -> Path:
    """A scan of Gaussian noise around -700 HU (no lungs to find), 0.9 x 0.9 x 1.5 mm, written to ``path``."""
    image = sitk.GetImageFromArray(np.random.default_rng(seed).normal(-700, 200, shape_zyx).astype(np.float32))
    image.SetSpacing((0.9, 0.9, 1.5))
    image.SetOrigin(origin_xyz_mm)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path
