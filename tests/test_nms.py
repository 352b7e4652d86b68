"""mrcnn.ops.nms / batched_nms against hand-computed cases and a numpy transcription of
TensorFlow's CPU kernel (DoNonMaxSuppressionOp)."""
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mrcnn.ops import batched_nms, nms


# ---------------------------------------------------------------------------------------------
# Reference: tf.image.non_max_suppression, written from TF's CPU kernel, in the boxes' dtype.
# ---------------------------------------------------------------------------------------------

def normalized(boxes):
    """(ymin, xmin, ymax, xmax, area) columns of [N, 4] boxes, in their dtype."""
    ymin = np.minimum(boxes[:, 0], boxes[:, 2])
    xmin = np.minimum(boxes[:, 1], boxes[:, 3])
    ymax = np.maximum(boxes[:, 0], boxes[:, 2])
    xmax = np.maximum(boxes[:, 1], boxes[:, 3])
    return ymin, xmin, ymax, xmax, (ymax - ymin) * (xmax - xmin)


def reference_iou(columns, i, others):
    """IoU of box i with each box of `others` (index array), TF's expression in the dtype of
    the `normalized` columns."""
    ymin, xmin, ymax, xmax, area = columns
    zero = area.dtype.type(0)
    height = np.maximum(np.minimum(ymax[i], ymax[others]) - np.maximum(ymin[i], ymin[others]), zero)
    width = np.maximum(np.minimum(xmax[i], xmax[others]) - np.maximum(xmin[i], xmin[others]), zero)
    intersection = height * width
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = intersection / (area[i] + area[others] - intersection)
    return np.where((area[i] <= zero) | (area[others] <= zero), zero, iou)


def reference_nms(boxes, scores, iou_threshold, max_output_size=None, score_threshold=None):
    """Candidates with score > threshold, popped by (score desc, index asc); a candidate is kept
    unless its IoU with a kept box is > iou_threshold; stop after max_output_size."""
    boxes = np.asarray(boxes)
    scores = np.asarray(scores)
    columns = normalized(boxes)
    threshold = boxes.dtype.type(iou_threshold)
    min_score = scores.dtype.type(-np.inf if score_threshold is None else score_threshold)
    candidates = sorted((i for i in range(len(scores)) if scores[i] > min_score),
                        key=lambda i: (-scores[i], i))
    selected = []
    for i in candidates:
        if max_output_size is not None and len(selected) >= max_output_size:
            break
        if not np.any(reference_iou(columns, i, np.array(selected, dtype=np.int64)) > threshold):
            selected.append(i)
    return selected


def reference_batched_nms(boxes, scores, idxs, iou_threshold, max_output_size=None):
    """reference_nms per group, merged by (score desc, index asc)."""
    boxes, scores, idxs = np.asarray(boxes), np.asarray(scores), np.asarray(idxs)
    kept = []
    for group in np.unique(idxs):
        members = np.flatnonzero(idxs == group)
        kept += [members[k] for k in
                 reference_nms(boxes[members], scores[members], iou_threshold, max_output_size)]
    return sorted(kept, key=lambda i: (-scores[i], i))


