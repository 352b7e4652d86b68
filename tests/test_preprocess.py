"""Image loading and Matterport's input molding, checked against skimage, PIL, hand-computed
values and the Keras reference case."""
import io
import random

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from skimage.transform import resize as skimage_resize

from mrcnn.config import Config
from mrcnn.boxes import denorm_boxes, norm_boxes
from mrcnn.images import ImageLoadError, to_rgb_uint8
from mrcnn.molding import (compose_image_meta, mold_image, mold_inputs, molded_shape,
                           parse_image_meta, resize, resize_batch, resize_image)
from preprocess.images import load_image
from tests.reference import PUBLIC_CASE

REFERENCE = PUBLIC_CASE
MEAN_PIXEL = [123.7, 116.8, 103.9]


def matterport_resize(image, shape):
    """skimage.transform.resize with the arguments of Matterport's utils.resize."""
    return skimage_resize(image, shape, order=1, mode="constant", cval=0, clip=True,
                          preserve_range=True, anti_aliasing=False)


def matterport_resize_image(image, min_dim, max_dim, min_scale, mode, rng):
    """A transcription of Matterport's utils.resize_image that resizes with skimage."""
    h, w = image.shape[:2]
    window, scale, padding, crop = (0, 0, h, w), 1, [(0, 0), (0, 0), (0, 0)], None
    if mode == "none":
        return image, window, scale, padding, crop
    if min_dim:
        scale = max(1, min_dim / min(h, w))
    if min_scale and scale < min_scale:
        scale = min_scale
    if max_dim and mode == "square" and round(max(h, w) * scale) > max_dim:
        scale = max_dim / max(h, w)
    if scale != 1:
        image = matterport_resize(image, (round(h * scale), round(w * scale)))
    h, w = image.shape[:2]
    if mode == "square":
        top, left = (max_dim - h) // 2, (max_dim - w) // 2
        padding = [(top, max_dim - h - top), (left, max_dim - w - left), (0, 0)]
        image = np.pad(image, padding)
        window = (top, left, h + top, w + left)
    elif mode == "pad64":
        top = (h - h % 64 + 64 - h) // 2 if h % 64 else 0
        bottom = h - h % 64 + 64 - h - top if h % 64 else 0
        left = (w - w % 64 + 64 - w) // 2 if w % 64 else 0
        right = w - w % 64 + 64 - w - left if w % 64 else 0
        padding = [(top, bottom), (left, right), (0, 0)]
        image = np.pad(image, padding)
        window = (top, left, h + top, w + left)
    else:
        y, x = rng.randint(0, h - min_dim), rng.randint(0, w - min_dim)
        crop = (y, x, min_dim, min_dim)
        image = image[y:y + min_dim, x:x + min_dim]
        window = (0, 0, min_dim, min_dim)
    return image.astype(np.uint8), window, scale, padding, crop


def encode(array, fmt, **options):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **options)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# resize: skimage's arithmetic


RESIZE_CASES = [((1, 1), (5, 3)), ((1, 7), (4, 20)), ((2, 2), (1, 1)), ((5, 9), (5, 9)),
                ((13, 7), (40, 29)), ((40, 29), (13, 7)), ((17, 33), (17, 64)),
                ((31, 20), (9, 55)), ((64, 48), (100, 75)), ((100, 75), (64, 48))]


@pytest.mark.parametrize("in_hw, out_hw", RESIZE_CASES)
def test_resize_uint8_image_matches_skimage(in_hw, out_hw, device):
    rng = np.random.default_rng(in_hw[0] * 100 + out_hw[1])
    image = rng.integers(0, 256, in_hw + (3,), dtype=np.uint8)
    expected = matterport_resize(image, out_hw)

    got = resize(torch.from_numpy(image).to(device), out_hw)

    assert got.dtype == torch.float64 and got.device.type == device.type
    # Bit for bit (scikit-image 0.26 / scipy 1.17, the versions behind the reference data), so
    # the uint8 truncation after it cannot differ either.
    np.testing.assert_array_equal(got.cpu().numpy(), expected)


