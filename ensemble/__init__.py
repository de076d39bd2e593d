"""Triton model repository generation and the code of its Python steps (see alpr/repository.py)."""
