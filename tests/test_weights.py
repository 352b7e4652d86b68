import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

import torch

from mrcnn import atomic, weights
from mrcnn.config import Config
from mrcnn.weights import DownloadError, WeightsError

PAYLOAD = bytes(range(256)) * 1200          # 300 KiB: several reads with a small chunk size
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    """/file.bin serves PAYLOAD; /short.bin promises more than it sends; anything else is 404."""

    requests = []

    def do_GET(self):
        type(self).requests.append(self.path)
        if self.path == "/file.bin":
            self._send(PAYLOAD, len(PAYLOAD))
        elif self.path == "/short.bin":
            self._send(PAYLOAD[:1000], len(PAYLOAD))
        else:
            self.send_error(404, "Not Found")

    def _send(self, body, announced):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(announced))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Handler.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    directory = tmp_path / "cache"
    monkeypatch.setenv("MRCNN_CACHE", str(directory))
    monkeypatch.setattr(weights, "CHUNK_BYTES", 64 * 1024)
    return directory


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MRCNN_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert weights.cache_dir() == tmp_path / "home" / ".cache" / "mrcnn"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/is/ignored")
    assert weights.cache_dir() == tmp_path / "home" / ".cache" / "mrcnn"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.cache_dir() == tmp_path / "xdg" / "mrcnn"
    monkeypatch.setenv("MRCNN_CACHE", str(tmp_path / "mine"))
    assert weights.cache_dir() == tmp_path / "mine"


def test_download_lands_in_cache_with_progress_then_is_reused(server, cache, capsys):
    path = weights.cached_download(f"{server}/file.bin", "file.bin", len(PAYLOAD), PAYLOAD_SHA256)
    assert path == cache / "file.bin"
    assert path.read_bytes() == PAYLOAD
    assert sorted(os.listdir(cache)) == ["file.bin", "file.bin.verified"]
    err = capsys.readouterr().err
    assert "file.bin" in err and "100%" in err and "300k/300k" in err
    assert Handler.requests == ["/file.bin"]

    def no_hashing(*args):
        raise AssertionError("a verified file must not be hashed again")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(weights, "file_sha256", no_hashing)
        again = weights.cached_download(f"{server}/file.bin", "file.bin", len(PAYLOAD),
                                        PAYLOAD_SHA256)
    assert again == path
    assert Handler.requests == ["/file.bin"], "a cached file must not be downloaded again"


def test_a_same_size_corrupt_cached_file_is_detected_and_downloaded_again(server, cache,
                                                                          capsys):
    path = weights.cached_download(f"{server}/file.bin", "file.bin", len(PAYLOAD), PAYLOAD_SHA256,
                                   progress=False)
    path.write_bytes(bytes(len(PAYLOAD)))          # all zeros, the right size
    assert weights.cached_download(f"{server}/file.bin", "file.bin", len(PAYLOAD),
                                   PAYLOAD_SHA256, progress=False) == path
    assert path.read_bytes() == PAYLOAD
    assert Handler.requests == ["/file.bin", "/file.bin"]
    err = capsys.readouterr().err
    assert f"has SHA-256 {hashlib.sha256(bytes(len(PAYLOAD))).hexdigest()}, expected " \
           f"{PAYLOAD_SHA256} (damaged or another file); downloading it again" in err

    # A file found without a record is hashed once, then trusted while size and time hold.
    (cache / "file.bin.verified").unlink()
    hashed = []
    real_hash = weights.file_sha256
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(weights, "file_sha256", lambda *args: hashed.append(1) or real_hash(*args))
        for _ in range(2):
            weights.cached_download(f"{server}/file.bin", "file.bin", len(PAYLOAD),
                                    PAYLOAD_SHA256, progress=False)
    assert hashed == [1] and len(Handler.requests) == 2


def test_a_corrupt_cached_file_offline_is_a_clear_error(cache, monkeypatch):
    cache.mkdir()
    (cache / "file.bin").write_bytes(bytes(len(PAYLOAD)))
    with socket.socket() as probe:               # a port that nothing listens on any more
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DownloadError, match="has SHA-256 .* and downloading it again failed: "
                                            "could not download"):
        weights.cached_download(f"http://127.0.0.1:{port}/file.bin", "file.bin", len(PAYLOAD),
                                PAYLOAD_SHA256, progress=False, timeout=2)
    assert (cache / "file.bin").read_bytes() == bytes(len(PAYLOAD))  # nothing else is lost


def test_leftovers_of_a_killed_download_are_cleaned(server, cache):
    cache.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    leftover = cache / f".file.bin.{atomic.HOST_TAG}-{dead}.abcd_123.tmp"
    leftover.write_bytes(b"half a download")
    weights.cached_download(f"{server}/file.bin", "file.bin", progress=False)
    assert os.listdir(cache) == ["file.bin"]