@pytest.mark.parametrize("in_hw, out_hw", RESIZE_CASES)
def test_resize_float32_mask_matches_skimage(in_hw, out_hw, device):
    rng = np.random.default_rng(in_hw[1] * 100 + out_hw[0])
    mask = rng.random(in_hw, dtype=np.float32)
    # Matterport's unmold_mask: preserve_range=False keeps float32 as float32.
    expected = skimage_resize(mask, out_hw, order=1, mode="constant", anti_aliasing=False)

    got = resize(torch.from_numpy(mask).to(device), out_hw)

    assert got.dtype == torch.float32 and expected.dtype == np.float32
    np.testing.assert_array_equal(got.cpu().numpy(), expected)


def test_resize_blends_borders_with_zero_then_clips():
    """The sheet's example: a row [10, 200, 200, 10] upsampled 2x."""
    image = np.array([[10, 200, 200, 10]] * 4, dtype=np.uint8)
    got = resize(image, (8, 8))
    assert isinstance(got, np.ndarray)
    # Interior rows: the outermost samples are 0.75*10 + 0.25*0, clipped up to the minimum 10.
    np.testing.assert_array_equal(got[3], [10, 57.5, 152.5, 200, 200, 152.5, 57.5, 10])
    # Top row: 0.75 of the interior value, blended with the zero above the image.
    assert got[0, 3] == 150


def test_resize_batch_gives_each_image_its_own_size_and_zero_padding(device):
    rng = np.random.default_rng(3)
    masks = rng.random((4, 6, 5), dtype=np.float32)
    masks[2] = 0.2 + 0.1 * masks[2]  # its own [min, max] clip differs from the others'
    sizes = [(12, 3), (1, 1), (30, 17), (6, 5)]

    got = resize_batch(torch.from_numpy(masks).to(device), torch.tensor(sizes)).cpu().numpy()

    assert got.shape == (4, 30, 17)
    for mask, (h, w), frame in zip(masks, sizes, got):
        expected = skimage_resize(mask, (h, w), order=1, mode="constant", anti_aliasing=False)
        np.testing.assert_allclose(frame[:h, :w], expected, rtol=0, atol=1e-6)
        assert not frame[h:].any() and not frame[:, w:].any()


def test_resize_batch_rejects_bad_sizes():
    with pytest.raises(ValueError, match="output_hws"):
        resize_batch(torch.zeros(2, 4, 4), [(3, 3)])
    with pytest.raises(ValueError, match=">= 1"):
        resize_batch(torch.zeros(1, 4, 4), [(0, 3)])
    with pytest.raises(ValueError, match="shape"):
        resize_batch(torch.zeros(4, 4), [(3, 3)] * 4)


# ---------------------------------------------------------------------------------------------
# resize_image, molded_shape


def test_resize_image_sheet_example():
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    expected = matterport_resize_image(image, 800, 1024, 0, "square", None)

    molded, window, scale, padding, crop = resize_image(image, 800, 1024, 0, "square")

    assert (window, scale, padding, crop) == ((128, 0, 896, 1024), 1.6,
                                              [(128, 128), (0, 0), (0, 0)], None)
    assert molded.dtype == np.uint8 and molded.shape == (1024, 1024, 3)
    assert not molded[:128].any() and not molded[896:].any()
    difference = np.abs(molded.astype(int) - expected[0])
    assert difference.max() <= 1 and np.count_nonzero(difference) <= difference.size // 10000


