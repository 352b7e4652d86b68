"""Image decoding into the uint8 RGB arrays the model expects (see mrcnn.images for the
conversion rules: gray repeated, alpha dropped, 16-bit rounded to 8).

Images larger than a pixel budget (`max_pixels`, DEFAULT_MAX_PIXELS unless raised) are refused
from the size their header declares, before any pixel is decoded, so that a decompression bomb
(a small file declaring a huge image) costs nothing.
"""
import errno
import os
import stat

import cv2
import numpy as np

from mrcnn.images import DEFAULT_MAX_PIXELS, ImageLoadError, to_rgb_uint8
from mrcnn.molding import ImageSizeError, molded_shape
from preprocess.image_headers import declared_size

# OpenCV applies the EXIF orientation for every flag combination except exactly
# IMREAD_UNCHANGED, so UNCHANGED (the only flag that keeps alpha) is not an option. ANYDEPTH keeps
# 16-bit samples (instead of OpenCV's own >> 8) and ANYCOLOR keeps grayscale single-channel and
# drops alpha.
_DECODE_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
# What an image that cannot be processed raises: unreadable or too large (ImageLoadError), too
# thin for the resize mode (ImageSizeError), a file error (OSError). The commands report such an
# image, skip it and go on with the others.
IMAGE_ERRORS = (ImageLoadError, ImageSizeError, OSError)


class ImageTooLargeError(ImageLoadError):
    """An image with more pixels than the budget (max_pixels) allows."""


def load_image(source, name=None, max_pixels=DEFAULT_MAX_PIXELS, orientation=True):
    """Reads an image as a uint8 RGB array.

    Args:
        source: a path (str or os.PathLike), the encoded file contents (bytes, bytearray,
            memoryview), or an already decoded numpy array (passed to `to_rgb_uint8`, whatever
            its size). Files are decoded by OpenCV: JPEG, PNG, BMP, TIFF and the other formats
            it reads. OpenCV returns TIFFs with an alpha channel premultiplied by alpha
            (composited over black), unlike other formats.
        name: how error messages call the image; defaults to the path, or "<bytes>".
        max_pixels: refuse images of more pixels (height x width) than this; None for no limit
            but OpenCV's own (2^30). The size is read from the file's header before decoding
            (see preprocess.image_headers; formats it does not know are checked once decoded).
        orientation: apply the EXIF orientation (False: keep the stored pixels, to which COCO
            annotations refer).

    Returns:
        [H, W, 3] uint8 RGB array.

    Raises:
        FileNotFoundError: the path does not exist.
        ImageTooLargeError (an ImageLoadError): more than max_pixels pixels.
        ImageLoadError (a ValueError): empty file, a directory or other non-regular file,
            undecodable or corrupt data, or an unsupported pixel type; the message names the
            image.
        OSError: the file cannot be read (e.g. no permission); its filename is set.
    """
    if isinstance(source, np.ndarray):
        return to_rgb_uint8(source, name or "image array")
    if isinstance(source, (bytes, bytearray, memoryview)):
        name = name or "<bytes>"
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        name = name or os.fspath(source)
        data = _read_file(source, name)
    else:
        raise TypeError(f"load_image expects a path, bytes or a numpy array, "
                        f"got {type(source).__name__}")
    if not data:
        raise ImageLoadError(f"{name}: the file is empty")
    size = declared_size(data)
    if size is not None:
        check_pixel_budget(size, max_pixels, name)
    flags = _DECODE_FLAGS if orientation else _DECODE_FLAGS | cv2.IMREAD_IGNORE_ORIENTATION
    try:
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as error:
        raise ImageLoadError(f"{name}: OpenCV could not decode it ({error})") from None
    if decoded is None:
        raise ImageLoadError(f"{name}: not a readable image (corrupt or truncated data, or not an "
                             "image format OpenCV decodes, such as JPEG, PNG, BMP or TIFF)")
    check_pixel_budget(decoded.shape, max_pixels, name)
    if decoded.ndim == 3:
        decoded = decoded[..., ::-1]  # OpenCV decodes colour as BGR
    return to_rgb_uint8(decoded, name)


def check_pixel_budget(shape, max_pixels, name="image"):
    """Raises ImageTooLargeError when an image of `shape` (H, W, ...) has more than
    `max_pixels` pixels (None: no limit)."""
    height, width = (int(v) for v in shape[:2])
    if max_pixels is not None and height * width > max_pixels:
        raise ImageTooLargeError(
            f"{name}: {width}x{height} pixels ({height * width:,}) is more than the limit of "
            f"{max_pixels:,} (a decompression bomb?); if the image is genuine, raise the limit "
            "(--max-pixels)")


def check_resizable(shape, config, name="image"):
    """Raises ImageSizeError naming the image when config's resize mode would scale an image of
    `shape` (H, W, ...) to nothing along one side (such as 2x100000 pixels into a 1024 square):
    checked image by image before a batch would fail on it."""
    try:
        molded_shape(shape, config)
    except ImageSizeError as error:
        raise ImageSizeError(f"{name}: {error}") from None


def _read_file(path, name):
    try:
        # Checked before opening: opening a FIFO would wait for a writer.
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise ImageLoadError(f"{name}: is a directory, not an image file")
        if not stat.S_ISREG(mode):
            raise ImageLoadError(f"{name}: is not a regular file (a pipe or a device?)")
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "image file not found", name) from None
