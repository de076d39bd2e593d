"""``python -m ensemble.build``: write the Triton model repository of one target (configs, Python steps, graphs).

The generator itself, the launcher and the Python steps' code live in the installable package, ``alpr.serving``.
"""
