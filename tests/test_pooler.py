"""Config.POOLER: PyramidROIAlign with Matterport's crop_and_resize or with RoIAlign (torchvision
and detectron2 semantics) on the box in pixels, against hand-computed values and the plain-PyTorch
roi_align of tests/torch_reference.py; and each pooler end to end (train, detect, eval)."""
import json
import warnings

import numpy as np
import pytest
import torch

import eval as eval_script
import train
from mrcnn.boxes import norm_boxes
from mrcnn.config import Config
from mrcnn.detector import MaskScoringRCNN
from mrcnn.heads import PyramidROIAlign, roi_pyramid_levels
from mrcnn.training import TrainingModel
from mrcnn.weights import PoolerMismatchWarning, save_weights
from preprocess.images import load_image
from preprocess.synthetic import write_dataset
from tests import torch_reference
from tests.test_train import TINY, toy_batch, train_args

POOLERS = ("crop_and_resize", "roi_align")


def ramp_pyramid(image_hw, device):
    """P2..P5 of a molded image of size image_hw, each one channel holding 10 y + x (feature-map
    indices): bilinear samples of it are exact, and the mean of samples placed symmetrically
    around a bin's centre is the value at the centre."""
    maps = []
    for level in range(2, 6):
        height, width = (side // 2 ** level for side in image_hw)
        y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        maps.append((10 * y + x).float()[None, None].to(device))
    return maps


# (pixel box y1, x1, y2, x2 with y2, x2 exclusive, in a 256 x 256 image; its pyramid level;
# the 2 x 2 RoIAlign values). RoIAlign (aligned) reads image point p at feature coordinate
# p / stride - 0.5, and a 2 x 2 grid's bin centres lie at a quarter and three quarters of the box.
HAND_COMPUTED = [
    # 32 x 32 at P2 (stride 4): centres y 16, 32 -> 3.5, 7.5; x 24, 40 -> 5.5, 9.5.
    ((8, 16, 40, 48), 2, [[40.5, 44.5], [80.5, 84.5]]),
    # 128 x 128 at P3 (stride 8): centres y 96, 160 -> 11.5, 19.5; x 64, 128 -> 7.5, 15.5.
    ((64, 32, 192, 160), 3, [[122.5, 130.5], [202.5, 210.5]]),
    # 256 x 256 at P4 (stride 16): centres 64, 192 -> 3.5, 11.5 on both axes.
    ((0, 0, 256, 256), 4, [[38.5, 46.5], [118.5, 126.5]]),
]


@pytest.mark.parametrize("box, level, expected", HAND_COMPUTED)
def test_roi_align_pools_the_pixel_box_at_its_level_stride(device, box, level, expected):
    image_hw = (256, 256)
    boxes = norm_boxes(torch.tensor([box], dtype=torch.float32), image_hw).to(device)
    assert roi_pyramid_levels(boxes, 256 * 256).tolist() == [level]
    pyramid = ramp_pyramid(image_hw, device)
    image = torch.zeros(1, dtype=torch.int64, device=device)
    pooled = PyramidROIAlign(2, "roi_align")(boxes, image, pyramid, image_hw)
    torch.testing.assert_close(pooled.cpu(), torch.tensor(expected)[None, None], rtol=0,
                               atol=1e-4)
    # crop_and_resize samples the normalised box's corners instead: the dispatch is real.
    cropped = PyramidROIAlign(2, "crop_and_resize")(boxes, image, pyramid, image_hw)
    assert not torch.allclose(cropped, pooled, atol=0.1)


def test_roi_align_matches_plain_pytorch_on_pixel_boxes(device):
    """Random boxes on two 320 x 448 images (every level used), pooled 7 x 7: the pooler's
    conversion of normalised boxes against the pixel boxes they were made from."""
    generator = torch.Generator().manual_seed(0)
    image_hw = (320, 448)
    count = 60
    size = torch.exp(torch.empty(count, 2).uniform_(np.log(4), np.log(448), generator=generator))
    start = torch.rand(count, 2, generator=generator) * (torch.tensor(image_hw) - size / 2)
    pixel = torch.cat([start, start + size], dim=1).round()
    box_image = torch.randint(2, (count,), generator=generator)
    pyramid = [torch.randn(2, 3, image_hw[0] // 2 ** level, image_hw[1] // 2 ** level,
                           generator=generator) for level in range(2, 6)]
    boxes = norm_boxes(pixel, image_hw)
    levels = roi_pyramid_levels(boxes, image_hw[0] * image_hw[1])
    assert set(levels.tolist()) == {2, 3, 4, 5}

    pooled = PyramidROIAlign(7, "roi_align")(boxes.to(device), box_image.to(device),
                                              [p.to(device) for p in pyramid], image_hw)
    rois = torch.cat([box_image[:, None].double(), pixel[:, [1, 0, 3, 2]].double()], dim=1)
    expected = torch.empty(count, 3, 7, 7, dtype=torch.float64)
    for level, feature_map in enumerate(pyramid, start=2):
        rows = levels == level
        expected[rows] = torch_reference.roi_align(feature_map.double(), rois[rows], 7,
                                                   spatial_scale=2.0 ** -level, sampling_ratio=0,
                                                   aligned=True)
    torch.testing.assert_close(pooled.cpu().double(), expected, rtol=0, atol=1e-4)


def test_pooler_is_a_config_field_with_a_clear_error():
    assert Config().POOLER == "crop_and_resize"
    with pytest.raises(ValueError, match="POOLER must be one of"):
        Config(POOLER="roi_pool")
    model = MaskScoringRCNN(Config(**dict(TINY, NUM_CLASSES=3, POOLER="roi_align")))
    assert model.box_roi_align.pooler == model.mask_roi_align.pooler == "roi_align"


def test_training_pools_with_the_configured_pooler():
    gradients = {}
    for pooler in POOLERS:
        torch.manual_seed(0)
        model = MaskScoringRCNN(Config(**dict(TINY, NUM_CLASSES=7, POOLER=pooler)))
        losses = TrainingModel(model)(*toy_batch(2), generator=torch.Generator().manual_seed(0))
        (losses["mrcnn_class_loss"] + losses["mrcnn_mask_loss"]).backward()
        # The heads' losses reach the FPN only through the pooled features (all from P2 in
        # these 64 x 64 images).
        gradients[pooler] = model.fpn.output[0].weight.grad
        assert gradients[pooler].abs().sum() > 0
    assert not torch.allclose(*gradients.values())


# Matterport's files have no MaskIoU head, which the model says.
@pytest.mark.filterwarnings("ignore::mrcnn.weights.MaskIoUHeadNotInFileWarning")
def test_matterport_weights_load_into_a_roi_align_model(reference_weights):
    """Same weight shapes, so they load and detect; but the box head, fed the Keras reference's
    proposals and pyramid, no longer gives the reference's class scores (crop_and_resize does,
    tests/test_reference.py), so Matterport's weights want crop_and_resize."""
    from tests.reference import ReferenceCase

    case = ReferenceCase("public_r50_256")
    ref = case.outputs
    config = Config.from_json(case.config_path, POOLER="roi_align", POST_NMS_ROIS_INFERENCE=100)
    model = MaskScoringRCNN(config).load_weights(reference_weights)
    (result,) = model.detect(case.images())
    assert result["masks"].shape[:2] == (512, 512)
    pyramid = [torch.from_numpy(ref[f"fpn_p{level}"]).permute(0, 3, 1, 2).contiguous()
               for level in range(2, 7)]
    with torch.inference_mode():
        probs, _ = model.classify(torch.from_numpy(ref["rpn_rois"]), pyramid, (256, 256))
    assert np.abs(probs.numpy() - ref["mrcnn_class"]).max() > 1e-2


def test_a_checkpoint_says_when_it_was_trained_with_another_pooler(tmp_path):
    config = Config(**dict(TINY, NUM_CLASSES=3, POOLER="roi_align"))
    trained = MaskScoringRCNN(config)
    save_weights(trained, config, tmp_path / "roi_align.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert MaskScoringRCNN.from_weights(tmp_path / "roi_align.pth").config.POOLER == \
            "roi_align"
    other = MaskScoringRCNN(Config(**dict(TINY, NUM_CLASSES=3)))
    with pytest.warns(PoolerMismatchWarning, match="trained with POOLER 'roi_align'.*"
                                                   "'crop_and_resize'"):
        other.load_weights(tmp_path / "roi_align.pth")
    assert torch.equal(other.box_head.class_logits.weight, trained.box_head.class_logits.weight)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """Two training and two validation 64 x 64 images of preprocess.synthetic; a tiny config per
    pooler."""
    root = tmp_path_factory.mktemp("pooler")
    write_dataset(root / "data", 2, 2, seed=3, size=64, progress=False)
    for pooler in POOLERS:
        (root / f"{pooler}.json").write_text(json.dumps(dict(TINY, POOLER=pooler)))
    return root


@pytest.mark.parametrize("pooler", POOLERS)
def test_train_detect_and_eval_with_each_pooler(shapes, tmp_path, capsys, device, pooler):
    run_dir = tmp_path / "run"
    args = train_args(shapes, run_dir, "--epochs", "1", "--steps-per-epoch", "2",
                      "--val-split", "none", "--config", str(shapes / f"{pooler}.json"),
                      "--device", device.type)
    assert train.main(args) == 0
    checkpoint = run_dir / "epoch_0001.pth"

    model = MaskScoringRCNN.from_weights(checkpoint).to(device)
    assert model.config.POOLER == pooler
    result = model.detect([load_image(shapes / "data" / "val" / "000001.png")])[0]
    assert result["masks"].shape[:2] == (64, 64)
    assert len(result["rois"]) == len(result["class_ids"]) == result["masks"].shape[2]

    out = tmp_path / "eval"
    eval_script.main(["--dataset", str(shapes / "data"), "--split", "val", "--weights",
                      str(checkpoint), "--device", device.type, "--out", str(out), "--quiet",
                      "--min-confidence", "0"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["image_count"] == 2
    assert 0 <= summary["bbox"]["AP"] <= 1 and 0 <= summary["segm"]["AP"] <= 1
