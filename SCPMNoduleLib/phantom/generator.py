"""One phantom from a seed: anatomy, trees and findings, then the scanner."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from .anatomy import Geometry, LungMap, draw_body, draw_geometry
from .config import SIZES, PhantomConfig, phantom_config
from .findings import Finding, draw_findings
from .scanner import Nodule, Phantom, acquire, store
from .trees import Trees, draw_trees

__all__ = ["draw_anatomy", "generate_phantom", "make_phantom"]


def draw_anatomy(rng: np.random.Generator, config: PhantomConfig
                 ) -> tuple[Geometry, np.ndarray, np.ndarray, Trees, list[Finding]]:
    """The scan before the scanner: geometry, HU volume (float32, no blur or noise), lung labels,
    the vessel and airway trees, and the findings placed among them."""
    geo = draw_geometry(rng, config)
    volume, labels = draw_body(geo, config)
    lungs = LungMap.of(labels, geo.spacing_zyx, config.coarse_mm)
    trees = draw_trees(rng, geo, config, volume, lungs)
    findings = draw_findings(rng, geo, config, volume, labels, lungs, trees.vessels)
    return geo, volume, labels, trees, findings


def generate_phantom(seed: int | Sequence[int], config: PhantomConfig | None = None) -> Phantom:
    """One synthetic chest CT with its lung mask and findings, fully determined by ``seed``.

    Args:
        seed: a non-negative int or a sequence of them (``numpy.random.default_rng`` seeds).
        config: :class:`PhantomConfig`; default the ``small`` preset.
    """
    config = config or SIZES["small"]
    rng = np.random.default_rng(seed)
    geo, volume, labels, _, findings = draw_anatomy(rng, config)
    hu = acquire(rng, geo, config, volume)
    del volume
    return store(rng, geo, config, hu, labels, findings)


def make_phantom(seed: int | Sequence[int], size: str = "small",
                 **options) -> tuple[sitk.Image, list[Nodule]]:
    """A synthetic chest CT (int16 HU, SimpleITK image) and its findings.

    ``options`` are :class:`PhantomConfig` fields (for example ``oblique=True``); see
    :func:`generate_phantom` for the lung mask as well.
    """
    phantom = generate_phantom(seed, phantom_config(size, **options))
    return phantom.image, phantom.nodules
