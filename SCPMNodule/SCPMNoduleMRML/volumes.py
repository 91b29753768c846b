"""Volumes between SimpleITK (world LPS) and MRML (RAS), and the checks on a detector's input.

ITK and LUNA16 place voxel ``index_xyz`` at ``world_LPS = o + D · diag(s) · index_xyz``. Slicer
keeps the same voxels with an IJK→RAS matrix, and RAS = diag(-1, -1, 1) · LPS, so

    IJKToRAS = [[F · D · diag(s), F · o], [0, 0, 0, 1]],   F = diag(-1, -1, 1).

The image data of a Slicer volume node has unit spacing and zero origin: all geometry lives in
that matrix. Arrays stay ``(z, y, x)`` in numpy, which is VTK's x-fastest point order.

Slicer's file reader keeps IJK→RAS right-handed: when det(D) < 0 it reverses the slice axis
(k' = n_z - 1 - k, so the third column of D changes sign and the origin moves to the last slice).
:func:`volume_node_from_image` does the same, so a volume built here is the node Slicer would
have made by reading the image from a file, voxel for voxel.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support

from SCPMNoduleLib.errors import UserInputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def lps_to_ras(points_xyz_mm: np.ndarray) -> np.ndarray:
    """``(..., 3)`` LPS points to RAS: negate L and P (the map is its own inverse)."""
    return np.asarray(points_xyz_mm, dtype=np.float64) @ LPS_TO_RAS


ras_to_lps = lps_to_ras


def _ijk_to_ras(direction: np.ndarray, spacing_xyz: np.ndarray, origin_xyz_mm: np.ndarray) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = LPS_TO_RAS @ direction @ np.diag(spacing_xyz)
    matrix[:3, 3] = LPS_TO_RAS @ origin_xyz_mm
    return matrix


def _vtk_matrix(matrix: np.ndarray) -> vtk.vtkMatrix4x4:
    result = vtk.vtkMatrix4x4()
    result.DeepCopy(matrix.ravel().tolist())
    return result


def volume_ijk_to_ras(volume_node) -> np.ndarray:
    """The volume node's IJK→RAS matrix as a ``(4, 4)`` array."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def volume_node_from_image(scene, image: sitk.Image, name: str):
    """Add a ``vtkMRMLScalarVolumeNode`` holding ``image`` (3-D, one component) to ``scene``."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise UserInputError(f"Image '{name}' is not a 3-D scalar image.")
    array_zyx = sitk.GetArrayFromImage(image)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing_xyz = np.asarray(image.GetSpacing())
    origin_xyz_mm = np.asarray(image.GetOrigin())
    if np.linalg.det(direction) < 0:
        origin_xyz_mm = origin_xyz_mm + direction[:, 2] * spacing_xyz[2] * (array_zyx.shape[0] - 1)
        direction = direction * np.array([1.0, 1.0, -1.0])
        array_zyx = array_zyx[::-1]
    image_data = vtk.vtkImageData()
    image_data.SetDimensions(*image.GetSize())
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(array_zyx).ravel(), deep=True)
    image_data.GetPointData().SetScalars(scalars)
    volume_node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    volume_node.SetIJKToRASMatrix(_vtk_matrix(_ijk_to_ras(direction, spacing_xyz, origin_xyz_mm)))
    volume_node.SetAndObserveImageData(image_data)
    volume_node.CreateDefaultDisplayNodes()
    return volume_node


def image_from_volume_node(volume_node) -> sitk.Image:
    """The SimpleITK image (world LPS geometry) of a scalar volume node.

    The inverse of :func:`volume_node_from_image`: spacing = the column norms of the IJK→LPS
    block, direction = those columns divided by their norms, origin = its translation.
    """
    image_data = volume_node.GetImageData()
    size_xyz = image_data.GetDimensions()
    array_zyx = numpy_support.vtk_to_numpy(image_data.GetPointData().GetScalars())
    image = sitk.GetImageFromArray(array_zyx.reshape(size_xyz[::-1]).copy())
    ijk_to_lps = LPS_TO_RAS @ volume_ijk_to_ras(volume_node)[:3]
    spacing = np.linalg.norm(ijk_to_lps[:, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((ijk_to_lps[:, :3] / spacing).ravel().tolist())
    image.SetOrigin(ijk_to_lps[:, 3].tolist())
    return image


def check_input_volume(volume_node) -> None:
    """Raise :class:`UserInputError` unless ``volume_node`` is a 3-D, one-component scalar volume."""
    if volume_node is None:
        raise UserInputError("No input volume is selected; choose the chest CT to analyse.")
    name = volume_node.GetName()
    if not volume_node.IsA("vtkMRMLScalarVolumeNode") or volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise UserInputError(f"Volume '{name}' is not a scalar (grey-level) volume; choose a CT.")
    image_data = volume_node.GetImageData()
    if image_data is None or image_data.GetNumberOfPoints() == 0:
        raise UserInputError(f"Volume '{name}' holds no voxels.")
    size_xyz = image_data.GetDimensions()
    if min(size_xyz) < 2:
        raise UserInputError(
            f"Volume '{name}' is 2-D ({size_xyz[0]} x {size_xyz[1]} x {size_xyz[2]} voxels); "
            "the detector needs a 3-D CT."
        )
    if image_data.GetNumberOfScalarComponents() != 1:
        raise UserInputError(f"Volume '{name}' has {image_data.GetNumberOfScalarComponents()} "
                             "components per voxel; the detector needs a grey-level CT.")


def series_uid(volume_node) -> str:
    """The volume's DICOM SeriesInstanceUID when it was loaded from DICOM, else its name.

    Slicer's DICOM loader records the series UID as the ``DICOM`` UID of the volume's subject
    hierarchy item; a LUNA16 ``.mhd`` volume is named after its series UID already.
    """
    from slicer import vtkMRMLSubjectHierarchyNode

    hierarchy = vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(volume_node.GetScene())
    item = hierarchy.GetItemByDataNode(volume_node) if hierarchy is not None else 0
    uid = hierarchy.GetItemUID(item, "DICOM") if item else ""
    if uid:
        return uid
    return volume_node.GetAttribute("DICOM.SeriesInstanceUID") or volume_node.GetName()


def write_volume(volume_node, path) -> None:
    """Write the volume to ``path`` (.nrrd/.mha/.nii.gz) with its world geometry, for the detector."""
    sitk.WriteImage(image_from_volume_node(volume_node), str(path), useCompression=False)


__all__ = [
    "LPS_TO_RAS", "check_input_volume", "image_from_volume_node", "lps_to_ras", "ras_to_lps", "series_uid",
    "volume_ijk_to_ras", "volume_node_from_image", "write_volume",
]


LUNG_PRESET = "CT_LUNG"
"""Slicer's built-in CT-Lung window/level preset (window 1400 HU, level -500 HU)."""


def apply_lung_window(volume_node, volumes_logic) -> bool:
    """Show ``volume_node`` in Slicer's lung window through the Volumes module's logic
    (``vtkSlicerVolumesLogic.ApplyVolumeDisplayPreset``); False if the preset is not there."""
    if volume_node.GetDisplayNode() is None:
        volume_node.CreateDefaultDisplayNodes()
    return bool(volumes_logic.ApplyVolumeDisplayPreset(volume_node.GetDisplayNode(), LUNG_PRESET))
