"""Images that would take a command down: decompression bombs (refused from their header before
decoding), files that are not files, images too thin to resize, and the memory of resizing."""
import io
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from mrcnn.config import Config
from mrcnn.molding import ImageSizeError, molded_shape, resize_image
from preprocess import images as images_module
from preprocess.image_headers import declared_size
from preprocess.images import ImageLoadError, ImageTooLargeError, load_image

ROOT = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = 37, 53


def pixels(channels=3, dtype=np.uint8):
    rng = np.random.default_rng(0)
    shape = (HEIGHT, WIDTH) if channels == 1 else (HEIGHT, WIDTH, channels)
    return rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)


def opencv_file(extension, image=None, params=()):
    ok, encoded = cv2.imencode(extension, pixels() if image is None else image, list(params))
    assert ok
    return encoded.tobytes()


def pil_file(fmt, mode="RGB", **options):
    buffer = io.BytesIO()
    Image.fromarray(pixels(1 if mode == "L" else 3)).convert(mode).save(buffer, fmt, **options)
    return buffer.getvalue()


def exif_orientation(value):
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


ENCODED = {
    "png": lambda: opencv_file(".png"),
    "png 16-bit": lambda: opencv_file(".png", pixels(dtype=np.uint16)),
    "jpeg": lambda: opencv_file(".jpg"),
    "jpeg progressive": lambda: opencv_file(".jpg", params=(cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),
    "jpeg with exif before the frame": lambda: pil_file("JPEG", exif=exif_orientation(1)),
    "bmp": lambda: opencv_file(".bmp"),
    "tiff": lambda: opencv_file(".tif"),
    "tiff 16-bit": lambda: opencv_file(".tif", pixels(dtype=np.uint16)),
    "tiff deflate (pil)": lambda: pil_file("TIFF", compression="tiff_adobe_deflate"),
    "webp lossless": lambda: opencv_file(".webp", params=(cv2.IMWRITE_WEBP_QUALITY, 101)),
    "webp lossy": lambda: opencv_file(".webp", params=(cv2.IMWRITE_WEBP_QUALITY, 50)),
    "webp extended (exif)": lambda: pil_file("WEBP", exif=exif_orientation(1)),
    "gif": lambda: opencv_file(".gif"),
    "jpeg 2000 (jp2)": lambda: opencv_file(".jp2"),
    "jpeg 2000 codestream": lambda: pil_file("JPEG2000", no_jp2=True),
    "ppm": lambda: opencv_file(".ppm"),
    "pgm": lambda: opencv_file(".pgm", pixels(1)),
    "pbm": lambda: opencv_file(".pbm", (pixels(1) > 127).astype(np.uint8)),
    "pam": lambda: opencv_file(".pam"),
    "pfm": lambda: opencv_file(".pfm", pixels().astype(np.float32) / 255),
    "sun raster": lambda: opencv_file(".ras"),
    "radiance hdr": lambda: opencv_file(".hdr", pixels().astype(np.float32) / 255),
    "avif": lambda: opencv_file(".avif"),
}


@pytest.mark.parametrize("name", sorted(ENCODED))
def test_declared_size_is_the_size_opencv_decodes(name):
    data = ENCODED[name]()
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded is not None and decoded.shape[:2] == (HEIGHT, WIDTH)
    assert declared_size(data) == (HEIGHT, WIDTH)


def test_declared_size_of_a_bmp_stored_top_down():
    data = bytearray(opencv_file(".bmp"))
    data[22:26] = struct.pack("<i", -HEIGHT)  # a negative height: rows stored top-down
    decoded = cv2.imdecode(np.frombuffer(bytes(data), np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape[:2] == declared_size(bytes(data)) == (HEIGHT, WIDTH)


@pytest.mark.parametrize("data", [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM12",
                                  b"II*\x00\xff\xff\xff\xff", b"RIFF\x00\x00\x00\x00WEBP",
                                  b"P6\n12", b"#?RADIANCE\n", b"not an image at all"])
def test_declared_size_of_unreadable_headers_is_none(data):
    assert declared_size(data) is None


def png_bomb(side):
    """A valid 1-bit grey PNG of side x side zeros: about 70 KB for 24000 x 24000."""
    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    rows = b"\x00" * ((1 + (side + 7) // 8) * side)
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grey
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9))
            + chunk(b"IEND", b""))


def jpeg_header(side):
    """SOI, a JFIF APP0 segment and a baseline frame header of side x side, 3 components."""
    app0 = b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    frame = struct.pack(">BHHB", 8, side, side, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    return (b"\xff\xd8" + b"\xff\xe0" + struct.pack(">H", len(app0) + 2) + app0
            + b"\xff\xc0" + struct.pack(">H", len(frame) + 2) + frame + b"\xff\xd9")


def bmp_rle_bomb(side):
    """A valid 8-bit run-length BMP of side x side: its pixel data is only 'end of bitmap'."""
    palette = bytes(4 * 256)
    data = b"\x00\x01"
    offset = 14 + 40 + len(palette)
    return (b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset)
            + struct.pack("<IiiHHIIiiII", 40, side, side, 1, 8, 1, len(data), 2835, 2835, 256, 0)
            + palette + data)


def tiff_header(side, order="<", big=False):
    """A TIFF (or BigTIFF) whose first directory declares side x side pixels, deflate-packed."""
    entries = [(256, 4, side), (257, 4, side), (258, 3, 8), (259, 3, 8), (262, 3, 1),
               (273, 4, 0), (278, 4, side), (279, 4, 0)]
    if big:
        head = (b"II" if order == "<" else b"MM") + struct.pack(order + "HHHQ", 43, 8, 0, 16)
        directory = struct.pack(order + "Q", len(entries)) + b"".join(
            struct.pack(order + "HHQQ", tag, kind, 1, value) for tag, kind, value in entries)
    else:
        head = (b"II" if order == "<" else b"MM") + struct.pack(order + "HI", 42, 8)
        directory = struct.pack(order + "H", len(entries)) + b"".join(
            struct.pack(order + "HHII", tag, kind, 1, value) if kind == 4 else
            struct.pack(order + "HHIH2x", tag, kind, 1, value) for tag, kind, value in entries)
    return head + directory + b"\x00" * 8


def webp_extended(width, height):
    body = b"VP8X" + struct.pack("<I", 10) + b"\x00" * 4 + (width - 1).to_bytes(3, "little") \
        + (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


BOMBS = {
    "png 24000x24000 1-bit": (lambda: png_bomb(24000), (24000, 24000)),
    "jpeg 30000x30000": (lambda: jpeg_header(30000), (30000, 30000)),
    "bmp rle 30000x30000": (lambda: bmp_rle_bomb(30000), (30000, 30000)),
    "tiff deflate 30000x30000": (lambda: tiff_header(30000), (30000, 30000)),
    "tiff big-endian": (lambda: tiff_header(30000, ">"), (30000, 30000)),
    "bigtiff": (lambda: tiff_header(30000, big=True), (30000, 30000)),
    "webp 16383x16383": (lambda: webp_extended(16383, 16383), (16383, 16383)),
    "gif 65535x65535": (lambda: b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00" * 8,
                        (65535, 65535)),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_decompression_bombs_are_refused_before_decoding(name, tmp_path, monkeypatch):
    make, size = BOMBS[name]
    path = tmp_path / "bomb.img"
    path.write_bytes(make())
    assert declared_size(path.read_bytes()) == size

    def never(*_):
        raise AssertionError("cv2.imdecode was called")

    monkeypatch.setattr(images_module.cv2, "imdecode", never)
    with pytest.raises(ImageTooLargeError, match=rf"bomb.img: {size[1]}x{size[0]} pixels "
                                                 r"\([\d,]+\) is more than the limit of "
                                                 r"134,217,728 \(a decompression bomb\?\)"):
        load_image(path)


def test_real_bombs_decode_under_opencvs_own_limit():
    """The reason for a budget of our own: OpenCV (limit 2^30 pixels) would decode these."""
    for data in (png_bomb(24000), bmp_rle_bomb(30000)):
        height, width = declared_size(data)
        assert images_module.DEFAULT_MAX_PIXELS < height * width <= 2 ** 30


def test_the_budget_can_be_raised_or_lifted(tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(ENCODED["png"]())
    with pytest.raises(ImageTooLargeError, match=r"53x37 pixels \(1,961\) is more than the limit "
                                                 r"of 1,960 .*--max-pixels"):
        load_image(path, max_pixels=HEIGHT * WIDTH - 1)
    expected = load_image(path)
    np.testing.assert_array_equal(load_image(path, max_pixels=HEIGHT * WIDTH), expected)
    np.testing.assert_array_equal(load_image(path, max_pixels=None), expected)


def test_formats_without_a_readable_header_are_checked_once_decoded(tmp_path, monkeypatch):
    path = tmp_path / "image.png"
    path.write_bytes(ENCODED["png"]())
    monkeypatch.setattr(images_module, "declared_size", lambda data: None)
    with pytest.raises(ImageTooLargeError, match="53x37 pixels"):
        load_image(path, max_pixels=100)


def test_orientation_can_be_kept_as_stored():
    data = pil_file("JPEG", exif=exif_orientation(6))  # rotate 90 degrees to display
    assert load_image(data).shape[:2] == (WIDTH, HEIGHT)
    assert load_image(data, orientation=False).shape[:2] == (HEIGHT, WIDTH)


def test_16_bit_samples_round_to_the_nearest_8_bit_level():
    every = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    expected = np.floor(every.astype(np.float64) / 257 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(load_image(every)[..., 0], expected)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this system")
def test_a_named_pipe_is_refused_not_waited_on(tmp_path):
    pipe = tmp_path / "photo.png"
    os.mkfifo(pipe)
    with pytest.raises(ImageLoadError, match="photo.png: is not a regular file"):
        load_image(pipe)


def test_unreadable_file_names_the_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    path = tmp_path / "locked.png"
    path.write_bytes(ENCODED["png"]())
    path.chmod(0)
    with pytest.raises(PermissionError) as error:
        load_image(path)
    assert error.value.filename == str(path)


@pytest.mark.parametrize("shape", [(2, 100000), (100000, 2), (3, 900), (900, 3)])
def test_images_too_thin_to_resize_raise_image_size_error(shape):
    config = Config(IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=128)
    with pytest.raises(ImageSizeError, match="too thin for this resize mode"):
        molded_shape(shape, config)
    with pytest.raises(ImageSizeError):
        resize_image(np.zeros(shape + (3,), np.uint8), min_dim=64, max_dim=128, mode="square")


def test_scaling_a_large_image_down_makes_no_float64_copy_of_it():
    """A 6000x8000 RGB image (144 MB) to 1024: a float64 copy would add 1.15 GB."""
    script = textwrap.dedent("""
        import resource, sys
        import numpy as np
        from mrcnn.molding import resize_image
        image = np.full((6000, 8000, 3), 7, np.uint8)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        resized = resize_image(image, min_dim=800, max_dim=1024, mode="square")[0]
        assert resized.shape == (1024, 1024, 3) and resized[500, 500, 0] == 7
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    assert int(result.stdout) < 6000 * 8000 * 3 * 8 // 2
