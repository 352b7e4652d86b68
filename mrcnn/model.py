"""Matterport's import path `mrcnn.model`: `MaskRCNN` and the functions its scripts call.

A script written for Matterport runs with its imports unchanged:

    from mrcnn.config import Config
    from mrcnn import model as modellib, utils, visualize

    model = modellib.MaskRCNN(mode="training", config=config, model_dir="logs")
    model.load_weights("mask_rcnn_coco.h5", by_name=True,
                       exclude=["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask"])
    model.train(dataset_train, dataset_val, learning_rate=config.LEARNING_RATE, epochs=30,
                layers="heads")

The network is the PyTorch module `MaskScoringRCNN` (Matterport's Mask R-CNN plus a MaskIoU
head), `model.torch_model`; there is no Keras model. Checkpoints are this project's .pth files,
named as Matterport names its .h5 files.
"""
import copy
import datetime
import errno
import os
import re

from pathlib import Path

import numpy as np
import torch

from mrcnn.detector import MaskScoringRCNN, unmold_results
from mrcnn.molding import compose_image_meta, parse_image_meta
from mrcnn.molding import mold_image as _mold_image
from mrcnn.atomic import atomic_path
from mrcnn.trainer import Trainer
from mrcnn.training import set_trainable
from mrcnn.weights import (CLASS_LAYERS, describe_weights, epoch_checkpoint_path,
                           imagenet_weights_path, is_keras_file, read_checkpoint)
from mrcnn.weights import load_weights as load_weights_into
from preprocess.augmentation import as_augmentation
from preprocess.training_data import flip_left_right
from preprocess.training_data import load_image_gt as _load_sample

__all__ = ["MaskRCNN", "MaskScoringRCNN", "compose_image_meta", "load_image_gt", "log",
           "mold_image", "parse_image_meta", "unmold_image", "unmold_results"]

MODES = ("training", "inference")
# A checkpoint path as MaskRCNN writes it (Matterport's pattern, .pth or Matterport's .h5):
# <model_dir>/<name><YYYYMMDDTHHMM>/mask_rcnn_<name>_<epoch>.pth
CHECKPOINT_PATH = re.compile(r"(?:.*[/\\])?[\w-]+(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})[/\\]"
                             r"mask\_rcnn\_[\w-]+(\d{4})\.(?:pth|h5)")


