import json

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
