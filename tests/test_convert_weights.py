"""Matterport .h5 reading, conversion to torch layouts, checkpoints and the CLI.

References are independent of the converter: numpy implementations of the Keras layers applied
to the raw h5 arrays, element indices of the documented layouts, and the manifests of
Matterport's HDF5 layout (convert_weights/manifests) with the public reference case's file,
written by convert_weights.synthetic.
"""
import json

import h5py
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import skip_init

import convert_weights.reader
import mrcnn.weights
from convert_weights import convert, read_keras_weights
from convert_weights.__main__ import main as cli_main
from convert_weights.synthetic import load_manifest
from mrcnn.config import Config
from mrcnn.weights import (MaskIoUHeadNotInFileWarning, WeightsError, checkpoint_config,
                           load_weights, save_weights)

KERAS_BN_EPS = 1e-3
RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------- helpers

def write_keras_h5(path, layers, *, wrapper=False, chunks=1, strings="bytes"):
    """A Keras 2 weights file as save_weights writes it.

    layers: [(layer name, [(weight name, array)])] in model order (an empty list for a layer
    without weights); datasets at <layer>/<weight name>. `wrapper` puts everything into a
    `model_weights` group (full-model save); `chunks` splits layer_names into layer_names0..;
    `strings` stores name attributes as fixed-length "bytes" or variable-length "str".
    """
    def names(values):
        return np.array(values, dtype="S") if strings == "bytes" else list(values)

    with h5py.File(path, "w") as f:
        group = f.create_group("model_weights") if wrapper else f
        if wrapper:
            f.attrs["model_config"] = json.dumps({"class_name": "Functional"})
        layer_names = [name for name, _ in layers]
        if chunks == 1:
            group.attrs["layer_names"] = names(layer_names)
        else:
            for chunk, part in enumerate(np.array_split(np.array(layer_names), chunks)):
                group.attrs[f"layer_names{chunk}"] = names(part.tolist())
        group.attrs["backend"] = "tensorflow"
        group.attrs["keras_version"] = "2.2.4"
        for layer_name, weights in layers:
            layer = group.create_group(layer_name)
            layer.attrs["weight_names"] = (names([w for w, _ in weights]) if weights
                                           else np.zeros(0))
            for weight_name, array in weights:
                layer.create_dataset(weight_name, data=np.asarray(array, np.float32))


