"""MeDi-Fed core library: metadata-guided diffusion for histopathology, without Flower."""

__version__ = "0.1.0"
