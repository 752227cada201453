"""Whole-slide images to patches: reading, tissue detection, tiling, patch store, prepare runs."""
