"""From a training state to a detector checkpoint and its entry in ``Resources/Models.json``.

The detector checkpoint is :func:`SCPMNoduleLib.checkpoint.save_checkpoint`'s format (weights,
network config, pre-processing config, metadata); the metadata carries the version, the training
data description, the training run (config, epochs, fold, train scans) and the measured FROC/CPM,
so the file says what it is without this repository. The manifest entry
(:func:`SCPMNoduleLib.models.manifest_entry`) repeats the summary and adds the file's SHA-256,
which the detector checks before loading a named model.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from SCPMNoduleLib import __version__
from SCPMNoduleLib.candidate_classifier import CandidateClassifierConfig
from SCPMNoduleLib.checkpoint import save_checkpoint
from SCPMNoduleLib.errors import UserInputError, reported_os_errors
from SCPMNoduleLib.evaluation import read_froc_summary
from SCPMNoduleLib.io import atomic_write, sha256_of
from SCPMNoduleLib.models import (
    check_model_name,
    entry_file,
    manifest_entry,
    read_manifest,
    updated_manifest,
    write_manifest,
)
from SCPMNoduleLib.temp_files import check_output_file
from SCPMNoduleLib.temp_names import temp_prefix

from .config import TrainConfig
from .precision_check import precision_check_record
from .state import Deployable, load_deployable, parameter_digest

__all__ = ["architecture_summary", "export_model", "precision_record"]


def precision_record(loaded: Deployable, froc_summary: str | os.PathLike | None,
                     bf16_evaluation: str | os.PathLike | None) -> dict[str, Any] | None:
    """The ``precision_check`` export writes for the network it ``loaded``: computed from
    ``--froc``'s folder and ``--bf16-evaluation``
    (:func:`~Training.precision_check.precision_check_record`); without ``--bf16-evaluation``,
    the record of the checkpoint being re-exported, which still describes the same weights;
    ``None`` for a training state."""
    if bf16_evaluation is None:
        kept = loaded.metadata.get("precision_check")
        return kept if isinstance(kept, dict) else None
    if froc_summary is None:
        raise UserInputError("--bf16-evaluation: needs --froc, the fp32 evaluation it is compared with.")
    return precision_check_record(froc_summary, bf16_evaluation, parameter_digest(loaded.model))


def architecture_summary(config: TrainConfig, classifier: CandidateClassifierConfig | None = None) -> str:
    """The network in one line, and its candidate classifier when it has one."""
    model = config.model
    summary = (f"SCPM-Net: stem {model.stem_channels}, encoder {tuple(model.encoder_channels)} with "
               f"{tuple(model.encoder_blocks)} blocks, decoder {tuple(model.decoder_blocks)}, "
               f"{model.head_levels} head level(s) of {model.head_channels} channels; "
               f"trained on {config.data.patch_size}^3 patches")
    if classifier is not None:
        summary += (f"; candidate classifier on {classifier.patch_vox}^3 patches, channels "
                    f"{tuple(classifier.channels)}, weight {classifier.weight:g}")
    return summary


def _staging_path(target: Path) -> Path:
    """A new empty temporary file beside ``target``, named as every temporary is
    (:func:`~SCPMNoduleLib.temp_names.temp_prefix`): an error names ``target``, and the next run
    removes it when this process is killed."""
    fd, name = tempfile.mkstemp(prefix=temp_prefix(target), suffix=".tmp", dir=target.parent)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def _replaced_together() -> Iterator[dict[Path, Path]]:
    """Files that take their places together or not at all.

    The block fills ``staged`` (target -> a complete temporary file beside it); when it succeeds,
    every target is replaced by its file. If a replacement fails, or Ctrl-C comes between two, the
    targets replaced so far get their old files back (a hard link, else a copy, kept of each) and
    the new ones are removed, so the targets are all old or all new. No temporary file stays behind.
    """
    staged: dict[Path, Path] = {}
    kept: dict[Path, Path | None] = {}  # target -> hard link to its old file (None: it did not exist)
    try:
        yield staged
        for target in staged:
            kept[target] = None
            if target.exists():
                kept[target] = backup = _staging_path(target)
                try:
                    os.unlink(backup)
                    os.link(target, backup)
                except OSError:  # a file system without hard links
                    shutil.copy2(target, backup)
        for target, source in staged.items():
            os.replace(source, target)
    except BaseException:
        for target, old in kept.items():
            with contextlib.suppress(FileNotFoundError):
                if old is not None:
                    os.replace(old, target)
                elif not staged[target].exists():  # it was put in place
                    os.unlink(target)
        raise
    finally:
        for leftover in [*staged.values(), *(b for b in kept.values() if b is not None)]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)


def export_model(state_path: str | os.PathLike, out_path: str | os.PathLike, *, name: str, version: str,
                 training_data: str, froc_summary: str | os.PathLike | None = None,
                 manifest: str | os.PathLike | None = None, description: str = "",
                 bf16_evaluation: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write the detector checkpoint of a training state and (optionally) its manifest entry.

    Everything is checked before anything is written (the state, the evaluation summary, the
    manifest, the name, where the files go); then the checkpoint and the manifest are written to
    temporary files and put in place together: on any failure, or Ctrl-C, the old checkpoint and
    the old manifest stay as they were.

    Args:
        state_path: ``last.pt`` or ``best.pt`` of a training run, or an exported checkpoint to
            re-export (its weights and training record, new metrics and version).
        out_path: the checkpoint to write.
        name: the model's name in the manifest (``demo`` is what ``Detector.from_checkpoint`` loads by default).
        version: the model's version string.
        training_data: what it was trained on, in words.
        froc_summary: ``froc_summary.json`` of its held-out evaluation, recorded as its metrics.
        manifest: ``Models.json`` to add or replace the entry ``name`` in; the checkpoint must lie
            in the manifest's folder or below it.
        description: free text (limitations, intended use).
        bf16_evaluation: an evaluate folder of the same checkpoint and data as ``froc_summary``'s
            folder, run in bf16 (that one in fp32): recorded as ``precision_check``
            (:func:`precision_record`), which ``precision="auto"`` reads. Without it, re-exporting
            an exported checkpoint keeps that checkpoint's record, and a training state gets none.

    Returns:
        The manifest entry (also when no manifest is written).

    Raises:
        UserInputError: any input or output that is not usable, before anything is written; an
            operating-system error while writing (full disk), naming the file.
    """
    out_path = Path(out_path)
    check_model_name(name)
    if not version:
        raise UserInputError("--model-version: the version string is empty.")
    loaded = load_deployable(state_path)
    model, preprocess, training, _ = loaded
    if training is None or not isinstance(training.get("config"), dict):
        raise UserInputError(f"{state_path}: the checkpoint records no training (no training config to export).")
    training = json.loads(json.dumps(training))
    config = TrainConfig.from_dict(training["config"])
    metrics = read_froc_summary(froc_summary).metrics if froc_summary is not None else {}
    precision_check = precision_record(loaded, froc_summary, bf16_evaluation)
    check_output_file(out_path, "--out")
    if manifest is not None:
        manifest = Path(manifest)
        check_output_file(manifest, "--manifest")
        if manifest.resolve() == out_path.resolve():
            raise UserInputError(f"--manifest {manifest}: the same file as --out.")
        if out_path.suffix != ".pt":
            raise UserInputError(f"--out {out_path}: a checkpoint listed in a manifest is a file ending in .pt.")
        if manifest.exists():
            read_manifest(manifest)
        entry_file(out_path, manifest)
    metadata = {
        "trained": True, "name": name, "version": version, "library_version": __version__,
        "description": description, "training_data": training_data, "metrics": metrics, "training": training,
    }
    if precision_check is not None:
        metadata["precision_check"] = precision_check
    if isinstance(loaded.metadata.get("candidate_classifier"), dict):  # how its second stage was trained
        metadata["candidate_classifier"] = loaded.metadata["candidate_classifier"]
    with reported_os_errors("write"), _replaced_together() as staged:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        staged[out_path] = _staging_path(out_path)
        save_checkpoint(staged[out_path], model, preprocess, metadata)
        architecture = architecture_summary(config, model.config.candidate_classifier)
        entry = manifest_entry(out_path, name=name, version=version, architecture=architecture,
                               training_data=training_data, description=description, metrics=metrics,
                               manifest=manifest, sha256=sha256_of(staged[out_path]),
                               precision_check=precision_check)
        if manifest is not None:
            document = updated_manifest(manifest, entry)
            manifest.parent.mkdir(parents=True, exist_ok=True)
            staged[manifest] = _staging_path(manifest)
            with reported_os_errors("write", manifest), atomic_write(staged[manifest]) as handle:
                write_manifest(handle, document)
    return entry
