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
from typing import IO, Any

from .documents import read_document
from .errors import UserInputError
from .io import atomic_write, sha256_of

__all__ = [
    "MANIFEST_CANDIDATES",
    "MANIFEST_FORMAT",
    "MANIFEST_VERSION",
    "MODEL_HELP",
    "check_model_name",
    "entry_file",
    "manifest_entry",
    "read_manifest",
    "resolve_model",
    "update_manifest",
    "updated_manifest",
    "write_manifest",
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


MODEL_HELP = ("a model name from Resources/Models.json (checksum verified), or a checkpoint file written as a "
              "path: ./NAME, an absolute path, or an existing file ending in .pt; a bare name never loads a "
              "local file")
"""What ``--model`` (``scpm-nodule``) and ``--checkpoint`` (``scpm-train tune`` and ``evaluate``) accept, for
their ``--help``."""


def _written_as_path(path_or_name: str | os.PathLike) -> bool:
    """Whether the user wrote a path rather than a name (see :func:`resolve_model`)."""
    if not isinstance(path_or_name, str):  # a Path object is a path, whatever it is called
        return True
    separators = [sep for sep in (os.sep, os.altsep) if sep]
    return (any(sep in path_or_name for sep in separators) or Path(path_or_name).is_absolute()
            or (path_or_name.endswith(".pt") and Path(path_or_name).is_file()))


def check_model_name(name: str) -> None:
    """Refuse a manifest name that :func:`resolve_model` would read as a path (or that is empty).

    Raises:
        UserInputError: the name is empty, holds a path separator or ends in ``.pt``.
    """
    if not name or _written_as_path(name) or name.endswith(".pt"):
        raise UserInputError(f"model name {name!r}: a name must be non-empty, without a path separator and "
                             "not end in .pt, or it would be read as a file.")


def resolve_model(path_or_name: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """A checkpoint path and its manifest entry (``{}`` for a file) from a model name or a path.

    A name (``demo``) resolves to the manifest only, and its file is checked against the
    manifest's sha256; a file in the working directory never stands in for it. A file is
    loaded when it is written as a path: a :class:`~pathlib.Path` object, a string with a path
    separator (``./demo``, ``runs/best.pt``), an absolute path, or an existing file whose name
    ends in ``.pt`` (:data:`MODEL_HELP`).

    Raises:
        UserInputError: an unknown name (naming the known ones, and ``./NAME`` when a local file
            has that name), a missing file, or a named model whose file is missing or altered.
    """
    if _written_as_path(path_or_name):
        path = Path(path_or_name)
        if not path.is_file():
            raise UserInputError(f"{path_or_name}: checkpoint file not found.")
        return path, {}
    name = str(path_or_name)
    manifest = read_manifest()
    entries = {entry["name"]: entry for entry in manifest["models"]}
    if name not in entries:
        known = ", ".join(entries) or "none"
        local = f"; to load the local file {name}, write it as a path: ./{name}" if Path(name).is_file() else ""
        raise UserInputError(f"{name}: not a model name in the manifest (known: {known}){local}.")
    entry = entries[name]
    path = Path(manifest["path"]).parent / entry["file"]
    if not path.is_file():
        raise UserInputError(f"{path}: the file of model {name!r} is missing.")
    digest = sha256_of(path)
    if digest != entry["sha256"]:
        raise UserInputError(f"{path}: sha256 {digest[:12]}... does not match the manifest's "
                             f"{entry['sha256'][:12]}... for model {name!r}.")
    return path, entry


def entry_file(checkpoint: str | os.PathLike, manifest: str | os.PathLike | None = None) -> str:
    """The ``file`` of a checkpoint's manifest entry: its path relative to the manifest's folder,
    which must hold it (below it is fine); without a manifest, its name.

    Raises:
        UserInputError: the checkpoint lies outside the manifest's folder.
    """
    checkpoint = Path(checkpoint)
    if manifest is None:
        return checkpoint.name
    folder = Path(manifest).resolve().parent
    try:
        return checkpoint.resolve().relative_to(folder).as_posix()
    except ValueError:
        raise UserInputError(f"{checkpoint}: a manifest entry's file must lie in "
                             f"{Path(manifest).parent} or below it.") from None


def manifest_entry(checkpoint: str | os.PathLike, *, name: str, version: str, architecture: str,
                   training_data: str, description: str = "", metrics: dict[str, Any] | None = None,
                   trained: bool = True, manifest: str | os.PathLike | None = None,
                   sha256: str | None = None, precision_check: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest entry of a checkpoint file.

    Args:
        checkpoint: the checkpoint file.
        name: the model's name (``demo`` is what the detector loads by default).
        version: the model's version string.
        architecture: the network, in words.
        training_data: what it was trained on, in words.
        description: free text (limitations, intended use).
        metrics: the measured FROC figures (CPM, sensitivities, confidence interval, counts).
        trained: whether the weights are trained.
        manifest: the manifest the entry is for (:func:`entry_file`).
        sha256: the file's SHA-256, when the bytes are not yet at ``checkpoint`` (a file about to
            be moved there); computed from the file otherwise.
        precision_check: whether its detections hold in bf16 (the checkpoint's
            ``metadata["precision_check"]``); the entry has none when it is ``None``.
    """
    return {"name": name, "version": version, "file": entry_file(checkpoint, manifest),
            "sha256": sha256 if sha256 is not None else sha256_of(checkpoint),
            "trained": trained, "architecture": architecture, "training_data": training_data,
            "description": description, "metrics": dict(metrics or {}),
            **({"precision_check": dict(precision_check)} if precision_check is not None else {})}


def updated_manifest(path: str | os.PathLike, entry: dict[str, Any]) -> dict[str, Any]:
    """The manifest at ``path`` (empty if there is none) with ``entry`` added, replacing one of the
    same name; nothing is written.

    Raises:
        UserInputError: ``path`` is a folder, or a file that is not a model manifest.
    """
    path = Path(path)
    if path.is_dir():
        raise UserInputError(f"{path}: a folder, not a model manifest file.")
    if path.exists():
        manifest = read_manifest(path)
        manifest.pop("path", None)
    else:
        manifest = _empty_manifest()
    names = [model.get("name") for model in manifest["models"]]
    if entry["name"] in names:
        manifest["models"][names.index(entry["name"])] = entry
    else:
        manifest["models"].append(entry)
    return manifest


def write_manifest(handle: IO[str], manifest: dict[str, Any]) -> None:
    """Write a manifest document as indented JSON to an open text file."""
    json.dump(manifest, handle, indent=1)
    handle.write("\n")


def update_manifest(path: str | os.PathLike, entry: dict[str, Any]) -> None:
    """Add ``entry`` to the manifest at ``path`` (created if missing), replacing one of the same name; atomically."""
    manifest = updated_manifest(path, entry)
    with atomic_write(path) as handle:
        write_manifest(handle, manifest)
