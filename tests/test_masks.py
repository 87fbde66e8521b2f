"""Tests for tiler.model.masks: per-object bitmaps equal Ultralytics' own, outlines exact, valid, with holes."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from tiler.model.masks import Letterbox, clean_outlines, instance_masks, mask_logits

SQUARE = Letterbox.between((320, 320), (320, 320))


def field_protos(fn, size: int = 80, stride: int = 4) -> np.ndarray:
    """One prototype whose value at prototype pixel (i, j) is fn(x, y) of that pixel's centre in patch pixels."""
    c = (np.arange(size) + 0.5) * stride
    return fn(c[None, :], c[:, None])[None].astype(np.float32)


def test_bitmaps_equal_ultralytics_process_mask():
    """Same bilinear upsampling and crop rule as Ultralytics (square patch, no letterbox), pixel for pixel."""
    import torch
    from ultralytics.utils import ops

    rng = np.random.default_rng(0)
    protos = rng.normal(0, 1, (32, 80, 80)).astype(np.float32)
    x0 = rng.uniform(0, 280, 40)
    y0 = rng.uniform(0, 280, 40)
    boxes = np.column_stack([x0, y0, np.minimum(x0 + rng.uniform(3, 120, 40), 320),
                             np.minimum(y0 + rng.uniform(3, 120, 40), 320)])
    coefs = rng.normal(0, 0.6, (40, 32)).astype(np.float32)
    ours = instance_masks(protos, coefs, boxes, (320, 320), SQUARE)
    ref = ops.process_mask(torch.from_numpy(protos), torch.from_numpy(coefs), torch.from_numpy(boxes).float(),
                           (320, 320), upsample=True).numpy().astype(bool)
    assert ours.keep.sum() >= 30
    assert np.array_equal(ours.keep, ref.reshape(40, -1).any(1))
    agree = total = 0
    for crop, (cx, cy), k in zip(ours.crops, ours.origins, np.flatnonzero(ours.keep)):
        h, w = crop.shape
        assert ref[k].sum() == ref[k, cy:cy + h, cx:cx + w].sum()  # nothing of theirs outside our crop
        agree += int((ref[k, cy:cy + h, cx:cx + w] == crop).sum())
        total += crop.size
    assert agree / total > 0.9999  # float32 sums in another order may flip a pixel whose logit is ~0


def test_outline_of_a_tilted_edge_is_exact():
    """A linear logit field (bilinear upsampling reproduces it exactly): the outline is box ∩ half-plane to
    floating-point precision, where a trace through pixel centres would lose half a pixel along every edge."""
    a, b, c = 0.31, -0.12, -20.0  # logit = a x + b y + c: the 0.5 iso-line is a tilted line
    protos = field_protos(lambda x, y: a * x + b * y + c)
    box = np.array([[60.3, 40.6, 131.2, 96.9]])
    g = instance_masks(protos, np.ones((1, 1), np.float32), box, (320, 320), SQUARE).outlines[0]
    half_plane = shapely.Polygon([(-c / a, 0), ((-c - b * 320) / a, 320), (320, 320), (320, 0)])
    truth = shapely.box(*box[0]).intersection(half_plane)
    assert g.geom_type == "Polygon" and g.is_valid
    assert shapely.area(shapely.symmetric_difference(g, truth)) < 1e-3 * truth.area


def test_outline_of_a_disc_is_sub_pixel_exact():
    cx, cy, r = 100.3, 150.7, 31.2
    protos = field_protos(lambda x, y: r - np.hypot(x - cx, y - cy))
    box = np.array([[cx - r - 3, cy - r - 3, cx + r + 3, cy + r + 3]])
    g = instance_masks(protos, np.ones((1, 1), np.float32), box, (320, 320), SQUARE).outlines[0]
    disc = shapely.Point(cx, cy).buffer(r, quad_segs=64)
    assert g.geom_type == "Polygon" and g.is_valid
    iou = shapely.area(shapely.intersection(g, disc)) / shapely.area(shapely.union(g, disc))
    assert iou > 0.99, iou
    assert abs(g.centroid.x - cx) < 0.05 and abs(g.centroid.y - cy) < 0.05  # no half-pixel shift


def test_holes_parts_and_largest_part():
    ring = lambda x, y: 2.5 - np.abs(np.hypot(x - 160, y - 160) - 20)  # an annulus 17.5-22.5 px  # noqa: E731
    blob2 = lambda x, y: 6 - np.hypot(x - 230, y - 160)  # noqa: E731
    protos = field_protos(lambda x, y: np.maximum(ring(x, y), blob2(x, y)))
    box = np.array([[130.0, 130.0, 245.0, 190.0]])
    out = instance_masks(protos, np.ones((1, 1), np.float32), box, (320, 320), SQUARE)
    g = out.outlines[0]
    assert g.geom_type == "MultiPolygon" and g.is_valid and len(g.geoms) == 2
    annulus = max(g.geoms, key=lambda p: p.area)
    assert len(annulus.interiors) == 1
    hole = shapely.Polygon(annulus.interiors[0])
    assert abs(hole.area - np.pi * 17.5 ** 2) / (np.pi * 17.5 ** 2) < 0.03
    one = instance_masks(protos, np.ones((1, 1), np.float32), box, (320, 320), SQUARE, largest_part=True)
    assert one.outlines[0].geom_type == "Polygon" and one.outlines[0].equals(annulus)


