"""Offline synthetic data: Russian plates (``plates``), street scenes (``scenes``) and data sets (``dataset``)."""
