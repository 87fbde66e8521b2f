"""Tests for tiler.visualize.visualize_results and class_color: drawn on real arrays, read back pixel by pixel.

Expected colours come from patched_yolo_infer 1.3.10's spec (../shared/reference, section 4.1), expected
blends from the formula the docstring promises, never from the code under test.
"""

from __future__ import annotations

import random
import warnings

import cv2
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from tiler.errors import ConfigError  # noqa: E402
from tiler.visualize import class_color, visualize_results  # noqa: E402

REFERENCE_COLORS = {0: (121, 66, 189), 1: (120, 155, 52), 2: (130, 183, 14), 3: (41, 248, 133),
                    4: (165, 77, 202), 5: (116, 189, 192), 6: (237, 191, 136), 7: (16, 219, 247)}
REFERENCE_OBJECT_COLORS = [(121, 66, 189), (242, 33, 6), (240, 132, 119)]
GREY = 100


def grey(h: int = 200, w: int = 240) -> np.ndarray:
    return np.full((h, w, 3), GREY, np.uint8)


def noisy(h: int = 200, w: int = 240) -> np.ndarray:
    """Pixels that are never a class colour (all channels in 40..90)."""
    return np.random.default_rng(0).integers(40, 90, (h, w, 3), dtype=np.uint8)


def px(img: np.ndarray, x: int, y: int) -> tuple[int, ...]:
    return tuple(int(v) for v in img[y, x])


# ---------------------------------------------------------------------------------------------------------
# colours


def test_class_colors_are_the_references():
    for cid, color in REFERENCE_COLORS.items():
        assert class_color(cid) == color
        assert class_color(cid, delta_colors=3) == color
    assert class_color(0, delta_colors=4) == REFERENCE_COLORS[1]  # the seed is class id + delta
    assert class_color(np.int64(2)) == REFERENCE_COLORS[2]


def test_class_color_leaves_global_random_alone():
    random.seed(12345)
    state = random.getstate()
    class_color(5)
    assert random.getstate() == state


def test_random_object_colors_follow_the_reference_sequence():
    img = grey()
    boxes = [[10, 10, 50, 50], [60, 10, 100, 50], [110, 10, 150, 50]]
    out = visualize_results(img, boxes, [0, 0, 0], random_object_colors=True, show_class=False, thickness=2,
                            return_image_array=True)
    for (x0, y0, _, _), color in zip(boxes, REFERENCE_OBJECT_COLORS):
        assert px(out, x0, y0 + 20) == color


def test_random_object_colors_skip_objects_not_drawn():
    """Colours are drawn per *drawn* object: a filtered-out object takes none."""
    boxes = [[10, 10, 50, 50], [60, 10, 100, 50], [110, 10, 150, 50]]
    out = visualize_results(grey(), boxes, [1, 0, 0], random_object_colors=True, show_class=False, thickness=2,
                            show_classes_list=[0], return_image_array=True)
    assert px(out, 10, 30) == (GREY,) * 3
    assert px(out, 60, 30) == REFERENCE_OBJECT_COLORS[0]
    assert px(out, 110, 30) == REFERENCE_OBJECT_COLORS[1]


def test_visualize_results_leaves_global_random_alone():
    random.seed(7)
    state = random.getstate()
    visualize_results(grey(), [[10, 10, 50, 50], [60, 60, 90, 90]], [0, 3], return_image_array=True)
    visualize_results(grey(), [[10, 10, 50, 50]], [2], random_object_colors=True, return_image_array=True)
    assert random.getstate() == state


def test_list_of_class_colors():
    out = visualize_results(grey(), [[20, 20, 80, 80]], [1], list_of_class_colors=[(1, 2, 3), (9, 8, 7)],
                            show_class=False, thickness=2, return_image_array=True)
    assert px(out, 20, 50) == (9, 8, 7)


# ---------------------------------------------------------------------------------------------------------
# boxes, labels, filters


def test_box_edges_coloured_inside_unchanged_input_untouched():
    img = noisy()
    before = img.copy()
    out = visualize_results(img, [[20, 30, 120, 100]], [2], show_class=False, thickness=2,
                            return_image_array=True)
    np.testing.assert_array_equal(img, before)
    assert out.shape == img.shape and out.dtype == img.dtype and out is not img
    color = REFERENCE_COLORS[2]
    for x, y in [(20, 60), (120, 60), (70, 30), (70, 100), (21, 61)]:
        assert px(out, x, y) == color
    np.testing.assert_array_equal(out[40:90, 30:110], img[40:90, 30:110])  # well inside: untouched
    changed = (out != img).any(axis=-1)
    assert not changed[:25].any() and not changed[105:].any()  # nothing drawn far from the box


