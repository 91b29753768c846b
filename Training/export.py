"""From a training state to a detector checkpoint and its entry in ``Resources/Models.json``.

The detector checkpoint is :func:`SCPMNoduleLib.checkpoint.save_checkpoint`'s format (weights,
network config, pre-processing config, metadata); the metadata carries the version, the training
data description, the training run (config, epochs, fold, train scans) and the measured FROC/CPM,
so the file says what it is without this repository. The manifest entry
(:func:`SCPMNoduleLib.models.manifest_entry`) repeats the summary and adds the file's SHA-256,
which the detector checks before loading a named model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from SCPMNoduleLib import __version__
from SCPMNoduleLib.checkpoint import save_checkpoint
from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.models import manifest_entry, update_manifest
from SCPMNoduleLib.preprocess import PreprocessConfig

from .config import TrainConfig
from .state import load_state, model_from_state

__all__ = ["architecture_summary", "export_model", "froc_metrics"]


def froc_metrics(summary_path: str | os.PathLike) -> dict[str, Any]:
    """The main run's figures from an evaluation's ``froc_summary.json``: CPM, sensitivities, CI, counts."""
    path = Path(summary_path)
    try:
        runs = json.loads(path.read_text(encoding="utf-8"))["runs"]
        label, run = next(iter(runs.items()))
    except (OSError, json.JSONDecodeError, KeyError, StopIteration, AttributeError):
        raise UserInputError(
            f"{path}: not a froc_summary.json written by scpm-nodule evaluate or scpm-train.") from None
    metrics = {"evaluation": label, "cpm": run["cpm"], "fp_rates": run["fp_rates"],
               "sensitivities": run["sensitivities"], "n_scans": run["counts"]["n_scans"],
               "n_nodules": run["counts"]["n_nodules"]}
    if "bootstrap" in run:
        metrics["cpm_95ci"] = [run["bootstrap"]["cpm_lower"], run["bootstrap"]["cpm_upper"]]
    return metrics


def architecture_summary(config: TrainConfig) -> str:
    model = config.model
    return (f"SCPM-Net: stem {model.stem_channels}, encoder {tuple(model.encoder_channels)} with "
            f"{tuple(model.encoder_blocks)} blocks, decoder {tuple(model.decoder_blocks)}, "
            f"{model.head_levels} head level(s) of {model.head_channels} channels; "
            f"trained on {config.data.patch_size}^3 patches")


def export_model(state_path: str | os.PathLike, out_path: str | os.PathLike, *, name: str, version: str,
                 training_data: str, froc_summary: str | os.PathLike | None = None,
                 manifest: str | os.PathLike | None = None, description: str = "") -> dict[str, Any]:
    """Write the detector checkpoint of a training state and (optionally) its manifest entry.

    Args:
        state_path: ``last.pt`` or ``best.pt`` of a training run.
        out_path: the checkpoint to write (atomically).
        name: the model's name in the manifest (``demo`` is what ``Detector.from_checkpoint`` loads by default).
        version: the model's version string.
        training_data: what it was trained on, in words.
        froc_summary: ``froc_summary.json`` of its held-out evaluation, recorded as its metrics.
        manifest: ``Models.json`` to add or replace the entry ``name`` in; the checkpoint must lie
            in the manifest's folder or below it.
        description: free text (limitations, intended use).

    Returns:
        The manifest entry (also when no manifest is written).
    """
    state = load_state(state_path)
    config = TrainConfig.from_dict(state["config"])
    model = model_from_state(state, str(state_path))
    metrics = froc_metrics(froc_summary) if froc_summary is not None else {}
    out_path = Path(out_path)
    metadata = {
        "trained": True, "name": name, "version": version, "library_version": __version__,
        "description": description, "training_data": training_data, "metrics": metrics,
        "training": {"epochs": state["epoch"], "steps": state["step"], "fold": state["fold"],
                     "train_scans": len(state["train_seriesuids"]), "best_epoch": state["best_epoch"],
                     "validation_cpm": state["best_cpm"], "config": json.loads(json.dumps(state["config"]))},
    }
    save_checkpoint(out_path, model, PreprocessConfig.from_dict(state["preprocess"]), metadata)
    entry = manifest_entry(out_path, name=name, version=version, architecture=architecture_summary(config),
                           training_data=training_data, description=description, metrics=metrics,
                           manifest=manifest)
    if manifest is not None:
        update_manifest(manifest, entry)
    return entry

