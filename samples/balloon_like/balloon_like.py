"""Matterport's balloon sample, as a script written for Matterport's API runs here.

The Config subclass, the utils.Dataset subclass that reads a VIA polygon export, and the calls
(MaskRCNN(mode=...), load_weights(..., exclude=[...]), train(..., layers="heads"), detect,
visualize.display_instances) are those of Matterport's samples/balloon/balloon.py; the
network underneath is this project's PyTorch Mask Scoring R-CNN.

    # a tiny dataset (or Matterport's balloon dataset, with --image-size 1024)
    python samples/balloon_like/make_dataset.py --out data/balloons
    # fine-tune the heads from COCO weights (or --weights PATH.h5/.pth, imagenet, last)
    python samples/balloon_like/balloon_like.py train --dataset data/balloons --weights coco
    # detect with the newest checkpoint and draw the instances into a PNG
    python samples/balloon_like/balloon_like.py detect --weights last \\
        --image data/balloons/val/balloon_000.png --out balloons.png

Checkpoints go to --logs/balloon<YYYYMMDDTHHMM>/mask_rcnn_balloon_<epoch>.pth. The drawing needs
matplotlib (pip install mask-scoring-rcnn[plots]).
"""
import argparse
import json
import os
import sys

import cv2
import numpy as np

# Root directory of the project, so that the script also runs from a clone without installing.
ROOT_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.append(ROOT_DIR)

from mrcnn import model as modellib, utils, visualize  # noqa: E402
from mrcnn.config import Config  # noqa: E402
from preprocess.images import load_image  # noqa: E402

COCO_WEIGHTS_PATH = os.path.join(ROOT_DIR, "mask_rcnn_coco.h5")
DEFAULT_LOGS_DIR = os.path.join(ROOT_DIR, "logs")
# The layers that depend on the class count: they start fresh when the weights have another.
CLASS_LAYERS = ["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask"]


############################################################
#  Configurations
############################################################

class BalloonConfig(Config):
    """Training on the balloon-like dataset: one class, small images, short epochs."""
    NAME = "balloon"
    IMAGES_PER_GPU = 1
    NUM_CLASSES = 1 + 1  # background + balloon
    CLASS_NAMES = ["BG", "balloon"]
    STEPS_PER_EPOCH = 100
    VALIDATION_STEPS = 5
    DETECTION_MIN_CONFIDENCE = 0.9
    # The tiny dataset's 128x128 images: fewer proposals and anchors are plenty.
    IMAGE_MIN_DIM = 128
    IMAGE_MAX_DIM = 128
    RPN_ANCHOR_SCALES = [8, 16, 32, 64, 128]
    POST_NMS_ROIS_TRAINING = 300
    POST_NMS_ROIS_INFERENCE = 300
    TRAIN_ROIS_PER_IMAGE = 64
    MAX_GT_INSTANCES = 10


class InferenceConfig(BalloonConfig):
    GPU_COUNT = 1
    IMAGES_PER_GPU = 1


############################################################
#  Dataset
############################################################

class BalloonDataset(utils.Dataset):

    def load_balloon(self, dataset_dir, subset):
        """Adds the images of `subset` ("train" or "val") of a VIA-annotated balloon dataset."""
        self.add_class("balloon", 1, "balloon")
        if subset not in ("train", "val"):
            raise ValueError(f"subset must be 'train' or 'val', got {subset!r}")
        dataset_dir = os.path.join(dataset_dir, subset)
        with open(os.path.join(dataset_dir, "via_region_data.json")) as f:
            annotations = list(json.load(f).values())
        # VIA lists images without regions too; they have nothing to learn from.
        annotations = [a for a in annotations if a["regions"]]
        for a in annotations:
            # VIA 1.x stores the regions in a dict, VIA 2.x in a list.
            regions = a["regions"].values() if isinstance(a["regions"], dict) else a["regions"]
            polygons = [r["shape_attributes"] for r in regions]
            # load_mask needs the image size, which VIA does not record.
            image_path = os.path.join(dataset_dir, a["filename"])
            height, width = load_image(image_path).shape[:2]
            self.add_image("balloon", image_id=a["filename"], path=image_path,
                           width=width, height=height, polygons=polygons)

    def load_mask(self, image_id):
        """Masks [H, W, instances] bool and class ids [instances] of one image."""
        info = self.image_info[image_id]
        if info["source"] != "balloon":
            return super().load_mask(image_id)
        mask = np.zeros([info["height"], info["width"], len(info["polygons"])], dtype=np.uint8)
        for i, p in enumerate(info["polygons"]):
            points = np.stack([p["all_points_x"], p["all_points_y"]], axis=1).astype(np.int32)
            mask[:, :, i] = cv2.fillPoly(np.ascontiguousarray(mask[:, :, i]), [points], 1)
        return mask.astype(bool), np.ones([mask.shape[-1]], dtype=np.int32)

    def image_reference(self, image_id):
        info = self.image_info[image_id]
        if info["source"] == "balloon":
            return info["path"]
        return super().image_reference(image_id)


