"""Matterport's input molding with its exact arithmetic, in torch so it can run on the GPU.

`resize` reproduces `skimage.transform.resize(image, shape, order=1, mode='constant', cval=0,
clip=True, preserve_range=True, anti_aliasing=False)` bit for bit: that call is
`scipy.ndimage.zoom(grid_mode=True, mode='grid-constant')`, i.e. half-pixel sampling at
`(i + 0.5) * in / out - 0.5`, two taps per axis whose taps outside the input read 0, summed in
float64 in scipy's order, then clipped to the input's [min, max]. `resize_image`, `mold_image` and
`compose_image_meta` follow Matterport's `utils` and `model` functions of the same names.

Every function takes numpy arrays or torch tensors and returns the same kind; tensors stay on
their device.
"""
import random

import numpy as np
import torch

from mrcnn.config import RESIZE_MODES


class ImageSizeError(ValueError):
    """An image whose size the resize mode cannot handle (scaled to nothing along one side)."""


def resize(image, output_hw):
    """Matterport's `utils.resize` (skimage order-1 resize, preserve_range) of one image.

    Args:
        image: [H, W] or [H, W, C], any real dtype (bool is read as 0/1, as old skimage did).
        output_hw: (out_h, out_w), both >= 1.

    Returns:
        [out_h, out_w] or [out_h, out_w, C]; float32 for float16/float32 input (as skimage keeps
        it), float64 otherwise.
    """
    return resize_batch(image[None], [tuple(output_hw)])[0]


def resize_batch(images, output_hws):
    """`resize` of N images (e.g. masks) of one input size, each to its own output size.

    Args:
        images: [N, H, W] or [N, H, W, C].
        output_hws: [N, 2] output (h, w) per image, all >= 1. Given as numpy or a list, the
            sizes are checked on the host and the resize does not wait for the device; a device
            tensor is read back once.

    Returns:
        [N, max_h, max_w(, C)]: image i fills [:h_i, :w_i] and is 0 beyond. Each image is clipped
        to its own input [min, max]. dtype as for `resize`.
    """
    images, was_numpy = _as_tensor(images)
    if images.dim() not in (3, 4):
        raise ValueError(f"resize_batch expects [N, H, W] or [N, H, W, C] images, got shape "
                         f"{list(images.shape)}")
    if images.is_complex():
        raise TypeError("resize_batch does not resize complex images")
    host_sizes = (output_hws.cpu() if torch.is_tensor(output_hws)
                  else torch.as_tensor(np.asarray(output_hws, dtype=np.int64)))
    if host_sizes.shape != (images.shape[0], 2):
        raise ValueError(f"output_hws must have shape [{images.shape[0]}, 2], got "
                         f"{list(host_sizes.shape)}")
    if images.shape[1] < 1 or images.shape[2] < 1:
        raise ValueError(f"cannot resize empty images of shape {list(images.shape)}")
    if images.shape[0] == 0:
        empty = images.new_zeros((0, 0, 0) + tuple(images.shape[3:]),
                                 dtype=_output_dtype(images.dtype))
        return _like_input(empty, was_numpy)
    if bool((host_sizes < 1).any()):
        raise ValueError(f"output sizes must be >= 1, got {host_sizes.tolist()}")
    frame_hw = tuple(int(v) for v in host_sizes.max(0).values)
    sizes = to_device(host_sizes.to(torch.int64), images.device)
    return _like_input(resize_to_frame(images, sizes, frame_hw), was_numpy)


