"""bnonly: train only BatchNorm's affine parameters of random CNNs, and compare honestly."""

__version__ = "0.1.0"
