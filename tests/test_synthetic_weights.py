"""convert_weights.synthetic: the same values as the generator the Keras reference was made with
(sha256 of every dataset, recorded from its files), Matterport's HDF5 layout, safe writes."""
import hashlib
import json

import h5py
import numpy as np
import pytest

from convert_weights import synthetic
from tests.reference import REFERENCE

CHECKSUMS = json.loads((REFERENCE / "synthetic_weights_sha256.json").read_text())
SEED = CHECKSUMS["seed"]
# A few layers of every kind: the stem, a BN layer, a residual branch end (gain 0.35), the nested
# RPN model, the class logits (gain 2.5, wide bias), the transposed mask conv and the mask conv.
SAMPLE_LAYERS = ["input_image", "conv1", "bn_conv1", "res2a_branch2c", "rpn_model",
                 "mrcnn_class_logits", "mrcnn_mask_deconv", "mrcnn_mask"]


def sha256(values):
    return hashlib.sha256(np.ascontiguousarray(values, dtype="<f4").tobytes()).hexdigest()


def sample_manifest(layers=SAMPLE_LAYERS):
    """The resnet50_nc4 manifest cut down to `layers`, in the given order."""
    manifest = synthetic.load_manifest("mrcnn_resnet50_nc4")
    groups = {group["name"]: group for group in manifest["groups"]}
    manifest["groups"] = [groups[name] for name in layers]
    manifest["root_attrs"]["layer_names"] = list(layers)
    return manifest


def texts(attribute):
    """A string-list attribute as str (h5py gives variable-length strings as str or bytes)."""
    return [n.decode() if isinstance(n, bytes) else n for n in attribute]


def read_file(path):
    """(root attrs, {group: weight_names}, {dataset path: values}) of an .h5 file."""
    datasets = {}
    with h5py.File(path, "r") as f:
        attrs = {key: f.attrs[key] for key in f.attrs}
        groups = {name: texts(f[name].attrs["weight_names"]) for name in f}
        f.visititems(lambda name, item: datasets.__setitem__(name, item[()])
                     if isinstance(item, h5py.Dataset) else None)
    return attrs, groups, datasets


@pytest.mark.parametrize("name", sorted(CHECKSUMS["manifests"]))
def test_values_match_the_recorded_checksums(name):
    expected = CHECKSUMS["manifests"][name]
    got = {path: sha256(values)
           for path, values in synthetic.weight_values(synthetic.load_manifest(name), SEED)}
    assert got.keys() == expected.keys()
    assert [path for path in expected if got[path] != expected[path]] == []


def test_written_file_has_the_manifest_layout_and_values(tmp_path, capsys):
    path = tmp_path / "weights.h5"
    assert synthetic.main(["resnet50_nc4", str(SEED), str(path), "--no-progress"]) == 0
    assert capsys.readouterr().out == (f"wrote {path}: 224 layers, 384 weight datasets, "
                                       f"44,673,706 parameters (seed {SEED})\n")
    assert [p.name for p in tmp_path.iterdir()] == ["weights.h5"]  # no temporary file left
    manifest = synthetic.load_manifest("mrcnn_resnet50_nc4")
    attrs, groups, datasets = read_file(path)
    path.unlink()  # 180 MB

    assert texts(attrs["layer_names"]) == manifest["root_attrs"]["layer_names"]
    assert attrs["backend"] == "tensorflow" and attrs["keras_version"] == "2.21.0"
    extra = manifest["hdf5_conventions"]["extra_groups"]
    assert extra == ["top_level_model_weights"]
    assert groups == {**{group["name"]: group["weight_names"] for group in manifest["groups"]},
                      **{name: [] for name in extra}}
    shapes = {d["path"]: tuple(d["shape"]) for g in manifest["groups"] for d in g["datasets"]}
    assert {p: v.shape for p, v in datasets.items()} == shapes
    assert {v.dtype for v in datasets.values()} == {np.dtype(np.float32)}
    assert {p: sha256(v) for p, v in datasets.items()} == CHECKSUMS["manifests"][
        "mrcnn_resnet50_nc4"]


def test_values_depend_only_on_seed_and_names():
    expected = CHECKSUMS["manifests"]["mrcnn_resnet50_nc4"]
    reordered = dict(synthetic.weight_values(sample_manifest(SAMPLE_LAYERS[::-1]), SEED))
    assert reordered and {p: sha256(v) for p, v in reordered.items()} == {
        p: expected[p] for p in reordered}
    other_seed = dict(synthetic.weight_values(sample_manifest(), SEED + 1))
    assert all(not np.array_equal(other_seed[p], reordered[p]) for p in reordered)


