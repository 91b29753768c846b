"""SCPM-Net lung-nodule detection: network, sphere geometry, matching, losses, inference,
evaluation, export and synthetic phantoms. Imports neither Slicer nor Qt."""

__all__ = ["__version__"]

__version__ = "0.1.0"
