"""mrcnn.cli: device choice, config resolution, weights errors and the one-line error report."""
import os
import socket

import numpy as np
import pytest
import torch

from mrcnn.weights import WeightsError
from mrcnn import atomic, cli, weights
from mrcnn.config import COCO_CLASS_NAMES, CocoConfig, Config
from mrcnn.weights import DownloadError
from tests.reference import PUBLIC_CASE

REFERENCE_CONFIG = str(PUBLIC_CASE / "config.json")


def closed_port_url():
    """A loopback URL nothing listens on: connecting is refused at once, as when offline."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/mask_rcnn_coco.h5"


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty weights cache and a COCO weights URL that cannot be reached."""
    monkeypatch.setenv("MRCNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(weights, "COCO_WEIGHTS_URL", closed_port_url())
    return tmp_path / "cache"


def test_default_device_follows_cuda_availability():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert cli.resolve_device(None).type == expected
    assert cli.resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu", "CUDA", "cuda:x", "cpu:0", "mps", ""])
def test_malformed_device_is_an_error(name):
    with pytest.raises(cli.CliError, match="cpu, cuda or cuda:N"):
        cli.resolve_device(name)


def test_cuda_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:1"):
        with pytest.raises(cli.CliError, match=f"--device {name} .*CUDA is not available"):
            cli.resolve_device(name)


def test_cuda_index_beyond_the_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert cli.resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(cli.CliError, match="only 2 CUDA device"):
        cli.resolve_device("cuda:2")


def test_config_defaults_to_coco():
    config = cli.build_config()
    assert isinstance(config, CocoConfig)
    assert config.NUM_CLASSES == 81 and config.class_names() == COCO_CLASS_NAMES


def test_config_from_json_over_matterport_defaults(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"NUM_CLASSES": 4, "DETECTION_MIN_CONFIDENCE": 0.5}')
    config = cli.build_config(path, weights=None, IMAGES_PER_GPU=1)
    assert (config.NUM_CLASSES, config.DETECTION_MIN_CONFIDENCE) == (4, 0.5)
    assert config.BACKBONE == Config.BACKBONE and config.BATCH_SIZE == 1
    assert config.class_names() == ["BG", "class 1", "class 2", "class 3"]
    reference = cli.build_config(REFERENCE_CONFIG)
    assert (reference.BACKBONE, reference.IMAGE_MAX_DIM, reference.NUM_CLASSES) == (
        "resnet50", 256, 4)


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ('{"NUM_CLASSE": 4}', "unknown Config field"),
    ('{"BACKBONE": "vgg"}', "BACKBONE must be one of"),
])
def test_bad_config_file_is_a_cli_error(tmp_path, text, message):
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(cli.CliError, match=message):
        cli.build_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        cli.build_config(tmp_path / "absent.json")


def test_config_comes_from_a_checkpoint_given_as_weights(tmp_path):
    saved = Config(NUM_CLASSES=3, CLASS_NAMES=["BG", "a", "b"], BACKBONE="resnet50")
    path = tmp_path / "model.pth"
    torch.save({"format": "mrcnn", "version": 1, "config": saved.to_dict(), "state_dict": {}},
               path)
    config = cli.build_config(weights=path, DETECTION_MIN_CONFIDENCE=0.2)
    assert config.class_names() == ["BG", "a", "b"] and config.BACKBONE == "resnet50"
    assert config.DETECTION_MIN_CONFIDENCE == 0.2


def shape_only_h5(path, num_classes, res4_blocks):
    """A Keras weights file with just the layers that tell the backbone and the class count."""
    import h5py

    layers = {"mrcnn_class_logits": (8, num_classes)}
    layers.update({f"res4{chr(ord('a') + i)}_branch2a": (1, 1, 2, 2)
                   for i in range(res4_blocks)})
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array(list(layers), "S")
        for name, shape in layers.items():
            group = f.create_group(name)
            group.attrs["weight_names"] = np.array([f"{name}/kernel:0"], "S")
            group.create_dataset(f"{name}/kernel:0", data=np.zeros(shape, np.float32))
    return path


def test_keras_weights_give_backbone_and_class_count(tmp_path):
    coco = cli.build_config(weights=shape_only_h5(tmp_path / "coco.h5", 81, 23))
    assert isinstance(coco, CocoConfig) and coco.BACKBONE == "resnet101"
    assert coco.class_names() == COCO_CLASS_NAMES
    custom = cli.build_config(weights=shape_only_h5(tmp_path / "four.h5", 4, 6),
                              DETECTION_MIN_CONFIDENCE=0.5)
    assert type(custom) is Config
    assert (custom.BACKBONE, custom.NUM_CLASSES, custom.DETECTION_MIN_CONFIDENCE) == \
        ("resnet50", 4, 0.5)
    assert custom.class_names() == ["BG", "class 1", "class 2", "class 3"]
    named = cli.build_config(weights=tmp_path / "four.h5",
                             defaults={"NUM_CLASSES": 4, "CLASS_NAMES": ["BG", "a", "b", "c"]})
    assert named.class_names() == ["BG", "a", "b", "c"]
    # Names that do not fit the file's class count are not used.
    assert cli.build_config(weights=tmp_path / "four.h5",
                            defaults={"CLASS_NAMES": ["BG", "a"]}).CLASS_NAMES is None