def resize_to_frame(images, sizes, frame_hw):
    """The arithmetic of `resize_batch`, without checks and without reading anything back from
    the device: images [N, H, W(, C)] (H, W >= 1), sizes [N, 2] int64 tensor on their device
    (each >= 1), frame_hw >= the largest size -> [N, frame_h, frame_w(, C)]."""
    with_channels = images if images.dim() == 4 else images[..., None]
    if with_channels.dtype == torch.bool:
        with_channels = with_channels.to(torch.float64)
    count, height, width, _ = with_channels.shape
    frame_h, frame_w = frame_hw
    row_taps = _linear_taps(height, sizes[:, 0], frame_h)
    col_taps = _linear_taps(width, sizes[:, 1], frame_w)
    out = _interpolate(with_channels, row_taps, col_taps).to(_output_dtype(images.dtype))

    flat = with_channels.reshape(count, -1)
    low = flat.amin(1).to(out.dtype).view(count, 1, 1, 1)
    high = flat.amax(1).to(out.dtype).view(count, 1, 1, 1)
    out = torch.clamp(out, low, high)
    outside_rows = torch.arange(frame_h, device=out.device) >= sizes[:, :1]
    outside_cols = torch.arange(frame_w, device=out.device) >= sizes[:, 1:]
    out.masked_fill_(outside_rows[:, :, None, None] | outside_cols[:, None, :, None], 0)
    return out if images.dim() == 4 else out[..., 0]


def to_device(value, device):
    """A numpy array or CPU tensor as a tensor on `device`.

    To CUDA the copy goes through pinned memory and does not wait: it is queued on the current
    stream, so the kernels queued after it see the data, and the host carries on meanwhile.
    """
    tensor = value if torch.is_tensor(value) else torch.from_numpy(np.ascontiguousarray(value))
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def resize_image(image, min_dim=None, max_dim=None, min_scale=None, mode="square", rng=None):
    """Matterport's `utils.resize_image`: scale, then pad (square, pad64) or crop (crop).

    Args:
        image: [H, W, C] uint8, float32 or float64 (numpy or tensor).
        min_dim: scale up (never down) so the short side is at least this; in 'crop' mode also
            the crop size; in 'pad64' mode a multiple of 64.
        max_dim: 'square' mode: scale down so the long side fits, then pad to max_dim x max_dim.
        min_scale: scale up by at least this factor.
        mode: 'none' (returns the input unchanged), 'square', 'pad64' or 'crop'.
        rng: 'crop' mode draws `rng.randint(0, h - min_dim)` then the same for x, exactly as
            Matterport draws from the `random` module; None uses the `random` module too.

    Returns:
        image: the molded image, same dtype (uint8 values are truncated, as astype does).
        window: (y1, x1, y2, x2) of the image inside the result, y2/x2 exclusive.
        scale: the scale factor used (1 when unchanged).
        padding: [(top, bottom), (left, right), (0, 0)].
        crop: (y, x, min_dim, min_dim) in 'crop' mode, else None.
    """
    tensor, was_numpy = _as_tensor(image)
    if tensor.dim() != 3:
        raise ValueError(f"resize_image expects an [H, W, C] image, got shape "
                         f"{list(tensor.shape)}")
    if tensor.dtype not in (torch.uint8, torch.float32, torch.float64):
        raise TypeError(f"resize_image expects uint8, float32 or float64 images, got "
                        f"{tensor.dtype}")
    height, width = tensor.shape[:2]
    scale, (new_h, new_w) = _resize_plan(height, width, min_dim, max_dim, min_scale, mode)
    window = (0, 0, height, width)
    padding = [(0, 0), (0, 0), (0, 0)]
    crop = None
    if mode == "none":
        return image, window, scale, padding, crop

    if scale != 1:
        tensor = resize(tensor, (new_h, new_w)).to(tensor.dtype)
    if mode == "crop":
        draw = random if rng is None else rng
        y = draw.randint(0, new_h - min_dim)
        x = draw.randint(0, new_w - min_dim)
        crop = (y, x, min_dim, min_dim)
        tensor = tensor[y:y + min_dim, x:x + min_dim].contiguous()
        window = (0, 0, min_dim, min_dim)
    else:
        top, bottom, left, right = _padding(new_h, new_w, mode, max_dim)
        padded = tensor.new_zeros((new_h + top + bottom, new_w + left + right, tensor.shape[2]))
        padded[top:top + new_h, left:left + new_w] = tensor
        tensor = padded
        padding = [(top, bottom), (left, right), (0, 0)]
        window = (top, left, new_h + top, new_w + left)
    return _like_input(tensor, was_numpy), window, scale, padding, crop