def test_float_boxes_and_other_dtypes():
    img = np.zeros((100, 100, 3), np.uint16)
    out = visualize_results(img, np.array([[10.4, 10.6, 60.2, 70.9]]), np.array([0]), show_class=False,
                            thickness=1, return_image_array=True)
    assert out.dtype == np.uint16 and out.shape == img.shape
    assert px(out, 10, 40) == REFERENCE_COLORS[0] and px(out, 60, 40) == REFERENCE_COLORS[0]
    assert px(out, 11, 40) == (0, 0, 0)


def test_label_inside_box_top_left_with_confidence_and_background_per_class():
    img = noisy(300, 400)
    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.6, 1
    box = [50, 60, 350, 250]
    out = visualize_results(img, [box], [1], confidences=[np.float32(0.8734)], classes_names=["building"],
                            show_confidences=True, color_class_background=[(0, 0, 255), (255, 0, 0)],
                            font=font, font_scale=scale, thickness=thick, return_image_array=True)
    (tw, th), _ = cv2.getTextSize("building 0.87", font, scale, thick)
    row = out[box[1] + 1, box[0]:box[0] + tw + 20]
    blue = (row == (255, 0, 0)).all(axis=-1)
    # the background runs from x_min to x_min + tw + 5 (inclusive), then the image again
    assert blue[1:tw + 6].all() and not blue[tw + 7:].any()
    text_rows = out[box[1]:box[1] + th + 6, box[0] + 5:box[0] + tw + 5]
    assert ((text_rows == 255).all(axis=-1)).sum() > 20  # white text drawn on it
    shorter = visualize_results(img, [box], [1], confidences=[0.87], classes_names=["building"],
                                font=font, font_scale=scale, thickness=thick, return_image_array=True)
    (tw2, _), _ = cv2.getTextSize("building", font, scale, thick)
    assert tw2 < tw
    red = (shorter[box[1] + 1, box[0]:box[0] + tw + 20] == (0, 0, 255)).all(axis=-1)  # a tuple: one colour
    assert red[1:tw2 + 6].all() and not red[tw2 + 7:].any()


def test_show_classes_list_filters():
    img = noisy()
    out = visualize_results(img, [[20, 20, 80, 80], [120, 20, 200, 80]], [0, 1], show_classes_list=[1],
                            thickness=2, return_image_array=True)
    np.testing.assert_array_equal(out[:, :100], img[:, :100])
    assert px(out, 200, 50) == REFERENCE_COLORS[1]


def test_show_boxes_off_draws_no_rectangle():
    img = noisy()
    out = visualize_results(img, [[20, 20, 80, 80]], [0], show_boxes=False, show_class=False,
                            return_image_array=True)
    np.testing.assert_array_equal(out, img)


# ---------------------------------------------------------------------------------------------------------
# masks and polygons


def test_fill_mask_is_a_true_alpha_blend():
    img = grey()
    mask = np.zeros(img.shape[:2], np.uint8)
    mask[50:150, 60:180] = 1
    alpha = 0.3
    out = visualize_results(img, [[60, 50, 180, 150]], [0], masks=[mask], segment=True, fill_mask=True,
                            alpha=alpha, show_boxes=False, show_class=False, thickness=2,
                            return_image_array=True)
    color = np.array(REFERENCE_COLORS[0], np.float64)
    expected = tuple(int(v) for v in np.rint((1 - alpha) * GREY + alpha * color))
    assert px(out, 120, 100) == expected  # (133, 90, 127): not the reference's 100 + 0.3 * colour (136, 120, 157)
    assert px(out, 120, 100) != tuple(int(v) for v in np.clip(np.rint(GREY + alpha * color), 0, 255))
    assert px(out, 60, 100) == REFERENCE_COLORS[0]  # the contour
    assert px(out, 20, 20) == (GREY,) * 3  # outside the mask


def test_fill_mask_alpha_one_fills_and_mask_without_fill_only_outlines():
    img = grey()
    mask = np.zeros(img.shape[:2], bool)
    mask[50:150, 60:180] = True
    filled = visualize_results(img, [[60, 50, 180, 150]], [4], masks=[mask], segment=True, fill_mask=True,
                               alpha=1, show_boxes=False, show_class=False, return_image_array=True)
    assert px(filled, 120, 100) == REFERENCE_COLORS[4]
    outline = visualize_results(img, [[60, 50, 180, 150]], [4], masks=[mask], segment=True, show_boxes=False,
                                show_class=False, thickness=1, return_image_array=True)
    assert px(outline, 120, 100) == (GREY,) * 3 and px(outline, 60, 100) == REFERENCE_COLORS[4]


