import hashlib
import http.server
import os
import socket
import threading
import urllib.request
from pathlib import Path

import pytest

from mrcnn import weights
from mrcnn.weights import DownloadError

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
    assert os.listdir(cache) == ["file.bin"]
    err = capsys.readouterr().err
    assert "file.bin" in err and "100%" in err and "300k/300k" in err
    assert Handler.requests == ["/file.bin"]

    again = weights.cached_download(f"{server}/file.bin", "file.bin", len(PAYLOAD),
                                    PAYLOAD_SHA256)
    assert again == path
    assert Handler.requests == ["/file.bin"], "a cached file must not be downloaded again"


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
        raise AssertionError("coco_weights_path must not download a cached file")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    cache.mkdir()
    cached = cache / "mask_rcnn_coco.h5"
    with open(cached, "wb") as f:                 # sparse: takes no disk space
        f.truncate(257_557_808)
    assert weights.coco_weights_path() == cached

    with open(cached, "wb") as f:
        f.truncate(1000)
    with pytest.raises(DownloadError, match="has 1000 bytes, expected 257557808"):
        weights.coco_weights_path()


def test_coco_weights_download_asks_for_the_release_file(cache, monkeypatch):
    calls = []
    monkeypatch.setattr(weights, "download", lambda *args: calls.append(args) or args[1])
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
