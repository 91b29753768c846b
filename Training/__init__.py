"""Headless training of SCPM-Net on LUNA16-layout data."""
