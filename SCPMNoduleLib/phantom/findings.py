"""Findings: nodules for ``annotations.csv`` and excluded findings, placed where they can be seen.

Nodule diameters come from a power law p(d) ∝ d^-a on [3, 30] mm (skewed to small ones); nodules
are solid, ground-glass or part-solid, with smooth, lobulated or spiculated margins, isolated,
juxtavascular (touching a vessel) or juxtapleural (touching the chest wall), each placed where
vessels and airways take at most a fifth of its volume, so that every annotated nodule can be
seen. Excluded findings (nodules under 3 mm, calcified granulomas) go to
``annotations_excluded.csv``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..quasirandom import unit_ball_samples
from .anatomy import Geometry, LungMap
from .config import NODULE_KINDS, NODULE_LOCATIONS, NODULE_MARGINS, PhantomConfig
from .raster import Tubes, draw_sphere

__all__ = ["Finding", "choose", "draw_findings", "margin_bumps", "part_solid_core", "power_law", "taken_share"]

log = logging.getLogger(__name__)

_BALL_SAMPLES = unit_ball_samples(512)
"""About 270 quasi-random points filling the unit ball, for a nodule's hidden share."""
_PARENCHYMA_MARGIN_HU = 100.0
"""Before the scanner's blur and noise, lung voxels further than this outside the parenchyma's HU
range hold something else: a vessel, an airway or a finding (a thin vessel's splat included)."""


@dataclass
class Finding:
    """A nodule or excluded finding while the phantom is drawn.

    Why a shape of its own: it is the drawing state, in the patient frame (``center_mm`` zyx mm,
    ``p = index_zyx * spacing_zyx``, before the stored image's origin, flips and rotation exist)
    and with the radius the rasteriser draws; placement checks earlier findings against it.
    :func:`~.scanner.store` turns each into a world-space :class:`~.scanner.Nodule` once the
    stored geometry is drawn.
    """

    center_mm: np.ndarray
    radius: float
    kind: str
    location: str
    margin: str
    included: bool


def power_law(rng: np.random.Generator, low: float, high: float, exponent: float) -> float:
    """A draw from p(d) ∝ d^-exponent on [low, high] by inverting its CDF (exponent ≠ 1)."""
    e = 1.0 - exponent
    u = rng.uniform()
    return float((low ** e + u * (high ** e - low ** e)) ** (1.0 / e))


def choose(rng: np.random.Generator, names: Sequence[str], weights: Sequence[float]) -> str:
    """One of ``names``, drawn with probabilities proportional to ``weights``."""
    return names[int(rng.choice(len(names), p=np.asarray(weights, np.float64) / sum(weights)))]


def part_solid_core(rng: np.random.Generator, center_mm: np.ndarray, radius_mm: float,
                    core_fraction: tuple[float, float]) -> tuple[np.ndarray, float]:
    """The solid core of a part-solid nodule: radius ``radius · U(core_fraction)``, its center moved
    from the nodule's in a random direction by up to half the room left, so it stays inside."""
    core_radius = radius_mm * rng.uniform(*core_fraction)
    shift = rng.normal(size=3)
    shift *= 0.5 * (radius_mm - core_radius) * rng.uniform() / np.linalg.norm(shift)
    return center_mm + shift, core_radius


