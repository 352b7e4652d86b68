"""mrcnn.model.MaskRCNN (Matterport's model API): weights, checkpoints' names, detection."""
import hashlib
import os

import h5py
import numpy as np
import pytest
import torch

from mrcnn import model as modellib
from mrcnn import weights
from mrcnn.config import Config
from mrcnn.weights import WeightsError, save_weights
from tests import test_weights
from tests.test_weights import server  # noqa: F401  (the loopback HTTP server fixture)

MATTERPORT_EXCLUDE = ["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask"]


class SmallConfig(Config):
    NAME = "Small"
    BACKBONE = "resnet50"
    NUM_CLASSES = 2
    IMAGES_PER_GPU = 1
    IMAGE_MIN_DIM = 128
    IMAGE_MAX_DIM = 128
    POST_NMS_ROIS_INFERENCE = 50


def keras_kernel(h5_path, layer):
    with h5py.File(h5_path, "r") as f:
        return torch.from_numpy(f[f"{layer}/{layer}/kernel:0"][()])


def test_mode_and_keras_model(tmp_path):
    with pytest.raises(ValueError, match="'training' or 'inference'"):
        modellib.MaskRCNN("train", SmallConfig(), tmp_path)
    model = modellib.MaskRCNN("inference", SmallConfig(), tmp_path, device="cpu")
    with pytest.raises(AttributeError, match="model.torch_model"):
        model.keras_model
    with pytest.raises(RuntimeError, match="mode='training'"):
        model.train(None, None, 0.001, 1, "heads")
    assert isinstance(model.torch_model, modellib.MaskScoringRCNN)


def test_log_dir_and_find_last(tmp_path, capsys):
    model = modellib.MaskRCNN("inference", SmallConfig(), tmp_path, device="cpu")
    assert model.epoch == 0
    assert os.path.dirname(model.log_dir) == str(tmp_path)
    assert os.path.basename(model.log_dir).startswith("small")
    assert model.checkpoint_path.endswith("mask_rcnn_small_{epoch:04d}.pth")
    with pytest.raises(FileNotFoundError, match="Could not find model directory"):
        model.find_last()

    for run, names in (("small20240101T0900", ["mask_rcnn_small_0001.pth"]),
                       ("small20240102T1000", ["mask_rcnn_small_0001.pth",
                                               "mask_rcnn_small_0012.pth", "events.log"]),
                       ("other20250101T0000", ["mask_rcnn_other_0001.pth"])):
        (tmp_path / run).mkdir()
        for name in names:
            (tmp_path / run / name).write_bytes(b"")
    last = model.find_last()
    assert last == str(tmp_path / "small20240102T1000" / "mask_rcnn_small_0012.pth")

    model.set_log_dir(last)
    assert model.epoch == 12 and "Re-starting from epoch 12" in capsys.readouterr().out
    assert model.log_dir == str(tmp_path / "small20240102T1000")
    model.set_log_dir(str(tmp_path / "weights.pth"))
    assert model.epoch == 0

    (tmp_path / "small20240103T1100").mkdir()
    with pytest.raises(FileNotFoundError, match="Could not find weight files"):
        model.find_last()


def test_find_last_needs_a_name(tmp_path):
    model = modellib.MaskRCNN("inference", SmallConfig(NAME=None), tmp_path, device="cpu")
    with pytest.raises(ValueError, match="config.NAME is not set"):
        model.find_last()


@pytest.fixture(scope="module")
def four_class_pth(reference_weights, tmp_path_factory):
    """The reference .h5 (ResNet-50, 4 classes) as a .pth with a trained-looking MaskIoU head."""
    model = modellib.MaskScoringRCNN(Config(BACKBONE="resnet50", NUM_CLASSES=4))
    with pytest.warns(weights.MaskIoUHeadNotInFileWarning):
        model.load_weights(reference_weights)
    model.maskiou_head.trained.fill_(True)
    path = tmp_path_factory.mktemp("pth") / "four.pth"
    save_weights(model, model.config, path)
    return path


