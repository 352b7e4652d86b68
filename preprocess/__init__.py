"""Getting images into the model: decoding, RGB conversion and Matterport's input molding."""
import mrcnn  # noqa: F401  first: it sets OpenMP's thread settings before torch loads
