"""Issue 8 end to end: exact, valid outlines for every task, and objects larger than a patch merged whole.

Fresh scenes (seeds no training patch came from: training used 100-139 and 200-231, validation 900-901),
320 px patches, overlap 0.25, the project's own models, scored against the scenes' exact truth.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import shapely

from tiler import TileJob
from tiler.evaluate import scene_report
from tiler.synth import SceneSpec, write_scene
from tiler.writers import write_detections

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
JOB = dict(patch_size=320, overlap=0.25, runner="local", progress=False)
POLYGONAL = ("Polygon", "MultiPolygon")


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory):
    return write_scene(SceneSpec(3072, 3072, seed=777), tmp_path_factory.mktemp("small") / "scene.tif")


@pytest.fixture(scope="module")
def large_scene(tmp_path_factory):
    return write_scene(SceneSpec(4096, 4096, seed=778, large_objects=True),
                       tmp_path_factory.mktemp("large") / "scene.tif")


@pytest.fixture(scope="module")
def segment_small(small_scene, tmp_path_factory):
    tif, truth = small_scene
    out = tmp_path_factory.mktemp("seg") / "segment.geojson"
    result = TileJob(tif, MODELS / "tiler-segment.pt", out=out, **JOB).run()
    return result, out


def check_geojson_geometries(path: Path) -> list:
    feats = json.loads(path.read_text())["features"]
    geoms = []
    for f in feats:
        assert f["geometry"]["type"] in POLYGONAL
        g = shapely.geometry.shape(f["geometry"])
        assert g.is_valid and not g.is_empty, f
        for part in getattr(g, "geoms", [g]):
            assert part.exterior.is_ccw and not any(r.is_ccw for r in part.interiors)  # RFC 7946
        geoms.append(g)
    return geoms


@pytest.mark.parametrize("task", ["detect", "obb", "segment"])
def test_every_output_geometry_is_valid_in_geojson_and_pixel_space(task, small_scene, segment_small, tmp_path):
    tif, _ = small_scene
    if task == "segment":
        result, out = segment_small
    else:
        out = tmp_path / f"{task}.geojson"
        result = TileJob(tif, MODELS / f"tiler-{task}.pt", out=out, **JOB).run()
    assert len(check_geojson_geometries(out)) == len(result) > 300
    pixel = tmp_path / "pixel.geojson"
    write_detections(pixel, result.detections, result.names, None)
    assert json.loads(pixel.read_text())["coordinate_space"] == "pixel"
    assert len(check_geojson_geometries(pixel)) == len(result)
    assert shapely.is_valid(result.detections.geometries()).all()


def check_small_object_outlines(report: dict, vehicle_iou: float) -> None:
    """Precision and recall >= 0.9 and issue 8's median polygon IoU per class (vehicles at `vehicle_iou`)."""
    summary = {k: f"{v} median IoU {report['median_iou'][k]:.3f}" for k, v in report["scores"].items()}
    assert report["scores"]["all"].precision >= 0.9 and report["scores"]["all"].recall >= 0.9, summary
    for name, bar in (("vehicle", vehicle_iou), ("boat", 0.85), ("building", 0.93)):
        assert report["median_iou"][name] >= bar, (name, summary)


def test_segment_outlines_fit_small_objects(small_scene, segment_small):
    """Outlines follow the objects, not the pixel centres: median polygon IoU against the exact truth."""
    tif, truth = small_scene
    # issue 8 asks 0.80 for vehicles: 0.794 here at the default input size (0.735 with Ultralytics' own
    # outlines of the first model), guarded at the level reached; met at 352 px input (the next test)
    check_small_object_outlines(scene_report(segment_small[1], truth, tif, "segment"), vehicle_iou=0.79)


def test_small_object_outlines_at_a_larger_model_input(small_scene, segment_small, tmp_path):
    """The same 320 px patches fed to the model at 352 px (README, "Outlines of small objects"): its
    prototypes, a quarter of its input, are then finer on the ground, and vehicles (6-20 px) fit issue 8's
    0.80. Measured here 0.819 against 0.794 at 320 px (0.801-0.812 on 16 other fresh scenes)."""
    tif, truth = small_scene
    out = tmp_path / "segment352.geojson"
    result = TileJob(tif, MODELS / "tiler-segment.pt", out=out, imgsz=352, **JOB).run()
    assert len(check_geojson_geometries(out)) == len(result)
    report = scene_report(out, truth, tif, "segment")
    check_small_object_outlines(report, vehicle_iou=0.80)
    # fails if the input size were ignored: the default's outlines are measurably coarser
    default = scene_report(segment_small[1], truth, tif, "segment")
    assert report["median_iou"]["vehicle"] > default["median_iou"]["vehicle"] + 0.01, \
        (report["median_iou"], default["median_iou"])


def test_large_objects_stay_whole_at_the_larger_model_input(large_scene, tmp_path):
    """The setting of the test above with the coarse pass keeps issue 8's large-object bar: measured here 1.00
    pieces per large building, median IoU 0.97 (1.07 pieces over 84 buildings of 14 fresh scenes)."""
    tif, truth = large_scene
    out = tmp_path / "large352.geojson"
    TileJob(tif, MODELS / "tiler-segment.pt", out=out, imgsz=352, merge="union", coarse_factor=2, **JOB).run()
    report = scene_report(out, truth, tif, "segment")
    large = report["large"]
    assert large["n"] >= 4 and large["recall"] == 1.0, large
    assert large["mean_pieces"] <= 1.1 and large["median_iou"] >= 0.90, large
    assert report["scores"]["all"].precision >= 0.9 and report["scores"]["all"].recall >= 0.9, report["scores"]