def test_no_progress_when_asked(server, cache, capsys):
    weights.cached_download(f"{server}/file.bin", "file.bin", progress=False)
    assert capsys.readouterr().err == ""


def test_wrong_hash_saves_nothing(server, cache):
    with pytest.raises(DownloadError, match=f"SHA-256 {PAYLOAD_SHA256}, expected 0+"):
        weights.cached_download(f"{server}/file.bin", "file.bin", sha256="0" * 64)
    assert os.listdir(cache) == []


def test_wrong_size_is_refused_before_the_transfer(server, cache):
    with pytest.raises(DownloadError, match=f"announces {len(PAYLOAD)} bytes, expected 5"):
        weights.cached_download(f"{server}/file.bin", "file.bin", expected_size=5)
    assert os.listdir(cache) == []


def test_broken_transfer_saves_nothing(server, cache):
    with pytest.raises(DownloadError, match=f"broke off after 1000 of {len(PAYLOAD)} bytes"):
        weights.cached_download(f"{server}/short.bin", "short.bin", progress=False)
    assert os.listdir(cache) == []


def test_keyboard_interrupt_saves_nothing(server, cache, monkeypatch):
    real_urlopen = urllib.request.urlopen

    def urlopen_interrupted_on_second_read(*args, **kwargs):
        response = real_urlopen(*args, **kwargs)
        real_read, reads = response.read, []

        def read(amount):
            reads.append(amount)
            if len(reads) == 2:
                raise KeyboardInterrupt
            return real_read(amount)

        response.read = read
        return response

    monkeypatch.setattr(urllib.request, "urlopen", urlopen_interrupted_on_second_read)
    with pytest.raises(KeyboardInterrupt):
        weights.cached_download(f"{server}/file.bin", "file.bin", progress=False)
    assert os.listdir(cache) == []


def test_http_404_is_a_clear_error(server, cache):
    with pytest.raises(DownloadError, match="HTTP 404") as error:
        weights.cached_download(f"{server}/missing.bin", "missing.bin", progress=False)
    assert "--weights PATH" in str(error.value)
    assert os.listdir(cache) == []


def test_unreachable_address_says_offline(cache):
    with socket.socket() as probe:               # a port that nothing listens on any more
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/file.bin"
    with pytest.raises(DownloadError) as error:
        weights.cached_download(url, "file.bin", progress=False, timeout=2)
    message = str(error.value)
    assert message.startswith(f"could not download {url} (")
    assert "You are offline or the URL is unreachable" in message
    assert "pass --weights PATH" in message
    assert os.listdir(cache) == []


def test_download_replaces_an_existing_destination(server, tmp_path):
    dest = tmp_path / "out" / "file.bin"
    dest.parent.mkdir()
    dest.write_bytes(b"old")
    assert weights.download(f"{server}/file.bin", dest, progress=False) == dest
    assert dest.read_bytes() == PAYLOAD
    assert os.listdir(dest.parent) == ["file.bin"]


