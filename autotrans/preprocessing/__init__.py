"""Cropping, resampling, invertible normalization and the on-disk store, shared by training and inference."""