def molded_shape(image_hw, config):
    """(H, W) that `mold_inputs` gives an image of size image_hw, without resizing anything.

    Lets a caller group images whose molded sizes match ('pad64' and 'none' depend on the
    input size), and find the images the resize mode cannot take (ImageSizeError) before a
    batch fails on them. `image_hw` may also be a full (H, W, C) shape.
    """
    height, width = (int(v) for v in image_hw[:2])
    mode = config.IMAGE_RESIZE_MODE
    _, (new_h, new_w) = _resize_plan(height, width, config.IMAGE_MIN_DIM, config.IMAGE_MAX_DIM,
                                     config.IMAGE_MIN_SCALE, mode)
    if mode == "crop":
        return config.IMAGE_MIN_DIM, config.IMAGE_MIN_DIM
    top, bottom, left, right = _padding(new_h, new_w, mode, config.IMAGE_MAX_DIM)
    return new_h + top + bottom, new_w + left + right


def mold_image(images, mean_pixel):
    """Matterport's `mold_image`: pixels minus the mean, subtracted in float64, as float32.

    Args:
        images: [..., C] (e.g. [H, W, C] or [B, H, W, C]) RGB pixel values.
        mean_pixel: C values (config.MEAN_PIXEL).

    Returns:
        float32 array/tensor of the same shape.
    """
    tensor, was_numpy = _as_tensor(images)
    mean = to_device(np.asarray(mean_pixel, dtype=np.float64), tensor.device)
    if mean.dim() != 1 or tensor.shape[-1] != mean.numel():
        raise ValueError(f"mean_pixel has {mean.numel()} values but the images have "
                         f"{tensor.shape[-1]} channels (last axis)")
    return _like_input((tensor.to(torch.float64) - mean).to(torch.float32), was_numpy)


def compose_image_meta(image_id, original_image_shape, image_shape, window, scale,
                       active_class_ids):
    """Matterport's `compose_image_meta` as a float64 numpy vector of 12 + NUM_CLASSES values.

    [image_id, original H, W, C, molded H, W, C, window y1, x1, y2, x2, scale,
    active_class_ids...].
    """
    original_image_shape, image_shape, window = (
        tuple(original_image_shape), tuple(image_shape), tuple(window))
    for field, value, size in (("original_image_shape", original_image_shape, 3),
                               ("image_shape", image_shape, 3), ("window", window, 4)):
        if len(value) != size:
            raise ValueError(f"{field} must have {size} values, got {value}")
    return np.array([image_id, *original_image_shape, *image_shape, *window, scale,
                     *np.asarray(active_class_ids).ravel()], dtype=np.float64)


def parse_image_meta(meta):
    """Named fields of image metas [..., 12 + NUM_CLASSES].

    numpy input follows Matterport's `parse_image_meta` (image_id, shapes, window and
    active_class_ids as int32, scale as float32); a tensor follows `parse_image_meta_graph`
    (plain slices, dtype and device kept).

    Returns:
        dict with image_id [...], original_image_shape [..., 3], image_shape [..., 3],
        window [..., 4], scale [...], active_class_ids [..., NUM_CLASSES].
    """
    if meta.shape[-1] < 12:
        raise ValueError(f"image meta needs at least 12 values on its last axis, got shape "
                         f"{list(meta.shape)}")
    fields = {
        "image_id": meta[..., 0],
        "original_image_shape": meta[..., 1:4],
        "image_shape": meta[..., 4:7],
        "window": meta[..., 7:11],
        "scale": meta[..., 11],
        "active_class_ids": meta[..., 12:],
    }
    if torch.is_tensor(meta):
        return fields
    return {name: np.asarray(value).astype(np.float32 if name == "scale" else np.int32)
            for name, value in fields.items()}