@pytest.mark.parametrize("mode, min_dim, max_dim, min_scale, hw", [
    ("square", 64, 128, 0, (50, 90)),       # scaled up by min_dim, then capped by max_dim
    ("square", 64, 128, 0, (300, 170)),     # scaled down
    ("square", 0, 128, 0, (128, 40)),       # no scaling, padding only
    ("square", 32, 128, 1.5, (40, 30)),     # min_scale wins over min_dim
    ("pad64", 64, None, 0, (37, 150)),      # scaled up, odd padding
    ("pad64", 0, None, 0, (128, 100)),      # no scaling, one side already a multiple of 64
    ("crop", 64, None, 0, (50, 90)),
    ("crop", 32, None, 0, (70, 45)),
    ("none", 64, 128, 0, (33, 20)),
])
def test_resize_image_matches_matterport(mode, min_dim, max_dim, min_scale, hw, device):
    image = np.random.default_rng(sum(hw)).integers(0, 256, hw + (3,), dtype=np.uint8)
    expected = matterport_resize_image(image, min_dim, max_dim, min_scale, mode,
                                       random.Random(5))

    got = resize_image(torch.from_numpy(image).to(device), min_dim, max_dim, min_scale, mode,
                       rng=random.Random(5))

    assert isinstance(got[0], torch.Tensor) and got[0].device.type == device.type
    assert got[1:] == expected[1:]
    assert got[0].dtype == torch.uint8 and got[0].shape == expected[0].shape
    difference = np.abs(got[0].cpu().numpy().astype(int) - expected[0])
    assert difference.max() <= 1 and np.count_nonzero(difference) <= 2


def test_resize_image_none_returns_the_input_itself():
    image = np.zeros((5, 7, 3), np.uint8)
    assert resize_image(image, 64, 128, 0, "none")[0] is image


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="bogus"), "resize mode"),
    (dict(mode="square", max_dim=None), "max_dim"),
    (dict(mode="pad64", min_dim=100), "multiple of 64"),
    (dict(mode="crop", min_dim=None), "min_dim"),
])
def test_resize_image_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        resize_image(np.zeros((8, 8, 3), np.uint8), **kwargs)


def test_resize_image_rejects_empty_images_and_images_scaled_to_nothing():
    with pytest.raises(ValueError, match="too thin"):
        resize_image(np.zeros((1, 5000, 3), np.uint8), 0, 1024, 0, "square")
    with pytest.raises(ValueError, match="empty"):
        resize_image(np.zeros((0, 50, 3), np.uint8), 64, 1024, 0, "square")


@pytest.mark.parametrize("mode", ["square", "pad64", "none", "crop"])
def test_molded_shape_predicts_resize_image(mode):
    config = Config(IMAGE_RESIZE_MODE=mode, IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=128)
    rng = np.random.default_rng(7)
    for height, width in rng.integers(20, 200, (6, 2)).tolist() + [[70, 500], [64, 64]]:
        image = np.zeros((height, width, 3), np.uint8)
        molded = resize_image(image, config.IMAGE_MIN_DIM, config.IMAGE_MAX_DIM,
                              config.IMAGE_MIN_SCALE, mode, rng=random.Random(0))[0]
        assert molded_shape((height, width), config) == molded.shape[:2]
        assert molded_shape((height, width, 3), config) == molded.shape[:2]


# ---------------------------------------------------------------------------------------------
# mold_image, image metas, boxes


def test_mold_image_subtracts_in_float64_then_casts():
    pixels = np.stack([np.arange(256, dtype=np.uint8)] * 3, axis=1)[None]  # every value/channel
    expected = (pixels.astype(np.float64) - np.array(MEAN_PIXEL)).astype(np.float32)
    float32_subtraction = pixels.astype(np.float32) - np.array(MEAN_PIXEL, np.float32)
    assert (expected != float32_subtraction).any()  # the two orders really differ

    got = mold_image(pixels, MEAN_PIXEL)
    got_tensor = mold_image(torch.from_numpy(pixels), MEAN_PIXEL)

    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got_tensor.numpy(), expected)
    with pytest.raises(ValueError, match="channels"):
        mold_image(pixels, MEAN_PIXEL[:2])


