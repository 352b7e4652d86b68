"""samples/balloon_like: Matterport's balloon sample, trained and run on this project's API."""
import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "balloon_like"


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"balloon_like_{name}", SAMPLE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def make_dataset():
    return load_script("make_dataset")


@pytest.fixture(scope="module")
def balloon():
    return load_script("balloon_like")


def test_the_dataset_is_via_polygons_over_pngs(make_dataset, balloon, tmp_path):
    assert make_dataset.main(["--out", str(tmp_path), "--train", "3", "--val", "1",
                              "--size", "96"]) == 0
    annotations = json.loads((tmp_path / "train" / "via_region_data.json").read_text())
    assert len(annotations) == 3
    first = next(iter(annotations.values()))
    region = first["regions"]["0"]["shape_attributes"]
    assert region["name"] == "polygon" and len(region["all_points_x"]) > 10

    dataset = balloon.BalloonDataset()
    dataset.load_balloon(str(tmp_path), "train")
    dataset.prepare()
    assert dataset.class_names == ["BG", "balloon"] and len(dataset.image_ids) == 3
    image = dataset.load_image(0)
    masks, class_ids = dataset.load_mask(0)
    assert image.shape == (96, 96, 3) and masks.shape[:2] == (96, 96)
    assert class_ids.tolist() == [1] * masks.shape[2] and masks.any(axis=(0, 1)).all()
    # The balloons are drawn where their polygons are.
    ys, xs = np.nonzero(masks[:, :, 0])
    assert image[ys, xs].max(axis=1).min() >= 230
    assert dataset.image_reference(0) == str(tmp_path / "train" / first["filename"])


def test_train_from_an_h5_then_detect_and_draw(make_dataset, balloon, reference_weights,
                                               tmp_path):
    data, logs = tmp_path / "data", tmp_path / "logs"
    make_dataset.main(["--out", str(data), "--train", "2", "--val", "1"])
    assert balloon.main(["train", "--dataset", str(data), "--weights", str(reference_weights),
                         "--logs", str(logs), "--epochs", "1", "--steps-per-epoch", "2",
                         "--backbone", "resnet50"]) == 0
    runs = list(logs.iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("balloon")
    assert (runs[0] / "mask_rcnn_balloon_0001.pth").is_file()

    pytest.importorskip("matplotlib")
    out = tmp_path / "balloons.png"
    assert balloon.main(["detect", "--weights", "last", "--logs", str(logs),
                         "--image", str(data / "val" / "balloon_000.png"), "--out", str(out),
                         "--backbone", "resnet50"]) == 0
    drawn = cv2.imread(str(out))
    assert drawn is not None and drawn.shape == (800, 800, 3)
