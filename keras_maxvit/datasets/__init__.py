"""Datasets that ship with keras_maxvit (importing registers them with tfds)."""
