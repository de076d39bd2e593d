"""Russian licence-plate recognition served by NVIDIA Triton: shared model, geometry, data and client code."""

__version__ = "0.1.0"
