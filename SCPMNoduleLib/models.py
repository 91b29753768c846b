"""The model registry: ``Resources/Models.json``, which names the shipped checkpoints.

A manifest is ``{"format": "scpm-nodule-models", "version": 1, "models": [entry, ...]}``; an
entry names a checkpoint file (relative to the manifest's folder), its SHA-256, which is checked
before a named model is loaded, and what the model is (``Resources/Models.schema.json`` is the
JSON schema of the whole document). :func:`manifest_entry` and :func:`update_manifest` write it,
:func:`read_manifest` and :func:`resolve_model` read it.

Torch-free, so that the Slicer module lists the models in Slicer's own process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .documents import read_document
from .errors import UserInputError
from .io import atomic_write, sha256_of

__all__ = [
    "MANIFEST_CANDIDATES",
    "MANIFEST_FORMAT",
    "MANIFEST_VERSION",
    "manifest_entry",
    "read_manifest",
    "resolve_model",
    "update_manifest",
]

MANIFEST_FORMAT = "scpm-nodule-models"
MANIFEST_VERSION = 1
_PACKAGE_DIR = Path(__file__).resolve().parent
MANIFEST_CANDIDATES = (_PACKAGE_DIR.parent / "Resources" / "Models.json",  # repository, Slicer extension
                       _PACKAGE_DIR / "Resources" / "Models.json")  # wheel
"""Where :func:`read_manifest` looks, first found wins."""


def _empty_manifest() -> dict[str, Any]:
    return {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "models": []}


def read_manifest(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """A model manifest (default: the first of :data:`MANIFEST_CANDIDATES` that exists).

    Returns ``{"format", "version", "models": [...], "path"}``, ``path`` being the file read
    (``None`` and no models when there is no manifest).
    """
    path = Path(path) if path is not None else next((p for p in MANIFEST_CANDIDATES if p.is_file()), None)
    if path is None:
        return {**_empty_manifest(), "path": None}
    manifest = read_document(path, MANIFEST_FORMAT, MANIFEST_VERSION, "a model manifest")
    manifest["path"] = str(path)
    return manifest


def resolve_model(path_or_name: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """A checkpoint path and its manifest entry (``{}`` if none) from a path or a manifest name.

    A named model's file is checked against the manifest's sha256.
    """
    manifest = read_manifest()
    entries = {entry["name"]: entry for entry in manifest["models"]}
    path = Path(path_or_name)
    if str(path_or_name) in entries and not path.is_file():
        entry = entries[str(path_or_name)]
        path = Path(manifest["path"]).parent / entry["file"]
        if not path.is_file():
            raise UserInputError(f"{path}: the file of model {entry['name']!r} is missing.")
        digest = sha256_of(path)
        if digest != entry["sha256"]:
            raise UserInputError(f"{path}: sha256 {digest[:12]}... does not match the manifest's "
                                 f"{entry['sha256'][:12]}... for model {entry['name']!r}.")
        return path, entry
    if not path.is_file():
        known = ", ".join(entries) or "none"
        raise UserInputError(f"{path_or_name}: neither a checkpoint file nor a model name in the "
                             f"manifest (known: {known}).")
    return path, {}


def manifest_entry(checkpoint: str | os.PathLike, *, name: str, version: str, architecture: str,
                   training_data: str, description: str = "", metrics: dict[str, Any] | None = None,
                   trained: bool = True, manifest: str | os.PathLike | None = None) -> dict[str, Any]:
    """The manifest entry of a checkpoint file (its SHA-256 is computed here).

    Args:
        checkpoint: the checkpoint file.
        name: the model's name (``demo`` is what the detector loads by default).
        version: the model's version string.
        architecture: the network, in words.
        training_data: what it was trained on, in words.
        description: free text (limitations, intended use).
        metrics: the measured FROC figures (CPM, sensitivities, confidence interval, counts).
        trained: whether the weights are trained.
        manifest: the manifest the entry is for: ``file`` is then the checkpoint's path relative
            to the manifest's folder, which must hold it (below it is fine); without one, its name.
    """
    checkpoint = Path(checkpoint)
    file = checkpoint.name
    if manifest is not None:
        folder = Path(manifest).resolve().parent
        try:
            file = checkpoint.resolve().relative_to(folder).as_posix()
        except ValueError:
            raise UserInputError(f"{checkpoint}: a manifest entry's file must lie in "
                                 f"{Path(manifest).parent} or below it.") from None
    return {"name": name, "version": version, "file": file, "sha256": sha256_of(checkpoint),
            "trained": trained, "architecture": architecture, "training_data": training_data,
            "description": description, "metrics": dict(metrics or {})}


def update_manifest(path: str | os.PathLike, entry: dict[str, Any]) -> None:
    """Add ``entry`` to the manifest at ``path`` (created if missing), replacing one of the same name; atomically."""
    path = Path(path)
    if path.is_file():
        manifest = read_manifest(path)
        manifest.pop("path", None)
    else:
        manifest = _empty_manifest()
    names = [model.get("name") for model in manifest["models"]]
    if entry["name"] in names:
        manifest["models"][names.index(entry["name"])] = entry
    else:
        manifest["models"].append(entry)
    with atomic_write(path) as handle:
        json.dump(manifest, handle, indent=1)
        handle.write("\n")