def test_compose_and_parse_image_meta():
    meta = compose_image_meta(0, (480, 640, 3), (1024, 1024, 3), (128, 0, 896, 1024), 1.6,
                              np.zeros(4))
    np.testing.assert_array_equal(
        meta, [0, 480, 640, 3, 1024, 1024, 3, 128, 0, 896, 1024, 1.6, 0, 0, 0, 0])

    parsed = parse_image_meta(np.stack([meta, meta]))
    assert parsed["window"].dtype == np.int32 and parsed["scale"].dtype == np.float32
    np.testing.assert_array_equal(parsed["window"], [[128, 0, 896, 1024]] * 2)
    np.testing.assert_array_equal(parsed["original_image_shape"][0], [480, 640, 3])
    np.testing.assert_array_equal(parsed["image_shape"][1], [1024, 1024, 3])
    assert parsed["scale"][0] == np.float32(1.6) and parsed["active_class_ids"].shape == (2, 4)

    tensor_meta = torch.from_numpy(meta).float()
    parsed = parse_image_meta(tensor_meta)
    assert parsed["window"].dtype == torch.float32
    assert parsed["window"].tolist() == [128, 0, 896, 1024]
    assert parsed["image_id"].item() == 0

    with pytest.raises(ValueError, match="window"):
        compose_image_meta(0, (480, 640, 3), (1024, 1024, 3), (128, 0, 896), 1.6, [0])


def test_norm_and_denorm_boxes_by_hand(device):
    shape = (11, 21)  # H - 1 = 10, W - 1 = 20
    pixels = np.array([[0, 0, 11, 21], [2, 5, 6, 9]])
    expected = np.array([[0, 0, 1, 1], [0.2, 0.25, 0.5, 0.4]], np.float32)

    normalized = norm_boxes(pixels, shape, torch.float64)
    assert normalized.dtype == np.float32
    np.testing.assert_array_equal(normalized, expected)
    np.testing.assert_array_equal(norm_boxes(torch.from_numpy(pixels).to(device), shape, torch.float64).cpu(),
                                  expected)

    # 0.25 * 10 = 2.5 -> 2 and 0.75 * 10 = 7.5 -> 8 (half to even); x: 0.125 * 20 = 2.5 -> 2,
    # 0.375 * 20 + 1 = 8.5 -> 8.
    halves = np.array([[0.25, 0.125, 0.75, 0.375]], np.float32)
    expected_pixels = np.array([[2, 2, 8, 8]], np.int32)
    got = denorm_boxes(halves, shape, torch.float64)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected_pixels)
    got = denorm_boxes(torch.from_numpy(halves).to(device), shape, torch.float64)
    assert got.dtype == torch.int32
    np.testing.assert_array_equal(got.cpu(), expected_pixels)
    np.testing.assert_array_equal(denorm_boxes(expected, shape, torch.float64), pixels)


# ---------------------------------------------------------------------------------------------
# mold_inputs


def test_mold_inputs_reproduces_the_keras_reference():
    reference = np.load(REFERENCE / "outputs.npz")
    config = Config.from_json(REFERENCE / "config.json")
    image = load_image(REFERENCE / "input_0_astronaut.png")

    molded, metas, windows = mold_inputs([image], config)

    assert molded.shape == (1, 3, 256, 256) and molded.dtype == torch.float32
    expected = reference["molded_images"]
    difference = np.abs(molded.permute(0, 2, 3, 1).numpy() - expected)
    assert difference.max() <= 1.0 and np.count_nonzero(difference) <= 10
    np.testing.assert_array_equal(metas.numpy(), reference["image_metas"])
    assert windows.dtype == np.int32
    np.testing.assert_array_equal(windows, reference["windows"])


