"""Turning model outputs into pictures and results files."""
import mrcnn  # noqa: F401  first: it sets OpenMP's thread settings before torch loads
