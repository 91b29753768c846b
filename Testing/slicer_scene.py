"""A headless MRML scene set up the way Slicer sets up its own, for tests on real MRML.

Slicer's application creates one ``vtkMRMLScene``, one ``vtkSlicerApplicationLogic`` and each
module's logic bound to both; it also gives the scene a data I/O manager with a cache directory
(needed to read ``.mrb`` bundles). :func:`make_scene` does the same with the ``slicer-core``
package's classes. :func:`save_scene` and :func:`load_scene` write and read ``.mrml`` (plus the
nodes' data files) and ``.mrb`` as Slicer's Save and Load dialogs do.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import slicer
import vtk

from SCPMNoduleLib.io import safe_file_name

MODULE_LOGICS = {
    "Markups": slicer.vtkSlicerMarkupsLogic,
    "Models": slicer.vtkSlicerModelsLogic,
    "Volumes": slicer.vtkSlicerVolumesLogic,
    "Tables": slicer.vtkSlicerTablesLogic,
    "SubjectHierarchy": slicer.vtkSlicerSubjectHierarchyModuleLogic,
}


@dataclass
class SlicerScene:
    scene: slicer.vtkMRMLScene
    app_logic: slicer.vtkSlicerApplicationLogic
    logics: dict = field(default_factory=dict)
    keep: list = field(default_factory=list)


def make_scene() -> SlicerScene:
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    app_logic.SetSliceLogics(vtk.vtkCollection())
    app_logic.SetViewLogics(vtk.vtkCollection())
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)  # patient right = screen left
    colors = app_logic.GetColorLogic()
    colors.SetMRMLScene(scene)
    colors.AddDefaultColorNodes()
    app_logic.SetModuleLogic("Colors", colors)
    logics = {}
    for name, logic_class in MODULE_LOGICS.items():
        logic = logic_class()
        logic.SetMRMLApplicationLogic(app_logic)
        logic.SetMRMLScene(scene)
        app_logic.SetModuleLogic(name, logic)
        logics[name] = logic
    cache_dir = tempfile.TemporaryDirectory(prefix="mrml-cache-")
    remote_io = slicer.vtkMRMLRemoteIOLogic()
    remote_io.SetMRMLScene(scene)
    remote_io.SetMRMLApplicationLogic(app_logic)
    remote_io.GetCacheManager().SetRemoteCacheDirectory(cache_dir.name)
    data_io = slicer.vtkDataIOManagerLogic()
    data_io.SetMRMLScene(scene)
    data_io.SetMRMLApplicationLogic(app_logic)
    data_io.SetAndObserveDataIOManager(remote_io.GetDataIOManager())
    remote_io.AddDataIOToScene()
    return SlicerScene(scene, app_logic, logics, keep=[cache_dir, remote_io, data_io])


def _storable_nodes(scene) -> list:
    nodes = scene.GetNodesByClass("vtkMRMLStorableNode")
    return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]


def save_scene(scene, path: str | Path) -> None:
    """Save as ``.mrb`` (one bundle) or ``.mrml`` (the scene file plus each node's data file beside it)."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    scene.SetRootDirectory(str(path.parent))
    scene.SetURL(str(path))
    if path.suffix == ".mrb":
        if not scene.WriteToMRB(str(path)):
            raise RuntimeError(f"could not write {path}")
        return
    for node in _storable_nodes(scene):
        if node.GetStorageNode() is None:
            node.AddDefaultStorageNode()
        storage = node.GetStorageNode()
        if storage is None:
            continue
        name = safe_file_name(node.GetName())
        storage.SetFileName(str(path.parent / f"{name}.{storage.GetDefaultWriteFileExtension()}"))
        if not storage.WriteData(node):
            raise RuntimeError(f"could not write the data of {node.GetName()}")
    if not scene.Commit():
        raise RuntimeError(f"could not write {path}")


def load_scene(path: str | Path) -> SlicerScene:
    """A fresh scene holding the ``.mrb`` or ``.mrml`` file's content."""
    loaded = make_scene()
    path = Path(path).resolve()
    if path.suffix == ".mrb":
        ok = loaded.scene.ReadFromMRB(str(path))
    else:
        loaded.scene.SetURL(str(path))
        ok = loaded.scene.Connect()
    if not ok:
        raise RuntimeError(f"could not read {path}")
    return loaded
