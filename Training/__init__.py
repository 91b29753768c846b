"""Headless training of SCPM-Net on LUNA16-layout data."""

__all__: list[str] = []  # the package holds modules only; import from them
