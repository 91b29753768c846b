"""How the nodes of a review are marked in the MRML scene, and how they are found again.

A review's point list carries the attribute :data:`ROLE_ATTRIBUTE` = ``nodules`` and a node
reference :data:`VOLUME_REFERENCE` to its volume; its table and spheres carry the same attribute
(``nodule-table``, ``nodule-sphere``) and are referenced from the point list
(:data:`TABLE_REFERENCE`, :data:`SPHERE_REFERENCE`, in point order). Attributes and references
are saved with the scene, so a reloaded scene's reviews are found by them.
"""

from __future__ import annotations

__all__ = ["HIDE_REJECTED_ATTRIBUTE", "OPACITY_ATTRIBUTE", "ROLE_ATTRIBUTE", "SPHERE_REFERENCE", "TABLE_REFERENCE",
           "VOLUME_REFERENCE", "nodes_by_class", "review_point_lists"]

ROLE_ATTRIBUTE = "SCPMNodule.Role"
HIDE_REJECTED_ATTRIBUTE = "SCPMNodule.HideRejected"
OPACITY_ATTRIBUTE = "SCPMNodule.Opacity"
SPHERE_REFERENCE = "SCPMNodule.Sphere"
TABLE_REFERENCE = "SCPMNodule.Table"
VOLUME_REFERENCE = "SCPMNodule.Volume"


def review_point_lists(scene, volume_node=None) -> list:
    """The point lists of the reviews in ``scene`` (of ``volume_node`` if given), oldest first."""
    return [markups for markups in nodes_by_class(scene, "vtkMRMLMarkupsFiducialNode")
            if markups.GetAttribute(ROLE_ATTRIBUTE) == "nodules"
            and (volume_node is None or markups.GetNodeReferenceID(VOLUME_REFERENCE) == volume_node.GetID())]


def nodes_by_class(scene, class_name: str) -> list:
    """The nodes of ``scene`` of class ``class_name``, in scene order."""
    collection = scene.GetNodesByClass(class_name)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]
