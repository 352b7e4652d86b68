"""Small valid inputs for the bad-input tests and the fuzz benchmark: a tiny randomly initialised
model saved as a .pth, and a small synthetic COCO dataset."""
import json

import torch

from mrcnn.config import Config
from mrcnn.detector import MaskScoringRCNN
from mrcnn.weights import save_weights
from preprocess import synthetic
from preprocess.coco import coco_layout

# A ResNet-50 at 128 px with small heads: detections in a fraction of a second on a CPU. With
# DETECTION_MIN_CONFIDENCE 0 its random weights still detect, so COCOeval has results to score.
TINY_CONFIG = {
    "NAME": "tiny", "BACKBONE": "resnet50", "NUM_CLASSES": 4, "IMAGE_MIN_DIM": 64,
    "IMAGE_MAX_DIM": 128, "TOP_DOWN_PYRAMID_SIZE": 64, "FPN_CLASSIF_FC_LAYERS_SIZE": 128,
    "POST_NMS_ROIS_INFERENCE": 50, "DETECTION_MAX_INSTANCES": 10,
    "DETECTION_MIN_CONFIDENCE": 0.0, "IMAGES_PER_GPU": 1,
}
CATEGORIES = ("circle", "square", "triangle")


def write_tiny_model(path):
    """A .pth of the tiny model (seed 0); returns its path."""
    config = Config.from_dict(TINY_CONFIG)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MaskScoringRCNN(config)
    save_weights(model, config, path)
    return path


def write_shapes(root, images=3, size=64, seed=3):
    """A synthetic val split of `images` images of the tiny model's 3 classes; returns
    (annotation file, image folder, the parsed annotation file)."""
    synthetic.write_dataset(root, 0, images, seed=seed, size=size, progress=False,
                            categories=CATEGORIES)
    annotation_json, image_dir = coco_layout(root, "val")
    with open(annotation_json) as f:
        return annotation_json, image_dir, json.load(f)
