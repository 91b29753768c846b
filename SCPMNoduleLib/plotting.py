"""PNG figures: slices through a scan with its nodules or detections, and FROC curves.

Every figure is a :class:`matplotlib.figure.Figure` on the Agg canvas (no pyplot, so no global
backend switch and no figure registry inside Slicer), written atomically: a reader never sees a
half-written PNG, and an error leaves none behind. matplotlib is imported on the first figure,
so importing this module (and the modules that write figures) stays cheap.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np
import SimpleITK as sitk

from .detection import Detection
from .io import atomic_write
from .scan_geometry import ScanGeometry

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .froc import BootstrapBands, FROCCurve

__all__ = ["CT_WINDOW_HU", "FROCRun", "fp_rate_label", "plot_froc",
           "save_detection_slices", "save_orthogonal_slices"]

CT_WINDOW_HU = (-1350.0, 150.0)
"""Grey-level window of the slice figures: lung parenchyma to soft tissue."""


def _figure(figsize: tuple[float, float], dpi: float | None = None) -> Figure:
    """A figure on the Agg canvas; ``dpi`` None takes matplotlib's default (100)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(figure)
    return figure


def _save_png(figure: Figure, path: str | os.PathLike, dpi: float | None = None) -> None:
    """Write ``figure`` as a PNG, atomically (``dpi`` None: the figure's own)."""
    with atomic_write(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi="figure" if dpi is None else dpi)


def save_orthogonal_slices(image: sitk.Image, path: str | os.PathLike,
                           center_zyx_vox: Sequence[float] | None = None, diameter_mm: float = 0.0,
                           title: str = "", window_hu: tuple[float, float] = CT_WINDOW_HU) -> None:
    """A PNG with the axial, coronal and sagittal slices (in the image's own axes) through
    ``center_zyx_vox`` (continuous array index; the volume's center when None), with a circle
    round the cross-section of the sphere of ``diameter_mm`` there, in a CT window (HU).

    In each view the circle's radius is the sphere's cross-section in that slice,
    sqrt((d / 2)² - o²) for a slice ``o`` mm off the center, plus a 1.5 mm margin (at least
    2.5 mm, so that small nodules stay visible). Coronal and sagittal views have the superior
    end at the top; every view is drawn to scale in millimetres.
    """
    from matplotlib.patches import Circle

    array = sitk.GetArrayViewFromImage(image)
    sx, sy, sz = image.GetSpacing()
    marked = center_zyx_vox is not None
    center = np.asarray(center_zyx_vox) if marked else (np.asarray(array.shape) - 1) / 2.0
    k, j, i = (int(np.clip(round(c), 0, n - 1)) for c, n in zip(center, array.shape))
    nz, ny, nx = array.shape
    views = [  # name, slice, (horizontal, vertical) extents in mm, marked center (h, v), off-plane mm
        ("axial", array[k], (nx * sx, ny * sy), (center[2] * sx, center[1] * sy), (k - center[0]) * sz),
        ("coronal", array[:, j], (nx * sx, nz * sz), (center[2] * sx, center[0] * sz), (j - center[1]) * sy),
        ("sagittal", array[:, :, i], (ny * sy, nz * sz), (center[1] * sy, center[0] * sz),
         (i - center[2]) * sx),
    ]
    widths = [extent[0] / max(extent[1], 1e-6) for _, _, extent, _, _ in views]
    figure = _figure((3.3 * sum(widths), 3.6))
    axes = figure.subplots(1, 3, gridspec_kw={"width_ratios": widths})
    for ax, (name, plane, (w, h), (ch, cv), off) in zip(axes, views):
        upright = name != "axial"   # superior at the top for coronal and sagittal views
        ax.imshow(plane[::-1] if upright else plane, cmap="gray", vmin=window_hu[0], vmax=window_hu[1],
                  extent=(0, w, 0, h) if upright else (0, w, h, 0), interpolation="bilinear")
        if marked:
            r = math.sqrt(max((0.5 * diameter_mm) ** 2 - off ** 2, 0.0))
            ax.add_patch(Circle((ch, cv), max(r, 1.0) + 1.5, fill=False, color="#ff5a36", lw=1.2))
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout(rect=(0.0, 0.0, 1.0, 0.94))
    _save_png(figure, path, dpi=100)