def test_load_h5_of_another_class_count_with_matterports_exclude(reference_weights, tmp_path):
    model = modellib.MaskRCNN("training", SmallConfig(), tmp_path, device="cpu")
    layers = model.torch_model.named_layers()
    fresh = {name: layers[name].weight.detach().clone()
             for name in ("mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_mask")}
    with pytest.raises(WeightsError, match="the file has 4 classes, the config 2"):
        model.load_weights(reference_weights, by_name=True)
    with pytest.warns(weights.MaskIoUHeadNotInFileWarning):
        model.load_weights(reference_weights, by_name=True, exclude=MATTERPORT_EXCLUDE)
    expected = keras_kernel(reference_weights, "fpn_c5p5").permute(3, 2, 0, 1)
    assert torch.equal(layers["fpn_c5p5"].weight, expected)
    for name, before in fresh.items():
        assert torch.equal(layers[name].weight, before), name
    assert model.epoch == 0


def test_load_pth_of_another_class_count_also_refreshes_the_maskiou_class_layer(four_class_pth,
                                                                                tmp_path):
    model = modellib.MaskRCNN("inference", SmallConfig(), tmp_path, device="cpu")
    layers = model.torch_model.named_layers()
    fresh_iou = layers["mrcnn_maskiou"].weight.detach().clone()
    model.load_weights(four_class_pth, exclude=MATTERPORT_EXCLUDE)
    saved = torch.load(four_class_pth, weights_only=True)["state_dict"]
    assert torch.equal(layers["mrcnn_maskiou_fc1"].weight, saved["maskiou_head.fc1.weight"])
    assert torch.equal(layers["mrcnn_maskiou"].weight, fresh_iou)
    assert not model.torch_model.maskiou_head.trained   # a fresh class layer: not trained


def test_exclude_names_are_checked(reference_weights, tmp_path):
    model = modellib.MaskRCNN("inference", SmallConfig(), tmp_path, device="cpu")
    with pytest.raises(ValueError, match=r"no layer of the model: \['mrcnn_clas_logits'\]"):
        model.load_weights(reference_weights, exclude=["mrcnn_clas_logits"])


def test_detect_returns_matterports_dicts(four_class_pth, tmp_path, capsys):
    config = SmallConfig(NUM_CLASSES=4, DETECTION_MIN_CONFIDENCE=0.0)
    model = modellib.MaskRCNN("inference", config, tmp_path, device="cpu")
    model.load_weights(four_class_pth)
    image = np.random.default_rng(0).integers(0, 255, (96, 120, 3), dtype=np.uint8)
    results = model.detect([image], verbose=1)
    assert "Processing 1 images" in capsys.readouterr().out
    expected = model.torch_model.detect([image])[0]
    assert sorted(results[0]) == ["class_ids", "mask_scores", "masks", "rois", "scores"]
    for key, value in expected.items():
        np.testing.assert_array_equal(results[0][key], value)
    assert results[0]["masks"].shape[:2] == (96, 120)
    training = modellib.MaskRCNN("training", config, tmp_path, device="cpu")
    with pytest.raises(RuntimeError, match="mode='inference'"):
        training.detect([image])


# ----------------------------------------------------------------------------- ImageNet

