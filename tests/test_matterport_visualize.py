"""mrcnn.visualize (Matterport's matplotlib drawing)."""
import random
import sys

import numpy as np
import pytest

from mrcnn import visualize


def test_random_colors_are_distinct_hues_at_the_brightness():
    random.seed(0)
    colors = visualize.random_colors(6)
    assert len(set(colors)) == 6
    assert all(max(color) == 1.0 for color in colors)
    assert all(max(color) == pytest.approx(0.7) for color in visualize.random_colors(3, False))


def test_apply_mask_blends_inside_the_mask_only():
    image = np.full((2, 2, 3), 100.0)
    mask = np.array([[1, 0], [0, 0]])
    out = visualize.apply_mask(image, mask, (1.0, 0.0, 0.5), alpha=0.5)
    assert out is image
    np.testing.assert_allclose(out[0, 0], [100 * 0.5 + 0.5 * 255, 50, 50 + 0.25 * 255])
    np.testing.assert_allclose(out[1, 1], [100, 100, 100])


def test_without_matplotlib_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"mask-scoring-rcnn\[plots\]"):
        visualize.display_instances(np.zeros((4, 4, 3), np.uint8), np.zeros((0, 4)),
                                    np.zeros((4, 4, 0)), np.zeros(0, np.int32), ["BG"])


@pytest.fixture
def pyplot():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    yield plt
    plt.close("all")


def two_instances():
    image = np.full((20, 30, 3), 40, np.uint8)
    boxes = np.array([[2, 3, 8, 10], [10, 12, 18, 28]])
    masks = np.zeros((20, 30, 2), bool)
    masks[2:8, 3:10, 0] = True
    masks[10:18, 12:28, 1] = True
    return image, boxes, masks, np.array([1, 2])


def test_display_instances_draws_into_the_given_axes(pyplot):
    from matplotlib import patches

    image, boxes, masks, class_ids = two_instances()
    _, ax = pyplot.subplots(1)
    colors = [(1.0, 0.0, 0.0), (0.0, 0.0, 1.0)]
    returned = visualize.display_instances(image, boxes, masks, class_ids, ["BG", "cat", "dog"],
                                           np.array([0.91, 0.5]), title="t", ax=ax,
                                           colors=colors)
    assert returned is ax
    assert [t.get_text() for t in ax.texts] == ["cat 0.910", "dog 0.500"]
    rectangles = [p for p in ax.patches if isinstance(p, patches.Rectangle)]
    assert [(r.get_x(), r.get_y(), r.get_width(), r.get_height()) for r in rectangles] == \
        [(3, 2, 7, 6), (12, 10, 16, 8)]
    assert sum(isinstance(p, patches.Polygon) for p in ax.patches) == 2
    drawn = np.asarray(ax.images[0].get_array())
    np.testing.assert_array_equal(drawn[5, 5], [147, 20, 20])     # 40 * 0.5 + 127.5 -> 147
    np.testing.assert_array_equal(drawn[14, 20], [20, 20, 147])
    np.testing.assert_array_equal(drawn[0, 0], [40, 40, 40])
    assert ax.get_title() == "t"


def test_display_instances_options(pyplot, capsys):
    from matplotlib import patches

    image, boxes, masks, class_ids = two_instances()
    _, ax = pyplot.subplots(1)
    visualize.display_instances(image, boxes, masks, class_ids, ["BG", "cat", "dog"], ax=ax,
                                show_mask=False, show_bbox=False, captions=["a", "b"])
    assert [t.get_text() for t in ax.texts] == ["a", "b"]
    assert not any(isinstance(p, patches.Rectangle) for p in ax.patches)
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), image)

    _, ax = pyplot.subplots(1)
    visualize.display_instances(image, np.zeros((0, 4)), np.zeros((20, 30, 0)),
                                np.zeros(0, np.int32), ["BG"], ax=ax)
    assert "No instances to display" in capsys.readouterr().out
    with pytest.raises(ValueError, match="one of each per instance"):
        visualize.display_instances(image, boxes, masks[:, :, :1], class_ids, ["BG"], ax=ax)


def test_display_instances_without_axes_makes_a_figure(pyplot, monkeypatch):
    shown = []
    monkeypatch.setattr(pyplot, "show", lambda: shown.append(True))
    image, boxes, masks, class_ids = two_instances()
    ax = visualize.display_instances(image, boxes, masks, class_ids, ["BG", "cat", "dog"],
                                     figsize=(4, 3))
    assert shown == [True]
    assert tuple(ax.figure.get_size_inches()) == (4, 3)


def test_display_differences_captions_score_and_iou(pyplot):
    image, boxes, masks, class_ids = two_instances()
    pred_boxes = np.array([[10, 12, 18, 28], [2, 3, 8, 10]])
    pred_masks = masks[:, :, ::-1].copy()
    pred_masks[2:8, 3:10, 1] = False
    pred_masks[2:5, 3:10, 1] = True           # half of the first ground truth: IoU 0.5
    _, ax = pyplot.subplots(1)
    visualize.display_differences(image, boxes, class_ids, masks, pred_boxes, np.array([2, 1]),
                                  np.array([0.6, 0.95]), pred_masks, ["BG", "cat", "dog"], ax=ax)
    # Predictions by score: the 0.95 one (IoU 0.5 with the cat), then the 0.6 dog (IoU 1).
    assert [t.get_text() for t in ax.texts] == ["", "", "0.95 / 0.50", "0.60 / 1.00"]


def test_draw_boxes_and_display_top_masks(pyplot, monkeypatch):
    from matplotlib import patches

    monkeypatch.setattr(pyplot, "show", lambda: None)
    image, boxes, masks, class_ids = two_instances()
    _, ax = pyplot.subplots(1)
    visualize.draw_boxes(image, boxes=boxes, refined_boxes=boxes + 1, masks=masks,
                         captions=["x", "y"], visibilities=[2, 0], ax=ax)
    rectangles = [p for p in ax.patches if isinstance(p, patches.Rectangle)]
    assert len(rectangles) == 2 + 1        # the invisible one's refined box is not drawn
    assert [t.get_text() for t in ax.texts] == ["x", "y"]

    figure = visualize.display_top_masks(image, masks, class_ids, ["BG", "cat", "dog"], limit=2)
    assert [a.get_title() for a in figure.axes] == ["H x W=20x30", "dog", "cat"]
