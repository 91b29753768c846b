"""Synthetic chest CT phantoms with known nodules, written in LUNA16's layout.

A phantom is drawn in Hounsfield units on the scan's own voxel grid, in the "patient frame"
``p_zyx_mm = index_zyx * spacing_zyx`` (x towards the patient's left, y posterior, z superior,
as in LPS), then stored with an optional flip of the array axes and a small oblique rotation, so
that world = origin + D · diag(spacing) · index_xyz holds for the stored image and the anatomy
keeps its place in world space. Everything is numpy (no torch), vectorised, and determined by
the seed.

Modules, in drawing order:

* :mod:`.config`: :class:`PhantomConfig` (every number that shapes a phantom), its presets and
  the labels it writes;
* :mod:`.raster`: soft-edged shapes with partial volume (covers, tubes, spheres);
* :mod:`.anatomy`: the drawn geometry, body and lungs (body, fat, muscle, bones, mediastinum,
  heart, abdomen, parenchyma) and the lungs' depth map;
* :mod:`.trees`: great vessels, trachea, and each lung's arterial, venous and airway trees;
* :mod:`.findings`: nodules and excluded findings, placed where they can be seen;
* :mod:`.scanner`: point spread, correlated noise, int16 storage and world geometry
  (:class:`Phantom`, :class:`Nodule`);
* :mod:`.generator`: one phantom from a seed (:func:`generate_phantom`, :func:`make_phantom`);
* :mod:`.writer`: datasets in LUNA16's layout (:func:`write_luna16_dataset`).
"""

from .config import (
    HU_MAX,
    HU_MIN,
    LUNG_LABELS,
    NODULE_KINDS,
    NODULE_LOCATIONS,
    NODULE_MARGINS,
    SIZES,
    PhantomConfig,
    phantom_config,
)
from .generator import generate_phantom, make_phantom
from .scanner import Nodule, Phantom, annotation_table
from .writer import UID_PREFIX, series_uid, write_luna16_dataset

__all__ = [
    "HU_MAX",
    "HU_MIN",
    "LUNG_LABELS",
    "NODULE_KINDS",
    "NODULE_LOCATIONS",
    "NODULE_MARGINS",
    "SIZES",
    "UID_PREFIX",
    "Nodule",
    "Phantom",
    "PhantomConfig",
    "annotation_table",
    "generate_phantom",
    "make_phantom",
    "phantom_config",
    "series_uid",
    "write_luna16_dataset",
]
