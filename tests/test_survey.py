"""Surveys: many frames in one job, deduplicated across overlapping frames, accounted per frame, durable and
resumable. Real rasters (frames cut from a generated scene, so the truth is known), the project's own model,
real Ray, real SIGKILLs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely

from tests.helpers import corrupt_block
from tiler import TileJob, process
from tiler.config import JobConfig
from tiler.errors import ConfigError
from tiler.evaluate import load_prediction_pixels, load_truth_pixels, match, truth_geometries
from tiler.io.survey import expand_inputs
from tiler.synth import SceneSpec, write_scene
from tiler.synth.frames import write_frames

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "tiler-obb.pt"
TILER = str(Path(sys.executable).parent / "tiler")
PARAMS = dict(patch_size=320, overlap=0.25, progress=False)
CLI_PARAMS = ["--model", str(MODEL), "--patch-size", "320", "--no-progress"]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", YOLO_OFFLINE="1")
    return env


def _tiler(*args, check_rc: int | None = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([TILER, "predict", *map(str, args)], env=_env(), capture_output=True, text=True,
                          timeout=600)
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stderr[-3000:]
    return proc


def _features(path: Path) -> list[str]:
    """Canonical features of a GeoJSON, in file order (surveys write frames in input order)."""
    return [json.dumps(f, sort_keys=True) for f in json.loads(Path(path).read_text())["features"]]


def _score(pred: Path, scene: Path, truth: Path):
    """(Score against the scene's truth, number of truth objects matched by two or more outputs)."""
    with rasterio.open(scene) as ds:
        transform, crs = ds.transform, ds.crs
    t_cls, t_poly, _ = load_truth_pixels(truth)
    t_geo = truth_geometries(t_poly, "obb")
    p_cls, p_score, p_geo = load_prediction_pixels(pred, transform, crs)
    scores, twice = [], 0
    for c in np.unique(t_cls):
        p, t = p_cls == c, t_cls == c
        scores.append(match(p_geo[p], p_score[p], t_geo[t], 0.5))
        tree = shapely.STRtree(p_geo[p])
        a, b = tree.query(t_geo[t], predicate="intersects")
        inter = shapely.area(shapely.intersection(t_geo[t][a], p_geo[p][b]))
        union = shapely.area(shapely.union(t_geo[t][a], p_geo[p][b]))
        hits = np.bincount(a[inter / union >= 0.5], minlength=int(t.sum()))
        twice += int((hits >= 2).sum())
    tp, fp, fn = (sum(getattr(x, k) for x in scores) for k in ("tp", "fp", "fn"))
    return tp / max(tp + fp, 1), tp / max(tp + fn, 1), twice


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    """A 2048 x 2048 scene and nine 1024 x 1024 frames cut from it with 30 % overlap (EPSG:32633)."""
    root = tmp_path_factory.mktemp("survey")
    scene, truth = write_scene(SceneSpec(2048, 2048, seed=5), root / "scene.tif")
    frames = write_frames(scene, root / "frames", 1024, 0.3)
    whole = root / "whole.geojson"
    TileJob(scene, MODEL, out=whole, runner="local", **PARAMS).run()
    out = root / "survey.geojson"
    result = TileJob([str(root / "frames" / "*.tif")], MODEL, out=out, runner="local",
                     report=root / "report.json", **PARAMS).run()
    return dict(root=root, scene=scene, truth=truth, frames=frames, whole=whole, out=out, result=result)


def test_inputs_expand_from_globs_folders_and_lists(survey, tmp_path):
    frames = [str(p) for p in survey["frames"]]
    folder = str(survey["root"] / "frames")
    assert expand_inputs(folder) == frames
    assert expand_inputs([str(survey["root"] / "frames" / "frame_00[0-2].tif")]) == frames[:3]
    listing = tmp_path / "list.txt"
    rel = os.path.relpath(frames[1], tmp_path)
    listing.write_text(f"# two frames, one relative to this list\n{frames[0]}\n\n{rel}\n{frames[0]}\n")
    assert [os.path.normpath(p) for p in expand_inputs(f"@{listing}")] == frames[:2]  # each frame once
    assert expand_inputs(["/vsis3/bucket/a.tif", frames[0]]) == ["/vsis3/bucket/a.tif", frames[0]]
    with pytest.raises(ConfigError, match="no raster matches"):
        expand_inputs(str(tmp_path / "nothing*.tif"))
    with pytest.raises(ConfigError, match="input list not found"):
        expand_inputs("@" + str(tmp_path / "missing.txt"))
    with pytest.raises(ConfigError, match="holds no rasters"):
        expand_inputs(str(tmp_path))


def test_config_takes_a_list_of_sources():
    cfg = JobConfig(source=["a.tif", "b.tif"], model="m.pt")
    assert cfg.source == ("a.tif", "b.tif") and cfg.sources == ("a.tif", "b.tif")
    assert JobConfig(source=["a.tif"], model="m.pt").source == "a.tif"  # a list of one is that raster
    with pytest.raises(ConfigError, match="not both"):
        JobConfig(source="a.tif", model="m.pt", out="x.geojson", out_dir="d")
    with pytest.raises(ConfigError, match="out_format"):
        JobConfig(source="a.tif", model="m.pt", out_format="shp")
    # where and how a run writes is not part of what a resumed run must share with it
    a = JobConfig(source="a.tif", model="m.pt", runner="local", out="x.gpkg", crs="EPSG:3857")
    assert a.fingerprint() == JobConfig(source="a.tif", model="m.pt", runner="ray", workers=3).fingerprint()
    assert a.fingerprint() != JobConfig(source="a.tif", model="m.pt", conf=0.3).fingerprint()


def test_dedup_asked_for_pixel_space_frames_is_refused_before_the_job(tmp_path):
    pngs = []
    for k in range(2):
        pngs.append(tmp_path / f"f{k}.png")
        with rasterio.open(pngs[-1], "w", driver="PNG", width=64, height=64, count=3, dtype="uint8") as ds:
            ds.write(np.full((3, 64, 64), 100, np.uint8))
    proc = _tiler(*pngs, "--out", tmp_path / "x.geojson", *CLI_PARAMS, "--dedup-frames", check_rc=2)
    assert proc.stderr.count("\n") == 1 and "dedup_frames needs georeferenced frames" in proc.stderr
    assert not list(tmp_path.glob("x.geojson*"))  # no output, no work dir


def test_yaml_spec_and_command_line_take_several_inputs(tmp_path):
    from tiler.cli import build_parser, predict_config

    spec = tmp_path / "job.yaml"
    spec.write_text("source:\n  - a.tif\n  - 'frames/*.tif'\nmodel: m.pt\nout: s.gpkg\n")
    assert predict_config(build_parser().parse_args(["predict", "--config", str(spec)])).source == (
        "a.tif", "frames/*.tif")
    args = build_parser().parse_args(["predict", "x.tif", "y.tif", "--model", "m.pt", "--out-dir", "d"])
    assert predict_config(args).source == ("x.tif", "y.tif")


def test_survey_scores_as_the_whole_scene_and_reports_no_object_twice(survey):
    result = survey["result"]
    assert result.stats.frames == 9 and not result.failed
    p, r, twice = _score(survey["out"], survey["scene"], survey["truth"])
    wp, wr, wtwice = _score(survey["whole"], survey["scene"], survey["truth"])
    assert r >= wr - 0.01, (r, wr)
    assert p >= wp - 0.02, (p, wp)
    assert twice <= wtwice, (twice, wtwice)
    # the frames overlap by 30 %, so many objects were seen twice; deduplication dropped those copies
    report = json.loads((survey["root"] / "report.json").read_text())
    merged = sum(f["merged_detections"] for f in report["frames"])  # each frame merged across its own seams
    assert report["stats"]["kept_detections"] == len(result) == len(_features(survey["out"]))
    assert merged > 1.5 * len(result), (merged, len(result))
    assert sum(f["raw_detections"] for f in report["frames"]) == report["stats"]["raw_detections"]
    assert len(report["frames"]) == 9 and all(f["status"] == "ok" for f in report["frames"])
    assert all(f["windows_run"] == f["windows_planned"] == 16 for f in report["frames"]), report["frames"]
    # every feature names its frame
    sources = {json.loads(f)["properties"]["source"] for f in _features(survey["out"])}
    assert sources == {str(p.resolve()) for p in survey["frames"]}


def test_without_dedup_the_overlap_reports_objects_twice(survey, tmp_path):
    out = tmp_path / "nodedup.geojson"
    TileJob([str(p) for p in survey["frames"]], MODEL, out=out, runner="local", dedup_frames=False, **PARAMS).run()
    p, _, twice = _score(out, survey["scene"], survey["truth"])
    assert twice > 50 and p < 0.7, (twice, p)  # what the dedup test above would catch


def test_ray_and_local_surveys_write_identical_outputs(survey, tmp_path):
    out = tmp_path / "ray.geojson"
    result = TileJob([str(p) for p in survey["frames"]], MODEL, out=out, runner="ray", **PARAMS).run()
    assert result.stats.runner == "ray"
    assert _features(out) == _features(survey["out"])


def test_several_reader_threads_write_the_same_survey(survey, tmp_path):
    """Reader threads (the default on a GPU), each through its own handle of the frame it reads, several frames in
    flight at once, or reading each batch only when the model needs it (the default for a CPU model that uses
    every core): the output is the same, and a corrupt frame still fails alone."""
    stats = survey["result"].stats  # the defaults here: the model runs on every core, so no batch is read ahead
    assert (stats.read_threads, stats.read_ahead) == (os.cpu_count(), 0)
    outputs = {}
    for threads in (1, 4):
        out = outputs[threads] = tmp_path / f"threads{threads}.geojson"
        result = TileJob([str(p) for p in survey["frames"]], MODEL, out=out, runner="local", read_threads=threads,
                         **PARAMS).run()
        assert result.stats.read_threads == threads
    assert _features(outputs[4]) == _features(outputs[1]) == _features(survey["out"])
    frames = tmp_path / "frames"
    shutil.copytree(survey["root"] / "frames", frames)
    corrupt_block(frames / "frame_004.tif", 2, 2)
    for threads in (None, 4):
        result = TileJob(sorted(str(p) for p in frames.glob("*.tif")), MODEL,
                         out=tmp_path / f"partial{threads}.geojson", runner="local", read_threads=threads,
                         **PARAMS).run()
        assert [Path(s).name for s, _ in result.failed] == ["frame_004.tif"] and "window" in result.failed[0][1]
        assert result.stats.windows_run == 8 * 16


def test_readers_fill_a_few_batch_buffers_and_reuse_them(survey, tmp_path, monkeypatch):
    """Readers write each batch into a buffer the model takes as it is (pinned memory on a GPU): a job allocates
    only as many as batches are in flight (the one predicted and two being read), however many it runs. (That
    reused buffers give the same output is the test above: its frames are batches too.)"""
    from tiler.model.predictor import Predictor

    made = []
    real = Predictor.batch_buffer

    def counted(self, n, height, width):
        made.append((n, height, width))
        return real(self, n, height, width)

    monkeypatch.setattr(Predictor, "batch_buffer", counted)
    out = tmp_path / "buffers.geojson"
    result = TileJob([str(p) for p in survey["frames"]], MODEL, out=out, runner="local", read_threads=3,
                     batch_size=4, **PARAMS).run()
    assert result.stats.windows_run == 9 * 16  # nine frames of 16 windows: 36 batches of 4
    assert 1 <= len(made) <= 3 and all(m == (4, 320, 320) for m in made), made


class _Stop(Exception):
    pass


def test_a_job_stopped_by_an_error_leaves_no_reader_thread(survey, tmp_path):
    """An error mid-job (here from the progress callback) ends the readers with the job, not whenever the
    garbage collector reaches the abandoned batch generator (until then its threads and GDAL handles lived on,
    and a collection during interpreter shutdown could close a dataset after GDAL was gone)."""
    import gc
    import threading

    def stop(done, total):
        if done >= total // 2:
            raise _Stop

    gc.disable()  # nothing but the job's own clean-up may end the readers
    try:
        with pytest.raises(_Stop) as caught:
            TileJob([str(p) for p in survey["frames"]], MODEL, out=tmp_path / "stopped.geojson", runner="local",
                     read_threads=4, **PARAMS).run(on_progress=stop)
        readers = [t.name for t in threading.enumerate() if t.name.startswith("tiler-read")]
        assert caught.value is not None and readers == []
    finally:
        gc.enable()
    assert not (tmp_path / "stopped.geojson").exists()


def test_long_lived_objects_are_frozen_only_while_the_job_runs(survey, tmp_path):
    """The garbage collector's full passes skip what existed before the job (and its model) while it runs, and
    nothing stays frozen after it; a process that froze objects itself keeps them frozen, and no more."""
    import gc

    frames = [str(p) for p in survey["frames"][:1]]
    during = []
    TileJob(frames, MODEL, out=tmp_path / "a.geojson", runner="local", **PARAMS).run(
        on_progress=lambda done, total: during.append(gc.get_freeze_count()))
    assert during and min(during) > 100_000  # torch alone brings 10^5 objects
    assert gc.get_freeze_count() == 0
    gc.freeze()
    try:
        own = gc.get_freeze_count()
        TileJob(frames, MODEL, out=tmp_path / "b.geojson", runner="local", **PARAMS).run(
            on_progress=lambda done, total: during.append(gc.get_freeze_count()))
        # (frozen objects freed by their reference counts leave the count: it can only have gone down a little)
        assert own - 1000 < gc.get_freeze_count() <= own and during[-1] <= own
    finally:
        gc.unfreeze()
    assert (tmp_path / "a.geojson").read_bytes() == (tmp_path / "b.geojson").read_bytes()


FREED_MEMORY_KEPT = """
import os
import torch


def resident_mb() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def freed_memory_kept() -> tuple[float, float]:
    # (MB made resident by writing 300 MB in blocks under 32 MB, as torch allocates a forward pass's activations;
    # MB of it still resident once they are freed): more than the heap's free holes, so the heap must grow
    before = resident_mb()
    blocks = [torch.ones(30 << 20, dtype=torch.uint8) for _ in range(10)]
    grown = resident_mb() - before
    del blocks
    return grown, resident_mb() - before
"""


@pytest.mark.skipif(process._glibc() is None, reason="the allocator's thresholds are set on glibc only")
def test_freed_memory_stays_in_the_process_only_while_the_job_runs(survey, tmp_path):
    """While a job runs, memory it frees stays in the process for its next batch (not handed back to the kernel
    to be faulted in again); before and after a job, freed memory is handed back (checked in a fresh process)."""
    scope: dict = {}
    exec(FREED_MEMORY_KEPT, scope)
    during = []
    TileJob([str(survey["frames"][0])], MODEL, out=tmp_path / "a.geojson", runner="local", **PARAMS).run(
        on_progress=lambda done, total: during.append(scope["freed_memory_kept"]()))
    assert during and all(grown > 150 and kept > grown - 20 for grown, kept in during)
    script = FREED_MEMORY_KEPT + """
from tiler import process
plain = freed_memory_kept()
before = resident_mb()
with process.heap_kept():
    kept = freed_memory_kept()
print(*plain, *kept, resident_mb() - before)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    plain_grown, plain_kept, grown, kept, after = map(float, out.split())
    assert plain_grown > 250 and plain_kept < 20  # a plain process: handed back at once
    assert grown > 250 and kept > grown - 20  # in a job: kept
    assert after < 20  # after it: handed back


def _killed_after_two_frames(args: list, out: Path, work: Path) -> int:
    """Run `tiler predict *args`, SIGKILL it once two frames are checkpointed in `work`; the frames it checkpointed."""
    driver = subprocess.Popen([TILER, "predict", *map(str, args)], env=_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and driver.poll() is None and len(list(work.glob("frames/*.npz"))) < 2:
            time.sleep(0.02)
        assert driver.poll() is None, "the survey ended before it could be killed"
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert not out.exists()  # nothing where the finished output will be
    return len(list(work.glob("frames/*.npz")))


@pytest.mark.parametrize("runner", ["local", "ray"])
def test_sigkilled_survey_resumes_to_identical_output_computing_fewer_windows(survey, tmp_path, runner):
    out = tmp_path / "killed.geojson"
    work = tmp_path / "killed.geojson.tiler-work"
    reference = survey["out"]
    args = [str(survey["root"] / "frames"), "--out", out, *CLI_PARAMS, "--runner", runner]
    if runner == "ray":
        # Ray hands results over a block (several batches) at a time: smaller batches, so the kill falls mid-survey,
        # and the reference is an uninterrupted in-process run with those batches and the actor's one thread
        # (torch's sums depend on the thread count: a resume must keep it, and it is in the fingerprint)
        args += ["--batch-size", "4"]
        reference = tmp_path / "clean.geojson"
        _tiler(str(survey["root"] / "frames"), "--out", reference, *CLI_PARAMS, "--batch-size", "4", "--threads", "1")
    done_frames = _killed_after_two_frames(args, out, work)
    assert 2 <= done_frames < 9
    proc = _tiler(*args, "--resume", "--report", tmp_path / "report.json")
    report = json.loads((tmp_path / "report.json").read_text())["stats"]
    assert _features(out) == _features(reference)
    # only what was never checkpointed was computed again
    assert report["windows_resumed"] >= 16 * done_frames
    assert report["windows_run"] + report["windows_resumed"] == 144
    assert report["windows_run"] <= 144 - 16 * done_frames
    assert "resumed from checkpoints" in proc.stdout
    assert not work.exists()  # removed after success


def test_sigkilled_int8_survey_resumes_to_identical_output(survey, tmp_path, monkeypatch):
    """An int8 job calibrates on the same windows of the same frames every time, so the killed run and its
    resume find the model an uninterrupted run quantised, and the output is that run's."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("TILER_CACHE_DIR", str(cache))
    frames = str(survey["root"] / "frames")
    reference = tmp_path / "clean.geojson"
    _tiler(frames, "--out", reference, *CLI_PARAMS, "--backend", "openvino-int8")
    model, = (p for p in cache.glob("exports/*-openvino-int8-*") if p.is_dir())
    stamp = (model / "tiler-export.json").stat().st_mtime_ns
    out, work = tmp_path / "killed.geojson", tmp_path / "killed.geojson.tiler-work"
    args = [frames, "--out", out, *CLI_PARAMS, "--backend", "openvino-int8"]
    assert 2 <= _killed_after_two_frames(args, out, work) < 9
    _tiler(*args, "--resume")
    assert _features(out) == _features(reference)
    assert [p for p in cache.glob("exports/*-openvino-int8-*") if p.is_dir()] == [model]
    assert (model / "tiler-export.json").stat().st_mtime_ns == stamp  # never quantised again


def test_resume_with_other_parameters_is_refused(survey, tmp_path):
    out = tmp_path / "r.geojson"
    frames = [str(p) for p in survey["frames"][:2]]
    work = tmp_path / "work"
    _tiler(*frames, "--out", out, *CLI_PARAMS, "--work-dir", work, "--keep-work")
    out.unlink()
    proc = _tiler(*frames, "--out", out, *CLI_PARAMS, "--work-dir", work, "--resume", "--conf", "0.4", check_rc=2)
    assert proc.stderr.strip().splitlines()[-1].startswith("tiler: error: cannot resume")
    assert "conf changed (0.25 before, 0.4 now)" in proc.stderr
    more = (os.cpu_count() or 1) + 1  # torch threads: the default is one per core
    proc = _tiler(*frames, "--out", out, *CLI_PARAMS, "--work-dir", work, "--resume", "--threads", more, check_rc=2)
    assert f"threads per model changed ({more - 1} before, {more} now)" in proc.stderr
    proc = _tiler(frames[0], "--out", out, *CLI_PARAMS, "--work-dir", work, "--resume", check_rc=2)
    assert "the inputs changed" in proc.stderr
    proc = _tiler(*frames, "--out", out, *CLI_PARAMS, "--work-dir", work, check_rc=2)  # no --resume
    assert "add --resume" in proc.stderr
    assert not out.exists()
    # and the same parameters resume: nothing left to compute
    _tiler(*frames, "--out", out, *CLI_PARAMS, "--work-dir", work, "--resume")
    assert out.exists() and not work.exists()


def test_a_corrupt_frame_is_reported_and_the_others_written(survey, tmp_path):
    frames = tmp_path / "frames"
    shutil.copytree(survey["root"] / "frames", frames)
    corrupt_block(frames / "frame_004.tif", 2, 2)  # a corrupt block in the middle of a georeferenced frame
    listing = tmp_path / "frames.txt"
    listing.write_text("\n".join([*(str(p) for p in sorted(frames.glob("*.tif"))), str(tmp_path / "gone.tif")]))
    out = tmp_path / "partial.gpkg"
    proc = _tiler(f"@{listing}", "--out", out, *CLI_PARAMS, "--report", tmp_path / "report.json", check_rc=3)
    failed_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("tiler: frame failed:")]
    assert len(failed_lines) == 2, proc.stderr
    assert "frame_004.tif" in failed_lines[0] and "window" in failed_lines[0]
    assert "gone.tif" in failed_lines[1] and "not found" in failed_lines[1]
    report = json.loads((tmp_path / "report.json").read_text())
    status = {Path(f["source"]).name: f["status"] for f in report["frames"]}
    assert status.pop("frame_004.tif") == "failed" and status.pop("gone.tif") == "failed"
    assert set(status.values()) == {"ok"} and len(status) == 8
    import pyogrio

    table = pyogrio.read_dataframe(out)
    assert {Path(s).name for s in table["source"]} == {f"frame_{k:03d}.tif" for k in range(9) if k != 4}
    assert len(table) == report["stats"]["kept_detections"] > 0
    # --fail-fast: the first failure ends the job, exit 2, nothing written
    out2 = tmp_path / "ff.gpkg"
    proc = _tiler(f"@{listing}", "--out", out2, *CLI_PARAMS, "--fail-fast", check_rc=2)
    assert proc.stderr.strip().splitlines()[-1].startswith("tiler: error:") and not out2.exists()


