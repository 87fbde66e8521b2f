"""Command line: `tiler predict …`, `tiler synth …` and `tiler quicklook …`."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from .config import JobConfig
from .errors import ConfigError, TilerError

EXIT_USAGE = 2
EXIT_PARTIAL = 3  # a survey finished, but some frames failed (named on stderr and in the report)


def _predict_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "predict", help="run a model over a raster, merge, write GeoJSON",
        description="Cut INPUT into overlapping patches, run an Ultralytics detect/obb/segment model on each, "
                    "merge duplicates across patch seams, and write one GeoJSON in EPSG:4326 (or pixel "
                    "coordinates for images without georeferencing). Options may also come from a YAML job "
                    "spec (--config); options given on the command line win.")
    # every default is None so that a YAML job spec can supply it; JobConfig holds the real defaults
    p.add_argument("input", nargs="*", help="raster path or GDAL URI (GeoTIFF, COG, VRT, PNG, JPEG, /vsis3/…); several, "
                   "a quoted glob ('frames/*.tif'), a folder or @list.txt (one per line) make a survey: one job, one "
                   "model load, one output")
    p.add_argument("--config", metavar="JOB.yaml", help="YAML job spec with the same names as these options "
                   "(source, model, out, patch_size, overlap, …)")
    p.add_argument("--model", help="local Ultralytics model, never downloaded: a .pt, or an export (OpenVINO folder, "
                   ".onnx, .engine, .torchscript)")
    p.add_argument("--out", help="output file, format by suffix: .geojson, .geojsonl (GeoJSON text sequence), "
                   ".gpkg (GeoPackage), .fgb (FlatGeobuf), .parquet (GeoParquet 1.1)")
    p.add_argument("--out-dir", metavar="DIR", help="instead of --out: one file per frame in DIR, named after the frame")
    p.add_argument("--out-format", metavar="SUFFIX",
                   help="format of the --out-dir files: geojson (default), geojsonl, gpkg, fgb, parquet")
    p.add_argument("--crs", metavar="auto|native|wgs84|EPSG:N",
                   help="output CRS: auto (default): EPSG:4326 for GeoJSON (its RFC), the raster's own CRS for "
                        "the other formats (exact, no reprojection); native; wgs84; or any EPSG code")
    p.add_argument("--no-provenance", action="store_true",
                   help="leave out the per-feature provenance (source, window, model, model_sha256, tiler_version)")
    p.add_argument("--report", metavar="REPORT.json",
                   help="write a run report: windows, detections per class, seconds per stage, runner, backend, "
                        "the full configuration, input and model checksums")
    p.add_argument("--patch-size", metavar="N|WxH",
                   help="patch size in raster pixels, square N or WxH (default 640); patches are never resized")
    p.add_argument("--overlap", metavar="F|FX,FY",
                   help="overlap between neighbouring patches as a fraction of the patch, 0 <= F < 1 (default 0.25)")
    p.add_argument("--conf", type=float, help="minimum confidence (default 0.25)")
    p.add_argument("--iou", type=float, help="IoU of the model's own per-patch NMS (default 0.7)")
    p.add_argument("--imgsz", type=int,
                   help="model input size (default: the larger patch side, so pixels are not rescaled)")
    p.add_argument("--classes", metavar="ID,ID", help="keep only these class ids, e.g. 1,4")
    p.add_argument("--max-det", type=int, help="maximum detections per patch (default 3000)")
    p.add_argument("--nms-threshold", type=float,
                   help="merge: suppress a detection overlapping a better one by more than this (default 0.5)")
    p.add_argument("--match-metric", metavar="ios|iou",
                   help="merge overlap measure: ios = intersection over the smaller area (default), iou")
    p.add_argument("--class-agnostic", action="store_true", default=None,
                   help="merge across classes (default: only detections of the same class suppress each other)")
    p.add_argument("--sorter", metavar="score|intelligent",
                   help="merge order: by score (default), or confidence bins then larger area first")
    p.add_argument("--merge", metavar="auto|suppress|union",
                   help="suppress: keep the best of overlapping detections; union: join the fragments of an object "
                        "larger than a patch that different windows saw into one; auto (default): union for "
                        "segment and detect models, suppress for obb")
    p.add_argument("--simplify", type=float, metavar="TOL",
                   help="segmentation outlines: simplification tolerance in pixels (default 0.25; 0 = none)")
    p.add_argument("--largest-part", action="store_true", default=None,
                   help="segmentation: keep only the largest polygon of a mask (default: a MultiPolygon of all parts)")
    p.add_argument("--bands", metavar="B,B,B", help="1-based bands to use as RGB (default: the bands the raster's "
                   "colour interpretation names red, green and blue, else 1,2,3; one band is replicated)")
    p.add_argument("--stretch", metavar="SPEC",
                   help="how values become 8 bits, once per raster: percentile:LOW,HIGH (per band, from a decimated "
                        "read), minmax, range:LOW,HIGH or range:L1,H1,L2,H2,L3,H3, none (values are 0-255 already; "
                        "the rest clipped). Default: uint8 as it is, other types percentile:2,98")
    p.add_argument("--gsd", type=float, metavar="METRES",
                   help="the ground sample distance the model was trained at: each frame's patch becomes the "
                        "square that covers imgsz x METRES on the ground, resized to imgsz for the model")
    p.add_argument("--coarse-factor", type=int, metavar="F",
                   help="also run the model on windows F times the patch, read at 1/F resolution (2-16, e.g. 2), "
                        "so objects larger than a patch are seen whole: each large object the coarse pass finds "
                        "takes in the fine pass's pieces of it (see README, objects larger than a patch)")
    p.add_argument("--height", type=float, metavar="METRES",
                   help="RPC rasters: height above the ellipsoid to project at (default 0)")
    p.add_argument("--dem", metavar="RASTER", help="RPC rasters: a DEM whose heights to project at")
    p.add_argument("--stac-asset", metavar="NAME", help="the asset of STAC items to read (default visual)")
    p.add_argument("--batch-size", type=int, help="patches per forward pass (default: about 1.6 Mpx of model input, "
                   "16 at 320 px, 4 at 640 px; a GPU usually wants more)")
    p.add_argument("--backend", metavar="auto|torch|openvino|openvino-int8|onnx|tensorrt|torchscript",
                   help="inference runtime: auto (default) runs the model file as it is (a .pt on torch); another "
                        "name exports the .pt once into a cache ($TILER_CACHE_DIR, default ~/.cache/tiler) and runs "
                        "that; openvino-int8 also quantises it, calibrated on 128 of the job's windows (the fastest "
                        "here on a CPU; detections within about a point of the .pt's)")
    p.add_argument("--precision", metavar="auto|fp32|fp16|bf16",
                   help="the network's arithmetic: auto (default) is bf16 for a .pt on a CPU with native bfloat16 "
                        "(AVX512-BF16 or AMX; the network 1.5-1.8x faster on the development CPU, detections within "
                        "0.01 of fp32's, see README), else fp32; fp16 runs on a CUDA GPU; fp32 gives the .pt's own "
                        "results")
    p.add_argument("--device", help="auto (CUDA if present, else the CPU; the default), cpu, cuda:N (an error if "
                   "absent)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: all cores locally, "
                   "--cpus-per-worker on Ray)")
    p.add_argument("--read-threads", type=int,
                   help="in-process runner: threads reading windows ahead of the model (default: three quarters "
                        "of the cores, at most 16, on a GPU; 1 for a CPU model that leaves a core free; for one that "
                        "uses every core, as many as it has, each batch read when the model needs it)")
    p.add_argument("--gdal-cache-mb", type=int,
                   help="GDAL block cache in MiB (default: two rows of windows, 16-1024 MiB)")
    s = p.add_argument_group("surveys and checkpoints")
    s.add_argument("--dedup-frames", action=argparse.BooleanOptionalAction, default=None,
                   help="report an object seen in several overlapping frames once, keeping the view farthest from "
                        "its frame's edge (default: on when georeferenced frames overlap on the ground)")
    s.add_argument("--fail-fast", action="store_true", default=None,
                   help="stop at the first frame that cannot be read (exit 2); by default it is recorded, the "
                        "survey goes on, and tiler exits 3")
    s.add_argument("--work-dir", metavar="DIR", help="checkpoints of finished windows, written as they arrive "
                   "(default: OUT.tiler-work beside the output); removed after success")
    s.add_argument("--resume", action="store_true", default=None,
                   help="continue a run that was killed or crashed, from its work dir: only the windows never "
                        "checkpointed are computed, and the output is identical to an uninterrupted run")
    s.add_argument("--keep-work", action="store_true", default=None, help="keep the work dir after success")
    s.add_argument("--no-checkpoint", action="store_true",
                   help="write no checkpoints (a killed job then starts over)")
    g = p.add_argument_group("execution")
    g.add_argument("--runner", metavar="auto|local|ray",
                   help="local: in this process; ray: Ray Data pipeline (embedded local Ray unless --address); "
                        "auto (default): ray when --address or RAY_ADDRESS names a cluster, --workers asks for more "
                        "than one, or the machine has several GPUs; local otherwise")
    g.add_argument("--address", help="join an existing Ray cluster: auto, or ray://host:10001")
    g.add_argument("--workers", type=int, help="predictor actors (default: as many as the resources allow)")
    g.add_argument("--gpus-per-worker", type=float, help="GPUs per predictor actor, fractions allowed (default 0)")
    g.add_argument("--cpus-per-worker", type=float, help="CPUs per predictor actor (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return p


def _synth_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("synth", help="write a synthetic aerial GeoTIFF scene and its ground truth",
                       description="Write a tiled, deflate-compressed GeoTIFF (EPSG:32633, 0.3 m pixels) with "
                                   "vehicles, buildings and boats, block by block, plus OUT.truth.geojson.")
    p.add_argument("out", help="output GeoTIFF path")
    p.add_argument("--size", default="4096x4096", metavar="WxH", help="scene size in pixels (default 4096x4096)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--nodata-margin", type=int, default=0, help="pixels of nodata along the left and top edges")
    p.add_argument("--large-objects", action="store_true",
                   help="also large buildings, 300-900 px across (rectangles, L and U shapes, many with "
                        "courtyards), at most two per 2048-px cell; their truth features say \"large\": true")
    p.add_argument("--truth", default=None, help="ground-truth path (default OUT with .truth.geojson)")
    return p


def _quicklook_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("quicklook", help="draw a result's outlines over the decimated raster, as a PNG",
                       description="Read RASTER decimated (from its overviews when it has them, never whole at full "
                                   "resolution), draw the outline of every feature of FEATURES in its class colour, "
                                   "and write a PNG.")
    p.add_argument("features", help="tiler output: .geojson, .geojsonl, .gpkg, .fgb or .parquet (in any CRS, or pixels)")
    p.add_argument("--raster", required=True, help="the raster the features were detected on (path or GDAL URI)")
    p.add_argument("--out", required=True, help="output .png")
    p.add_argument("--max-size", type=int, default=4096, metavar="N",
                   help="longest side of the PNG in pixels (default 4096; a window is never upscaled)")
    p.add_argument("--window", metavar="X0,Y0,X1,Y1",
                   help="only this part of the raster, in full-resolution pixels (x1, y1 exclusive)")
    p.add_argument("--bands", metavar="B,B,B", help="1-based bands to show as RGB (default 1,2,3)")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tiler", description="Tiled Ultralytics inference over large rasters.")
    sub = parser.add_subparsers(dest="command", required=True)
    _predict_parser(sub)
    _synth_parser(sub)
    _quicklook_parser(sub)
    return parser


def load_job_spec(path: str | os.PathLike) -> dict:
    """A YAML job spec: a mapping of JobConfig names (source, model, out, patch_size, …)."""
    import yaml

    try:
        with open(path) as f:
            spec = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"job spec not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"job spec {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"job spec {path} must be a mapping of option names to values")
    return {str(k).replace("-", "_"): v for k, v in spec.items()}


_CLI_TO_CONFIG = ("model", "out", "out_dir", "out_format", "dedup_frames", "fail_fast", "work_dir", "resume",
                  "keep_work", "patch_size", "overlap", "conf", "iou", "imgsz", "classes", "max_det", "nms_threshold",
                  "match_metric", "class_agnostic", "sorter", "merge", "simplify", "largest_part", "bands", "stretch",
                  "gsd", "coarse_factor", "height", "dem", "stac_asset", "batch_size", "backend", "precision", "device",
                  "threads", "read_threads", "gdal_cache_mb", "crs", "report", "runner", "address", "workers",
                  "gpus_per_worker", "cpus_per_worker")


def predict_config(args) -> JobConfig:
    values = load_job_spec(args.config) if args.config else {}
    if args.input:
        values["source"] = args.input[0] if len(args.input) == 1 else args.input
    values.update({k: getattr(args, k) for k in _CLI_TO_CONFIG if getattr(args, k) is not None})
    if args.no_progress:
        values["progress"] = False
    if args.no_provenance:
        values["provenance"] = False
    if args.no_checkpoint:
        values["checkpoint"] = False
    for name in ("source", "model"):
        if not values.get(name):
            flag = "INPUT" if name == "source" else f"--{name}"
            raise ConfigError(f"{flag} is required (on the command line or as '{name}' in --config)")
    if not values.get("out") and not values.get("out_dir"):
        raise ConfigError("--out is required, or --out-dir (on the command line or as 'out' in --config)")
    return JobConfig.from_mapping(values)


def _run_predict(args) -> int:
    from .job import TileJob

    cfg = predict_config(args)
    try:
        result = TileJob.from_config(cfg).run()
    except KeyboardInterrupt:
        from .checkpoint import MANIFEST, default_work_dir

        work = cfg.work_dir or default_work_dir(cfg.out, cfg.out_dir)
        if work is not None and (Path(work) / MANIFEST).is_file():
            print(f"tiler: interrupted; --resume continues from the checkpoints in {work}", file=sys.stderr)
            return 130
        raise
    print(f"tiler: {result.summary()} -> {cfg.out or cfg.out_dir}")
    failed = getattr(result, "failed", [])
    for source, error in failed:
        print(f"tiler: frame failed: {error if source in error else f'{source}: {error}'}", file=sys.stderr)
    return EXIT_PARTIAL if failed else 0


def _run_synth(args) -> int:
    from .config import parse_size
    from .synth import SceneSpec, write_scene

    w, h = parse_size(args.size, "size")
    spec = SceneSpec(w, h, seed=args.seed, nodata_margin=args.nodata_margin, large_objects=args.large_objects)
    path, truth = write_scene(spec, args.out, args.truth)
    print(f"tiler: wrote {w}x{h} scene {path} and ground truth {truth}")
    return 0


def _run_quicklook(args) -> int:
    from .config import parse_int_list
    from .quicklook import write_quicklook

    bands = parse_int_list(args.bands, "bands")
    path = write_quicklook(args.out, args.raster, args.features, args.max_size, args.window, bands)
    print(f"tiler: wrote quicklook {path}")
    return 0


_COMMANDS = {"predict": _run_predict, "synth": _run_synth, "quicklook": _run_quicklook}


def _show_warning(message, category, filename, lineno, file=None, line=None, _default=warnings.showwarning):
    """tiler's own warnings as one line, like its errors; anything else's as Python shows them."""
    if Path(filename).resolve().is_relative_to(Path(__file__).resolve().parent):
        print(f"tiler: warning: {message}", file=file or sys.stderr)
    else:
        _default(message, category, filename, lineno, file, line)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning, module="rasterio")
    warnings.showwarning = _show_warning
    try:
        return _COMMANDS[args.command](args)
    except TilerError as exc:
        print(f"tiler: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("tiler: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