def test_imagenet_weights_download_and_load_into_the_resnet_only(server, tmp_path,  # noqa: F811
                                                                 monkeypatch, imagenet_h5):
    """get_imagenet_weights downloads through the verified cache (size and MD5) and
    load_weights fills the ResNet layers from it, nothing else."""
    h5_path, donor_backbone = imagenet_h5
    payload = h5_path.read_bytes()
    monkeypatch.setattr(test_weights, "PAYLOAD", payload)     # what the server sends
    monkeypatch.setenv("MRCNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(weights, "IMAGENET_WEIGHTS_URL", f"{server}/file.bin")
    monkeypatch.setattr(weights, "IMAGENET_WEIGHTS_SIZE", len(payload))
    monkeypatch.setattr(weights, "IMAGENET_WEIGHTS_MD5", hashlib.md5(payload).hexdigest())

    model = modellib.MaskRCNN("training", SmallConfig(), tmp_path / "logs", device="cpu")
    path = model.get_imagenet_weights()
    assert path == str(tmp_path / "cache" / weights.IMAGENET_WEIGHTS_FILENAME)
    fpn_before = model.torch_model.named_layers()["fpn_c5p5"].weight.detach().clone()
    model.load_weights(path, by_name=True)
    ours = model.torch_model.backbone.state_dict()
    for key, value in donor_backbone.items():
        assert torch.equal(ours[key], value), key
    assert torch.equal(model.torch_model.named_layers()["fpn_c5p5"].weight, fpn_before)

    monkeypatch.setattr(weights, "IMAGENET_WEIGHTS_MD5", "0" * 32)
    (tmp_path / "cache" / weights.IMAGENET_WEIGHTS_FILENAME).unlink()
    with pytest.raises(weights.DownloadError, match="MD5"):
        model.get_imagenet_weights()

    deeper = modellib.MaskRCNN("training", SmallConfig(BACKBONE="resnet101"), tmp_path,
                               device="cpu")
    with pytest.raises(WeightsError, match="the file is a resnet50 backbone, the config "
                                           "resnet101"):
        deeper.load_weights(h5_path)


# ----------------------------------------------------------------------------- training

class TinyTrainConfig(SmallConfig):
    NAME = "tiny"
    IMAGE_MIN_DIM = 64
    IMAGE_MAX_DIM = 64
    TOP_DOWN_PYRAMID_SIZE = 32
    FPN_CLASSIF_FC_LAYERS_SIZE = 32
    RPN_ANCHOR_SCALES = [8, 16, 32, 64, 128]
    POST_NMS_ROIS_TRAINING = 64
    TRAIN_ROIS_PER_IMAGE = 16
    STEPS_PER_EPOCH = 2
    VALIDATION_STEPS = 1


class RecordingCallback:
    def __init__(self):
        self.calls = []

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append((epoch, sorted(logs)))


def test_train_counts_epochs_as_matterport_and_names_checkpoints_as_it(tmp_path):
    dataset = squares_dataset(tmp_path / "data")
    torch.manual_seed(0)
    model = modellib.MaskRCNN("training", TinyTrainConfig(NUM_CLASSES=3), tmp_path / "logs",
                              device="cpu")
    callback = RecordingCallback()
    model.train(dataset, dataset, 0.001, 1, "heads", augmentation=lambda i, m: (i, m),
                custom_callbacks=[callback])
    assert model.epoch == 1
    first = os.path.join(model.log_dir, "mask_rcnn_tiny_0001.pth")
    assert os.path.isfile(first)
    assert callback.calls[0][0] == 0 and "loss" in callback.calls[0][1]
    assert "val_loss" in callback.calls[0][1]
    model.train(dataset, dataset, 0.001, 1, "heads")           # epoch 1 is reached: nothing
    assert not os.path.exists(os.path.join(model.log_dir, "mask_rcnn_tiny_0002.pth"))

    again = modellib.MaskRCNN("training", TinyTrainConfig(NUM_CLASSES=3), tmp_path / "logs",
                              device="cpu")
    again.load_weights(again.find_last())
    assert again.epoch == 1 and again.log_dir == model.log_dir
    again.train(dataset, None, 0.001, 2, "4+")
    assert again.find_last() == os.path.join(model.log_dir, "mask_rcnn_tiny_0002.pth")
    with pytest.raises(TypeError, match="on_epoch_end"):
        again.train(dataset, None, 0.001, 3, "heads", custom_callbacks=[object()])


def squares_dataset(folder):
    import cv2

    from tests.test_augmentation import SquaresDataset

    folder.mkdir()
    dataset = SquaresDataset()
    dataset.add_class("squares", 1, "square")
    dataset.add_class("dots", 1, "dot")
    for i, (source, boxes, classes) in enumerate([("squares", [[4, 4, 12, 20]], [1]),
                                                  ("dots", [[20, 30, 28, 40]], [2])]):
        path = folder / f"{i}.png"
        cv2.imwrite(str(path), np.full((32, 48, 3), 60 * i, np.uint8))
        dataset.add_image(source, image_id=i, path=str(path), boxes=boxes, classes=classes)
    dataset.prepare()
    return dataset
