"""Image arrays as the model takes them: contiguous [H, W, 3] uint8 RGB.

Grayscale is repeated into three channels and an alpha channel is dropped (not composited), as
Matterport's `Dataset.load_image` does. 16-bit samples map to the nearest 8-bit level,
`round(v / 257)`, which is exact for images that were scaled up from 8 bits (v = 257 * k) and
sends 65535 to 255. Decoding files is `preprocess.images`' job.
"""
import numpy as np

# The pixel budget of image files (preprocess.images.load_image): 2^27 = 134 million pixels,
# e.g. 16384 x 8192 or a 100-megapixel photo, about 800 MB decoded and copied to RGB. OpenCV's own
# limit is 2^30.
DEFAULT_MAX_PIXELS = 2 ** 27
# uint16 -> uint8 as round(v / 257), by table: no uint32 copy of a large image.
_UINT16_TO_UINT8 = ((np.arange(65536, dtype=np.uint32) + 128) // 257).astype(np.uint8)


class ImageLoadError(ValueError):
    """An image file or array that cannot be turned into a uint8 RGB image."""


def to_rgb_uint8(image, name="image"):
    """Converts a decoded image array to a contiguous [H, W, 3] uint8 RGB array.

    Args:
        image: numpy array [H, W] (gray), [H, W, 1] (gray), [H, W, 2] (gray + alpha),
            [H, W, 3] (RGB) or [H, W, 4] (RGBA); uint8, or uint16 (mapped to round(v / 257)).
            Colour arrays are taken to be RGB(A), as skimage.io and PIL return them.
        name: how error messages call the image.

    Returns:
        [H, W, 3] uint8 RGB array (the input itself when it already is one and contiguous).

    Raises:
        ImageLoadError: another dtype (float images are refused because their range, 0-1 or
            0-255, is ambiguous), another shape, or an empty image.
    """
    if not isinstance(image, np.ndarray):
        raise ImageLoadError(f"{name}: expected a numpy array, got {type(image).__name__}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4):
        raise ImageLoadError(f"{name}: expected an image of shape [H, W] or [H, W, C] with C in "
                             f"1..4, got shape {list(image.shape)}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageLoadError(f"{name}: the image is empty (shape {list(image.shape)})")
    if image.dtype not in (np.uint8, np.uint16):
        hint = (" (float images are ambiguous, 0-1 or 0-255: convert them to uint8 first)"
                if np.issubdtype(image.dtype, np.floating) else "")
        raise ImageLoadError(f"{name}: unsupported pixel type {image.dtype}; expected uint8 or "
                             f"uint16{hint}")
    channels = image.shape[2]
    if channels <= 2:
        image = np.repeat(image[:, :, :1], 3, axis=2)
    elif channels == 4:
        image = image[:, :, :3]
    if image.dtype == np.uint16:
        image = _UINT16_TO_UINT8[image]
    return np.ascontiguousarray(image)
