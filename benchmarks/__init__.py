"""Serving benchmarks: the ensemble against the reference BLS design and the in-process floor.

``python -m benchmarks.run`` measures and writes ``benchmarks/RESULTS.md``; ``python -m benchmarks.analyze`` runs
Triton Model Analyzer over the served repository.
"""