def random_case(seed, n, dtype, num_groups=1):
    """Clustered boxes on a coarse grid (many overlaps and exact IoU values, some zero-area and
    flipped boxes) with few distinct scores (many ties)."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 48, size=(max(1, n // 6), 2))[rng.integers(0, max(1, n // 6), n)]
    top_left = centres + rng.integers(-2, 3, size=(n, 2))
    size = rng.integers(0, 13, size=(n, 2))
    boxes = np.concatenate([top_left, top_left + size], axis=1).astype(dtype) / 2
    flip = rng.random(n) < 0.2
    boxes[flip] = boxes[flip][:, [2, 3, 0, 1]]
    if rng.random() < 0.5:
        scores = rng.integers(0, 10, n).astype(dtype) / 8
    else:
        scores = rng.random(n).astype(dtype)
    idxs = rng.integers(0, num_groups, n) * 7 - 3  # arbitrary, non-contiguous group values
    return boxes, scores, idxs


def to_list(indices):
    assert indices.dtype == torch.int64
    return indices.cpu().tolist()


# ---------------------------------------------------------------------------------------------
# Hand-computed cases
# ---------------------------------------------------------------------------------------------

# A (area 100); B = left half of A: IoU(A, B) = 50/100 = 0.5; C = A shifted right by 5:
# IoU(A, C) = 50/150 = 1/3, IoU(B, C) = 0/150 = 0; D far away.
HAND_BOXES = [[0, 0, 10, 10], [0, 0, 10, 5], [0, 5, 10, 15], [20, 20, 30, 30]]
HAND_SCORES = [0.9, 0.8, 0.7, 0.6]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("iou_threshold, expected", [
    (0.6, [0, 1, 2, 3]),
    (0.5, [0, 1, 2, 3]),  # IoU(A, B) == threshold: kept
    (0.4, [0, 2, 3]),
    (0.3, [0, 3]),
    (0.0, [0, 3]),
    (1.0, [0, 1, 2, 3]),
])
def test_hand_computed(device, dtype, iou_threshold, expected):
    boxes = torch.tensor(HAND_BOXES, dtype=dtype, device=device)
    scores = torch.tensor(HAND_SCORES, dtype=dtype, device=device)
    assert to_list(nms(boxes, scores, iou_threshold)) == expected


def test_selection_order_is_by_score(device):
    boxes = torch.tensor(HAND_BOXES, dtype=torch.float32, device=device)
    scores = torch.tensor([0.1, 0.8, 0.3, 0.9], device=device)
    # D first; then B; A overlaps B by exactly 0.5 (kept at 0.5); C overlaps A by 1/3.
    assert to_list(nms(boxes, scores, 0.5)) == [3, 1, 2, 0]
    assert to_list(nms(boxes, scores, 0.4)) == [3, 1, 2]


def test_threshold_is_compared_in_the_boxes_dtype(device):
    # IoU = 30/100 rounds to float32(0.3) = 0.30000001, equal to the float32 threshold (kept);
    # compared with the float64 threshold 0.3 it would be larger (suppressed).
    for dtype in (torch.float32, torch.float64):
        boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 3]], dtype=dtype, device=device)
        scores = torch.tensor([0.9, 0.8], dtype=dtype, device=device)
        assert to_list(nms(boxes, scores, 0.3)) == [0, 1]
        assert to_list(nms(boxes, scores, 0.29)) == [0]


def test_flipped_corners_are_normalised(device):
    flipped = [[10, 10, 0, 0], [10, 0, 0, 5], [0, 15, 10, 5], [30, 20, 20, 30]]
    boxes = torch.tensor(flipped, dtype=torch.float32, device=device)
    scores = torch.tensor(HAND_SCORES, device=device)
    assert to_list(nms(boxes, scores, 0.4)) == [0, 2, 3]
    assert to_list(nms(boxes, scores, 0.3)) == [0, 3]


def test_zero_area_boxes_never_suppress_nor_are_suppressed(device):
    boxes = torch.tensor([[0, 0, 0, 10],    # zero height, inside A
                          [0, 0, 10, 10],   # A
                          [5, 5, 5, 5],     # a point inside A
                          [0, 0, 10, 10],   # A again: suppressed by A
                          [0, 0, 10, 0]],   # zero width
                         dtype=torch.float32, device=device)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5], device=device)
    assert to_list(nms(boxes, scores, 0.0)) == [0, 1, 2, 4]


def test_equal_scores_are_visited_in_index_order(device):
    a, far = [0, 0, 10, 10], [50, 50, 60, 60]
    boxes = torch.tensor([far, a, a, far, a], dtype=torch.float32, device=device)
    scores = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.7], device=device)
    assert to_list(nms(boxes, scores, 0.5)) == [4, 0]
    scores = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.5], device=device)
    assert to_list(nms(boxes, scores, 0.5)) == [0, 1]


def test_signed_zero_scores_are_equal(device):
    a = [0, 0, 10, 10]
    boxes = torch.tensor([a, a, a], dtype=torch.float32, device=device)
    for scores in ([0.0, -0.0, 0.0], [-0.0, 0.0, -0.0]):
        assert to_list(nms(boxes, torch.tensor(scores, device=device), 0.5)) == [0]


def test_max_output_size(device):
    boxes = torch.tensor(HAND_BOXES, dtype=torch.float32, device=device)
    scores = torch.tensor(HAND_SCORES, device=device)
    assert to_list(nms(boxes, scores, 0.4, max_output_size=2)) == [0, 2]
    assert to_list(nms(boxes, scores, 0.4, max_output_size=0)) == []
    assert to_list(nms(boxes, scores, 0.4, max_output_size=10)) == [0, 2, 3]


def test_score_threshold_is_strict(device):
    boxes = torch.tensor(HAND_BOXES, dtype=torch.float32, device=device)
    scores = torch.tensor(HAND_SCORES, device=device)
    # Without A, nothing suppresses B or C (IoU(B, C) = 0).
    assert to_list(nms(boxes, scores, 0.3, score_threshold=0.9)) == []
    assert to_list(nms(boxes, scores, 0.3, score_threshold=0.85)) == [0]
    assert to_list(nms(boxes, scores, 0.3, score_threshold=0.8)) == [0]  # 0.8 is not > 0.8
    assert to_list(nms(boxes, scores, 0.3, score_threshold=0.6)) == [0]
    assert to_list(nms(boxes, scores, 0.3, score_threshold=0.5)) == [0, 3]


def test_nan_and_minus_inf_scores_never_enter(device):
    # TensorFlow's default threshold is -inf, compared with >.
    boxes = torch.tensor(HAND_BOXES, dtype=torch.float32, device=device)
    scores = torch.tensor([math.nan, 0.8, -math.inf, 0.6], device=device)
    assert to_list(nms(boxes, scores, 0.3)) == [1, 3]


def test_batched_hand_computed(device):
    a, b = [0, 0, 10, 10], [0, 0, 10, 5]
    boxes = torch.tensor([a, a, b, b, a], dtype=torch.float32, device=device)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5], device=device)
    idxs = torch.tensor([3, 1, 3, 1, 3], device=device)
    # Group 3: a(0) suppresses b(2) and a(4) at 0.4; group 1: a(1) suppresses b(3).
    assert to_list(batched_nms(boxes, scores, idxs, 0.4)) == [0, 1]
    # At 0.5 the halves survive; a cap of one per group keeps only the best of each.
    assert to_list(batched_nms(boxes, scores, idxs, 0.5)) == [0, 1, 2, 3]
    assert to_list(batched_nms(boxes, scores, idxs, 0.5, max_output_size=1)) == [0, 1]
    assert to_list(batched_nms(boxes, scores, idxs, 0.5, max_output_size=2)) == [0, 1, 2, 3]


# ---------------------------------------------------------------------------------------------
# Against the reference on random inputs
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 7, 63, 64, 65, 130, 400, 1500])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("iou_threshold", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_matches_reference(device, n, dtype, iou_threshold):
    boxes, scores, _ = random_case(n * 31 + int(iou_threshold * 10), n, dtype)
    kept = nms(torch.from_numpy(boxes).to(device), torch.from_numpy(scores).to(device),
               iou_threshold)
    assert to_list(kept) == reference_nms(boxes, scores, iou_threshold)


@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_with_limits(device, seed):
    boxes, scores, _ = random_case(seed, 300, np.float32)
    max_output_size = [1, 5, 20, 60, 300, None][seed]
    score_threshold = [None, 0.25, 0.5, -1.0, 0.875, 0.1][seed]
    kept = nms(torch.from_numpy(boxes).to(device), torch.from_numpy(scores).to(device), 0.5,
               max_output_size=max_output_size, score_threshold=score_threshold)
    assert to_list(kept) == reference_nms(boxes, scores, 0.5, max_output_size, score_threshold)


@pytest.mark.parametrize("max_output_size", [None, 2000])
def test_matches_reference_large(device, max_output_size):
    # The benchmark size: many 64-box blocks, and a partial last one.
    boxes, _, _ = random_case(7, 12003, np.float32)
    scores = np.random.default_rng(7).random(12003).astype(np.float32)
    kept = nms(torch.from_numpy(boxes).to(device), torch.from_numpy(scores).to(device), 0.7,
               max_output_size=max_output_size)
    assert to_list(kept) == reference_nms(boxes, scores, 0.7, max_output_size)


def test_thousands_of_kept_boxes(device):
    # Past 4,096 kept boxes the CPU kernel tests a block's candidates in parallel. 4,608 disjoint
    # unit boxes on a grid come first and are all kept; of the 1,024 candidates after them, the
    # even ones repeat an earlier box (IoU 1: suppressed) and the odd ones are new (kept).
    first, later = 4608, 1024
    cells = np.arange(first + later // 2)
    grid = np.stack([cells // 100, cells % 100], axis=1) * 2
    distinct = np.concatenate([grid, grid + 1], axis=1).astype(np.float32)
    repeat = np.arange(later) % 2 == 0
    tail = np.where(repeat[:, None], distinct[np.arange(later)],
                    distinct[first + np.arange(later) // 2])
    boxes = torch.from_numpy(np.concatenate([distinct[:first], tail])).to(device)
    scores = torch.linspace(1, 0, first + later, device=device)
    expected = list(range(first)) + [first + j for j in range(later) if not repeat[j]]
    assert to_list(nms(boxes, scores, 0.5)) == expected


@pytest.mark.parametrize("seed", range(8))
def test_batched_matches_reference(device, seed):
    n, num_groups = [5, 64, 100, 257, 500, 1000, 300, 80][seed], [1, 2, 3, 7, 20, 81, 300, 4][seed]
    max_output_size = [None, 3, 100, 1, 10, None, 2, 0][seed]
    dtype = np.float64 if seed % 3 == 0 else np.float32
    boxes, scores, idxs = random_case(100 + seed, n, dtype, num_groups)
    kept = batched_nms(torch.from_numpy(boxes).to(device), torch.from_numpy(scores).to(device),
                       torch.from_numpy(idxs).to(device), 0.5, max_output_size=max_output_size)
    assert to_list(kept) == reference_batched_nms(boxes, scores, idxs, 0.5, max_output_size)


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

coordinates = st.integers(min_value=0, max_value=12)
box_lists = st.lists(st.tuples(coordinates, coordinates, coordinates, coordinates),
                     min_size=0, max_size=24)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), iou_threshold=st.sampled_from([0.0, 0.2, 0.5, 0.7, 1.0]))
def test_properties(device, data, iou_threshold):
    """What greedy NMS guarantees, checked on small integer boxes in up to three groups."""
    box_list = data.draw(box_lists)
    n = len(box_list)
    scores = np.array(data.draw(st.lists(st.integers(0, 4), min_size=n, max_size=n)),
                      dtype=np.float32) / 4
    groups = np.array(data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)),
                      dtype=np.int64)
    max_output_size = data.draw(st.one_of(st.none(), st.integers(0, 6)))
    boxes = np.array(box_list, dtype=np.float32).reshape(n, 4)

    kept = to_list(batched_nms(
        torch.from_numpy(boxes).to(device), torch.from_numpy(scores).to(device),
        torch.from_numpy(groups).to(device), iou_threshold, max_output_size=max_output_size))
    threshold = np.float32(iou_threshold)
    rank = {i: (-scores[i], i) for i in range(n)}
    assert kept == sorted(kept, key=rank.get) and len(set(kept)) == len(kept)
    for i in range(n):
        same_group_kept = [k for k in kept if groups[k] == groups[i] and k != i]
        others = np.array(same_group_kept, dtype=np.int64)
        overlaps = reference_iou(normalized(boxes), i, others) > threshold
        if i in kept:
            # No two kept boxes of a group overlap by more than the threshold.
            assert not overlaps.any()
        else:
            # A dropped box overlaps an earlier kept box of its group, or its group is full.
            earlier = np.array([rank[k] < rank[i] for k in same_group_kept], dtype=bool)
            suppressed = np.any(overlaps & earlier)
            full = max_output_size is not None and len(same_group_kept) == max_output_size
            assert suppressed or (full and earlier.all())


# ---------------------------------------------------------------------------------------------
# Inputs: empty, layouts, dtypes, errors, fake tensors
# ---------------------------------------------------------------------------------------------

def test_empty_inputs(device):
    boxes = torch.zeros(0, 4, device=device)
    scores = torch.zeros(0, device=device)
    for kept in (nms(boxes, scores, 0.5),
                 batched_nms(boxes, scores, torch.zeros(0, dtype=torch.int64, device=device), 0.5),
                 nms(torch.tensor(HAND_BOXES, dtype=torch.float32, device=device),
                     torch.tensor(HAND_SCORES, device=device), 0.5, score_threshold=1.0)):
        assert kept.shape == (0,) and kept.dtype == torch.int64 and kept.device == device


def test_non_contiguous_inputs(device):
    boxes, scores, idxs = random_case(3, 200, np.float32, num_groups=4)
    expected = reference_batched_nms(boxes, scores, idxs, 0.5)
    strided_boxes = torch.from_numpy(boxes.T.copy()).to(device).t()  # [N, 4] column-major
    strided_scores = torch.from_numpy(np.repeat(scores, 2)).to(device)[::2]
    strided_idxs = torch.from_numpy(np.repeat(idxs, 3)).to(device)[::3]
    assert not (strided_boxes.is_contiguous() or strided_scores.is_contiguous()
                or strided_idxs.is_contiguous())
    assert to_list(batched_nms(strided_boxes, strided_scores, strided_idxs, 0.5)) == expected


@pytest.mark.parametrize("idx_dtype", [torch.int32, torch.int64, torch.int16, torch.uint8])
def test_integer_idxs_dtypes(device, idx_dtype):
    boxes, scores, idxs = random_case(5, 150, np.float32, num_groups=5)
    idxs = idxs + 3  # non-negative for uint8
    kept = batched_nms(torch.from_numpy(boxes).to(device), torch.from_numpy(scores).to(device),
                       torch.from_numpy(idxs).to(device=device, dtype=idx_dtype), 0.3,
                       max_output_size=4)
    assert to_list(kept) == reference_batched_nms(boxes, scores, idxs, 0.3, 4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_cuda_only_and_computed_in_float32(device, dtype):
    boxes, scores, _ = random_case(11, 300, np.float32)
    boxes_low = torch.from_numpy(boxes).to(device=device, dtype=dtype)
    scores_low = torch.from_numpy(scores).to(device=device, dtype=dtype)
    if device.type == "cpu":
        with pytest.raises(RuntimeError, match="boxes on the CPU must be float32 or float64"):
            nms(boxes_low, scores_low, 0.5)
        return
    expected = reference_nms(boxes_low.float().cpu().numpy(), scores_low.float().cpu().numpy(), 0.5)
    assert to_list(nms(boxes_low, scores_low, 0.5)) == expected


def test_cpu_and_cuda_agree():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    for seed in range(4):
        boxes, scores, idxs = random_case(seed, 3000, np.float32, num_groups=1 + 10 * seed)
        args = [torch.from_numpy(a) for a in (boxes, scores, idxs)]
        cpu = batched_nms(*args, 0.7, max_output_size=50)
        cuda = batched_nms(*[a.cuda() for a in args], 0.7, max_output_size=50)
        assert torch.equal(cpu, cuda.cpu())


# Bad arguments: tests/test_op_arguments.py (each case in a child process).


def test_fake_kernel_gives_a_data_dependent_size(device):
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    with FakeTensorMode(shape_env=ShapeEnv(allow_dynamic_output_shape_ops=True)):
        boxes = torch.empty(10, 4, device=device)
        scores = torch.empty(10, device=device)
        kept = batched_nms(boxes, scores, torch.empty(10, dtype=torch.int64, device=device), 0.5)
    assert kept.dtype == torch.int64 and kept.dim() == 1 and kept.device == device
    assert isinstance(kept.shape[0], torch.SymInt)


@pytest.mark.parametrize("grouped", [False, True])
def test_opcheck(device, grouped):
    boxes, scores, idxs = random_case(1, 50, np.float32, num_groups=3)
    args = (torch.from_numpy(boxes).to(device), torch.from_numpy(scores).to(device),
            torch.from_numpy(idxs).to(device) if grouped else None, 0.5, 10, -math.inf)
    torch.library.opcheck(torch.ops.mrcnn.nms.default, args)
