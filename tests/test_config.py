import json

import numpy as np
import pytest

from mrcnn.config import Config, CocoConfig
from tests.reference import PUBLIC_CASE

REFERENCE_CONFIG = PUBLIC_CASE / "config.json"


def test_matterport_defaults_and_derived_values():
    config = Config()
    assert config.BACKBONE == "resnet101"
    assert config.BATCH_SIZE == 2
    assert config.IMAGE_SHAPE == [1024, 1024, 3]
    assert config.IMAGE_META_SIZE == 13
    assert config.BACKBONE_SHAPES == [[256, 256], [128, 128], [64, 64], [32, 32], [16, 16]]
    assert config.DETECTION_MIN_CONFIDENCE == 0.7


def test_reference_config_loads_and_matches_its_derived_values():
    config = Config.from_json(REFERENCE_CONFIG)
    with open(REFERENCE_CONFIG) as f:
        raw = json.load(f)
    for name in ("BACKBONE", "NUM_CLASSES", "DETECTION_MIN_CONFIDENCE", "IMAGE_SHAPE",
                 "BACKBONE_SHAPES", "IMAGE_META_SIZE", "BATCH_SIZE"):
        assert getattr(config, name) == raw[name]


def test_json_round_trip(tmp_path):
    config = CocoConfig(IMAGES_PER_GPU=1, DETECTION_MIN_CONFIDENCE=0.5)
    config.to_json(tmp_path / "c.json")
    assert CocoConfig.from_json(tmp_path / "c.json") == config
    assert list(tmp_path.iterdir()) == [tmp_path / "c.json"]


def test_subset_json_keeps_defaults(tmp_path):
    (tmp_path / "c.json").write_text('{"NUM_CLASSES": 5}')
    config = Config.from_json(tmp_path / "c.json", IMAGE_MAX_DIM=512)
    assert config.NUM_CLASSES == 5 and config.IMAGE_MAX_DIM == 512 and config.POOL_SIZE == 7


def test_defaults_are_not_shared_between_instances():
    first = Config()
    first.MEAN_PIXEL[0] = 0.0
    assert Config().MEAN_PIXEL[0] == 123.7


@pytest.mark.parametrize("overrides, message", [
    ({"NUM_CLASSE": 3}, "unknown Config field"),
    ({"BATCH_SIZE": 3}, "unknown Config field"),
    ({"BACKBONE": "vgg"}, "BACKBONE must be one of"),
    ({"IMAGE_MAX_DIM": 1000}, "multiple of 64"),
    ({"IMAGE_RESIZE_MODE": "stretch"}, "IMAGE_RESIZE_MODE"),
    ({"NUM_CLASSES": 3, "CLASS_NAMES": ["BG", "a"]}, "CLASS_NAMES has 2 names"),
    ({"COMPUTE_BACKBONE_SHAPE": [[64, 64]]}, "COMPUTE_BACKBONE_SHAPE .* not supported"),
    ({"USE_RPN_ROIS": False}, "USE_RPN_ROIS = False .* not supported"),
])
def test_bad_settings_are_clear_errors(overrides, message):
    with pytest.raises((KeyError, ValueError), match=message):
        Config(**overrides)


def test_inconsistent_derived_value_in_json_is_an_error(tmp_path):
    (tmp_path / "c.json").write_text('{"IMAGES_PER_GPU": 2, "BATCH_SIZE": 1}')
    with pytest.raises(ValueError, match="BATCH_SIZE"):
        Config.from_json(tmp_path / "c.json")


def test_unreadable_config_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        Config.from_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Config.from_json(tmp_path / "bad.json")


# Derived values in config files are informational: in 'pad64' and 'none' modes they may record
# one molded image's shapes. The held-back Keras pad64 case records these (320x512 molded images).
PAD64 = {"IMAGE_RESIZE_MODE": "pad64", "IMAGE_MIN_DIM": 320, "IMAGE_MAX_DIM": 448,
         "BACKBONE": "resnet50", "NUM_CLASSES": 4, "IMAGES_PER_GPU": 1}
PAD64_DERIVED = {"IMAGE_SHAPE": [448, 448, 3], "MOLDED_IMAGE_SHAPE": [320, 512, 3],
                 "BACKBONE_SHAPES": [[80, 128], [40, 64], [20, 32], [10, 16], [5, 8]],
                 "BATCH_SIZE": 1, "IMAGE_META_SIZE": 16}


def write_config(path, values):
    path.write_text(json.dumps(values))
    return path


