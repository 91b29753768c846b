"""Where a review sits in Slicer's subject hierarchy: one folder per review, under the volume's study.

In Slicer every node gets a subject hierarchy item when it is added; a scene without Slicer's
GUI (the tests, on slicer-core) does not do that, so missing items are made here.
"""

from __future__ import annotations

__all__ = ["FOLDER_ROLE", "file_beside", "place_in_folder", "remove_folder_of"]

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


def remove_folder_of(node, remove_nodes, role_attribute: str) -> None:
    """Call ``remove_nodes()``, then remove the folder ``node`` was in if this module made it and
    it is empty now."""
    hierarchy = _hierarchy(node.GetScene())
    item = hierarchy.GetItemByDataNode(node)
    folder = hierarchy.GetItemParent(item) if item else 0
    remove_nodes()
    if folder and hierarchy.GetItemAttribute(folder, role_attribute) == FOLDER_ROLE \
            and hierarchy.GetNumberOfItemChildren(folder) == 0:
        hierarchy.RemoveItem(folder)