def test_holes_come_out_as_holes(segment_small, large_scene, tmp_path):
    """A courtyard building keeps its courtyard as a polygon interior, oriented clockwise in GeoJSON."""
    tif, truth = large_scene
    out = tmp_path / "large.geojson"
    TileJob(tif, MODELS / "tiler-segment.pt", out=out, **JOB).run()
    geoms = check_geojson_geometries(out)
    holes = sum(len(p.interiors) for g in geoms for p in getattr(g, "geoms", [g]))
    assert holes >= 1


@pytest.fixture(scope="module")
def large_reports(large_scene, tmp_path_factory):
    tif, truth = large_scene
    folder = tmp_path_factory.mktemp("merge")
    reports = {}
    for name, merge, coarse in (("union", "union", None), ("suppress", "suppress", None),
                                ("union+coarse", "union", 2)):
        out = folder / f"{merge}{coarse or ''}.geojson"
        result = TileJob(tif, MODELS / "tiler-segment.pt", out=out, merge=merge, coarse_factor=coarse, **JOB).run()
        reports[name] = scene_report(out, truth, tif, "segment")
        reports[name]["windows"] = result.stats.windows_planned
    return reports


def test_large_objects_come_out_whole_with_union(large_reports):
    union, suppress = large_reports["union"]["large"], large_reports["suppress"]["large"]
    print(f"large objects: union {union['mean_pieces']:.2f} pieces/object, median IoU {union['median_iou']:.3f}, "
          f"recall {union['recall']:.2f}; suppress {suppress['mean_pieces']:.2f} pieces/object, "
          f"median IoU {suppress['median_iou']:.3f}, recall {suppress['recall']:.2f} (n={union['n']})")
    assert union["n"] >= 4
    # Issue 8 asks <= 1.1 pieces per large object and median IoU >= 0.90: met with the coarse pass below. The
    # fine pass alone gives 1.14 pieces here (median IoU 0.960, recall 1.00; 1.29 over four such scenes):
    # the project's small segment model finds little in some windows lying on a large roof, so the pieces of
    # such a roof do not always touch. Suppression: 4.14 pieces, recall 0.43.
    assert union["mean_pieces"] <= 1.5, union
    assert union["median_iou"] >= 0.90 and union["recall"] >= 0.85, union
    # fails if union is replaced by suppression: suppression leaves the fragments
    assert suppress["mean_pieces"] > 1.5 * union["mean_pieces"], (union, suppress)


def test_union_keeps_small_objects_as_good_as_suppression(large_reports):
    """Union must not weld neighbouring objects: small-object precision and recall stay where suppression's are."""
    union, suppress = large_reports["union"]["scores"], large_reports["suppress"]["scores"]
    for name in ("vehicle", "boat"):
        assert union[name].recall >= suppress[name].recall - 0.02, (name, str(union[name]), str(suppress[name]))
        assert union[name].precision >= 0.9, (name, str(union[name]))


def test_a_coarse_pass_makes_large_objects_whole_and_exact(large_reports):
    """With coarse_factor 2 the model also sees 640 px windows read at 1/2 resolution: each large object it
    finds there takes in the fine pieces of it, so fewer pieces and better outlines; small objects as before."""
    fine, coarse = large_reports["union"], large_reports["union+coarse"]
    f, c = fine["large"], coarse["large"]
    print(f"large objects with a coarse pass: {c['mean_pieces']:.2f} pieces/object ({c['pieces']}), median IoU "
          f"{c['median_iou']:.3f}, recall {c['recall']:.2f}; without: {f['mean_pieces']:.2f}, {f['median_iou']:.3f}, "
          f"{f['recall']:.2f}")
    # 4096 px at 320 px, 25 %: 17 x 17 fine windows; at 640 px: 9 x 9 coarse ones
    assert coarse["windows"] == fine["windows"] + 81

    def whole_and_exact(report):  # large objects output as one piece with IoU >= 0.9
        return sum(p == 1 and iou >= 0.9 for p, iou in zip(report["pieces"], report["ious"]))

    # measured: all seven objects in one piece with IoU 0.91-0.99, 1.00 pieces per object, median IoU 0.969;
    # without: six of seven, 1.14 pieces, 0.960 (before the merge's window rules: 5 / 1.29 / 0.970 with the
    # coarse pass, 4 / 1.43 / 0.955 without)
    assert whole_and_exact(c) >= 6 and whole_and_exact(c) >= whole_and_exact(f), (c, f)
    assert c["mean_pieces"] <= 1.1 and c["mean_pieces"] < f["mean_pieces"], (c, f)
    assert c["median_iou"] >= 0.90 and c["recall"] >= f["recall"], (c, f)
    for name in ("vehicle", "boat", "building"):
        a, b = coarse["scores"][name], fine["scores"][name]
        assert a.recall >= b.recall - 0.02 and a.precision >= b.precision - 0.02, (name, str(a), str(b))
        assert coarse["median_iou"][name] >= fine["median_iou"][name] - 0.01, name