def test_a_config_file_takes_what_it_lacks_from_the_h5_and_the_defaults(tmp_path):
    h5 = shape_only_h5(tmp_path / "four.h5", 4, 6)
    path = tmp_path / "c.json"
    path.write_text('{"IMAGE_MAX_DIM": 512, "NAME": "x"}')
    config = cli.build_config(path, h5, defaults={"CLASS_NAMES": ["BG", "a", "b", "c"]})
    assert (config.BACKBONE, config.NUM_CLASSES, config.IMAGE_MAX_DIM) == ("resnet50", 4, 512)
    assert config.class_names() == ["BG", "a", "b", "c"]
    path.write_text('{"NUM_CLASSES": 3}')
    assert cli.build_config(path, defaults={"NUM_CLASSES": 5}).NUM_CLASSES == 3
    assert cli.build_config(tmp_path / "c.json").BACKBONE == "resnet101"
    path.write_text('{}')
    assert cli.build_config(path, defaults={"NUM_CLASSES": 5}).NUM_CLASSES == 5


def test_a_damaged_h5_is_reported(tmp_path):
    path = tmp_path / "w.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    with pytest.raises(WeightsError, match="cannot be opened"):
        cli.build_config(weights=path)


def test_weights_that_are_no_model_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(WeightsError, match="neither a Keras .h5 file nor a PyTorch checkpoint"):
        cli.build_config(weights=path)


def test_missing_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        cli.build_config(weights=tmp_path / "absent.pth")
    assert cli.error_message(info.value) == f"weights file not found: {tmp_path / 'absent.pth'}"
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        cli.load_model(CocoConfig(), tmp_path / "absent.pth")
    with pytest.raises(cli.CliError, match="is a directory"):
        cli.load_model(CocoConfig(), tmp_path)


def test_offline_without_weights_fails_fast_and_says_how(offline):
    with pytest.raises(DownloadError, match="pass --weights PATH"):
        cli.load_model(CocoConfig(), weights=None, progress=False)
    assert not offline.exists() or not any(offline.rglob("*"))


@pytest.mark.parametrize("error, line", [
    (cli.CliError("bad thing"), "error: bad thing"),
    (FileNotFoundError(2, "image file not found", "x.jpg"), "error: image file not found: x.jpg"),
    (DownloadError("offline"), "error: offline"),
    (WeightsError("does not fit"), "error: does not fit"),
])
def test_user_errors_are_printed_as_one_line(error, line, capsys):
    @cli.reports_errors
    def main(argv=None):
        raise error

    assert main([]) == 1
    assert capsys.readouterr().err == line + "\n"


def test_reports_errors_keeps_bugs_and_status(capsys):
    @cli.reports_errors
    def main(argv=None):
        if argv == "bug":
            raise ZeroDivisionError("bug")
        if argv == "interrupt":
            raise KeyboardInterrupt
        return 3

    assert main() == 3
    assert main("interrupt") == 130
    assert "interrupted" in capsys.readouterr().err
    with pytest.raises(ZeroDivisionError):
        main("bug")


@pytest.mark.filterwarnings("ignore::mrcnn.weights.MaskIoUHeadNotInFileWarning")
def test_default_weights_are_converted_once_and_loaded(tmp_path, monkeypatch, reference_weights,
                                                       fast_reference_config, capsys):
    """The COCO path with the (small) reference .h5 standing in for the downloaded file."""
    from convert_weights import read_keras_weights

    monkeypatch.setenv("MRCNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cli, "coco_weights_path", lambda progress=True: reference_weights)
    conversions = []
    save_weights = cli.save_weights
    monkeypatch.setattr(cli, "save_weights",
                        lambda *args: conversions.append(args) or save_weights(*args))

    model = cli.load_model(cli.build_config(fast_reference_config), weights=None)
    checkpoint = cli.coco_checkpoint(progress=False)
    assert len(conversions) == 1                       # the second call found it in the cache
    assert checkpoint.parent == tmp_path / "cache" / "converted" and checkpoint.is_file()
    assert "Converting" in capsys.readouterr().err
    kernel = read_keras_weights(reference_weights)["conv1"]["kernel"]
    np.testing.assert_array_equal(model.keras_layers()["conv1"].weight.detach().numpy(),
                                  kernel.transpose(3, 2, 0, 1))


def test_an_output_never_replaces_an_input(tmp_path):
    image = tmp_path / "photo.png"
    image.write_bytes(b"input")
    (tmp_path / "link.png").symlink_to(image)
    cli.check_no_overwrite(tmp_path, ["photo.json", "other.png"], [image, None])
    with pytest.raises(cli.CliError, match="would overwrite the input .*photo.png"):
        cli.check_no_overwrite(tmp_path, ["photo.png"], [image])
    with pytest.raises(cli.CliError, match="would overwrite the input .*photo.png"):
        cli.check_no_overwrite(tmp_path, ["link.png"], [image])  # links are followed


def test_out_dir_is_made_or_refused_clearly(tmp_path):
    assert cli.make_out_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir()
    # What a killed writer left there goes; a live writer's temporary file stays.
    killed = tmp_path / "a" / "b" / f".summary.json.{atomic.HOST_TAG}-999999999.abcd_123.tmp"
    live = tmp_path / "a" / "b" / f".summary.json.{atomic.HOST_TAG}-{os.getpid()}.abcd_123.tmp"
    killed.write_text("half")
    live.write_text("half")
    cli.make_out_dir(tmp_path / "a" / "b")
    assert not killed.exists() and live.exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(cli.CliError, match="exists and is not a directory"):
        cli.make_out_dir(tmp_path / "file")
