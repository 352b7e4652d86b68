"""Unmolding detections and masks, checked against a numpy/skimage transcription of Matterport's
unmold_detections + unmold_mask and against the Keras reference case."""

import numpy as np
import pytest
import torch
from skimage.transform import resize as skimage_resize

import mrcnn.unmold
from mrcnn.unmold import unmold_batch, unmold_detections, unmold_masks
from tests.reference import PUBLIC_CASE

REFERENCE = PUBLIC_CASE


def matterport_unmold_mask(mask, box, image_hw):
    """utils.unmold_mask, with boxes allowed to leave the image (pasted on a larger canvas)."""
    y1, x1, y2, x2 = box
    soft = skimage_resize(mask, (y2 - y1, x2 - x1), order=1, mode="constant",
                          anti_aliasing=False)
    margin = max(abs(int(v)) for v in box) + 1
    canvas = np.zeros((image_hw[0] + 2 * margin, image_hw[1] + 2 * margin), bool)
    canvas[y1 + margin:y2 + margin, x1 + margin:x2 + margin] = soft >= 0.5
    return canvas[margin:margin + image_hw[0], margin:margin + image_hw[1]]


def matterport_unmold_detections(detections, masks, original_shape, molded_shape, window):
    """MaskRCNN.unmold_detections in numpy; masks are already picked per row's class."""
    padding_rows = np.where(detections[:, 4] == 0)[0]
    count = padding_rows[0] if padding_rows.size else detections.shape[0]
    boxes = detections[:count, :4]
    class_ids = detections[:count, 4].astype(np.int32)
    scores = detections[:count, 5]
    masks = masks[:count]
    height, width = molded_shape[:2]
    window = ((np.array(window) - [0, 0, 1, 1]) /
              np.array([height - 1, width - 1, height - 1, width - 1])).astype(np.float32)
    wy1, wx1, wy2, wx2 = window
    shift = np.array([wy1, wx1, wy1, wx1])
    scale = np.array([wy2 - wy1, wx2 - wx1, wy2 - wy1, wx2 - wx1])
    boxes = np.divide(boxes - shift, scale)
    height, width = original_shape[:2]
    boxes = np.around(boxes * np.array([height - 1, width - 1, height - 1, width - 1])
                      + np.array([0, 0, 1, 1])).astype(np.int32)
    empty = np.where((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) <= 0)[0]
    boxes, class_ids, scores, masks = (np.delete(a, empty, axis=0)
                                       for a in (boxes, class_ids, scores, masks))
    full = [matterport_unmold_mask(m, b, original_shape[:2]) for m, b in zip(masks, boxes)]
    full = np.stack(full, axis=-1) if full else np.zeros(tuple(original_shape[:2]) + (0,), bool)
    return boxes, class_ids, scores, full, empty


def random_detections(rng, molded_hw, window, count, padded, mask_hw=(28, 28)):
    """Detections as the detection layer gives them: normalized boxes clipped to the window,
    sorted scores, zero rows after `count`; masks in (0, 1)."""
    height, width = molded_hw
    wy1, wx1, wy2, wx2 = window
    corners_y = np.sort(rng.uniform(wy1, wy2 - 1, (count, 2)), axis=1) / (height - 1)
    corners_x = np.sort(rng.uniform(wx1, wx2 - 1, (count, 2)), axis=1) / (width - 1)
    boxes = np.stack([corners_y[:, 0], corners_x[:, 0], corners_y[:, 1], corners_x[:, 1]], 1)
    boxes[0] = [wy1 / (height - 1), wx1 / (width - 1), (wy2 - 1) / (height - 1),
                (wx2 - 1) / (width - 1)]  # the whole window, edges included
    boxes[1, 2] = boxes[1, 0] - 2 / (height - 1)  # inverted: no area, dropped
    detections = np.zeros((count + padded, 6), np.float32)
    detections[:count, :4] = boxes
    detections[:count, 4] = rng.integers(1, 4, count)
    detections[:count, 5] = np.sort(rng.uniform(0.7, 1.0, count))[::-1]
    if padded > 1:
        detections[count + 1] = [0.1, 0.1, 0.5, 0.5, 2, 0.6]  # after the first padding row
    masks = rng.uniform(0, 1, (count + padded,) + mask_hw).astype(np.float32)
    # All above 0.5: border samples blended with 0 fall below 0.5, and only the clip to the
    # mask's own [min, max] brings them back, so the whole box is foreground.
    masks[2] = 0.6 + 0.4 * masks[2]
    return detections, masks


