"""tiler.compat: patched_yolo_infer's API on tiler's engine, checked against the real patched-yolo-infer 1.3.10
(installed by the test set-up with --no-deps) and against generated scenes' ground truth."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import patched_yolo_infer as reference
import pytest
import rasterio
import shapely

from tiler.errors import ConfigError, ModelError
from tiler.synth import SceneSpec, read_truth, write_scene

MODELS = Path(__file__).resolve().parent.parent / "models"
DETECT, SEGMENT, OBB = (str(MODELS / f"tiler-{t}.pt") for t in ("detect", "segment", "obb"))


def _bgr(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return np.ascontiguousarray(src.read([3, 2, 1]).transpose(1, 2, 0))


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """2240 x 2240 = 320 + 8 strides of 240: the reference's grid fits exactly, so it does not resize."""
    path, truth = write_scene(SceneSpec(2240, 2240, seed=4321), tmp_path_factory.mktemp("compat") / "scene.tif")
    classes, polys = read_truth(truth)
    return _bgr(path), classes, polys


def _box_ious(boxes, classes_ids, truth_classes, truth_polys) -> np.ndarray:
    """(true objects, boxes) box IoU, zero where the classes differ."""
    tb = shapely.bounds(truth_polys)
    pb = np.asarray(boxes, dtype=float).reshape(-1, 4)
    lo = np.maximum(tb[:, None, :2], pb[None, :, :2])
    hi = np.minimum(tb[:, None, 2:], pb[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    iou = inter / (area(tb)[:, None] + area(pb)[None, :] - inter)
    return np.where(truth_classes[:, None] == np.asarray(classes_ids)[None, :], iou, 0.0)


def _box_recall(boxes, classes_ids, truth_classes, truth_polys, min_iou=0.5) -> float:
    """Share of true objects with a predicted box of their class at box IoU >= min_iou."""
    return float((_box_ious(boxes, classes_ids, truth_classes, truth_polys) >= min_iou).any(axis=1).mean())


def _twins(ours, ref) -> np.ndarray:
    """For each of the reference's objects: does tiler.compat have it too (a box within 1 px, the same class)?"""
    a, b = np.asarray(ours.filtered_boxes, float), np.asarray(ref.filtered_boxes, float)
    d = np.abs(a[:, None, :] - b[None, :, :]).max(axis=2)
    nearest = d.argmin(axis=0)
    same_class = np.asarray(ours.filtered_classes_id)[nearest] == np.asarray(ref.filtered_classes_id)
    return (d.min(axis=0) <= 1) & same_class


def _same_boxes(ours, ref) -> float:
    """Share of the reference's objects that tiler.compat has too."""
    return float(_twins(ours, ref).mean())


def _truth_fit(boxes, classes_ids, truth_classes, truth_polys) -> np.ndarray:
    """Each box's best box IoU with a true object of its class."""
    return _box_ious(boxes, classes_ids, truth_classes, truth_polys).max(axis=0)


# ----------------------------------------------------------------------------------- the seed's own example


def test_seed_example_detection_runs_with_only_the_import_changed(scene):
    img, truth_classes, truth_polys = scene
    from tiler.compat import CombineDetections, MakeCropsDetectThem, visualize_results

    # the guide's code (model and crop size are the project's: its models see 320 px patches)
    element_crops = MakeCropsDetectThem(image=img, model_path=DETECT, segment=False, shape_x=320, shape_y=320,
                                        overlap_x=50, overlap_y=50, conf=0.5, iou=0.7, imgsz=320,
                                        resize_initial_size=True)
    result = CombineDetections(element_crops, nms_threshold=0.25, match_metric="IOS")
    img_out, confidences, boxes = result.image, result.filtered_confidences, result.filtered_boxes
    polygons, classes_ids, classes_names = result.filtered_polygons, result.filtered_classes_id, \
        result.filtered_classes_names

    assert img_out is img and polygons == []
    assert _box_recall(boxes, classes_ids, truth_classes, truth_polys) >= 0.9
    assert 0.9 <= len(boxes) / len(truth_polys) <= 1.1
    assert all(type(v) is int for b in boxes for v in b) and all(len(b) == 4 for b in boxes)
    assert all(type(c) is np.float32 for c in confidences) and all(type(c) is int for c in classes_ids)
    assert set(classes_names) <= {"vehicle", "building", "boat"}
    drawn = visualize_results(img=img_out, confidences=confidences, boxes=boxes, polygons=polygons,
                              classes_ids=classes_ids, classes_names=classes_names, segment=False,
                              return_image_array=True)
    assert drawn.shape == img.shape and (drawn != img).any()


@pytest.mark.parametrize("memory_optimize", [True, False])
def test_seed_example_segmentation_both_memory_modes(scene, memory_optimize):
    img, truth_classes, truth_polys = scene
    from tiler.compat import CombineDetections, MakeCropsDetectThem

    element_crops = MakeCropsDetectThem(image=img, model_path=SEGMENT, segment=True, shape_x=320, shape_y=320,
                                        overlap_x=25, overlap_y=25, conf=0.5, iou=0.7, imgsz=320,
                                        memory_optimize=memory_optimize)
    result = CombineDetections(element_crops, nms_threshold=0.25, match_metric="IOS")
    n = len(result.filtered_boxes)
    assert _box_recall(result.filtered_boxes, result.filtered_classes_id, truth_classes, truth_polys) >= 0.9
    assert result.detected_masks_list_full == []  # never a full frame per raw detection
    geoms = np.array(result.filtered_geometries, dtype=object)
    assert shapely.is_valid(geoms).all() and len(geoms) == n
    if memory_optimize:
        assert result.filtered_masks == [] and len(result.filtered_polygons) == n
        assert all(p.dtype == np.uint16 and p.ndim == 2 and p.shape[1] == 2 for p in result.filtered_polygons)
        # each polygon lies in its box
        for p, b in zip(result.filtered_polygons, result.filtered_boxes):
            assert p[:, 0].min() >= b[0] - 1 and p[:, 0].max() <= b[2] + 1
    else:
        assert result.filtered_polygons == [] and len(result.filtered_masks) == n
        masks = np.stack(result.filtered_masks)
        assert masks.dtype == np.uint8 and masks.shape[1:] == img.shape[:2] and set(np.unique(masks)) <= {0, 1}
        # each mask is its object's: Ultralytics' bitmap (logit > 0), which covers the exact outline and is
        # wider by the training dilation the outline is corrected for (about a pixel all round)
        from tiler.compat import create_masks_from_polygons

        areas = masks.reshape(n, -1).sum(axis=1)
        ratio = areas / shapely.area(geoms)
        assert 1.0 <= np.median(ratio) <= 1.4 and (areas > 0).all()
        from tiler.compat.patched_yolo_infer import _outlines

        outlines = create_masks_from_polygons(_outlines(geoms[:60]), img)
        covered = [(m & o).sum() / max(o.sum(), 1) for m, o in zip(result.filtered_masks, outlines)]
        assert np.median(covered) >= 0.95
        for m, b in zip(result.filtered_masks[:50], result.filtered_boxes[:50]):
            ys, xs = np.nonzero(m)
            assert xs.min() >= b[0] - 1 and xs.max() <= b[2] + 1 and ys.min() >= b[1] - 1 and ys.max() <= b[3] + 1


# ----------------------------------------------------------------------------------- against the reference


@pytest.mark.parametrize("model,segment", [(DETECT, False), (SEGMENT, True)], ids=["detect", "segment"])
def test_same_boxes_as_patched_yolo_infer_where_it_does_not_resize(scene, model, segment):
    from ultralytics import YOLO

    import tiler.compat as compat

    img = scene[0]
    out = {}
    for name, lib in (("tiler", compat), ("reference", reference)):
        crops = lib.MakeCropsDetectThem(image=img, model=YOLO(model), segment=segment, shape_x=320, shape_y=320,
                                        overlap_x=25, overlap_y=25, imgsz=320, conf=0.25, iou=0.7)
        out[name] = lib.CombineDetections(crops, nms_threshold=0.25, match_metric="IOS")
    ours, ref = out["tiler"], out["reference"]
    assert len(ref.filtered_boxes) > 200
    assert abs(len(ours.filtered_boxes) - len(ref.filtered_boxes)) <= 0.02 * len(ref.filtered_boxes)
    # the same objects, but for tiler's one deliberate difference: a view cut by an inner crop edge ranks after
    # whole views. Measured with the committed models: 283 of 285 boxes the same, and tiler's 2 others fit the
    # truth better (mean best box IoU 0.91 detect, 0.81 segment, against the reference's 0.48); with models
    # trained at mask_ratio 1 (models/README.md): 275 and 274 of 283, tiler's 0.81 and 0.75 against 0.58, 0.48
    twins = _twins(ours, ref)
    assert twins.mean() >= 0.95
    mine = ~_twins(ref, ours)
    if (~twins).any() or mine.any():
        truth = scene[1], scene[2]
        fit_ref = _truth_fit(np.asarray(ref.filtered_boxes)[~twins], np.asarray(ref.filtered_classes_id)[~twins],
                             *truth)
        fit_ours = _truth_fit(np.asarray(ours.filtered_boxes)[mine], np.asarray(ours.filtered_classes_id)[mine],
                              *truth)
        assert len(fit_ours) and fit_ours.mean() >= (fit_ref.mean() if len(fit_ref) else 0), (fit_ours, fit_ref)


def test_non_square_crops_match_the_reference(scene):
    """400 x 256 crops at 25 %: strides 300 and 192 in both libraries; 1600 x 1216 fits the reference's grid."""
    from ultralytics import YOLO

    import tiler.compat as compat

    img = np.ascontiguousarray(scene[0][:1216, :1600])
    out = {}
    for name, lib in (("tiler", compat), ("reference", reference)):
        crops = lib.MakeCropsDetectThem(image=img, model=YOLO(DETECT), shape_x=400, shape_y=256, imgsz=416)
        assert crops.crops[0].crop.shape == (256, 400, 3) and len(crops.crops) == 5 * 6
        out[name] = lib.CombineDetections(crops)
    assert len(out["reference"].filtered_boxes) > 50
    assert _same_boxes(out["tiler"], out["reference"]) >= 0.97


def test_obb_model_works_where_the_reference_crashes_issues_14_15_24(scene):
    from tiler.compat import CombineDetections, MakeCropsDetectThem

    img = np.ascontiguousarray(scene[0][:1280, :1280])
    with pytest.raises(AttributeError):  # the reference: pred.boxes is None for OBB models
        reference.MakeCropsDetectThem(image=img, model_path=OBB, shape_x=320, shape_y=320, imgsz=320)
    result = CombineDetections(MakeCropsDetectThem(image=img, model_path=OBB, shape_x=320, shape_y=320, imgsz=320))
    truth_classes, truth_polys = scene[1], scene[2]
    inside = shapely.contains(shapely.box(0, 0, 1280, 1280), truth_polys)
    assert _box_recall(result.filtered_boxes, result.filtered_classes_id, truth_classes[inside],
                       truth_polys[inside]) >= 0.85
    assert len(result.filtered_polygons) == len(result.filtered_boxes) > 50
    for poly, box in zip(result.filtered_polygons, result.filtered_boxes):
        assert poly.shape == (4, 2)  # a rotated box's corners, its enclosing box in filtered_boxes
        assert abs(int(poly[:, 0].min()) - box[0]) <= 1 and abs(int(poly[:, 1].max()) - box[3]) <= 1


def test_image_smaller_than_a_crop_works_where_the_reference_fails_issue_27(scene):
    from tiler.compat import CombineDetections, MakeCropsDetectThem

    img, truth_classes, truth_polys = scene
    tiny = np.ascontiguousarray(img[:150, :150])
    with pytest.raises(IndexError):  # zero crops, then crops[0]
        reference.CombineDetections(reference.MakeCropsDetectThem(image=tiny, model_path=DETECT, shape_x=700,
                                                                  shape_y=600, imgsz=320))
    small = np.ascontiguousarray(img[:300, :500])
    crops = MakeCropsDetectThem(image=small, model_path=DETECT, shape_x=700, shape_y=600, imgsz=640)
    result = CombineDetections(crops)
    assert len(crops.crops) == 1 and crops.crops[0].crop.shape == (600, 700, 3)
    inside = shapely.contains(shapely.box(0, 0, 500, 300), truth_polys)
    assert inside.sum() > 5
    assert _box_recall(result.filtered_boxes, result.filtered_classes_id, truth_classes[inside],
                       truth_polys[inside]) >= 0.8
    b = np.asarray(result.filtered_boxes)
    assert (b[:, 2] <= 500).all() and (b[:, 3] <= 300).all()
    assert len(CombineDetections(MakeCropsDetectThem(image=tiny, model_path=DETECT, imgsz=320)).crops) == 1


def test_every_pixel_inferred_without_resizing_issue_33(scene):
    """1000 x 700 with 320 px crops: the reference would squash the image; tiler shifts its last crops back to
    the edges, and objects in the right and bottom strips are found."""
    from tiler.compat import CombineDetections, MakeCropsDetectThem

    img, truth_classes, truth_polys = scene
    part = np.ascontiguousarray(img[1000:1700, 1000:2000])
    crops = MakeCropsDetectThem(image=part, model_path=DETECT, shape_x=320, shape_y=320, imgsz=320)
    covered = np.zeros(part.shape[:2], dtype=bool)
    for c in crops.crops:
        assert c.crop.shape == (320, 320, 3) and np.shares_memory(c.crop, part)  # views, nothing resized
        covered[c.y_start:c.y_start + 320, c.x_start:c.x_start + 320] = True
    assert covered.all()
    result = CombineDetections(crops)
    moved = shapely.transform(truth_polys, lambda xy: xy - (1000, 1000))
    edge = shapely.contains(shapely.box(0, 0, 1000, 700), moved) & shapely.intersects(
        moved, shapely.box(900, 0, 1000, 700) | shapely.box(0, 600, 1000, 700))
    assert edge.sum() >= 3
    assert _box_recall(result.filtered_boxes, result.filtered_classes_id, truth_classes[edge], moved[edge]) >= 0.8


# ----------------------------------------------------------------------------------- arguments


def test_batches_are_bounded_and_progress_callback_always_works_issue_29(scene):
    from tiler.compat import CombineDetections, MakeCropsDetectThem

    img = np.ascontiguousarray(scene[0][:800, :800])
    events = []
    batched = MakeCropsDetectThem(image=img, model_path=DETECT, shape_x=320, shape_y=320, imgsz=320,
                                  batch_inference=True, batch_size=4, progress_callback=lambda *e: events.append(e))
    n = len(batched.crops)
    assert n == 9
    assert [e for e in events if e[0] == "Getting crops"] == [("Getting crops", k, n) for k in range(1, n + 1)]
    assert [e[1:] for e in events if e[0] == "Detecting objects"] == [(4, 9), (8, 9), (9, 9)]
    single = MakeCropsDetectThem(image=img, model_path=DETECT, shape_x=320, shape_y=320, imgsz=320, batch_size=1)
    a, b = CombineDetections(batched), CombineDetections(single)
    assert len(a.filtered_boxes) == len(b.filtered_boxes) > 10
    np.testing.assert_allclose(np.sort(np.asarray(a.filtered_boxes_float), axis=0),
                               np.sort(np.asarray(b.filtered_boxes_float), axis=0), atol=0.05)


def test_model_objects_missing_paths_and_wrong_models(scene, tmp_path):
    from ultralytics import YOLO

    from tiler.compat import CombineDetections, MakeCropsDetectThem

    img = np.ascontiguousarray(scene[0][:640, :640])
    by_object = CombineDetections(MakeCropsDetectThem(image=img, model=YOLO(DETECT), shape_x=320, shape_y=320,
                                                      imgsz=320))
    by_path = CombineDetections(MakeCropsDetectThem(image=img, model_path=DETECT, shape_x=320, shape_y=320,
                                                    imgsz=320))
    assert by_object.filtered_boxes == by_path.filtered_boxes and len(by_path.filtered_boxes) > 5
    with pytest.raises(ModelError, match="model file not found: yolo11m.pt"):
        MakeCropsDetectThem(image=img)  # the reference's default model: an error, never a download
    assert not Path("yolo11m.pt").exists()
    with pytest.raises(ConfigError, match="segment=True needs a segmentation model"):
        MakeCropsDetectThem(image=img, model_path=DETECT, segment=True)
    with pytest.raises(ConfigError, match="overlap_x must be a percentage"):
        MakeCropsDetectThem(image=img, model_path=DETECT, overlap_x=100)
    with pytest.raises(ConfigError, match="inference_extra_args may not set conf"):
        MakeCropsDetectThem(image=img, model_path=DETECT, inference_extra_args={"conf": 0.1})
    with pytest.raises(ConfigError, match="image must be a BGR numpy array"):
        MakeCropsDetectThem(image=img[..., 0], model_path=DETECT)
    with pytest.raises(ConfigError, match="match_metric"):
        CombineDetections(MakeCropsDetectThem(image=img, model_path=DETECT, imgsz=320), match_metric="DICE")


def test_rtdetr_and_fastsam_checkpoints_load_with_their_own_class(scene, tmp_path):
    from ultralytics import RTDETR, FastSAM

    from tiler.compat import CombineDetections, MakeCropsDetectThem
    from tiler.model.predictor import load_model

    rtdetr = RTDETR("rtdetr-l.yaml")  # built from Ultralytics' bundled definition: random weights, no download
    rtdetr.save(tmp_path / "detector.pt")
    assert isinstance(load_model(tmp_path / "detector.pt"), RTDETR)  # the reference would load it as YOLO (#21)
    shutil.copy(SEGMENT, tmp_path / "FastSAM-tiny.pt")
    fastsam = load_model(tmp_path / "FastSAM-tiny.pt")
    assert isinstance(fastsam, FastSAM) and fastsam.task == "segment"
    img = np.ascontiguousarray(scene[0][:640, :640])
    result = CombineDetections(MakeCropsDetectThem(image=img, model=fastsam, segment=True, shape_x=320,
                                                   shape_y=320, imgsz=320))
    plain = CombineDetections(MakeCropsDetectThem(image=img, model_path=SEGMENT, segment=True, shape_x=320,
                                                  shape_y=320, imgsz=320))
    assert len(result.filtered_polygons) == len(plain.filtered_polygons) > 5


# ----------------------------------------------------------------------------------- helpers and strings


def test_functions_extra_follow_the_reference_and_fix_its_faults(scene, tmp_path):
    from tiler.compat import (auto_calculate_crop_values, basic_crop_size_calculation, create_masks_from_polygons,
                              get_crops)

    for size in [(640, 480), (700, 500), (1280, 720), (1920, 1080), (1919, 1080), (3840, 2160), (8000, 6000)]:
        assert basic_crop_size_calculation(*size) == reference.basic_crop_size_calculation(*size)
    img = np.zeros((100, 120, 3), np.uint8)
    square = np.array([[10, 10], [30, 10], [30, 40], [10, 40]])
    empty_first = create_masks_from_polygons([np.zeros((0, 2)), square], img)
    assert empty_first[0].sum() == 0 and empty_first[1].dtype == np.uint8
    assert (empty_first[1] == reference.create_masks_from_polygons([square], img)[0]).all()
    crops = get_crops(scene[0][:700, :1000], 320, 320, overlap_x=15, overlap_y=15, save_crops=True,
                      save_folder=str(tmp_path / "crops"))
    assert len(crops) == 4 * 3 and len(list((tmp_path / "crops").glob("image_crop_*.png"))) == 12
    assert all(c.shape == (320, 320, 3) for c in crops)
    cx, cy, ox, oy = auto_calculate_crop_values(np.ascontiguousarray(scene[0][:1000, :1500]), model=DETECT)
    assert all(type(v) is int for v in (cx, cy, ox, oy)) and 0 < cx <= 1500 and 0 < cy <= 1000
    part = scene[0][:1000, :1500]
    assert auto_calculate_crop_values(part, mode="resolution_based") == (750, 500, 40, 40) == \
        reference.auto_calculate_crop_values(part, mode="resolution_based")
    with pytest.raises(ConfigError, match="never downloads"):
        auto_calculate_crop_values(scene[0][:100, :100])


def test_strings_and_patches_info(scene, capsys):
    from tiler.compat import CombineDetections, MakeCropsDetectThem

    blank = np.zeros((1080, 1920, 3), np.uint8)
    crops = MakeCropsDetectThem(image=blank, model_path=DETECT, imgsz=320)
    assert str(crops) == f"{len(crops.crops)} patches of size (600, 700, 3) were created from an image sized " \
                         "(1080, 1920, 3)"
    assert str(CombineDetections(crops)) == "Useful attributes: nothing detected in the frame"
    crops.patches_info()
    printed = capsys.readouterr().out
    assert "On patch № 0, nothing was detected" in printed
    found = MakeCropsDetectThem(image=np.ascontiguousarray(scene[0][:640, :640]), model_path=DETECT, shape_x=320,
                                shape_y=320, imgsz=320)
    text = str(CombineDetections(found))
    assert text.startswith("Useful attributes: filtered_confidences, filtered_boxes, filtered_classes_id")


def test_visualize_results_usual_yolo_inference_draws_the_whole_image_pass(scene):
    from tiler.compat import visualize_results_usual_yolo_inference
    from tiler.visualize import class_color

    img = np.ascontiguousarray(scene[0][:640, :640])
    for model, obb in ((DETECT, False), (OBB, True)):
        drawn = visualize_results_usual_yolo_inference(img, model, imgsz=640, show_class=False, thickness=1,
                                                       return_image_array=True)
        assert drawn.shape == img.shape and drawn.dtype == np.uint8 and not np.shares_memory(drawn, img)
        changed = (drawn != img).any(axis=2)
        assert changed.sum() > 500
        # every changed pixel carries one of the three class colours
        colours = {class_color(c) for c in range(3)}
        assert {tuple(int(v) for v in p) for p in drawn[changed]} <= colours
    with pytest.raises(ConfigError, match="never downloads"):
        visualize_results_usual_yolo_inference(img, None)


def test_deep_import_paths_of_the_reference_work():
    """User code imports the reference's modules too (its issue #27 traceback does); only the package changes."""
    import tiler.compat as compat
    from tiler.compat.elements.CropElement import CropElement
    from tiler.compat.functions_extra import get_crops
    from tiler.compat.nodes.CombineDetections import CombineDetections
    from tiler.compat.nodes.MakeCropsDetectThem import MakeCropsDetectThem

    assert (MakeCropsDetectThem, CombineDetections, CropElement, get_crops) == (
        compat.MakeCropsDetectThem, compat.CombineDetections, compat.CropElement, compat.get_crops)
    assert sorted(n for n in dir(reference) if not n.startswith("_") and n[0].isalpha()
                  and callable(getattr(reference, n)) and n != "visualize_results_yolo_pose_inference") == \
        sorted(compat.__all__)


def test_importing_compat_leaves_the_raster_stack_and_the_job_api_unloaded():
    """`import tiler.compat` is part of the wall time users compare with the reference: it must not pull in
    rasterio, pyproj or the job API (0.2 s here), which still load on first use for everyone else."""
    import subprocess
    import sys

    code = ("import sys, tiler.compat\n"
            "heavy = ('rasterio', 'pyproj', 'tiler.job', 'tiler.result', 'torch')\n"
            "print(sorted(m for m in heavy if m in sys.modules))\n"
            "from tiler import JobStats, TileJob\n"
            "import tiler\n"
            "print(TileJob.__module__, JobStats.__module__, 'TileJob' in dir(tiler), 'rasterio' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]", out
    assert out[1] == "tiler.job tiler.result True True", out
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        import tiler

        tiler.Nope