def test_mold_inputs_batch_on_device(device):
    config = Config(IMAGE_RESIZE_MODE="square", IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=128,
                    NUM_CLASSES=3)
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (100, 60, 3), dtype=np.uint8),
              torch.from_numpy(rng.integers(0, 256, (30, 200, 3), dtype=np.uint8))]

    molded, metas, windows = mold_inputs(images, config, device=device)

    assert molded.shape == (2, 3, 128, 128) and molded.device.type == device.type
    assert metas.shape == (2, config.IMAGE_META_SIZE) and metas.device.type == device.type
    for index, image in enumerate(images):
        image = np.asarray(image)
        expected, window, scale, _, _ = matterport_resize_image(image, 64, 128, 0, "square", None)
        expected = (expected.astype(np.float64) - MEAN_PIXEL).astype(np.float32)
        difference = np.abs(molded[index].permute(1, 2, 0).cpu().numpy() - expected)
        assert difference.max() <= 1 and np.count_nonzero(difference) <= 3
        np.testing.assert_array_equal(windows[index], window)
        np.testing.assert_array_equal(
            metas[index].cpu().numpy(),
            np.float32([0, *image.shape, 128, 128, 3, *window, scale, 0, 0, 0]))


def test_mold_inputs_refuses_what_it_cannot_batch():
    pad64 = Config(IMAGE_RESIZE_MODE="pad64", IMAGE_MIN_DIM=64)
    with pytest.raises(ValueError, match="different shapes"):
        mold_inputs([np.zeros((64, 64, 3), np.uint8), np.zeros((64, 130, 3), np.uint8)], pad64)
    with pytest.raises(ValueError, match="training"):
        mold_inputs([np.zeros((64, 64, 3), np.uint8)],
                    Config(IMAGE_RESIZE_MODE="crop", IMAGE_MIN_DIM=64))
    with pytest.raises(ValueError, match="list"):
        mold_inputs(np.zeros((64, 64, 3), np.uint8), pad64)
    with pytest.raises(ValueError, match="list"):
        mold_inputs([], pad64)
    with pytest.raises(ValueError, match=r"image 1: expected shape \[H, W, 3\]"):
        mold_inputs([np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), np.uint8)], pad64)


# ---------------------------------------------------------------------------------------------
# load_image and to_rgb_uint8