def test_outline_is_cut_exactly_by_the_box():
    protos = field_protos(lambda x, y: 30 - np.hypot(x - 160, y - 160))
    box = np.array([[150.25, 140.5, 171.75, 300.0]])
    g = instance_masks(protos, np.ones((1, 1), np.float32), box, (320, 320), SQUARE).outlines[0]
    bx0, by0, bx1, by1 = g.bounds
    assert bx0 == pytest.approx(150.25) and bx1 == pytest.approx(171.75) and by0 == pytest.approx(140.5)
    assert by1 < 192  # the disc ends before the box does


def test_letterboxed_patch_maps_through_gain_and_padding():
    """A 300 x 200 patch letterboxed into 320 x 320 (gain 320/300, 53 px bands above and below)."""
    lb = Letterbox.between((200, 300), (320, 320))
    assert lb.gain == pytest.approx(320 / 300) and lb.pad_x == 0 and lb.pad_y == 53
    cx, cy, r = 120.0, 90.0, 12.0  # in patch pixels
    protos = field_protos(lambda x, y: r * lb.gain - np.hypot(x - cx * lb.gain, y - (cy * lb.gain + lb.pad_y)))
    box = np.array([[cx - 20, cy - 20, cx + 20, cy + 20]])
    g = instance_masks(protos, np.ones((1, 1), np.float32), box, (200, 300), lb).outlines[0]
    disc = shapely.Point(cx, cy).buffer(r, quad_segs=64)
    assert shapely.area(shapely.intersection(g, disc)) / shapely.area(shapely.union(g, disc)) > 0.97


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("simplify", [0.0, 0.25, 1.0])
def test_every_outline_of_noisy_masks_is_valid_and_polygonal(seed, simplify):
    """Noisy masks with many parts, holes and saddle points: every outline valid, non-empty, polygonal."""
    rng = np.random.default_rng(seed)
    protos = rng.normal(0, 1, (8, 80, 80)).astype(np.float32)
    n = 60
    x0, y0 = rng.uniform(-5, 300, n), rng.uniform(-5, 300, n)
    boxes = np.column_stack([np.clip(x0, 0, 320), np.clip(y0, 0, 320), np.clip(x0 + rng.uniform(2, 150, n), 0, 320),
                             np.clip(y0 + rng.uniform(2, 150, n), 0, 320)])
    out = instance_masks(protos, rng.normal(0, 1, (n, 8)).astype(np.float32), boxes, (320, 320), SQUARE, simplify)
    g = out.outlines
    assert len(g) == out.keep.sum() >= 40
    assert shapely.is_valid(g).all()
    assert np.isin(shapely.get_type_id(g), [shapely.GeometryType.POLYGON, shapely.GeometryType.MULTIPOLYGON]).all()
    nonempty = ~shapely.is_empty(g)
    assert nonempty.mean() > 0.95
    # each outline agrees with its bitmap: the traced area is the mask's pixel count within a ring of pixels
    for geom, crop in zip(g[nonempty], np.array(out.crops, dtype=object)[nonempty]):
        assert abs(geom.area - crop.sum()) <= 0.5 * geom.length + 2


def test_clean_outlines_repairs_a_bow_tie_into_polygons_only():
    bow = shapely.Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])
    out = clean_outlines(np.array([bow, shapely.box(0, 0, 2, 2)], dtype=object))
    assert shapely.is_valid(out).all()
    assert out[0].geom_type == "MultiPolygon" and out[0].area == pytest.approx(50)


def test_mask_logits_match_torch_interpolate_off_grid():
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(3)
    protos = rng.normal(0, 1, (4, 80, 80)).astype(np.float32)
    coef = rng.normal(0, 1, 4).astype(np.float32)
    full = F.interpolate(torch.from_numpy(coef @ protos.reshape(4, -1)).view(1, 1, 80, 80), (320, 320),
                         mode="bilinear")[0, 0].numpy()
    xs, ys = np.arange(-2, 40, dtype=np.float64), np.arange(300, 322, dtype=np.float64)
    ours = mask_logits(protos, coef, xs, ys, SQUARE)
    inside = np.ix_((ys >= 0) & (ys < 320), (xs >= 0) & (xs < 320))
    np.testing.assert_allclose(ours[inside], full[300:320, 0:40], atol=1e-4)


def test_training_dilation_follows_the_mask_ratio_the_model_was_trained_with():
    from tiler.model.masks import training_dilation

    # measured best on the validation scenes for the project's models (models/README.md)
    assert training_dilation(1) == 0.75  # fillPoly on truncated vertices only
    assert training_dilation(2) == training_dilation(4) == 1.0  # plus cv2.resize rounding half-covered pixels up
    assert training_dilation(None) == 1.0  # Ultralytics' default mask_ratio is 4