class MaskRCNN:
    """Matterport's model class over MaskScoringRCNN.

    mode: "training" (train()) or "inference" (detect()); config: a Config (subclass);
    model_dir: the folder of the training runs, each in <NAME><timestamp>/; device: where the
    network runs (default: CUDA when available, else the CPU).
    """

    def __init__(self, mode, config, model_dir, device=None):
        if mode not in MODES:
            raise ValueError(f"mode must be 'training' or 'inference', got {mode!r}")
        config.validate()
        self.mode = mode
        self.config = config
        self.model_dir = os.fspath(model_dir)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.torch_model = MaskScoringRCNN(config).to(self.device)
        self.torch_model.train(mode == "training")
        self._trainer = None
        self._global_step = 0
        self.set_log_dir()

    @property
    def keras_model(self):
        raise AttributeError(
            "MaskRCNN has no Keras model here: the network is the PyTorch module "
            "model.torch_model (a MaskScoringRCNN). Use model.detect() and model.train(), "
            "model.load_weights(path) for .h5/.pth files, "
            "model.torch_model.named_layers() for the layers by their Keras names, and "
            "mrcnn.weights.save_weights(model.torch_model, config, path) to save weights")

    # Weights and checkpoints.

    def set_log_dir(self, model_path=None):
        """Sets the run folder and the epoch counter: a new run from epoch 0, or, for a
        checkpoint path written by train(), that run's folder and its epoch (training goes on
        from there)."""
        self.epoch = 0
        now = datetime.datetime.now()
        match = CHECKPOINT_PATH.fullmatch(os.fspath(model_path)) if model_path else None
        if match:
            now = datetime.datetime(*(int(match[i]) for i in range(1, 6)))
            self.epoch = int(match[6])
            print(f"Re-starting from epoch {self.epoch}")
        if self.config.NAME is None:    # train() and find_last() say that a NAME is needed
            self.log_dir = self.checkpoint_path = None
            return
        name = self.config.NAME.lower()
        self.log_dir = os.path.join(self.model_dir, f"{name}{now:%Y%m%dT%H%M}")
        self.checkpoint_path = os.path.join(self.log_dir, f"mask_rcnn_{name}_{{epoch:04d}}.pth")

    def find_last(self):
        """The newest checkpoint of the newest run of this config's NAME under model_dir."""
        name = self._name()
        runs = sorted(entry.name for entry in _subfolders(self.model_dir)
                      if entry.name.startswith(name))
        if not runs:
            raise FileNotFoundError(errno.ENOENT,
                                    f"Could not find model directory under {self.model_dir}")
        run_dir = os.path.join(self.model_dir, runs[-1])
        checkpoints = sorted(entry.name for entry in os.scandir(run_dir) if entry.is_file()
                             and entry.name.startswith("mask_rcnn")
                             and entry.name.endswith((".pth", ".h5")))
        if not checkpoints:
            raise FileNotFoundError(errno.ENOENT, f"Could not find weight files in {run_dir}")
        return os.path.join(run_dir, checkpoints[-1])

    def load_weights(self, filepath, by_name=False, exclude=None):
        """Loads a Matterport .h5, a .pth of this project, or Keras's ImageNet ResNet-50
        (get_imagenet_weights(): into the ResNet layers only).

        Layers are always matched by name (Matterport's Keras layer names), so `by_name` changes
        nothing. `exclude`: layer names that keep their initialisation, e.g. the class layers
        when fine-tuning to another class count; the MaskIoU head's class layer
        (mrcnn_maskiou) joins them when the file has another class count. The run folder and
        epoch follow a checkpoint written by train() (see set_log_dir).
        """
        filepath = os.fspath(filepath)
        exclude = list(exclude or ())
        described = describe_weights(filepath)
        file_classes = described["NUM_CLASSES"]
        backbone_only = is_keras_file(filepath) and file_classes is None \
            and described["BACKBONE"] is not None
        if (set(exclude) & set(CLASS_LAYERS) and "mrcnn_maskiou" not in exclude
                and file_classes not in (None, self.config.NUM_CLASSES)):
            exclude.append("mrcnn_maskiou")
        load_weights_into(self.torch_model, filepath, exclude=exclude,
                          backbone_only=backbone_only)
        self.set_log_dir(filepath)
        self._global_step = self._steps_before(filepath)
        return self

    def _steps_before(self, filepath):
        """The optimisation steps a checkpoint of train() was written after (0 for others)."""
        if not self.epoch or is_keras_file(filepath):
            return 0
        training = read_checkpoint(filepath).get("training") or {}
        return training.get("global_step", self.epoch * self.config.STEPS_PER_EPOCH)

    def get_imagenet_weights(self):
        """Path of Keras's ImageNet ResNet-50 weights, downloaded once into the verified cache
        (mrcnn.weights.imagenet_weights_path), for load_weights; the config needs BACKBONE
        "resnet50"."""
        return str(imagenet_weights_path())

    def set_trainable(self, layer_regex, verbose=1):
        """Trains the layers whose names fully match `layer_regex` (or a group: heads, 3+, 4+,
        5+, all, maskiou) and freezes the others; returns the trained layer names."""
        trained = set_trainable(self.torch_model, layer_regex)
        if verbose > 0:
            log("Selecting layers to train")
            for name in trained:
                log(f"{name:20}   ({type(self.torch_model.named_layers()[name]).__name__})")
        return trained

    # Training.

    def train(self, train_dataset, val_dataset, learning_rate, epochs, layers,
              augmentation=None, custom_callbacks=None, no_augmentation_sources=None):
        """Trains up to epoch `epochs` (absolute: from self.epoch, the epoch of a loaded
        checkpoint of train(), on), with the training loop of mrcnn.trainer.

        train_dataset, val_dataset: prepared datasets (utils.Dataset subclasses, or any dataset
            with the interface of mrcnn.dataset); val_dataset may be None.
        learning_rate: SGD's, with LEARNING_MOMENTUM; a new optimizer per call, as Matterport.
        layers: "heads", "3+", "4+", "5+", "all", "maskiou" (the MaskIoU head alone), or a
            regular expression fully matching the layer names to train.
        augmentation: an imgaug augmenter, an albumentations transform or a callable
            (image, masks) -> (image, masks) (see preprocess.augmentation).
        custom_callbacks: objects with Keras's on_epoch_end(epoch, logs): called after each
            epoch with its 0-based index and the epoch's losses.
        no_augmentation_sources: dataset sources whose images are not augmented.

        Each epoch is STEPS_PER_EPOCH steps of IMAGES_PER_GPU images, with a progress bar, then
        VALIDATION_STEPS validation batches; the losses are printed per epoch and written to
        log_dir (metrics.csv, validation.csv, TensorBoard when installed), and the weights to
        log_dir/mask_rcnn_<name>_<epoch>.pth (checkpoint_path).
        """
        self._check_mode("training", "train")
        callbacks = _keras_style_callbacks(custom_callbacks)
        for name, dataset in (("train_dataset", train_dataset), ("val_dataset", val_dataset)):
            if dataset is not None and not hasattr(dataset, "num_classes"):
                raise ValueError(f"{name} is not prepared: call its prepare() after adding the "
                                 "classes and images")
        trainer = self._trainer_of_run()
        log(f"\nStarting at epoch {self.epoch}. LR={learning_rate}\n")
        log(f"Checkpoint Path: {self.checkpoint_path}")

        def after_epoch(epoch, results):
            self._name_checkpoint(epoch)
            for callback in callbacks:
                callback.on_epoch_end(epoch - 1, logs=dict(results))

        trainer.train(train_dataset, val_dataset, learning_rate, epochs, layers,
                      augmentation=as_augmentation(augmentation),
                      no_augmentation_sources=no_augmentation_sources,
                      epoch_callbacks=[after_epoch])
        self.epoch = max(self.epoch, epochs)
        self._global_step = trainer.global_step

    def _trainer_of_run(self):
        """The Trainer of log_dir, counting epochs and steps on from self.epoch."""
        self._name()
        if self._trainer is None or self._trainer.run_dir != Path(self.log_dir) \
                or self._trainer.epoch != self.epoch:
            self._trainer = Trainer(self.torch_model, self.log_dir)
            self._trainer.epoch, self._trainer.global_step = self.epoch, self._global_step
        return self._trainer

    def _name_checkpoint(self, epoch):
        """Gives the epoch's checkpoint Matterport's name (a second link to the same file)."""
        with atomic_path(self.checkpoint_path.format(epoch=epoch)) as tmp:
            os.unlink(tmp)
            os.link(epoch_checkpoint_path(self.log_dir, epoch), tmp)

    # Inference.

    def detect(self, images, verbose=0):
        """Detects instances in a list of images (any count and sizes).

        Returns one dict per image, as Matterport: rois [N, 4] int32 (y1, x1, y2, x2), class_ids
        [N] int32, scores [N] float32, masks [H, W, N] bool; plus mask_scores [N] float32 (class
        score x predicted mask IoU: meaningful once the MaskIoU head is trained).
        """
        self._check_mode("inference", "detect")
        if verbose:
            log(f"Processing {len(images)} images")
            for image in images:
                log("image", image)
        return self.torch_model.detect(images)

    def _check_mode(self, mode, method):
        if self.mode != mode:
            raise RuntimeError(f"{method}() needs a model created with mode={mode!r}; this one "
                               f"is in {self.mode!r} mode")

    def _name(self):
        if self.config.NAME is None:
            raise ValueError("config.NAME is not set: training runs are stored under "
                             "model_dir/<NAME><timestamp>/ (set NAME in your Config subclass)")
        return self.config.NAME.lower()


