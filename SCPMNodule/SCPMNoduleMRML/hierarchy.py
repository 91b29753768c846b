"""Where a review sits in Slicer's subject hierarchy: one folder per review, under the volume's study.

In Slicer every node gets a subject hierarchy item when it is added; a scene without Slicer's
GUI (the tests, on slicer-core) does not do that, so missing items are made here.
"""

from __future__ import annotations

__all__ = ["FOLDER_ROLE", "file_beside", "place_in_folder", "remove_with_folder"]

FOLDER_ROLE = "nodule-folder"
"""Value of the folder item's role attribute: marks the folders this module made (and may remove)."""


def _hierarchy(scene):
    from slicer import vtkMRMLSubjectHierarchyNode

    return vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)


def _set_parent(hierarchy, node, parent: int) -> None:
    item = hierarchy.GetItemByDataNode(node)
    if item:
        hierarchy.SetItemParent(item, parent)
    else:
        hierarchy.CreateItem(parent, node)


def place_in_folder(volume_node, nodes, name: str, role_attribute: str) -> None:
    """Put ``nodes`` in a new folder ``name`` under the volume's parent (its study, from DICOM)."""
    hierarchy = _hierarchy(volume_node.GetScene())
    volume_item = hierarchy.GetItemByDataNode(volume_node)
    parent = hierarchy.GetItemParent(volume_item) if volume_item else hierarchy.GetSceneItemID()
    folder = hierarchy.CreateFolderItem(parent, name)
    hierarchy.SetItemAttribute(folder, role_attribute, FOLDER_ROLE)
    for node in nodes:
        _set_parent(hierarchy, node, folder)


def file_beside(reference_node, node) -> None:
    """Give ``node`` the subject hierarchy parent of ``reference_node`` (once that has one)."""
    hierarchy = _hierarchy(reference_node.GetScene())
    reference_item = hierarchy.GetItemByDataNode(reference_node)
    if reference_item:
        _set_parent(hierarchy, node, hierarchy.GetItemParent(reference_item))


def remove_with_folder(nodes, role_attribute: str) -> None:
    """Remove ``nodes`` from their scene, with the folder the first one is in if this module made
    it (its items go with it, as when the folder is deleted in the Data module)."""
    nodes = [node for node in nodes if node is not None and node.GetScene() is not None]
    if not nodes:
        return
    scene = nodes[0].GetScene()
    hierarchy = _hierarchy(scene)
    item = hierarchy.GetItemByDataNode(nodes[0])
    folder = hierarchy.GetItemParent(item) if item else 0
    for node in nodes:
        if scene.IsNodePresent(node):
            scene.RemoveNode(node)
    if folder and hierarchy.GetItemAttribute(folder, role_attribute) == FOLDER_ROLE:
        hierarchy.RemoveItem(folder, True, True)
