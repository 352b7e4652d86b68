"""Matterport's import path `mrcnn.model`: the model classes a Matterport user reaches for.

`MaskScoringRCNN` (mrcnn.detector) is the PyTorch module; this module sits on top of the
package layers so that Matterport's API can use everything below it.
"""
from mrcnn.detector import MaskScoringRCNN, unmold_results

__all__ = ["MaskScoringRCNN", "unmold_results"]