@pytest.mark.parametrize("original_shape, molded_shape, window, mask_hw", [
    ((300, 200, 3), (256, 256, 3), (0, 42, 256, 213), (28, 28)),    # square, scaled down
    ((100, 150, 3), (128, 192, 3), (14, 21, 114, 171), (28, 28)),   # pad64
    ((90, 120, 3), (90, 120, 3), (0, 0, 90, 120), (14, 14)),        # none
])
def test_unmold_detections_matches_matterport(original_shape, molded_shape, window, mask_hw,
                                              device):
    rng = np.random.default_rng(original_shape[0])
    detections, masks = random_detections(rng, molded_shape[:2], window, 12, 5, mask_hw)
    mask_scores = rng.uniform(0, 1, len(detections)).astype(np.float32)
    boxes, class_ids, scores, full, dropped = matterport_unmold_detections(
        detections, masks, original_shape, molded_shape, window)
    assert dropped.tolist() == [1]  # the transcription really exercised the zero-area drop

    result = unmold_detections(torch.from_numpy(detections).to(device),
                               torch.from_numpy(masks).to(device), original_shape,
                               molded_shape, window,
                               mask_scores=torch.from_numpy(mask_scores).to(device))

    assert list(result) == ["rois", "class_ids", "scores", "mask_scores", "masks"]
    assert result["rois"].dtype == np.int32 and result["class_ids"].dtype == np.int32
    assert result["scores"].dtype == np.float32 and result["masks"].dtype == bool
    assert result["masks"].flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(result["rois"], boxes)
    np.testing.assert_array_equal(result["class_ids"], class_ids)
    np.testing.assert_array_equal(result["scores"], scores)
    np.testing.assert_array_equal(result["mask_scores"], np.delete(mask_scores[:12], [1]))
    assert result["masks"].shape == original_shape[:2] + (11,)
    np.testing.assert_array_equal(result["masks"], full)
    y1, x1, y2, x2 = boxes[1]  # row 2, after the dropped row 1
    assert full[..., 1].sum() == (y2 - y1) * (x2 - x1) == full[y1:y2, x1:x2, 1].sum()


def test_unmold_detections_reproduces_the_keras_reference():
    reference = np.load(REFERENCE / "outputs.npz")
    detections = reference["detections"][0]
    class_masks = reference["mrcnn_mask"][0]
    masks = class_masks[np.arange(len(detections)), :, :, detections[:, 4].astype(int)]

    result = unmold_detections(torch.from_numpy(detections), torch.from_numpy(masks),
                               (512, 512, 3), reference["molded_images"].shape[1:],
                               reference["windows"][0])

    np.testing.assert_array_equal(result["rois"], reference["rois_0"])
    np.testing.assert_array_equal(result["class_ids"], reference["class_ids_0"])
    np.testing.assert_array_equal(result["scores"], reference["scores_0"])
    assert "mask_scores" not in result
    expected = reference["masks_0"]
    assert result["masks"].shape == expected.shape == (512, 512, 29)
    differing = (result["masks"] != expected).sum(axis=(0, 1))
    assert (differing <= 0.001 * expected.sum(axis=(0, 1))).all()


@pytest.mark.parametrize("detections", [np.zeros((100, 6), np.float32),
                                        np.zeros((0, 6), np.float32)])
def test_unmold_without_detections_gives_empty_arrays(detections, device):
    masks = torch.zeros((len(detections), 28, 28), device=device)

    result = unmold_detections(torch.from_numpy(detections).to(device), masks, (40, 50, 3),
                               (64, 64, 3), (12, 0, 52, 64), mask_scores=masks[:, 0, 0])

    assert result["rois"].shape == (0, 4) and result["rois"].dtype == np.int32
    assert result["class_ids"].shape == (0,) and result["class_ids"].dtype == np.int32
    assert result["scores"].shape == (0,) and result["scores"].dtype == np.float32
    assert result["mask_scores"].shape == (0,) and result["mask_scores"].dtype == np.float32
    assert result["masks"].shape == (40, 50, 0) and result["masks"].dtype == bool


def test_unmold_masks_chunks_and_clips_to_the_image(monkeypatch, device):
    rng = np.random.default_rng(9)
    boxes = np.array([[0, 0, 60, 80], [5, 7, 6, 9], [-10, 70, 25, 95], [30, -4, 61, 10],
                      [10, 10, 50, 40], [2, 3, 30, 4], [55, 75, 70, 90]])
    masks = rng.uniform(0, 1, (len(boxes), 28, 28)).astype(np.float32)
    expected = np.stack([matterport_unmold_mask(m, b, (60, 80)) for m, b in zip(masks, boxes)],
                        axis=-1)
    # Small chunks: several chunks of different frame sizes, some of a single instance.
    monkeypatch.setattr(mrcnn.unmold, "_CHUNK_ELEMENTS", 1500)

    got = unmold_masks(torch.from_numpy(masks).to(device), torch.from_numpy(boxes).to(device),
                       (60, 80))

    assert got.shape == (60, 80, len(boxes)) and got.device.type == device.type
    np.testing.assert_array_equal(got.cpu().numpy(), expected)
    assert expected[..., 2].any() and expected[..., 6].any()  # clipped boxes kept some pixels