def test_frames_in_different_crs_are_deduplicated_on_the_ground(survey, tmp_path):
    # frame 4 (the centre) warped into the neighbouring UTM zone: other CRS, other pixel grid and size
    frames = write_frames(survey["scene"], tmp_path / "frames", 1024, 0.3, reproject={4: "EPSG:32634"})
    with rasterio.open(frames[4]) as ds:
        assert ds.crs.to_epsg() == 32634
    out = tmp_path / "mixed.geojson"
    result = TileJob([str(p) for p in frames], MODEL, out=out, runner="local", **PARAMS).run()
    assert not result.failed
    p, r, twice = _score(out, survey["scene"], survey["truth"])
    wp, wr, wtwice = _score(survey["whole"], survey["scene"], survey["truth"])
    assert r >= wr - 0.02 and p >= wp - 0.05, (p, r, wp, wr)
    assert twice <= wtwice + 2, (twice, wtwice)


def test_out_dir_writes_one_file_per_frame(survey, tmp_path):
    out_dir = tmp_path / "per_frame"
    frames = [str(p) for p in survey["frames"][:3]]
    _tiler(*frames, "--out-dir", out_dir, "--out-format", "fgb", *CLI_PARAMS)
    import pyogrio

    files = sorted(p.name for p in out_dir.iterdir())
    assert files == ["frame_000.fgb", "frame_001.fgb", "frame_002.fgb"]
    for name in files:
        df = pyogrio.read_dataframe(out_dir / name)
        assert len(df) and set(df["source"].map(lambda s: Path(s).name)) == {name.replace(".fgb", ".tif")}
        assert df.crs.to_epsg() == 32633


@pytest.mark.parametrize("suffix", [".gpkg", ".fgb", ".parquet"])
def test_survey_dataset_in_gis_formats_matches_geojson(survey, tmp_path, suffix):
    import geopandas as gpd

    out = tmp_path / f"survey{suffix}"
    TileJob([str(p) for p in survey["frames"]], MODEL, out=out, runner="local", **PARAMS).run()
    df = gpd.read_parquet(out) if suffix == ".parquet" else gpd.read_file(out)
    ref = json.loads(survey["out"].read_text())["features"]
    assert len(df) == len(ref) and df.crs.to_epsg() == 32633  # auto: the frames' own CRS
    assert df.geometry.is_valid.all()
    assert sorted(df["class_name"]) == sorted(f["properties"]["class_name"] for f in ref)
    assert len(df["source"].unique()) == 9
