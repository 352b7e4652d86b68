"""The precision setting: exact by default with the caller's global flags untouched (also on
exceptions), and the fast modes running and agreeing with exact."""
import numpy as np
import pytest
import torch

from mrcnn.config import Config
from mrcnn.detector import MaskScoringRCNN
from mrcnn.precision import float32_flags
from tests.reference import ReferenceCase

# Every float32 precision setting torch has, by (backend, operator).
ALL_FLAGS = [("generic", "all"), ("cuda", "all"), ("cuda", "matmul"), ("cuda", "conv"),
             ("cuda", "rnn"), ("mkldnn", "all"), ("mkldnn", "matmul"), ("mkldnn", "conv"),
             ("mkldnn", "rnn")]


def flag_state():
    """The whole state: the legacy matmul and cuDNN flags (or that torch refuses to read them,
    as it does when the legacy and new APIs were mixed) and every new-API value."""
    legacy = []
    for read in (torch.get_float32_matmul_precision, torch._C._get_cudnn_allow_tf32):
        try:
            legacy.append(read())
        except RuntimeError:
            legacy.append("unreadable")
    return legacy, [torch._C._get_fp32_precision_getter(*flag) for flag in ALL_FLAGS]


@pytest.fixture
def saved_flags():
    """Puts torch's flags back as they were after the test, whatever it set."""
    legacy_matmul = torch.get_float32_matmul_precision()
    legacy_cudnn = torch._C._get_cudnn_allow_tf32()
    values = [torch._C._get_fp32_precision_getter(*flag) for flag in ALL_FLAGS]
    yield
    torch.set_float32_matmul_precision(legacy_matmul)
    torch.backends.cudnn.allow_tf32 = legacy_cudnn
    for flag, value in zip(ALL_FLAGS, values):
        torch._C._set_fp32_precision_setter(*flag, value)


def inner_flags():
    return (torch._C._get_fp32_precision_getter("cuda", "matmul"),
            torch._C._get_fp32_precision_getter("cuda", "conv"),
            torch._C._get_fp32_precision_getter("mkldnn", "matmul"),
            torch._C._get_fp32_precision_getter("mkldnn", "conv"))


USER_SETTINGS = {
    "defaults": lambda: None,
    "legacy matmul high": lambda: torch.set_float32_matmul_precision("high"),
    "legacy matmul medium (oneDNN bf16)": lambda: torch.set_float32_matmul_precision("medium"),
    "legacy allow_tf32 on": lambda: setattr(torch.backends.cuda.matmul, "allow_tf32", True),
    "legacy cuDNN TF32 off": lambda: setattr(torch.backends.cudnn, "allow_tf32", False),
    "new generic tf32": lambda: setattr(torch.backends, "fp32_precision", "tf32"),
    "new cuda matmul tf32": lambda: setattr(torch.backends.cuda.matmul, "fp32_precision", "tf32"),
    "new oneDNN conv bf16": lambda: setattr(torch.backends.mkldnn.conv, "fp32_precision", "bf16"),
}


@pytest.mark.parametrize("setting", list(USER_SETTINGS))
def test_flags_are_set_inside_and_restored_after(setting, saved_flags):
    USER_SETTINGS[setting]()
    before = flag_state()
    with float32_flags(tf32=False):
        assert inner_flags() == ("ieee", "ieee", "ieee", "ieee")
    assert flag_state() == before
    with float32_flags(tf32=True):
        assert inner_flags() == ("tf32", "tf32", "ieee", "ieee")
    assert flag_state() == before
    with pytest.raises(KeyError):
        with float32_flags(tf32=False):
            raise KeyError("a failure inside the forward pass")
    assert flag_state() == before


@pytest.fixture(scope="module")
def small_model():
    config = Config(BACKBONE="resnet50", NUM_CLASSES=3, IMAGE_MIN_DIM=128, IMAGE_MAX_DIM=128,
                    POST_NMS_ROIS_INFERENCE=50, DETECTION_MIN_CONFIDENCE=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return MaskScoringRCNN(config)


def test_the_forward_pass_runs_under_the_mode_and_leaves_the_callers_flags(small_model,
                                                                          saved_flags,
                                                                          monkeypatch):
    torch.backends.cuda.matmul.allow_tf32 = True  # a caller who wants TF32 for their own work
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    before = flag_state()
    seen = []
    pyramid = small_model.pyramid

    def recording_pyramid(images):
        seen.append(inner_flags()[:2])
        return pyramid(images)

    monkeypatch.setattr(small_model, "pyramid", recording_pyramid)
    image = np.full((100, 120, 3), 128, np.uint8)
    small_model.detect([image])
    small_model.detect([image], precision="tf32")
    assert seen == [("ieee", "ieee"), ("tf32", "tf32")]
    assert flag_state() == before

    def failing_pyramid(images):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(small_model, "pyramid", failing_pyramid)
    with pytest.raises(RuntimeError, match="out of memory"):
        small_model.detect([image])
    assert flag_state() == before


def test_unknown_precisions_are_refused_before_any_work(small_model, monkeypatch):
    monkeypatch.setattr(small_model, "infer", lambda *a, **k: pytest.fail("ran the model"))
    with pytest.raises(ValueError, match="precision must be one of exact, tf32, bf16, got 'fp16'"):
        small_model.detect([np.zeros((64, 64, 3), np.uint8)], precision="fp16")
    with pytest.raises(ValueError, match="PRECISION must be one of exact, tf32, bf16"):
        Config(PRECISION="half")


def box_iou(a, b):
    """[len(a), len(b)] IoU of pixel boxes (y1, x1, y2, x2)."""
    low = np.maximum(a[:, None, :2], b[None, :, :2])
    high = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(high - low, 0, None).prod(axis=2)
    area_a, area_b = ((boxes[:, 2:] - boxes[:, :2]).prod(axis=1) for boxes in (a, b))
    return inter / (area_a[:, None] + area_b[None, :] - inter)


@pytest.fixture(scope="module")
def reference_results(reference_weights, device):
    case = ReferenceCase("public_r50_256")
    model = MaskScoringRCNN(Config.from_json(case.config_path)).load_weights(reference_weights)
    model.to(device)
    return {precision: model.detect(case.images(), precision=precision)[0]
            for precision in ("exact", "tf32", "bf16")}


def test_tf32_agrees_with_exact(reference_results, device):
    exact, tf32 = reference_results["exact"], reference_results["tf32"]
    if device.type == "cpu":  # no TF32 on CPUs: the very same arithmetic
        for name in exact:
            np.testing.assert_array_equal(tf32[name], exact[name])
        return
    assert_close_detections(exact, tf32)


def test_bf16_agrees_with_exact_approximately(reference_results):
    assert_close_detections(reference_results["exact"], reference_results["bf16"])


def assert_close_detections(exact, fast):
    """Nearly the same count, and most of exact's boxes found by a box of the same class that
    overlaps it by 80% (the reference weights are random: their activations amplify rounding
    far more than trained weights do)."""
    assert abs(len(fast["class_ids"]) - len(exact["class_ids"])) <= 0.1 * len(exact["class_ids"])
    same_class = exact["class_ids"][:, None] == fast["class_ids"][None, :]
    best = np.where(same_class, box_iou(exact["rois"], fast["rois"]), 0).max(axis=1)
    assert (best >= 0.8).mean() >= 0.8, np.sort(best)
    assert fast["masks"].dtype == bool and fast["masks"].shape[:2] == exact["masks"].shape[:2]
    assert fast["scores"].dtype == np.float32