def test_unmold_rejects_inconsistent_inputs():
    detections = torch.zeros(5, 6)
    with pytest.raises(ValueError, match=r"\[D, 6\]"):
        unmold_detections(torch.zeros(5, 5), torch.zeros(5, 28, 28), (9, 9), (9, 9), (0, 0, 9, 9))
    with pytest.raises(ValueError, match="one soft mask per"):
        unmold_detections(detections, torch.zeros(4, 28, 28), (9, 9), (9, 9), (0, 0, 9, 9))
    with pytest.raises(ValueError, match="mask_scores"):
        unmold_detections(detections, torch.zeros(5, 28, 28), (9, 9), (9, 9), (0, 0, 9, 9),
                          mask_scores=torch.zeros(4))
    with pytest.raises(ValueError, match="positive height"):
        unmold_masks(torch.zeros(1, 28, 28), torch.tensor([[3, 3, 3, 8]]), (9, 9))


@pytest.mark.parametrize("seed", range(4))
def test_unmold_masks_matches_skimage_on_many_random_cases(seed, device):
    """Random boxes (inside, across the border, outside; 1 to 150 pixels) and soft masks spread
    around the threshold, some rounded to bfloat16 (the bf16 mode's masks, with many ties)."""
    rng = np.random.default_rng(100 + seed)
    image_hw = tuple(int(v) for v in rng.integers(20, 120, 2))
    count = 60
    corners = rng.integers(-40, max(image_hw), (count, 2))
    sizes = rng.integers(1, 150, (count, 2))
    boxes = np.concatenate([corners, corners + sizes], axis=1)
    masks = 1 / (1 + np.exp(-rng.normal(0, 4, (count, 28, 28))))
    masks[::3] = torch.from_numpy(masks[::3]).bfloat16().double().numpy()
    masks[1, :14] = 0.5
    masks = masks.astype(np.float32)
    expected = np.stack([matterport_unmold_mask(m, b, image_hw) for m, b in zip(masks, boxes)],
                        axis=-1)

    got = unmold_masks(torch.from_numpy(masks).to(device), boxes, image_hw)

    np.testing.assert_array_equal(got.cpu().numpy(), expected)
    assert expected.any() and not expected.all()


def test_unmold_batch_equals_unmolding_each_image(device):
    rng = np.random.default_rng(5)
    shapes = [(300, 200, 3), (256, 256, 3), (40, 250, 3)]
    windows = np.array([(0, 42, 256, 213), (0, 0, 256, 256), (108, 0, 148, 256)], np.int32)
    cases = [random_detections(rng, (256, 256), window, count, 100 - count)
             for window, count in zip(windows, (12, 30, 5))]
    detections = np.stack([case[0] for case in cases])
    masks = np.stack([case[1] for case in cases])
    rows = np.flatnonzero(detections[..., 4].reshape(-1) > 0)  # as infer() gives them
    flat_masks = masks.reshape(-1, 28, 28)[rows]
    scores = rng.uniform(0, 1, len(rows)).astype(np.float32)

    together = unmold_batch(torch.from_numpy(detections).to(device),
                            torch.from_numpy(flat_masks).to(device), torch.from_numpy(rows),
                            shapes, (256, 256, 3), windows, torch.from_numpy(scores).to(device))

    for b, result in enumerate(together):
        mine = rows // 100 == b
        alone = unmold_detections(detections[b, :mine.sum()], masks[b, :mine.sum()], shapes[b],
                                  (256, 256, 3), windows[b], mask_scores=scores[mine])
        assert list(result) == list(alone)
        for name in alone:
            np.testing.assert_array_equal(result[name], alone[name])
    assert [r["masks"].shape[-1] for r in together] == [11, 29, 4]  # row 1 dropped in each


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_unmold_batch_on_cuda_waits_twice_whatever_the_chunks(monkeypatch):
    rng = np.random.default_rng(6)
    detections, masks = random_detections(rng, (256, 256), (0, 0, 256, 256), 40, 60)
    monkeypatch.setattr(mrcnn.unmold, "_CHUNK_ELEMENTS", 500)  # dozens of chunks
    rows = torch.arange(100, device="cuda")
    detections, masks = (torch.from_numpy(a).cuda() for a in (detections, masks))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with pytest.warns(UserWarning) as caught:
            unmold_batch(detections[None], masks, rows, [(500, 400, 3)], (256, 256, 3),
                         [(0, 0, 256, 256)])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    waits = [w for w in caught if "synchroniz" in str(w.message)]
    assert 1 <= len(waits) <= 2, [str(w.message) for w in waits]