def test_pad64_file_recording_its_molded_image_loads(tmp_path):
    config = Config.from_json(write_config(tmp_path / "c.json", dict(PAD64, **PAD64_DERIVED)))
    assert config.IMAGE_MIN_DIM == 320 and config.IMAGE_MAX_DIM == 448
    # Per image in this mode: the config does not pretend to one value.
    assert config.IMAGE_SHAPE is config.MOLDED_IMAGE_SHAPE is config.BACKBONE_SHAPES is None
    assert config.BATCH_SIZE == 1 and config.IMAGE_META_SIZE == 16
    # The recorded values are what the model does with a 200x320 image: molded to 320x512, and
    # as many anchors as the recorded backbone shapes have cells (3 ratios each).
    from mrcnn.anchors import pyramid_anchors
    from mrcnn.molding import mold_inputs, molded_shape

    assert molded_shape((200, 320), config) == (320, 512)
    molded, _, _ = mold_inputs([np.zeros((200, 320, 3), np.uint8)], config)
    assert list(molded.shape) == [1, 3, 320, 512]
    cells = sum(h * w for h, w in PAD64_DERIVED["BACKBONE_SHAPES"])
    assert len(pyramid_anchors(config, (320, 512))) == 3 * cells


def test_per_image_shapes_round_trip_as_null(tmp_path):
    config = Config(**dict(PAD64, IMAGE_RESIZE_MODE="none"))
    config.to_json(tmp_path / "c.json")
    written = json.loads((tmp_path / "c.json").read_text())
    assert written["IMAGE_SHAPE"] is written["BACKBONE_SHAPES"] is None
    assert written["MOLDED_IMAGE_SHAPE"] is None
    assert Config.from_json(tmp_path / "c.json") == config


@pytest.mark.parametrize("mode, derived", [
    # 'none' mode molds each image to its own size.
    ("none", {"MOLDED_IMAGE_SHAPE": [300, 500, 3],
              "BACKBONE_SHAPES": [[75, 125], [38, 63], [19, 32], [10, 16], [5, 8]]}),
    # Backbone shapes without the molded shape they belong to.
    ("pad64", {"BACKBONE_SHAPES": [[80, 128], [40, 64], [20, 32], [10, 16], [5, 8]]}),
    # What Matterport's Config (and this project, before) derived from IMAGE_MAX_DIM.
    ("pad64", {"IMAGE_SHAPE": [448, 448, 3], "MOLDED_IMAGE_SHAPE": [448, 448, 3],
               "BACKBONE_SHAPES": [[112, 112], [56, 56], [28, 28], [14, 14], [7, 7]]}),
])
def test_per_image_derived_values_that_describe_the_mode_are_accepted(mode, derived):
    assert Config.from_dict(dict(PAD64, IMAGE_RESIZE_MODE=mode, **derived)).IMAGE_SHAPE is None


@pytest.mark.parametrize("changes, message", [
    ({"MOLDED_IMAGE_SHAPE": [320, 500, 3]}, "pads both sides to multiples of 64"),
    ({"MOLDED_IMAGE_SHAPE": [256, 512, 3]}, "shorter side of at least IMAGE_MIN_DIM 320"),
    ({"MOLDED_IMAGE_SHAPE": [320, 512, 1]}, "IMAGE_CHANNEL_COUNT is 3"),
    ({"MOLDED_IMAGE_SHAPE": [320, 512]}, r"\[H, W, C\], three positive integers"),
    ({"BACKBONE_SHAPES": [[80, 128], [40, 64]]},
     r"MOLDED_IMAGE_SHAPE \[320, 512, 3\] given with it has backbone shapes"),
    ({"IMAGE_SHAPE": [512, 512, 3]}, r"per image, and Matterport's Config gives \[448, 448, 3\]"),
    ({"BATCH_SIZE": 2}, "the fields give 1"),
    ({"IMAGE_RESIZE_MODE": "square", "IMAGE_MAX_DIM": 512, "IMAGE_SHAPE": [512, 512, 3],
      "BACKBONE_SHAPES": [[128, 128], [64, 64], [32, 32], [16, 16], [8, 8]]},
     r"MOLDED_IMAGE_SHAPE is \[320, 512, 3\] in the given values, but the fields give "
     r"\[512, 512, 3\]"),
])
def test_derived_values_that_do_not_describe_the_config_are_refused(tmp_path, changes, message):
    path = write_config(tmp_path / "c.json", dict(PAD64, **dict(PAD64_DERIVED, **changes)))
    with pytest.raises(ValueError, match=message) as error:
        Config.from_json(path)
    assert str(path) in str(error.value)