def save_detection_slices(image: sitk.Image, detections: Sequence[Detection], truth_xyz_mm: np.ndarray,
                          truth_diameters_mm: np.ndarray, path: str | os.PathLike, count: int = 4,
                          window_hu: tuple[float, float] = CT_WINDOW_HU) -> None:
    """A PNG with the axial slice (the image's own k axis) through each of the top ``count``
    detections (through the true nodules when there are none): detections as yellow circles of
    their diameter, true nodules as dashed green circles of their cross-section in that slice.

    ``truth_xyz_mm`` is ``(T, 3)`` world LPS mm and ``truth_diameters_mm`` ``(T,)``.
    """
    from matplotlib.patches import Circle

    geometry = ScanGeometry.from_image(image)
    array = sitk.GetArrayViewFromImage(image)
    sx, sy, sz = image.GetSpacing()
    extent = (-0.5 * sx, (array.shape[2] - 0.5) * sx, (array.shape[1] - 0.5) * sy, -0.5 * sy)
    detection_index = geometry.world_to_index(
        np.asarray([d.center_xyz_mm for d in detections[:count]], dtype=np.float64).reshape(-1, 3))
    truth_index = geometry.world_to_index(truth_xyz_mm.reshape(-1, 3))
    if len(detection_index):
        panels = [(index, f"N{rank + 1}: p={d.probability:.2f}, {d.diameter_mm:.1f} mm")
                  for rank, (index, d) in enumerate(zip(detection_index, detections))]
    else:
        panels = [(index, f"no detections; T{rank + 1}") for rank, index in enumerate(truth_index[:count])]
        panels = panels or [(np.asarray(array.shape, dtype=float) / 2, "no detections")]
    figure = _figure((4 * len(panels), 4.4))
    axes = figure.subplots(1, len(panels), squeeze=False)
    for axis, (index, title) in zip(axes[0], panels):
        slice_index = int(np.clip(round(index[0]), 0, array.shape[0] - 1))
        axis.imshow(array[slice_index], cmap="gray", vmin=window_hu[0], vmax=window_hu[1], extent=extent)
        for rank in np.flatnonzero(np.abs(detection_index[:, 0] - slice_index) < 0.5):
            _, j, i = detection_index[rank]
            axis.add_patch(Circle((i * sx, j * sy), detections[int(rank)].diameter_mm / 2, fill=False,
                                  color="yellow", lw=1.5))
        depth_mm = (truth_index[:, 0] - slice_index) * sz
        section = np.sqrt(np.clip((truth_diameters_mm / 2) ** 2 - depth_mm**2, 0, None))
        for (_, j, i), radius in zip(truth_index[section > 0], section[section > 0]):
            axis.add_patch(Circle((i * sx, j * sy), radius, fill=False, color="lime", lw=1, ls="--"))
        axis.set_title(f"{title}, slice {slice_index}", fontsize=9)
        axis.set_axis_off()
    figure.suptitle("yellow: detections; green dashed: true nodules", fontsize=9)
    figure.tight_layout()
    _save_png(figure, path, dpi=80)


class FROCRun(Protocol):
    """What :func:`plot_froc` reads of one evaluated run (``evaluation.FROCResult``)."""

    @property
    def fp_rates(self) -> tuple[float, ...]: ...
    @property
    def sensitivities(self) -> np.ndarray: ...
    @property
    def cpm(self) -> float: ...
    @property
    def curve(self) -> FROCCurve: ...
    @property
    def bootstrap(self) -> BootstrapBands | None: ...


def fp_rate_label(rate: float) -> str:
    """A false-positive rate as LUNA16 writes it: ``1/8``, ``1/4``, ``1/2``, ``1``, ``2``, ..."""
    return f"1/{round(1 / rate):d}" if rate < 1 else f"{rate:g}"


def plot_froc(results: Mapping[str, FROCRun], path: str | os.PathLike, title: str = "FROC") -> None:
    """Write a PNG of the FROC curves: log2 FP axis from the first to the last rate, band, points.

    Each run is one color: the curve, its bootstrap band shaded, its sensitivities at the FP
    rates marked, its CPM (and band) in the legend.
    """
    figure = _figure((7.5, 5.5), dpi=120)
    axes = figure.add_subplot()
    colors = [f"C{i % 10}" for i in range(len(results))]
    for color, (label, result) in zip(colors, results.items()):
        rates = np.asarray(result.fp_rates)
        grid = np.geomspace(rates.min(), rates.max(), 512)
        text = f"{label}: CPM {result.cpm:.3f}"
        if result.bootstrap is not None:
            b = result.bootstrap
            axes.fill_between(b.grid_fps_per_scan, b.grid_lower, b.grid_upper, color=color, alpha=0.18,
                              linewidth=0)
            text += f" [{b.cpm_lower:.3f}, {b.cpm_upper:.3f}]"
        axes.plot(grid, result.curve.at(grid), color=color, linewidth=2, label=text)
        axes.plot(rates, result.sensitivities, "o", color=color, markersize=6, markeredgecolor="white",
                  clip_on=False, zorder=3)
    rates = np.asarray(next(iter(results.values())).fp_rates)
    axes.set_xscale("log", base=2)
    axes.set_xlim(rates.min(), rates.max())
    axes.set_xticks(rates, [fp_rate_label(r) for r in rates])
    axes.minorticks_off()
    axes.set_ylim(0, 1)
    axes.set_yticks(np.linspace(0, 1, 11))
    axes.grid(True, which="major", alpha=0.35)
    axes.set_xlabel("Average number of false positives per scan")
    axes.set_ylabel("Sensitivity")
    band = next((r.bootstrap for r in results.values() if r.bootstrap is not None), None)
    axes.set_title(title + (f" (shaded: {band.confidence:.0%} bootstrap band, {band.n_resamples} "
                            "resamples of the scans)" if band else ""), fontsize=10)
    axes.legend(loc="lower right", fontsize=9)
    figure.tight_layout()
    _save_png(figure, path)
