import json

import mrcnn  # noqa: F401  first: it sets OpenMP's thread settings before torch loads
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


def write_imagenet_h5(path, model):
    """The model's ResNet in the layout of Keras's ImageNet ResNet-50 weights (Keras 1 weight
    names <layer>_W:0 ... <layer>_running_std:0, weightless layers in between)."""
    import h5py
    import numpy as np

    names = {"kernel": "W", "bias": "b", "gamma": "gamma", "beta": "beta",
             "moving_mean": "running_mean", "moving_variance": "running_std"}
    layer_names = ["input_1", "zeropadding2d_1"]
    with h5py.File(path, "w") as f:
        for name in layer_names:
            f.create_group(name).attrs["weight_names"] = np.zeros(0, "S1")
        for name, module in model.backbone.keras_layers().items():
            if isinstance(module, torch.nn.Conv2d):
                params = {"kernel": module.weight.permute(2, 3, 1, 0), "bias": module.bias}
            else:
                params = {"gamma": module.weight, "beta": module.bias,
                          "moving_mean": module.running_mean,
                          "moving_variance": module.running_var}
            group = f.create_group(name)
            weight_names = [f"{name}_{names[param]}:0" for param in params]
            group.attrs["weight_names"] = np.array(weight_names, "S")
            for weight_name, tensor in zip(weight_names, params.values()):
                group.create_dataset(weight_name, data=tensor.detach().numpy())
            layer_names.append(name)
        f.create_group("avg_pool").attrs["weight_names"] = np.zeros(0, "S1")
        f.attrs["layer_names"] = np.array(layer_names + ["avg_pool"], "S")


@pytest.fixture(scope="session")
def imagenet_h5(tmp_path_factory):
    """(a random ResNet-50 in the layout of Keras's ImageNet weights (.h5), the state dict of
    that ResNet)."""
    from mrcnn.config import Config
    from mrcnn.detector import MaskScoringRCNN

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        donor = MaskScoringRCNN(Config(BACKBONE="resnet50", NUM_CLASSES=2,
                                       TOP_DOWN_PYRAMID_SIZE=8, FPN_CLASSIF_FC_LAYERS_SIZE=8))
        for module in donor.backbone.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    path = tmp_path_factory.mktemp("imagenet") / "resnet50_notop.h5"
    write_imagenet_h5(path, donor)
    return path, {key: value.clone() for key, value in donor.backbone.state_dict().items()}