def random(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def conversion_error(weights, layers):
    with pytest.raises(WeightsError) as error:
        convert(weights, layers)
    return str(error.value)


def load_into(layers, state):
    result = nn.ModuleDict(layers).load_state_dict(state, strict=False)
    assert not result.unexpected_keys
    assert all(key.endswith("num_batches_tracked") for key in result.missing_keys)


def stand_in_layers(manifest_data):
    """{Keras layer: torch module} with the manifest's shapes, built from the dataset kinds."""
    layers = {}
    for group in manifest_data["groups"]:
        for dataset in group["datasets"]:
            sublayer = dataset["name"].split("/")[0]
            shape = dataset["shape"]
            if dataset["kind"] == "conv_kernel":
                kh, kw, cin, cout = shape
                layers[sublayer] = skip_init(nn.Conv2d, cin, cout, (kh, kw))
            elif dataset["kind"] == "conv_transpose_kernel":
                kh, kw, cout, cin = shape
                layers[sublayer] = skip_init(nn.ConvTranspose2d, cin, cout, (kh, kw), (kh, kw))
            elif dataset["kind"] == "dense_kernel":
                layers[sublayer] = skip_init(nn.Linear, *shape)
            elif dataset["kind"] == "bn_gamma":
                layers[sublayer] = skip_init(nn.BatchNorm2d, shape[0], eps=KERAS_BN_EPS)
    return layers


class StandInModel(nn.Module):
    """What the converter needs of MaskScoringRCNN: config, keras_layers(), maskiou_head."""

    def __init__(self, config, layers=None):
        super().__init__()
        self.config = config
        if layers is None:
            name = f"mrcnn_{config.BACKBONE}_nc{config.NUM_CLASSES}"
            layers = stand_in_layers(load_manifest(name))
        self.layers = nn.ModuleDict(layers)
        self.maskiou_head = nn.Sequential(nn.Conv2d(257, 4, 3), nn.Linear(4, config.NUM_CLASSES))

    def keras_layers(self):
        return dict(self.layers)


def tiny_model(seed, **config):
    """A small model: two Keras layers and a MaskIoU head."""
    torch.manual_seed(seed)
    layers = {"conv1": nn.Conv2d(3, 4, 3), "bn_conv1": nn.BatchNorm2d(4, eps=KERAS_BN_EPS)}
    model = StandInModel(Config(BACKBONE="resnet50", NUM_CLASSES=4, **config), layers)
    for buffer in (model.layers["bn_conv1"].running_mean, model.layers["bn_conv1"].running_var):
        buffer.uniform_(0.5, 1.5)
    return model


def tiny_h5(path):
    write_keras_h5(path, [
        ("input_image", []),
        ("conv1", [("conv1/kernel:0", random(3, 3, 3, 4)), ("conv1/bias:0", random(4))]),
        ("bn_conv1", [(f"bn_conv1/{p}:0", RNG.uniform(0.5, 1.5, 4))
                      for p in ("gamma", "beta", "moving_mean", "moving_variance")]),
    ])


@pytest.fixture(scope="session")
def r50_h5(reference_weights):
    """Matterport's layout for ResNet-50 with 4 classes: the public reference case's weights."""
    return reference_weights


@pytest.fixture(scope="session")
def r50_weights(r50_h5):
    return read_keras_weights(r50_h5)


@pytest.fixture(scope="session")
def r50_layers():
    return stand_in_layers(load_manifest("mrcnn_resnet50_nc4"))


@pytest.fixture(scope="session")
def r50_state(r50_weights, r50_layers):
    return convert(r50_weights, r50_layers)


# ----------------------------------------------------------------------------- one layer each

def numpy_conv2d(x, kernel, bias):
    """Keras Conv2D 'valid', stride 1: out[i, j, o] = sum x[i+a, j+b, c] K[a, b, c, o] + b[o]."""
    kh, kw = kernel.shape[:2]
    height, width = x.shape[0] - kh + 1, x.shape[1] - kw + 1
    out = np.zeros((height, width, kernel.shape[3])) + bias
    for a in range(kh):
        for b in range(kw):
            out += x[a:a + height, b:b + width] @ kernel[a, b].astype(np.float64)
    return out


def nhwc(module, x):
    with torch.no_grad():
        y = module(torch.from_numpy(x.transpose(2, 0, 1).copy())[None])
    return y[0].permute(1, 2, 0).double().numpy()


def test_conv2d_kernel_layout(tmp_path):
    kernel, bias = random(3, 2, 4, 5), random(5)
    write_keras_h5(tmp_path / "w.h5", [("res2a_branch2a", [
        ("res2a_branch2a/kernel:0", kernel), ("res2a_branch2a/bias:0", bias)])])
    layers = {"res2a_branch2a": nn.Conv2d(4, 5, (3, 2))}
    load_into(layers, convert(read_keras_weights(tmp_path / "w.h5"), layers))
    x = random(6, 7, 4)
    np.testing.assert_allclose(nhwc(layers["res2a_branch2a"], x), numpy_conv2d(x, kernel, bias),
                               rtol=1e-5, atol=1e-5)


def test_dense_kernel_layout(tmp_path):
    kernel, bias = random(6, 3), random(3)
    write_keras_h5(tmp_path / "w.h5", [("mrcnn_class_logits", [
        ("mrcnn_class_logits/kernel:0", kernel), ("mrcnn_class_logits/bias:0", bias)])])
    layers = {"mrcnn_class_logits": nn.Linear(6, 3)}
    load_into(layers, convert(read_keras_weights(tmp_path / "w.h5"), layers))
    x = random(2, 6)
    with torch.no_grad():
        y = layers["mrcnn_class_logits"](torch.from_numpy(x)).double().numpy()
    np.testing.assert_allclose(y, x.astype(np.float64) @ kernel + bias, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel_size", [(2, 2), (3, 2)])
def test_time_distributed_conv2d_transpose_layout_has_no_flip(tmp_path, kernel_size):
    """TF: out[s*i+a, s*j+b, o] += in[i, j, c] * K[a, b, o, c]; (3, 2) makes the taps overlap."""
    kh, kw = kernel_size
    kernel, bias = random(kh, kw, 3, 4), random(3)
    write_keras_h5(tmp_path / "w.h5", [("mrcnn_mask_deconv", [
        ("mrcnn_mask_deconv/kernel:0", kernel), ("mrcnn_mask_deconv/bias:0", bias)])])
    layers = {"mrcnn_mask_deconv": nn.ConvTranspose2d(4, 3, kernel_size, stride=2)}
    load_into(layers, convert(read_keras_weights(tmp_path / "w.h5"), layers))
    x = random(3, 4, 4)
    expected = np.zeros((2 * 2 + kh, 2 * 3 + kw, 3)) + bias
    for i in range(3):
        for j in range(4):
            for a in range(kh):
                for b in range(kw):
                    expected[2 * i + a, 2 * j + b] += kernel[a, b] @ x[i, j].astype(np.float64)
    np.testing.assert_allclose(nhwc(layers["mrcnn_mask_deconv"], x), expected,
                               rtol=1e-5, atol=1e-5)


def test_batch_norm_matches_by_name_not_position(tmp_path):
    params = {"gamma": RNG.uniform(0.5, 1.5, 5), "beta": random(5),
              "moving_mean": random(5), "moving_variance": RNG.uniform(0.5, 1.5, 5)}
    # Stored out of Keras's order: only the names may decide.
    order = ["moving_variance", "beta", "moving_mean", "gamma"]
    write_keras_h5(tmp_path / "w.h5", [("mrcnn_mask_bn1", [
        (f"mrcnn_mask_bn1/{name}:0", params[name]) for name in order])])
    layers = {"mrcnn_mask_bn1": nn.BatchNorm2d(5, eps=KERAS_BN_EPS).eval()}
    load_into(layers, convert(read_keras_weights(tmp_path / "w.h5"), layers))
    x = random(3, 4, 5)
    p = {name: value.astype(np.float32).astype(np.float64) for name, value in params.items()}
    expected = (p["gamma"] * (x - p["moving_mean"]) / np.sqrt(p["moving_variance"] + 1e-3)
                + p["beta"])
    np.testing.assert_allclose(nhwc(layers["mrcnn_mask_bn1"], x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scope", ["", "rpn_model/"])
def test_nested_rpn_model_group(tmp_path, scope):
    shapes = {"rpn_conv_shared": (3, 3, 4, 8), "rpn_class_raw": (1, 1, 8, 6),
              "rpn_bbox_pred": (1, 1, 8, 12)}
    arrays = {name: {"kernel": random(*shape), "bias": random(shape[-1])}
              for name, shape in shapes.items()}
    write_keras_h5(tmp_path / "w.h5", [("input_p2", []), ("rpn_model", [
        (f"{scope}{name}/{param}:0", arrays[name][param])
        for name in shapes for param in ("kernel", "bias")])])
    weights = read_keras_weights(tmp_path / "w.h5")
    assert weights.keys() == shapes.keys()
    for name in shapes:
        for param in ("kernel", "bias"):
            np.testing.assert_array_equal(weights[name][param], arrays[name][param])
    layers = {name: nn.Conv2d(shape[2], shape[3], shape[:2]) for name, shape in shapes.items()}
    load_into(layers, convert(weights, layers))
    x = random(5, 5, 8)
    np.testing.assert_allclose(nhwc(layers["rpn_bbox_pred"], x),
                               numpy_conv2d(x, **arrays["rpn_bbox_pred"]), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- the full layout

def test_reference_file_read_matches_manifest(r50_h5, r50_weights):
    layout = load_manifest("mrcnn_resnet50_nc4")
    expected = {}
    with h5py.File(r50_h5, "r") as f:
        for group in layout["groups"]:
            for dataset in group["datasets"]:
                sublayer, param = dataset["name"].split("/")
                array = r50_weights[sublayer][param.replace(":0", "")]
                assert array.shape == tuple(dataset["shape"]) and array.dtype == np.float32
                np.testing.assert_array_equal(array, f[dataset["path"]][()])
                expected.setdefault(sublayer, set()).add(param.replace(":0", ""))
    assert {name: set(params) for name, params in r50_weights.items()} == expected
    assert sum(a.size for params in r50_weights.values() for a in params.values()) == \
        layout["num_parameters"]


def test_reference_file_converts_strictly(r50_h5, r50_state, r50_layers):
    layout = load_manifest("mrcnn_resnet50_nc4")
    state = r50_state
    assert len(state) == layout["num_weight_datasets"]
    assert sum(t.numel() for t in state.values()) == layout["num_parameters"]
    load_into(r50_layers, state)
    with h5py.File(r50_h5, "r") as f:
        conv = f["fpn_p3/fpn_p3/kernel:0"][()]                          # (kh, kw, in, out)
        dense = f["mrcnn_bbox_fc/mrcnn_bbox_fc/kernel:0"][()]           # (in, out)
        deconv = f["mrcnn_mask_deconv/mrcnn_mask_deconv/kernel:0"][()]  # (kh, kw, out, in)
        variance = f["bn4c_branch2b/bn4c_branch2b/moving_variance:0"][()]
    o, c, a, b = 7, 200, 2, 0
    assert state["fpn_p3.weight"][o, c, a, b] == conv[a, b, c, o]
    assert state["mrcnn_bbox_fc.weight"][9, 1000] == dense[1000, 9]
    assert state["mrcnn_mask_deconv.weight"][c, o, 1, 0] == deconv[1, 0, o, c]
    assert torch.equal(r50_layers["bn4c_branch2b"].running_var, torch.from_numpy(variance))


# A few layers of every kind, in Matterport's layout, so the layout variants stay small.
SAMPLE_LAYERS = ("input_image", "conv1", "bn_conv1", "bn5c_branch2c", "rpn_model",
                 "mrcnn_class_logits", "mrcnn_mask_bn4", "mrcnn_mask_deconv")
SAMPLE_MODULES = ("conv1", "bn_conv1", "bn5c_branch2c", "rpn_conv_shared", "rpn_class_raw",
                  "rpn_bbox_pred", "mrcnn_class_logits", "mrcnn_mask_bn4", "mrcnn_mask_deconv")


def _sample_of(r50_h5, path):
    """r50_h5 cut down to SAMPLE_LAYERS, groups and attributes copied as they are."""
    with h5py.File(r50_h5, "r") as src, h5py.File(path, "w") as dst:
        for name, value in src.attrs.items():
            dst.attrs[name] = value
        dst.attrs["layer_names"] = [name for name in src.attrs["layer_names"]
                                    if name in SAMPLE_LAYERS]
        for name in SAMPLE_LAYERS:
            src.copy(src[name], dst, name)
    return path


def _relayout_wrapper(f):
    root_attrs = dict(f.attrs)
    f.create_group("model_weights")
    for name in list(f):
        if name != "model_weights":
            f.move(name, f"model_weights/{name}")
    for name, value in root_attrs.items():
        f["model_weights"].attrs[name] = value
        del f.attrs[name]
    f.attrs["model_config"] = "{}"


def _relayout_chunks(f):
    names = list(f.attrs["layer_names"])
    del f.attrs["layer_names"]
    f.attrs["layer_names0"] = np.array(names[:3], dtype="S")
    f.attrs["layer_names1"] = names[3:]


def _relayout_suffixes(f):
    """A model built twice in one Keras session names its variables conv1_1/..., ..."""
    for group, sublayer in (("conv1", "conv1"), ("mrcnn_mask_deconv", "mrcnn_mask_deconv"),
                            ("rpn_model", "rpn_conv_shared")):
        f.move(f"{group}/{sublayer}", f"{group}/{sublayer}_1")
        f[group].attrs["weight_names"] = [
            name.replace(f"{sublayer}/", f"{sublayer}_1/") for name in
            (n.decode() if isinstance(n, bytes) else n for n in f[group].attrs["weight_names"])]


def _relayout_bytes(f):
    f.attrs["layer_names"] = np.array(list(f.attrs["layer_names"]), dtype="S")
    for name in f:
        f[name].attrs["weight_names"] = np.array(list(f[name].attrs["weight_names"]), dtype="S")


@pytest.mark.parametrize("relayout", [_relayout_wrapper, _relayout_chunks, _relayout_suffixes,
                                      _relayout_bytes])
def test_layout_variants_convert_the_same(tmp_path, r50_h5, r50_state, r50_layers, relayout):
    path = _sample_of(r50_h5, tmp_path / "variant.h5")
    with h5py.File(path, "r+") as f:
        relayout(f)
    state = convert(read_keras_weights(path), {name: r50_layers[name] for name in SAMPLE_MODULES})
    assert len(state) == 24
    for key, tensor in state.items():
        assert torch.equal(tensor, r50_state[key]), key


def test_dedup_suffix_is_stripped_only_when_the_plain_name_matches():
    kernel, bias = random(2, 3), random(3)
    file_layer = {"kernel": kernel, "bias": bias}
    assert convert({"head_1": file_layer}, {"head_1": nn.Linear(2, 3)}).keys() == \
        {"head_1.weight", "head_1.bias"}
    assert convert({"head_1": file_layer}, {"head": nn.Linear(2, 3)}).keys() == \
        {"head.weight", "head.bias"}
    both = convert({"head": file_layer, "head_1": {"kernel": kernel[:, :1], "bias": bias[:1]}},
                   {"head": nn.Linear(2, 3), "head_1": nn.Linear(2, 1)})
    assert both["head_1.bias"].shape == (1,)
    with pytest.raises(WeightsError,
                       match=r"the model does not have \(2\):\n    head_1\n    head_2$"):
        convert({"head_1": file_layer, "head_2": file_layer}, {"head": nn.Linear(2, 3)})


# ----------------------------------------------------------------------------- error paths

def test_not_hdf5(tmp_path):
    path = tmp_path / "weights.h5"
    path.write_text("<html>404 Not Found</html>")
    with pytest.raises(WeightsError, match="is not an HDF5 file"):
        read_keras_weights(path)
    with pytest.raises(WeightsError, match="is not an HDF5 file"):
        load_weights(tiny_model(0), path)


def test_truncated_file(tmp_path, r50_h5):
    path = tmp_path / "half.h5"
    with open(r50_h5, "rb") as src:
        path.write_bytes(src.read(r50_h5.stat().st_size // 2))
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        read_keras_weights(path)


def test_hdf5_that_is_not_keras(tmp_path):
    with h5py.File(tmp_path / "data.h5", "w") as f:
        f["images"] = np.zeros((2, 3))
    with pytest.raises(WeightsError, match="not Keras weights: it has no 'layer_names'"):
        read_keras_weights(tmp_path / "data.h5")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        read_keras_weights(tmp_path / "nope.h5")


def test_file_of_another_model(tmp_path, r50_layers):
    write_keras_h5(tmp_path / "vgg.h5", [
        ("block1_conv1", [("block1_conv1/kernel:0", random(3, 3, 3, 8)),
                          ("block1_conv1/bias:0", random(8))]),
        ("predictions", [("predictions/kernel:0", random(8, 10)),
                         ("predictions/bias:0", random(10))])])
    message = conversion_error(read_keras_weights(tmp_path / "vgg.h5"), r50_layers)
    assert ("does not hold Matterport Mask R-CNN weights: only 0 of the model's 133 layers"
            in message)
    assert "block1_conv1, predictions" in message
    assert "layers missing from the file (133)" in message


def test_backbone_only_file(r50_weights, r50_layers):
    backbone = {name: params for name, params in r50_weights.items()
                if not name.startswith(("fpn_", "rpn_", "mrcnn_"))}
    with pytest.raises(WeightsError, match="holds only a ResNet backbone"):
        convert(backbone, r50_layers)


def test_class_count_mismatch(r50_weights):
    layers = stand_in_layers(load_manifest("mrcnn_resnet50_nc81"))
    message = conversion_error(r50_weights, layers)
    assert "the file has 4 classes, the config 81" in message
    assert "shape mismatches (6)" in message
    assert "mrcnn_class_logits/kernel: file (1024, 4), model (1024, 81)" in message
    assert "mrcnn_mask/kernel: file (1, 1, 256, 4), model (1, 1, 256, 81)" in message


def test_backbone_mismatch(r50_weights):
    layers = stand_in_layers(load_manifest("mrcnn_resnet101_nc4"))
    message = conversion_error(r50_weights, layers)
    assert "the file is a resnet50 backbone, the config resnet101" in message
    # ResNet-101 has 17 more res4 blocks of 3 convs and 3 batch norms each.
    assert "layers missing from the file (102):\n    res4g_branch2a\n    bn4g_branch2a\n" in message
    assert "\n    ... and 90 more" in message
    assert "classes" not in message and "does not hold" not in message


def test_missing_extra_and_mismatched_layers_listed_together(r50_weights, r50_layers):
    weights = dict(r50_weights)
    del weights["res3b_branch2a"]
    weights["extra_conv"] = {"kernel": random(1, 1, 2, 2)}
    weights["bn_conv1"] = dict(weights["bn_conv1"], moving_variance=random(32), momentum=random(1))
    del weights["bn_conv1"]["beta"]
    message = conversion_error(weights, r50_layers)
    assert message.splitlines()[1:] == [
        "  shape mismatches (1):",
        "    bn_conv1/moving_variance: file (32,), model (64,)",
        "  layers missing from the file (1):",
        "    res3b_branch2a",
        "  layers in the file that the model does not have (1):",
        "    extra_conv",
        "  weights missing from the file (1):",
        "    bn_conv1/beta",
        "  weights in the file that the model does not have (1):",
        "    bn_conv1/momentum",
    ]


def test_module_problems():
    weights = {"bn": {"gamma": random(2), "beta": random(2), "moving_mean": random(2),
                      "moving_variance": random(2)}, "pool": {}}
    message = conversion_error(weights, {"bn": nn.BatchNorm2d(2), "pool": nn.MaxPool2d(2)})
    assert "bn has eps 1e-05; Keras's BatchNormalization uses 0.001" in message
    assert "pool is a MaxPool2d" in message


# ----------------------------------------------------------------------------- load / save

def test_load_h5_keeps_maskiou_head_and_says_so(tmp_path):
    tiny_h5(tmp_path / "w.h5")
    model = tiny_model(0)
    maskiou_before = {k: v.clone() for k, v in model.maskiou_head.state_dict().items()}
    with pytest.warns(MaskIoUHeadNotInFileWarning, match="the .h5 has no MaskIoU head; it keeps "
                                                         "its initialisation") as record:
        load_weights(model, tmp_path / "w.h5")
    assert len(record) == 1
    with h5py.File(tmp_path / "w.h5", "r") as f:
        kernel = f["conv1/conv1/kernel:0"][()]
        mean = f["bn_conv1/bn_conv1/moving_mean:0"][()]
    assert model.layers["conv1"].weight[3, 1, 2, 0] == kernel[2, 0, 1, 3]
    assert torch.equal(model.layers["bn_conv1"].running_mean, torch.from_numpy(mean))
    for key, value in model.maskiou_head.state_dict().items():
        assert torch.equal(value, maskiou_before[key])


def test_load_h5_error_names_the_file(tmp_path):
    tiny_h5(tmp_path / "w.h5")
    model = tiny_model(0)
    model.layers["res2a_branch2a"] = nn.Conv2d(4, 4, 1)
    with pytest.raises(WeightsError, match=r"w\.h5: .*\n  layers missing from the file \(1\):\n"
                                           r"    res2a_branch2a$"):
        load_weights(model, tmp_path / "w.h5")


def test_model_parameters_outside_keras_layers_are_an_error(tmp_path):
    tiny_h5(tmp_path / "w.h5")
    model = tiny_model(0)
    model.extra = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"in no Keras layer .*\['extra.weight', 'extra.bias'\]"):
        load_weights(model, tmp_path / "w.h5")


def test_pth_round_trip_gives_identical_tensors(tmp_path):
    saved = tiny_model(0)
    save_weights(saved, saved.config, tmp_path / "m.pth")
    loaded = tiny_model(1)
    assert not torch.equal(loaded.layers["conv1"].weight, saved.layers["conv1"].weight)
    load_weights(loaded, tmp_path / "m.pth")
    expected = saved.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert checkpoint_config(tmp_path / "m.pth") == saved.config
    assert [p.name for p in tmp_path.iterdir()] == ["m.pth"]


def test_pth_for_another_config(tmp_path):
    saved = tiny_model(0)
    save_weights(saved, saved.config, tmp_path / "m.pth")
    other = tiny_model(0)
    other.config = Config(BACKBONE="resnet101", NUM_CLASSES=81)
    with pytest.raises(WeightsError, match=r"m\.pth was saved for another model: BACKBONE "
                                           r"'resnet50' \(the model has 'resnet101'\), NUM_CLASSES "
                                           r"4 \(the model has 81\)"):
        load_weights(other, tmp_path / "m.pth")


def test_pth_that_does_not_fit_leaves_the_model_untouched(tmp_path):
    saved = tiny_model(0)
    state = saved.state_dict()
    state["layers.bn_conv1.running_var"] = torch.ones(5)
    del state["maskiou_head.1.bias"]
    torch.save({"format": "mrcnn", "version": 1, "config": saved.config.to_dict(),
                "state_dict": state}, tmp_path / "m.pth")
    model = tiny_model(1)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with pytest.raises(WeightsError) as error:
        load_weights(model, tmp_path / "m.pth")
    assert str(error.value).splitlines()[1:] == [
        "  shape mismatches (1):",
        "    layers.bn_conv1.running_var: checkpoint (5,), model (4,)",
        "  missing from the checkpoint (1):",
        "    maskiou_head.1.bias",
    ]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_save_refuses_a_config_of_another_model(tmp_path):
    model = tiny_model(0)
    with pytest.raises(WeightsError, match="NUM_CLASSES 81"):
        save_weights(model, Config(BACKBONE="resnet50", NUM_CLASSES=81), tmp_path / "m.pth")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("content, message", [
    (b"not a checkpoint at all", "neither a Keras .h5 file nor a PyTorch checkpoint"),
    ({"weight": torch.zeros(2)}, "not an mrcnn checkpoint"),
    ({"format": "mrcnn", "version": 2, "config": {}, "state_dict": {}}, "format version 2"),
])
def test_bad_pth(tmp_path, content, message):
    path = tmp_path / "m.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(WeightsError, match=message):
        load_weights(tiny_model(0), path)


def test_failed_save_leaves_no_partial_file(tmp_path, monkeypatch):
    model = tiny_model(0)
    path = tmp_path / "m.pth"
    path.write_bytes(b"previous checkpoint")

    def save_half_then_fail(obj, f):
        f.write(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(mrcnn.weights.torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        save_weights(model, model.config, path)
    assert [p.name for p in tmp_path.iterdir()] == ["m.pth"]
    assert path.read_bytes() == b"previous checkpoint"


# ----------------------------------------------------------------------------- command line

@pytest.fixture
def fake_network(monkeypatch):
    """The converter builds the stand-in network instead of MaskScoringRCNN."""
    monkeypatch.setattr(convert_weights.reader, "MaskScoringRCNN", StandInModel)


def test_cli_converts_and_reads_the_settings_from_the_file(tmp_path, r50_h5, fake_network,
                                                           capsys):
    out = tmp_path / "r50.pth"
    assert cli_main([str(r50_h5), str(out)]) == 0
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1
    assert "133 layers, 44,673,706 parameters (resnet50, 4 classes)" in summary[0]
    assert "MaskIoU head" in summary[0]
    assert checkpoint_config(out).NUM_CLASSES == 4
    model = StandInModel(Config(BACKBONE="resnet50", NUM_CLASSES=4))
    load_weights(model, out)
    with h5py.File(r50_h5, "r") as f:
        kernel = f["mrcnn_class_logits/mrcnn_class_logits/kernel:0"][()]
    assert torch.equal(model.layers["mrcnn_class_logits"].weight, torch.from_numpy(kernel.T))


def test_cli_failure_writes_nothing(tmp_path, r50_h5, fake_network, capsys):
    out = tmp_path / "r50.pth"
    config = tmp_path / "config.json"
    config.write_text('{"NUM_CLASSES": 81, "BACKBONE": "resnet50"}')
    assert cli_main([str(r50_h5), str(out), "--config", str(config)]) == 1
    assert "the file has 4 classes, the config 81" in capsys.readouterr().err
    assert cli_main([str(r50_h5), str(out), "--backbone", "resnet101"]) == 1
    assert "the file is a resnet50 backbone, the config resnet101" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_cli_says_when_the_file_does_not_tell_the_settings(tmp_path, fake_network, capsys):
    tiny_h5(tmp_path / "w.h5")
    assert cli_main([str(tmp_path / "w.h5"), str(tmp_path / "w.pth"), "--num-classes", "4"]) == 1
    assert f"cannot tell BACKBONE from {tmp_path / 'w.h5'}; pass --backbone or --config" in \
        capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.h5"]


def test_cli_help_explains(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for text in ("python -m convert_weights", "IN.h5", "OUT.pth", "--config", "--backbone",
                 "--num-classes", "MaskIoU", "atomically"):
        assert text in help_text
