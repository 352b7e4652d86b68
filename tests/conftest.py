import json

import pytest
import torch

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


@pytest.fixture(scope="session", params=DEVICES)
def device(request):
    """Runs a test once per device: on the CPU always, on CUDA when a GPU is present.

    The CUDA device carries its index (cuda:0), as the tensors made on it do, so that
    `tensor.device == device` holds."""
    if request.param == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(request.param)


@pytest.fixture(scope="session")
def reference_weights(request):
    """The public_r50_256 Keras reference weights (.h5), regenerated once into pytest's cache by
    convert_weights.synthetic (safe when pytest-xdist workers ask for it at the same time)."""
    from tests.reference import ReferenceCase

    return ReferenceCase("public_r50_256").weights(request.config.cache.mkdir("reference-weights"))


@pytest.fixture(scope="session")
def fast_reference_config(tmp_path_factory):
    """The public_r50_256 config with 100 instead of 1000 proposals: the script tests check the
    scripts, not the numbers, and the box head on 1000 ROIs dominates the CPU time."""
    from tests.reference import ReferenceCase

    values = json.loads(ReferenceCase("public_r50_256").config_path.read_text())
    values["POST_NMS_ROIS_INFERENCE"] = 100
    path = tmp_path_factory.mktemp("config") / "reference_100_rois.json"
    path.write_text(json.dumps(values))
    return path