def margin_bumps(rng: np.random.Generator, margin: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The bumps of a ``smooth`` (None), ``lobulated`` (4-7 broad ones) or ``spiculated`` (6-14
    narrow ones) margin, as :func:`~.raster.draw_sphere` takes them: (unit directions (J, 3),
    heights (J,) in radii, powers (J,)); directions are isotropic, in whatever frame the caller
    draws in."""
    if margin == "smooth":
        return None
    lobulated = margin == "lobulated"
    n = int(rng.integers(4, 8) if lobulated else rng.integers(6, 15))
    directions = rng.normal(size=(n, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    heights = rng.uniform(0.1, 0.25, n) if lobulated else rng.uniform(0.5, 1.3, n)
    powers = rng.uniform(2.0, 6.0, n) if lobulated else rng.uniform(80.0, 300.0, n)
    return directions, heights, powers


def _hidden_share(volume: np.ndarray, labels: np.ndarray, spacing: np.ndarray, centers: np.ndarray,
                  radius: float, parenchyma_hu: tuple[float, float]) -> np.ndarray:
    """Share of each ball (``centers`` (N, 3) mm, ``radius``) that the lung's contents already take:
    lung voxels (nearest to the ball's :func:`unit_ball_samples`) whose HU lies more than
    ``_PARENCHYMA_MARGIN_HU`` outside the parenchyma's range (vessels, airway walls and lumens,
    findings). Voxels outside the lung (chest wall, mediastinum) do not count as taken."""
    points = centers[:, None, :] + radius * _BALL_SAMPLES[None]
    index = np.clip(np.rint(points / spacing).astype(np.int64), 0, np.asarray(volume.shape) - 1)
    index = tuple(np.moveaxis(index, -1, 0))
    return taken_share(volume[index], labels[index] > 0, parenchyma_hu)


def taken_share(hu: np.ndarray, in_lung: np.ndarray, parenchyma_hu: tuple[float, float],
                margin_hu: float = _PARENCHYMA_MARGIN_HU) -> np.ndarray:
    """Share of each ball that the lung's contents already take, from ``(N, M)`` HU and in-lung
    flags at M points filling each of N balls: lung points whose HU lies more than ``margin_hu``
    outside ``parenchyma_hu`` (vessels, airway walls and lumens, findings); ``(N,)``."""
    taken = (hu < parenchyma_hu[0] - margin_hu) | (hu > parenchyma_hu[1] + margin_hu)
    return (taken & in_lung).mean(axis=1)


def _place(rng: np.random.Generator, radius: float, location: str, lungs: LungMap, labels: np.ndarray,
           volume: np.ndarray, spacing: np.ndarray, vessels: Tubes, placed: list[Finding],
           config: PhantomConfig, tries: int = 256) -> np.ndarray | None:
    """A center (mm) for a nodule of ``radius`` at ``location``, or None if none fits.

    Isolated: deeper in the lung than radius + gap. Juxtapleural: center at 0.4-0.8 radii from the
    pleura, so the nodule touches the chest wall. Juxtavascular: beside a vessel of 0.7-3 mm
    radius, touching it. Every center lies in the lung mask, keeps ``config.nodule_gap_mm`` from
    other findings, and leaves the nodule visible: at most ``config.max_hidden_fraction`` of its
    ball is already taken by what ``volume`` holds there (:func:`_hidden_share`).
    """
    gap = config.nodule_gap_mm
    if location == "juxtavascular":
        r = np.maximum(vessels.ra, vessels.rb)
        pool = np.flatnonzero((r > 0.7) & (r < 3.0))
        if len(pool) == 0:
            return None
        pick = pool[rng.integers(0, len(pool), tries)]
        t = rng.uniform(0.2, 0.8, tries)[:, None]
        axis = vessels.b[pick] - vessels.a[pick]
        side = np.cross(axis, rng.normal(size=(tries, 3)))
        side /= np.maximum(np.linalg.norm(side, axis=1, keepdims=True), 1e-9)
        vessel_r = vessels.ra[pick] + t[:, 0] * (vessels.rb[pick] - vessels.ra[pick])
        centers = vessels.a[pick] + t * axis + side * (vessel_r + 0.8 * radius)[:, None]
        depth = lungs.depth_at(centers)
        ok = depth > radius + gap
    else:
        centers = lungs.sample(rng, 0, tries)
        depth = lungs.depth_at(centers)
        if location == "juxtapleural":
            ok = (depth > 0.4 * radius) & (depth < 0.8 * radius) & (depth > float(spacing.max()))
        else:
            ok = depth > radius + gap
    index = np.rint(centers / spacing).astype(np.int64)
    inside = np.all((index >= 0) & (index < labels.shape), axis=1)
    ok &= inside
    ok[inside] &= labels[tuple(index[inside].T)] > 0
    for other in placed:
        ok &= np.linalg.norm(centers - other.center_mm, axis=1) > radius + other.radius + gap
    ok[ok] = _hidden_share(volume, labels, spacing, centers[ok], radius,
                           config.hu_parenchyma) <= config.max_hidden_fraction
    hits = np.flatnonzero(ok)
    return centers[hits[0]] if len(hits) else None


def draw_findings(rng: np.random.Generator, geo: Geometry, config: PhantomConfig, volume: np.ndarray,
                  labels: np.ndarray, lungs: LungMap, vessels: Tubes) -> list[Finding]:
    """Nodules (annotated) and excluded findings, placed and painted into ``volume``.

    Findings are placed largest first; one that finds no room where its location asks is placed
    as an isolated one, and one that finds no room at all is left out.
    """
    spacing = geo.spacing_zyx
    max_radius = config.max_radius_depth_fraction * float(lungs.depth.max())
    high = min(config.diameter_mm[1], 2.0 * max_radius)
    plans: list[tuple[float, str, str, str, bool]] = []
    for _ in range(int(rng.integers(config.nodules[0], config.nodules[1] + 1))):
        diameter = power_law(rng, config.diameter_mm[0], max(high, config.diameter_mm[0]),
                             config.diameter_exponent)
        kind = choose(rng, NODULE_KINDS, config.kind_weights)
        location = choose(rng, NODULE_LOCATIONS, config.location_weights)
        margin = choose(rng, NODULE_MARGINS, config.margin_weights)
        plans.append((diameter, kind, location, "smooth" if kind == "ground_glass" else margin, True))
    for _ in range(int(rng.integers(config.excluded[0], config.excluded[1] + 1))):
        if rng.uniform() < 0.5:
            plans.append((rng.uniform(*config.excluded_small_mm), "solid", "isolated", "smooth", False))
        else:
            plans.append((rng.uniform(*config.excluded_calcified_mm), "calcified", "isolated", "smooth",
                          False))
    plans.sort(key=lambda plan: -plan[0])        # big ones first: they are hardest to fit
    findings: list[Finding] = []
    for diameter, kind, location, margin, included in plans:
        radius = 0.5 * diameter
        center = _place(rng, radius, location, lungs, labels, volume, spacing, vessels, findings, config)
        if center is None and location != "isolated":
            location = "isolated"
            center = _place(rng, radius, location, lungs, labels, volume, spacing, vessels, findings, config)
        if center is None:
            log.debug("no room for a %.1f mm %s %s finding; skipped", diameter, location, kind)
            continue
        findings.append(Finding(center, radius, kind, location, margin, included))
        bumps = margin_bumps(rng, margin)
        if kind == "solid":
            draw_sphere(volume, spacing, center, radius, rng.uniform(*config.hu_solid), bumps)
        elif kind == "calcified":
            draw_sphere(volume, spacing, center, radius, rng.uniform(*config.hu_calcified))
        else:
            draw_sphere(volume, spacing, center, radius, rng.uniform(*config.hu_ground_glass), bumps)
            if kind == "part_solid":
                core_center, core_radius = part_solid_core(rng, center, radius, config.part_solid_core)
                draw_sphere(volume, spacing, core_center, core_radius, rng.uniform(*config.hu_solid))
    return findings