def mold_inputs(images, config, device=None):
    """Matterport's `MaskRCNN.mold_inputs`: resize, pad and normalise a batch of images.

    Args:
        images: list of [H, W, C] images (numpy arrays or tensors; uint8 RGB as `load_image`
            gives them), C = config.IMAGE_CHANNEL_COUNT.
        config: a Config; IMAGE_RESIZE_MODE 'crop' is refused (it crops at random, for training).
        device: where the work happens and the results live; None keeps tensors where they are
            and puts numpy images on the CPU.

    Returns:
        molded: [B, C, H, W] float32 tensor (NCHW), pixels minus MEAN_PIXEL.
        image_metas: [B, config.IMAGE_META_SIZE] float32 tensor (image_id 0, no active classes).
        windows: [B, 4] int32 numpy array, (y1, x1, y2, x2) of each image inside its molded one.

    Raises:
        ValueError: no images, a bad image shape, or images whose molded shapes differ (group
            them by `molded_shape` and mold each group separately).
    """
    if config.IMAGE_RESIZE_MODE == "crop":
        raise ValueError("IMAGE_RESIZE_MODE 'crop' takes random crops and is meant for training; "
                         "use 'square', 'pad64' or 'none' to mold images for inference")
    if isinstance(images, (np.ndarray, torch.Tensor)) or not len(images):
        raise ValueError("mold_inputs expects a non-empty list of [H, W, C] images")
    molded, metas, windows = [], [], []
    for index, image in enumerate(images):
        tensor, _ = _as_tensor(image, device)
        if tensor.dim() != 3 or tensor.shape[2] != config.IMAGE_CHANNEL_COUNT:
            raise ValueError(f"image {index}: expected shape [H, W, {config.IMAGE_CHANNEL_COUNT}]"
                             f", got {list(tensor.shape)}")
        resized, window, scale, _, _ = resize_image(
            tensor, min_dim=config.IMAGE_MIN_DIM, max_dim=config.IMAGE_MAX_DIM,
            min_scale=config.IMAGE_MIN_SCALE, mode=config.IMAGE_RESIZE_MODE)
        molded.append(mold_image(resized, config.MEAN_PIXEL))
        metas.append(compose_image_meta(0, tensor.shape, resized.shape, window, scale,
                                        np.zeros(config.NUM_CLASSES)))
        windows.append(window)
    shapes = [tuple(m.shape[:2]) for m in molded]
    if len(set(shapes)) > 1:
        raise ValueError(f"the images mold to different shapes {shapes}; group them by "
                         "molded_shape() and mold each group separately")
    batch = torch.stack(molded).permute(0, 3, 1, 2).contiguous()
    image_metas = to_device(np.stack(metas).astype(np.float32), batch.device)
    return batch, image_metas, np.array(windows, dtype=np.int32)