def test_distributions_follow_the_specification():
    values = dict(synthetic.weight_values(sample_manifest(), SEED))
    for path, gain in (("conv1/conv1/kernel:0", 1 / 64),
                       ("res2a_branch2c/res2a_branch2c/kernel:0", 0.35),
                       ("rpn_model/rpn_conv_shared/kernel:0", 1.0),
                       ("mrcnn_class_logits/mrcnn_class_logits/kernel:0", 2.5),
                       ("mrcnn_mask/mrcnn_mask/kernel:0", 4.0)):
        kernel = values[path].astype(np.float64)
        fan_in = kernel[..., 0].size
        assert np.abs(kernel.reshape(fan_in, -1).mean(0)).max() < 1e-7, path  # centred
        std = kernel.std() / (gain * np.sqrt(2 / fan_in))
        assert 0.9 < std < 1.1, (path, std)
    deconv = values["mrcnn_mask_deconv/mrcnn_mask_deconv/kernel:0"]  # (kh, kw, out, in)
    assert np.abs(deconv.astype(np.float64).mean(3)).max() < 1e-7
    for path, low, high in (("conv1/conv1/bias:0", -0.05, 0.05),
                            ("mrcnn_class_logits/mrcnn_class_logits/bias:0", -1, 1),
                            ("bn_conv1/bn_conv1/gamma:0", 0.5, 1.5),
                            ("bn_conv1/bn_conv1/beta:0", -0.2, 0.2),
                            ("bn_conv1/bn_conv1/moving_mean:0", -0.2, 0.2),
                            ("bn_conv1/bn_conv1/moving_variance:0", 0.5, 1.5)):
        assert low <= values[path].min() and values[path].max() <= high, path
    assert np.ptp(values["mrcnn_class_logits/mrcnn_class_logits/bias:0"]) > 0.1


def test_help_explains(capsys):
    with pytest.raises(SystemExit) as exit_info:
        synthetic.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for text in ("MANIFEST", "SEED", "OUT.h5", "PCG64", "crc32", "atomically",
                 "mrcnn_resnet101_nc81", "python -m convert_weights.synthetic resnet50_nc4 1"):
        assert text in out, text


def test_an_unknown_manifest_name_lists_the_shipped_ones(tmp_path, capsys):
    assert synthetic.main(["resnet18_nc4", "1", str(tmp_path / "out.h5")]) == 1
    assert capsys.readouterr().err == (
        "error: no manifest file or shipped manifest named 'resnet18_nc4'; shipped: "
        "mrcnn_resnet101_nc4, mrcnn_resnet101_nc81, mrcnn_resnet50_nc4, mrcnn_resnet50_nc81\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("seed", ["-1", "one", "1.5"])
def test_a_bad_seed_is_refused_clearly(tmp_path, capsys, seed):
    with pytest.raises(SystemExit) as exit_info:
        synthetic.main(["resnet50_nc4", seed, str(tmp_path / "out.h5")])
    assert exit_info.value.code == 2
    assert f"argument SEED: not a non-negative integer: '{seed}'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("corrupt, message", [
    (lambda m: m.update(format="other"), "not a weights manifest"),
    (lambda m: m["groups"].pop(), "do not follow root_attrs.layer_names"),
    (lambda m: m["groups"][1]["datasets"][0].update(kind="conv3d_kernel"),
     "conv1/conv1/kernel:0: unknown kind 'conv3d_kernel'"),
    (lambda m: m["groups"][1]["datasets"][0].update(shape=[3, 3, 64]),
     "conv1/conv1/kernel:0: a conv_kernel has 4 axes, not 3"),
    (lambda m: m["groups"][1]["datasets"][0].pop("path"), "malformed manifest (KeyError: 'path')"),
])
def test_bad_manifest_files_are_refused_clearly(tmp_path, capsys, corrupt, message):
    manifest = sample_manifest()
    corrupt(manifest)
    manifest_path = tmp_path / "manifest.json"
    manifest_path.write_text(json.dumps(manifest))
    out = tmp_path / "out.h5"
    assert synthetic.main([str(manifest_path), "1", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {manifest_path}: ") and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    out = tmp_path / "out.h5"
    out.write_bytes(b"previous")
    calls = []

    def failing(seed, layer_name, dataset):
        calls.append(layer_name)
        if len(calls) == 3:
            raise OSError("disk full")
        return np.zeros(dataset["shape"], np.float32)

    monkeypatch.setattr(synthetic, "dataset_values", failing)
    with pytest.raises(OSError, match="disk full"):
        synthetic.write_synthetic_weights(sample_manifest(), 1, out)
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5"]


def test_concurrent_writers_never_share_a_partial_file(tmp_path, monkeypatch):
    """Two writers of the same file (pytest-xdist workers) each write their own temporary file:
    the second starts while the first is half-way, and both finish with a complete file."""
    out = tmp_path / "weights.h5"
    manifest = sample_manifest()
    real_values = synthetic.dataset_values
    started = []

    def interleaved(seed, layer_name, dataset):
        if not started:
            started.append(layer_name)
            synthetic.write_synthetic_weights(manifest, SEED, out)  # a second writer, meanwhile
        return real_values(seed, layer_name, dataset)

    monkeypatch.setattr(synthetic, "dataset_values", interleaved)
    synthetic.write_synthetic_weights(manifest, SEED, out)
    assert [p.name for p in tmp_path.iterdir()] == ["weights.h5"]
    _, _, datasets = read_file(out)
    expected = CHECKSUMS["manifests"]["mrcnn_resnet50_nc4"]
    assert {p: sha256(v) for p, v in datasets.items()} == {p: expected[p] for p in datasets}