@pytest.fixture
def rgb():
    return np.random.default_rng(11).integers(0, 256, (9, 14, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_load_lossless_formats_exactly_in_rgb_order(fmt, rgb, tmp_path):
    path = tmp_path / f"image.{fmt.lower()}"
    path.write_bytes(encode(rgb, fmt))

    for source in (path, str(path), path.read_bytes()):
        image = load_image(source)
        assert image.dtype == np.uint8 and image.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(image, rgb)


def test_load_grayscale_png_repeats_the_channel(rgb, tmp_path):
    gray = rgb[..., 0]
    path = tmp_path / "gray.png"
    path.write_bytes(encode(gray, "PNG"))

    np.testing.assert_array_equal(load_image(path), np.stack([gray] * 3, axis=2))


@pytest.mark.parametrize("channels", [4, 2], ids=["RGBA", "LA"])
def test_load_png_with_alpha_drops_it(channels, tmp_path):
    pixels = np.random.default_rng(4).integers(0, 256, (6, 5, channels), dtype=np.uint8)
    path = tmp_path / "alpha.png"
    path.write_bytes(encode(pixels, "PNG"))

    color = pixels[..., :3] if channels == 4 else np.repeat(pixels[..., :1], 3, axis=2)
    np.testing.assert_array_equal(load_image(path), color)


def test_load_16_bit_pngs_maps_to_the_nearest_8_bit_level(tmp_path):
    rng = np.random.default_rng(8)
    gray16 = rng.integers(0, 65536, (7, 6), dtype=np.uint16)
    gray16[0, :4] = [0, 65535, 257 * 200, 128]
    (tmp_path / "gray16.png").write_bytes(encode(gray16, "PNG"))
    rgb16 = rng.integers(0, 65536, (7, 6, 3), dtype=np.uint16)
    (tmp_path / "rgb16.png").write_bytes(cv2.imencode(".png", rgb16[..., ::-1])[1].tobytes())

    gray = load_image(tmp_path / "gray16.png")
    np.testing.assert_array_equal(gray[0, :4, 0], [0, 255, 200, 0])
    np.testing.assert_array_equal(gray, np.repeat(np.round(gray16 / 257)[..., None], 3, axis=2))
    np.testing.assert_array_equal(load_image(tmp_path / "rgb16.png"), np.round(rgb16 / 257))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_load_jpeg_applies_exif_orientation(orientation):
    pixels = np.zeros((24, 40, 3), np.uint8)  # flat blocks keep JPEG artefacts away
    pixels[:8, :16] = (255, 0, 0)
    pixels[8:, 16:32] = (0, 255, 0)
    pixels[:, 32:] = (0, 0, 255)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif.tobytes(), quality=95)
    data = buffer.getvalue()

    loaded = load_image(data)

    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    by_hand = {1: stored, 3: stored[::-1, ::-1], 6: np.rot90(stored, k=-1),
               8: np.rot90(stored, k=1), 2: stored[:, ::-1], 4: stored[::-1]}
    if orientation in by_hand:
        np.testing.assert_array_equal(loaded, by_hand[orientation])
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    np.testing.assert_array_equal(loaded, upright)


def test_load_errors_name_the_file(tmp_path, rgb):
    missing = tmp_path / "missing.png"
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(missing)

    cases = {
        "empty.jpg": b"",
        "garbage.png": np.random.default_rng(0).integers(0, 256, 300, np.uint8).tobytes(),
        "notes.txt": b"these are not pixels\n",
        "truncated.png": encode(rgb, "PNG")[:60],
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ImageLoadError, match=name):
            load_image(path)
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(ImageLoadError, match="directory"):
        load_image(tmp_path)
    with pytest.raises(ImageLoadError, match="upload.png"):
        load_image(b"\x89PNG broken", name="upload.png")
    with pytest.raises(TypeError):
        load_image(12)
    assert issubclass(ImageLoadError, ValueError)


def test_to_rgb_uint8_converts_arrays_like_files(rgb):
    assert to_rgb_uint8(rgb) is rgb  # already fine: no copy
    np.testing.assert_array_equal(to_rgb_uint8(rgb[..., 0]), np.stack([rgb[..., 0]] * 3, 2))
    np.testing.assert_array_equal(to_rgb_uint8(rgb[..., :1]), np.stack([rgb[..., 0]] * 3, 2))
    rgba = np.concatenate([rgb, rgb[..., :1]], axis=2)
    np.testing.assert_array_equal(to_rgb_uint8(rgba), rgb)
    np.testing.assert_array_equal(to_rgb_uint8(rgb[:, ::-1]), rgb[:, ::-1])
    np.testing.assert_array_equal(to_rgb_uint8(rgb.astype(np.uint16) * 257), rgb)
    np.testing.assert_array_equal(load_image(rgba), rgb)


@pytest.mark.parametrize("array, message", [
    (np.zeros((4, 4, 3), np.float32), "float"),
    (np.zeros((4, 4, 3), np.int32), "int32"),
    (np.zeros((4, 4, 3), bool), "bool"),
    (np.zeros((4, 4, 5), np.uint8), "shape"),
    (np.zeros((2, 4, 4, 3), np.uint8), "shape"),
    (np.zeros((0, 4, 3), np.uint8), "empty"),
    ([[1, 2], [3, 4]], "numpy array"),
])
def test_to_rgb_uint8_rejects_what_it_cannot_convert(array, message):
    with pytest.raises(ImageLoadError, match=message) as error:
        to_rgb_uint8(array, name="frame 7")
    assert "frame 7" in str(error.value)
