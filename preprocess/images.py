"""Image decoding into the uint8 RGB arrays the model expects (see mrcnn.images for the
conversion rules: gray repeated, alpha dropped, 16-bit rounded to 8)."""
import errno
import os

import cv2
import numpy as np

from mrcnn.images import ImageLoadError, to_rgb_uint8

# OpenCV applies the EXIF orientation for every flag combination except exactly
# IMREAD_UNCHANGED, so UNCHANGED (the only flag that keeps alpha) is not an option. ANYDEPTH keeps
# 16-bit samples (instead of OpenCV's own >> 8) and ANYCOLOR keeps grayscale single-channel and
# drops alpha.
_DECODE_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR


def load_image(source, name=None):
    """Reads an image as a uint8 RGB array.

    Args:
        source: a path (str or os.PathLike), the encoded file contents (bytes, bytearray,
            memoryview), or an already decoded numpy array (passed to `to_rgb_uint8`).
            Files are decoded by OpenCV: JPEG, PNG, BMP, TIFF and the other formats it reads.
            The EXIF orientation is applied. OpenCV returns TIFFs with an alpha channel
            premultiplied by alpha (composited over black), unlike other formats.
        name: how error messages call the image; defaults to the path, or "<bytes>".

    Returns:
        [H, W, 3] uint8 RGB array.

    Raises:
        FileNotFoundError: the path does not exist.
        ImageLoadError (a ValueError): empty file, a directory, undecodable or corrupt data, or
            an unsupported pixel type; the message names the image.
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
    try:
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), _DECODE_FLAGS)
    except cv2.error as error:
        raise ImageLoadError(f"{name}: OpenCV could not decode it ({error})") from None
    if decoded is None:
        raise ImageLoadError(f"{name}: not a readable image (corrupt or truncated data, or not an "
                             "image format OpenCV decodes, such as JPEG, PNG, BMP or TIFF)")
    if decoded.ndim == 3:
        decoded = decoded[..., ::-1]  # OpenCV decodes colour as BGR
    return to_rgb_uint8(decoded, name)


def _read_file(path, name):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "image file not found", name) from None
    except IsADirectoryError:
        raise ImageLoadError(f"{name}: is a directory, not an image file") from None
