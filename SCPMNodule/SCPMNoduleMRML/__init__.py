"""The SCPMNodule module's logic without Qt: everything that touches MRML.

It imports ``slicer`` only for MRML and logic classes (vtkMRML*, vtkSlicer*), never ``qt``,
``ctk`` or ``slicer.util``'s GUI helpers, so it runs in Slicer and in the plain test suite
against the ``slicer-core`` package alike. The module's Widget and Logic classes
(``SCPMNodule.py``) only wire widgets to it.
"""

from .exports import (
    REVIEW_CSV_COLUMNS,
    dicom_instance_uids,
    export_review,
    write_markups_json,
    write_review_csv,
    write_review_dicom,
    write_table_csv,
)
from .nodules import Nodule, ReviewStatus, ReviewStyle, nodule_color, probability_color
from .process import (
                      DetectionProcess,
                      DetectionRun,
                      DetectionSettings,
                      ProgressEvent,
                      child_process_options,
                      detect_command,
                      detector_requirements,
                      ensure_dependencies,
                      library_environment,
                      model_names,
                      model_version,
                      parse_progress_line,
)
from .review import NoduleReview, remove_reviews
from .sidecar import (
                      SidecarWriter,
                      attach_sidecar,
                      flush_sidecar,
                      new_sidecar_path,
                      read_sidecar,
                      reattach_sidecar,
                      restore_review,
                      sidecar_path,
                      write_sidecar,
)
from .table import TABLE_COLUMNS
from .volumes import (
                      apply_lung_window,
                      check_input_volume,
                      image_from_volume_node,
                      lps_to_ras,
                      ras_to_lps,
                      series_uid,
                      volume_ijk_to_ras,
                      volume_node_from_image,
                      write_volume,
)

__all__ = [
    "REVIEW_CSV_COLUMNS", "TABLE_COLUMNS",
    "DetectionProcess", "DetectionRun", "DetectionSettings", "Nodule", "NoduleReview", "ProgressEvent",
    "ReviewStatus", "ReviewStyle", "SidecarWriter", "apply_lung_window", "attach_sidecar", "check_input_volume",
    "child_process_options", "detect_command", "detector_requirements", "dicom_instance_uids", "ensure_dependencies",
    "export_review", "flush_sidecar", "image_from_volume_node", "library_environment", "lps_to_ras", "model_names",
    "model_version", "new_sidecar_path", "nodule_color",
    "parse_progress_line", "probability_color", "ras_to_lps", "read_sidecar", "reattach_sidecar", "remove_reviews",
    "restore_review", "series_uid", "sidecar_path", "volume_ijk_to_ras", "volume_node_from_image",
    "write_markups_json", "write_review_csv", "write_review_dicom", "write_sidecar", "write_table_csv", "write_volume",
]