def _resize_plan(height, width, min_dim, max_dim, min_scale, mode):
    """utils.resize_image's choice of scale: (scale, (new_h, new_w))."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    if height < 1 or width < 1:
        raise ValueError(f"cannot resize an empty {height}x{width} image")
    if mode == "square" and not max_dim:
        raise ValueError("'square' mode needs max_dim (the side of the square)")
    if mode == "pad64" and min_dim and min_dim % 64:
        raise ValueError(f"'pad64' mode needs min_dim to be a multiple of 64, got {min_dim}")
    if mode == "crop" and not min_dim:
        raise ValueError("'crop' mode needs min_dim (the side of the crop)")
    if mode == "none":
        return 1, (height, width)
    scale = 1
    if min_dim:
        scale = max(1, min_dim / min(height, width))
    if min_scale and scale < min_scale:
        scale = min_scale
    if max_dim and mode == "square":
        longest = max(height, width)
        if round(longest * scale) > max_dim:
            scale = max_dim / longest
    if scale == 1:
        return scale, (height, width)
    new_hw = (round(height * scale), round(width * scale))
    if min(new_hw) < 1:
        raise ImageSizeError(f"a {height}x{width} image scaled by {scale:.4g} would be "
                             f"{new_hw[0]}x{new_hw[1]} pixels; it is too thin for this resize "
                             "mode")
    return scale, new_hw


def _padding(height, width, mode, max_dim):
    """(top, bottom, left, right) zero padding of a resized image."""
    if mode == "square":
        pad_h, pad_w = max_dim - height, max_dim - width
    elif mode == "pad64":
        pad_h, pad_w = -height % 64, -width % 64
    else:
        return 0, 0, 0, 0
    return pad_h // 2, pad_h - pad_h // 2, pad_w // 2, pad_w - pad_w // 2


def _linear_taps(in_size, out_sizes, frame):
    """The two input taps of scipy's order-1 grid-mode zoom along one axis, per item.

    Args:
        in_size: input length.
        out_sizes: [N] int64 output lengths.
        frame: output positions computed per item (>= max(out_sizes)).

    Returns:
        index0, index1: [N, frame] int64, clamped into the input.
        weight0, weight1: [N, frame] float64; 0 for taps outside the input (they read cval 0)
        and at positions >= the item's output length.
    """
    position = torch.arange(frame, dtype=torch.float64, device=out_sizes.device)
    # A tensor numerator: `scalar / tensor` multiplies by the reciprocal, which rounds differently.
    zoom = torch.full_like(position[:1], in_size) / out_sizes.to(torch.float64)[:, None]
    coord = (position + 0.5) * zoom - 0.5
    start = torch.floor(coord)
    weight0 = 1.0 - (coord - start)
    weight1 = 1.0 - weight0  # scipy sets the last weight to 1 - the others, not to the fraction
    index0 = start.to(torch.int64)
    index1 = index0 + 1
    in_frame = position < out_sizes[:, None]
    zero = torch.zeros((), dtype=torch.float64, device=out_sizes.device)
    weight0 = torch.where(in_frame & (index0 >= 0), weight0, zero)
    weight1 = torch.where(in_frame & (index1 < in_size), weight1, zero)
    return index0.clamp(0, in_size - 1), index1.clamp(0, in_size - 1), weight0, weight1


def _interpolate(images, row_taps, col_taps):
    """Bilinear samples [N, Fh, Fw, C] float64 of images [N, H, W, C].

    Sums ((value * row_weight) * col_weight) over the taps (row 0, col 0), (0, 1), (1, 0),
    (1, 1) in that order, as scipy's zoom does, so float64 results match it bit for bit.
    The result is a permuted view of a [Fh, N, Fw, C] tensor.
    """
    count, height, width, channels = images.shape
    row0, row1, row_w0, row_w1 = row_taps
    col0, col1, col_w0, col_w1 = col_taps
    frame_h, frame_w = row0.shape[1], col0.shape[1]
    # Converted to float64 (exact for every input dtype) after picking the rows when there are
    # fewer of them: a large image being scaled down is never copied whole at 8 bytes a value.
    if frame_h >= height:
        images = images.to(torch.float64)
    item = torch.arange(count, device=images.device)[:, None]
    # One flat index per axis over (item, row) and (item, column) picks the taps of all items
    # in a single indexing op, which is much faster than torch.gather.
    image_rows = images.reshape(count * height, width * channels)
    out = None
    for rows, row_weight in ((row0, row_w0), (row1, row_w1)):
        # value * row_weight is the same product before or after picking the columns, and the
        # picked rows are the smaller tensor.
        weighted = image_rows[(item * height + rows).T.reshape(-1)].to(torch.float64)
        weighted = weighted.view(frame_h, count, width, channels)
        weighted.mul_(row_weight.T[:, :, None, None])
        weighted = weighted.view(frame_h, count * width, channels)
        for cols, col_weight in ((col0, col_w0), (col1, col_w1)):
            term = weighted[:, (item * width + cols).reshape(-1)]
            term = term.view(frame_h, count, frame_w, channels)
            term.mul_(col_weight[None, :, :, None])
            out = term if out is None else out.add_(term)
    return out.permute(1, 0, 2, 3)


def _output_dtype(dtype):
    """skimage keeps float16/float32 images in float32 and computes everything else in float64."""
    single = (torch.float16, torch.bfloat16, torch.float32)
    return torch.float32 if dtype in single else torch.float64


def _as_tensor(value, device=None):
    """(tensor, whether the input was not a tensor); array-likes go through numpy."""
    if torch.is_tensor(value):
        return (value if device is None else to_device(value, device)), False
    return to_device(np.asarray(value), device or "cpu"), True


def _like_input(tensor, was_numpy):
    return tensor.cpu().numpy() if was_numpy else tensor
