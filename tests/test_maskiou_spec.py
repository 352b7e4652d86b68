"""The MaskIoU head's forward pass against a plain numpy transcription of its specification
(Mask Scoring R-CNN, Huang et al. 2019, and its official code), on fixed weights:

- input: the RoI's mask-branch features [C, 14, 14] and its predicted 28x28 mask of one class,
  max-pooled (kernel 2, stride 2) to 14x14, concatenated as channel C + 1;
- four 3x3 convolutions to 256 channels, padding 1, each followed by ReLU, the fourth with
  stride 2 (7x7 out);
- flattened channel by channel, then FC 1024 + ReLU, FC 1024 + ReLU, FC NUM_CLASSES (one IoU per
  class, no activation).
"""
import numpy as np
import torch

from mrcnn.heads import MaskIoUHead

CHANNELS, CLASSES, FC = 8, 3, 32  # small stand-ins for 256 channels, 81 classes, FC 1024
ROIS = 2


def max_pool_2x2(mask):
    """[H, W] -> [H / 2, W / 2], the maximum of each 2x2 block."""
    height, width = mask.shape
    return mask.reshape(height // 2, 2, width // 2, 2).max(axis=(1, 3))


def conv3x3(x, weight, bias, stride):
    """x [C, H, W], weight [O, C, 3, 3], bias [O], zero padding 1 -> [O, H', W'] where output
    pixel (i, j) sums weight[o, c, dy, dx] * x[c, stride*i + dy - 1, stride*j + dx - 1]."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    # windows[c, i, j, dy, dx] = padded[c, stride*i + dy, stride*j + dx]
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))
    windows = windows[:, ::stride, ::stride]
    return np.einsum("ocyx,cijyx->oij", weight, windows, optimize=True) + bias[:, None, None]


def relu(x):
    return np.maximum(x, 0.0)


def specified_maskiou(features, mask, weights):
    """One RoI: features [C, 14, 14], mask [28, 28] probabilities -> predicted IoU [classes]."""
    x = np.concatenate([features, max_pool_2x2(mask)[None]], axis=0)
    for layer, stride in zip(range(4), (1, 1, 1, 2)):
        x = relu(conv3x3(x, weights[f"convs.{layer}.weight"], weights[f"convs.{layer}.bias"],
                         stride))
    x = x.reshape(-1)  # channel, then row, then column
    x = relu(weights["fc1.weight"] @ x + weights["fc1.bias"])
    x = relu(weights["fc2.weight"] @ x + weights["fc2.bias"])
    return weights["iou.weight"] @ x + weights["iou.bias"]


def test_forward_follows_the_specification():
    head = MaskIoUHead(CLASSES, channels=CHANNELS, pool_size=14, fc_size=FC).double()
    rng = np.random.default_rng(0)
    weights = {}
    for name, parameter in head.named_parameters():
        # Fixed weights scaled to keep activations of order 1, and positive and negative values
        # through every ReLU.
        fan_in = np.prod(parameter.shape[1:]) if parameter.dim() > 1 else 1
        weights[name] = rng.normal(0, 1 / np.sqrt(fan_in), parameter.shape) + (
            0.1 if name.endswith("bias") else 0.0)
        parameter.data = torch.from_numpy(weights[name])
    features = rng.normal(0, 1, (ROIS, CHANNELS, 14, 14))
    masks = rng.uniform(0, 1, (ROIS, 28, 28))
    with torch.no_grad():
        predicted = head(torch.from_numpy(features), torch.from_numpy(masks)).numpy()
    expected = np.stack([specified_maskiou(features[r], masks[r], weights) for r in range(ROIS)])
    assert predicted.shape == (ROIS, CLASSES)
    np.testing.assert_allclose(predicted, expected, rtol=1e-10, atol=1e-12)
    assert np.abs(expected).min() > 1e-3  # the ReLUs did not zero the output


def test_the_mask_is_max_pooled_not_averaged():
    """A mask with one bright pixel per 2x2 block: max pooling sees 1 everywhere, averaging
    0.25; the head must answer as for an all-ones mask."""
    head = MaskIoUHead(CLASSES, channels=CHANNELS, pool_size=14, fc_size=FC)
    features = torch.randn(1, CHANNELS, 14, 14, generator=torch.Generator().manual_seed(1))
    sparse = torch.zeros(1, 28, 28)
    sparse[:, ::2, ::2] = 1.0
    with torch.no_grad():
        torch.testing.assert_close(head(features, sparse), head(features, torch.ones(1, 28, 28)))
        assert not torch.allclose(head(features, sparse), head(features, sparse / 4))