def test_coco_weights_come_from_the_cache_without_network(cache, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    # Matterport's file, played by PAYLOAD: the check is of content, not size.
    monkeypatch.setattr(weights, "COCO_WEIGHTS_SIZE", len(PAYLOAD))
    monkeypatch.setattr(weights, "COCO_WEIGHTS_SHA256", PAYLOAD_SHA256)
    cache.mkdir()
    cached = cache / "mask_rcnn_coco.h5"
    cached.write_bytes(PAYLOAD)
    assert weights.coco_weights_path(progress=False) == cached

    cached.write_bytes(bytes(len(PAYLOAD)))
    with pytest.raises(DownloadError, match="mask_rcnn_coco.h5 has SHA-256"):
        weights.coco_weights_path(progress=False)
    cached.write_bytes(PAYLOAD[:1000])
    with pytest.raises(DownloadError, match=f"has 1000 bytes, expected {len(PAYLOAD)}"):
        weights.coco_weights_path(progress=False)


def test_coco_weights_download_asks_for_the_release_file(cache, monkeypatch):
    calls = []
    def download(*args):
        calls.append(args)
        args[1].parent.mkdir(parents=True, exist_ok=True)
        args[1].write_bytes(b"")

    monkeypatch.setattr(weights, "download", download)
    assert weights.coco_weights_path(progress=False) == cache / "mask_rcnn_coco.h5"
    url, dest, size, sha256, progress, *_ = calls[0]
    assert url == "https://github.com/matterport/Mask_RCNN/releases/download/v2.0/mask_rcnn_coco.h5"
    assert (dest, size, len(sha256), progress) == (cache / "mask_rcnn_coco.h5", 257_557_808, 64,
                                                   False)


def test_converted_weights_are_made_once_and_redone_when_the_h5_changes(cache, tmp_path):
    h5 = tmp_path / "model.h5"
    h5.write_bytes(b"keras weights")
    conversions = []

    def convert(h5_path, out_path):
        conversions.append(Path(h5_path))
        Path(out_path).write_bytes(b"converted " + Path(h5_path).read_bytes())

    first = weights.cached_converted_weights(h5, convert)
    assert first.parent == cache / "converted" and first.name.startswith("model-")
    assert first.suffix == ".pth" and first.read_bytes() == b"converted keras weights"
    assert weights.cached_converted_weights(h5, convert) == first
    assert conversions == [h5]

    h5.write_bytes(b"other keras weights, longer")
    second = weights.cached_converted_weights(h5, convert)
    assert second != first and second.read_bytes() == b"converted other keras weights, longer"
    assert weights.cached_converted_weights(h5, convert, tag="converter v2") not in (first, second)
    assert len(conversions) == 3


def test_failed_conversion_leaves_nothing(cache, tmp_path):
    h5 = tmp_path / "model.h5"
    h5.write_bytes(b"keras weights")

    def convert(h5_path, out_path):
        Path(out_path).write_bytes(b"half")
        raise ValueError("not a Keras weights file")

    with pytest.raises(ValueError, match="not a Keras weights file"):
        weights.cached_converted_weights(h5, convert)
    assert os.listdir(cache / "converted") == []
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        weights.cached_converted_weights(tmp_path / "absent.h5", convert)


class StubModel:
    """What the checkpoint functions need of a model: its config and state_dict()."""

    def __init__(self, value):
        self.config = Config(NUM_CLASSES=3)
        self.value = value

    def state_dict(self):
        return {"weight": torch.full((2, 2), float(self.value))}


def save_epoch(run_dir, epoch, keep_last=0):
    model = StubModel(epoch)
    return weights.save_epoch_checkpoint(run_dir, model, model.config,
                                         {"epoch": epoch, "global_step": 10 * epoch},
                                         {"optimizer": {"momentum": torch.tensor(epoch)}},
                                         keep_last=keep_last)


def test_epoch_checkpoints_keep_the_state_for_the_newest_only(tmp_path):
    for epoch in (1, 2, 3):
        save_epoch(tmp_path, epoch, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "epoch_0002.pth", "epoch_0003.pth", "epoch_0003.state.pth"]
    found = weights.latest_resumable(tmp_path)
    assert found == (tmp_path / "epoch_0003.pth", tmp_path / "epoch_0003.state.pth")
    checkpoint, state = weights.read_training_checkpoint(*found)
    assert checkpoint["training"] == {"epoch": 3, "global_step": 30}
    assert state["optimizer"]["momentum"] == 3 and state["format"] == "mrcnn-training-state"
    assert torch.equal(checkpoint["state_dict"]["weight"], torch.full((2, 2), 3.0))
    # Each epoch checkpoint is also plain weights.
    assert weights.read_checkpoint(tmp_path / "epoch_0002.pth")["config"]["NUM_CLASSES"] == 3
    with pytest.raises(WeightsError, match="training state of a run"):
        weights.read_checkpoint(tmp_path / "epoch_0003.state.pth")


def test_resume_never_picks_an_incomplete_epoch(tmp_path):
    save_epoch(tmp_path, 1)
    # Killed after writing epoch 2's state, before its checkpoint: epoch 1 is the last whole one.
    save_epoch(tmp_path / "other", 2)
    (tmp_path / "epoch_0002.state.pth").write_bytes((tmp_path / "other" / "epoch_0002.state.pth")
                                                    .read_bytes())
    (tmp_path / f".epoch_0002.pth.{atomic.HOST_TAG}-1.abcdefgh.tmp").write_bytes(b"half")
    assert weights.latest_resumable(tmp_path)[0] == tmp_path / "epoch_0001.pth"
    # A checkpoint without its state (weights only) is passed over too.
    (tmp_path / "epoch_0003.pth").write_bytes((tmp_path / "epoch_0001.pth").read_bytes())
    assert weights.latest_resumable(tmp_path)[0] == tmp_path / "epoch_0001.pth"
    with pytest.raises(WeightsError, match=r"does not belong to .*epoch_0003.pth"):
        weights.read_training_checkpoint(tmp_path / "epoch_0003.pth",
                                         tmp_path / "epoch_0002.state.pth")
    (tmp_path / "epoch_0001.state.pth").unlink()
    assert weights.latest_resumable(tmp_path) is None


def test_export_writes_weights_only(tmp_path):
    checkpoint = save_epoch(tmp_path / "run", 4)
    exported = weights.export_weights(checkpoint, tmp_path / "model.pth")
    content = torch.load(exported, weights_only=True)
    assert set(content) == {"format", "version", "config", "state_dict"}
    assert torch.equal(content["state_dict"]["weight"], torch.full((2, 2), 4.0))