def flip_left_right(image, masks):
    """The augmentation: a left-right flip half of the time (any callable (image, masks) ->
    (image, masks) works, as do imgaug augmenters and albumentations transforms)."""
    if np.random.random() < 0.5:
        return image[:, ::-1], masks[:, ::-1]
    return image, masks


############################################################
#  Training and detection
############################################################

def train(model, dataset_dir, epochs):
    dataset_train = BalloonDataset()
    dataset_train.load_balloon(dataset_dir, "train")
    dataset_train.prepare()
    dataset_val = BalloonDataset()
    dataset_val.load_balloon(dataset_dir, "val")
    dataset_val.prepare()
    print("Training network heads")
    model.train(dataset_train, dataset_val, learning_rate=model.config.LEARNING_RATE,
                epochs=epochs, layers="heads", augmentation=flip_left_right)


def detect_and_draw(model, image_path, out_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = load_image(image_path)
    r = model.detect([image], verbose=1)[0]
    figure, ax = plt.subplots(1, figsize=(8, 8))
    visualize.display_instances(image, r["rois"], r["masks"], r["class_ids"],
                                model.config.CLASS_NAMES, r["scores"], ax=ax,
                                title=f"{len(r['class_ids'])} balloons")
    figure.savefig(out_path)
    plt.close(figure)
    print(f"Saved to {out_path}")


def weights_path(model, weights):
    if weights.lower() == "coco":
        if not os.path.exists(COCO_WEIGHTS_PATH):
            utils.download_trained_weights(COCO_WEIGHTS_PATH)
        return COCO_WEIGHTS_PATH
    if weights.lower() == "last":
        return model.find_last()
    if weights.lower() == "imagenet":
        return model.get_imagenet_weights()
    return weights


def main(argv=None):
    parser = argparse.ArgumentParser(description="Train Mask R-CNN to detect balloons.")
    parser.add_argument("command", choices=("train", "detect"))
    parser.add_argument("--dataset", help="directory of the balloon dataset (train)")
    parser.add_argument("--weights", required=True,
                        help="'coco', 'imagenet', 'last' or the path of an .h5/.pth file")
    parser.add_argument("--logs", default=DEFAULT_LOGS_DIR,
                        help="logs and checkpoints directory (default: logs/)")
    parser.add_argument("--image", help="image to detect balloons in (detect)")
    parser.add_argument("--out", default="balloons.png", help="PNG to draw into (detect)")
    parser.add_argument("--epochs", type=int, default=30, help="epoch to train up to")
    parser.add_argument("--steps-per-epoch", type=int, help="default: the config's")
    parser.add_argument("--backbone", choices=("resnet50", "resnet101"), default="resnet101",
                        help="the backbone of the starting weights (COCO's: resnet101)")
    args = parser.parse_args(argv)
    if args.command == "train" and not args.dataset:
        parser.error("train needs --dataset")
    if args.command == "detect" and not args.image:
        parser.error("detect needs --image")

    config_class = BalloonConfig if args.command == "train" else InferenceConfig
    overrides = {"BACKBONE": args.backbone}
    if args.steps_per_epoch:
        overrides["STEPS_PER_EPOCH"] = args.steps_per_epoch
    config = config_class(**overrides)
    config.display()

    mode = "training" if args.command == "train" else "inference"
    model = modellib.MaskRCNN(mode=mode, config=config, model_dir=args.logs)
    path = weights_path(model, args.weights)
    print("Loading weights", path)
    if args.command == "train" and args.weights.lower() not in ("last", "imagenet"):
        # Training from another model's weights: the class layers start fresh, as in
        # Matterport's sample.
        model.load_weights(path, by_name=True, exclude=CLASS_LAYERS)
    else:
        model.load_weights(path, by_name=True)

    if args.command == "train":
        train(model, args.dataset, args.epochs)
    else:
        detect_and_draw(model, args.image, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