def load_image_gt(dataset, config, image_id, augment=False, augmentation=None,
                  use_mini_mask=False):
    """Matterport's load_image_gt: (image, image_meta, class_ids, bbox, mask) of one image,
    resized and padded as the config says; `augment` flips it left-right at random,
    `augmentation` (imgaug, albumentations or a callable) augments it; mask is [H, W, N], or
    the mini-masks [h, w, N] with use_mini_mask."""
    config = copy.deepcopy(config).update(USE_MINI_MASK=use_mini_mask)
    if augment:
        augmentation = flip_left_right
    sample = _load_sample(dataset, image_id, config, as_augmentation(augmentation))
    return (sample["image"], sample["image_meta"], sample["class_ids"].astype(np.int32),
            sample["boxes"], sample["masks"].transpose(1, 2, 0))


def mold_image(images, config):
    """RGB pixels [..., 3] minus config.MEAN_PIXEL, as float32 (mrcnn.molding.mold_image)."""
    return _mold_image(np.asarray(images), config.MEAN_PIXEL)


def unmold_image(normalized_images, config):
    """The inverse of mold_image, as uint8."""
    return (normalized_images + config.MEAN_PIXEL).astype(np.uint8)


def log(text, array=None):
    """Prints `text`, and for an array its shape, min, max and dtype (Matterport's log)."""
    if array is not None:
        array = np.asarray(array)
        text = text.ljust(25) + f"shape: {str(array.shape):20}  "
        if array.size:
            text += f"min: {array.min():10.5f}  max: {array.max():10.5f}"
        else:
            text += f"min: {'':10}  max: {'':10}"
        text += f"  {array.dtype}"
    print(text)


def _keras_style_callbacks(callbacks):
    """The callbacks, checked to have Keras's on_epoch_end(epoch, logs)."""
    callbacks = list(callbacks or ())
    unusable = [type(callback).__name__ for callback in callbacks
                if not callable(getattr(callback, "on_epoch_end", None))]
    if unusable:
        raise TypeError(f"custom_callbacks must have Keras's on_epoch_end(epoch, logs) method; "
                        f"{unusable} have none (Keras callbacks that use the Keras model "
                        "cannot work here: there is no Keras model)")
    return callbacks


def _subfolders(path):
    try:
        return [entry for entry in os.scandir(path) if entry.is_dir()]
    except FileNotFoundError:
        return []