def test_masks_of_another_size_are_resized_nearest():
    img = grey(200, 240)
    small = np.zeros((100, 120), np.uint8)
    small[25:75, 30:90] = 1  # -> rows 50..149, columns 60..179 at full size
    out = visualize_results(img, [[60, 50, 180, 150]], [0], masks=[small], segment=True, fill_mask=True, alpha=1,
                            thickness=1, show_boxes=False, show_class=False, return_image_array=True)
    painted = (out != GREY).any(axis=-1)
    assert painted[50:150, 60:180].all() and painted.sum() == 100 * 120


def test_segment_false_draws_no_mask():
    img = grey()
    mask = np.ones(img.shape[:2], np.uint8)
    out = visualize_results(img, [[60, 50, 180, 150]], [0], masks=[mask], fill_mask=True, show_boxes=False,
                            show_class=False, return_image_array=True)
    np.testing.assert_array_equal(out, img)


def test_polygons_float_filled_blend_and_empty_skipped():
    img = grey()
    tri = np.array([[40.4, 40.2], [200.6, 40.2], [120.0, 180.7]])
    alpha = 0.5
    out = visualize_results(img, [[40, 40, 200, 180], [0, 0, 10, 10]], [1, 2], polygons=[tri, np.zeros((0, 2))],
                            segment=True, fill_mask=True, alpha=alpha, show_boxes=False, show_class=False,
                            thickness=1, return_image_array=True)
    expected = tuple(int(v) for v in np.rint((1 - alpha) * GREY + alpha * np.array(REFERENCE_COLORS[1])))
    assert px(out, 120, 90) == expected
    assert px(out, 120, 40) == REFERENCE_COLORS[1]  # top edge, rounded from y = 40.2
    assert px(out, 45, 150) == (GREY,) * 3  # outside the triangle, inside its box
    np.testing.assert_array_equal(out[:12, :12], img[:12, :12])  # the empty polygon drew nothing


def test_masks_take_precedence_over_polygons():
    img = grey()
    mask = np.zeros(img.shape[:2], np.uint8)
    mask[20:60, 20:60] = 1
    poly = np.array([[120, 120], [200, 120], [200, 190], [120, 190]])
    out = visualize_results(img, [[20, 20, 60, 60]], [0], masks=[mask], polygons=[poly], segment=True,
                            fill_mask=True, alpha=1, show_boxes=False, show_class=False, return_image_array=True)
    assert px(out, 40, 40) == REFERENCE_COLORS[0]
    np.testing.assert_array_equal(out[100:, 100:], img[100:, 100:])


# ---------------------------------------------------------------------------------------------------------
# oriented boxes


DIAMOND = np.array([[100.0, 40.0], [160.0, 100.0], [100.0, 160.0], [40.0, 100.0]])


@pytest.mark.parametrize("segment", [False, True])
def test_obb_draws_the_rotated_polygon_not_the_box(segment):
    img = noisy()
    out = visualize_results(img, [[40, 40, 160, 160]], [3], polygons=[DIAMOND], segment=segment, obb=True,
                            show_class=False, thickness=2, return_image_array=True)
    color = REFERENCE_COLORS[3]
    assert px(out, 130, 70) == color and px(out, 70, 130) == color  # midpoints of two edges
    for corner in [(40, 40), (160, 40), (40, 160), (160, 160)]:  # corners of the axis-aligned box
        assert px(out, *corner) == px(img, *corner)
    np.testing.assert_array_equal(out[90:110, 90:110], img[90:110, 90:110])  # not filled


def test_obb_without_boxes_uses_polygon_corner_for_the_label():
    img = noisy()
    out = visualize_results(img, [], [0], polygons=[DIAMOND + 0.3], obb=True, thickness=1, font_scale=0.4,
                            return_image_array=True)
    assert px(out, 42, 42) == (0, 0, 255)  # label background at the polygon's top-left
    with pytest.raises(ConfigError, match="one polygon per object"):
        visualize_results(img, [[0, 0, 5, 5]], [0, 1], polygons=[DIAMOND], obb=True, return_image_array=True)


# ---------------------------------------------------------------------------------------------------------
# display


def test_show_under_agg_returns_none_closes_and_stays_quiet():
    plt.close("all")
    assert matplotlib.get_backend().lower() == "agg"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = visualize_results(grey(), [[10, 10, 50, 50]], [0], dpi=50)
    assert result is None
    assert plt.get_fignums() == []
    assert not [w for w in caught if "non-interactive" in str(w.message)]
