"""Weight files that would take a command down or be used silently: NaN and infinite weights, HDF5
files that reach into other files or are damaged inside, and outputs that cannot be written."""
import errno

import cv2
import h5py
import numpy as np
import pytest
import torch

import convert_weights.reader
import demo
from convert_weights import read_keras_weights
from convert_weights.__main__ import main as cli_main
from mrcnn.config import Config
from mrcnn.detector import MaskScoringRCNN
from mrcnn.weights import WeightsError, load_weights, save_weights
from tests.bad_inputs import TINY_CONFIG
from tests.test_convert_weights import random, tiny_h5, tiny_model, write_keras_h5

KERNEL = "/conv1/conv1/kernel:0"


def damage_kernel(path, values):
    """Writes NaN/inf into the first entries of conv1's kernel."""
    with h5py.File(path, "r+") as f:
        kernel = f[KERNEL][()]
        kernel.flat[:len(values)] = values
        f[KERNEL][...] = kernel


@pytest.mark.filterwarnings("ignore::mrcnn.weights.MaskIoUHeadNotInFileWarning")
def test_nonfinite_keras_weights_are_an_error_naming_the_layer(tmp_path):
    path = tmp_path / "w.h5"
    tiny_h5(path)
    damage_kernel(path, [np.nan, np.inf, -np.inf])
    message = (f"{path}: weight conv1/kernel (dataset {KERNEL}) holds 1 NaN and 2 infinite "
               "values of 108")
    with pytest.raises(WeightsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_keras_weights(path)
    model = tiny_model(0)
    before = model.layers["conv1"].weight.clone()
    with pytest.raises(WeightsError, match="holds 1 NaN and 2 infinite values"):
        load_weights(model, path)
    assert torch.equal(model.layers["conv1"].weight, before)  # untouched
    assert np.isnan(read_keras_weights(path, allow_nonfinite=True)["conv1"]["kernel"]).sum() == 1
    load_weights(model, path, allow_nonfinite=True)
    assert torch.isnan(model.layers["conv1"].weight).sum() == 1


def test_nonfinite_checkpoint_weights_are_an_error_naming_the_layer(tmp_path):
    model = tiny_model(0)
    with torch.no_grad():
        model.layers["bn_conv1"].running_var[1] = float("inf")
    save_weights(model, model.config, tmp_path / "w.pth")
    fresh = tiny_model(1)
    with pytest.raises(WeightsError, match=r"w.pth: weight layers.bn_conv1.running_var holds 0 "
                                           r"NaN and 1 infinite values of 4"):
        load_weights(fresh, tmp_path / "w.pth")
    load_weights(fresh, tmp_path / "w.pth", allow_nonfinite=True)
    assert torch.isinf(fresh.layers["bn_conv1"].running_var).sum() == 1


def test_demo_refuses_nonfinite_weights_in_one_line(tmp_path, capsys):
    config = Config.from_dict(TINY_CONFIG)
    torch.manual_seed(0)
    model = MaskScoringRCNN(config)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    save_weights(model, config, tmp_path / "nan.pth")
    cv2.imwrite(str(tmp_path / "photo.png"), np.zeros((32, 32, 3), np.uint8))
    status = demo.main([str(tmp_path / "photo.png"), "--weights", str(tmp_path / "nan.pth"),
                        "--out", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert status == 1 and err.count("\n") == 1
    assert err.startswith(f"error: {tmp_path / 'nan.pth'}: weight ")
    assert "holds 1 NaN and 0 infinite values" in err


def test_external_links_and_datasets_are_refused(tmp_path):
    (tmp_path / "other.h5").write_bytes(b"")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["data"] = random(3, 3, 3, 4)
    linked = tmp_path / "linked.h5"
    tiny_h5(linked)
    with h5py.File(linked, "r+") as f:
        del f[KERNEL]
        f[KERNEL] = h5py.ExternalLink(str(tmp_path / "other.h5"), "/data")
    with pytest.raises(WeightsError, match=r"linked.h5 reaches outside itself \(conv1/conv1/"
                                           r"kernel:0 -> .*other.h5:/data\)"):
        read_keras_weights(linked)
    stored = tmp_path / "stored.h5"
    tiny_h5(stored)
    (tmp_path / "raw.bin").write_bytes(np.zeros(108, np.float32).tobytes())
    with h5py.File(stored, "r+") as f:
        del f[KERNEL]
        f.create_dataset(KERNEL, shape=(3, 3, 3, 4), dtype="f4",
                         external=[(str(tmp_path / "raw.bin"), 0, 432)])
    with pytest.raises(WeightsError, match=r"reaches outside itself \(conv1/conv1/kernel:0 \(data "
                                           r"in other files\)\)"):
        read_keras_weights(stored)


def test_a_link_to_nothing_is_a_clean_error(tmp_path):
    path = tmp_path / "dangling.h5"
    tiny_h5(path)
    with h5py.File(path, "r+") as f:
        del f[KERNEL]
        f[KERNEL] = h5py.SoftLink("/nowhere")
    with pytest.raises(WeightsError, match="dangling.h5: .*holds no such dataset"):
        read_keras_weights(path)
    write_keras_h5(path, [("conv1", [("conv1/kernel:0", random(3, 3, 3, 4))])])
    with h5py.File(path, "r+") as f:
        f["conv1"].attrs["weight_names"] = np.array([b"\xff\xfe"], dtype="S")
    with pytest.raises(WeightsError, match="dangling.h5: the HDF5 file cannot be read as Keras "
                                           "weights; it is probably damaged"):
        read_keras_weights(path)


@pytest.fixture
def fake_network(monkeypatch):
    """The converter builds the two-layer model of tiny_h5 instead of the full network."""
    monkeypatch.setattr(convert_weights.reader, "MaskScoringRCNN", lambda config: tiny_model(0))


def test_cli_errors_are_one_line_naming_the_file(tmp_path, fake_network, capsys, monkeypatch):
    source = tmp_path / "w.h5"
    tiny_h5(source)
    (tmp_path / "out.pth").mkdir()
    args = [str(source), str(tmp_path / "out.pth"), "--backbone", "resnet50",
            "--num-classes", "4"]
    assert cli_main(args) == 1
    assert capsys.readouterr().err == (f"error: OUT.pth is a directory; give a file name: "
                                       f"{tmp_path / 'out.pth'}\n")

    def full_disk(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(convert_weights.reader, "save_weights", full_disk)
    args[1] = str(tmp_path / "w.pth")
    assert cli_main(args) == 1  # after the progress bar of the reading
    assert capsys.readouterr().err.endswith("\nerror: cannot write the checkpoint (No space left "
                                            f"on device): {tmp_path / 'w.pth'}\n")

    damage_kernel(source, [np.nan])
    assert cli_main(args) == 1
    err = capsys.readouterr().err.rsplit("\n", 2)[-2]
    assert err.startswith(f"error: {source}: weight conv1/kernel") and "--allow-nonfinite" in err
    assert cli_main(args + ["--allow-nonfinite"]) == 1  # gets as far as writing
    assert "cannot write the checkpoint" in capsys.readouterr().err
