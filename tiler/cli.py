"""Command line: `tiler predict …` and `tiler synth …`."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from .errors import TilerError

EXIT_USAGE = 2


def _predict_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "predict", help="run a model over a raster, merge, write GeoJSON",
        description="Cut INPUT into overlapping patches, run an Ultralytics detect/obb/segment model on each, "
                    "merge duplicates across patch seams, and write one GeoJSON in EPSG:4326 (or pixel "
                    "coordinates for images without georeferencing).")
    p.add_argument("input", help="raster path or GDAL URI (GeoTIFF, COG, PNG, JPEG, /vsis3/…)")
    p.add_argument("--model", required=True, help="local Ultralytics .pt file (never downloaded)")
    p.add_argument("--out", required=True, help="output file: .geojson, or .geojsonl for GeoJSON text sequences")
    p.add_argument("--patch-size", default="640", metavar="N|WxH",
                   help="patch size in raster pixels, square N or WxH (default 640); patches are never resized")
    p.add_argument("--overlap", default="0.25", metavar="F|FX,FY",
                   help="overlap between neighbouring patches as a fraction of the patch, 0 <= F < 1 (default 0.25)")
    p.add_argument("--conf", type=float, default=0.25, help="minimum confidence (default 0.25)")
    p.add_argument("--iou", type=float, default=0.7, help="IoU of the model's own per-patch NMS (default 0.7)")
    p.add_argument("--imgsz", type=int, default=None,
                   help="model input size (default: the larger patch side, so pixels are not rescaled)")
    p.add_argument("--classes", default=None, metavar="ID,ID", help="keep only these class ids, e.g. 1,4")
    p.add_argument("--max-det", type=int, default=3000, help="maximum detections per patch (default 3000)")
    p.add_argument("--nms-threshold", type=float, default=0.5,
                   help="merge: suppress a detection overlapping a better one by more than this (default 0.5)")
    p.add_argument("--match-metric", default="ios", choices=None, metavar="ios|iou",
                   help="merge overlap measure: ios = intersection over the smaller area (default), iou")
    p.add_argument("--class-agnostic", action="store_true",
                   help="merge across classes (default: only detections of the same class suppress each other)")
    p.add_argument("--sorter", default="score", metavar="score|intelligent",
                   help="merge order: by score (default), or confidence bins then larger area first")
    p.add_argument("--bands", default=None, metavar="B,B,B", help="1-based bands to use as RGB (default 1,2,3)")
    p.add_argument("--batch-size", type=int, default=8, help="patches per forward pass (default 8)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda:N (default auto)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--gdal-cache-mb", type=int, default=256, help="GDAL block cache in MiB (default 256)")
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
    p.add_argument("--truth", default=None, help="ground-truth path (default OUT with .truth.geojson)")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tiler", description="Tiled Ultralytics inference over large rasters.")
    sub = parser.add_subparsers(dest="command", required=True)
    _predict_parser(sub)
    _synth_parser(sub)
    return parser


def _run_predict(args) -> int:
    from .job import TileJob

    job = TileJob(args.input, args.model, out=args.out, patch_size=args.patch_size, overlap=args.overlap,
                  conf=args.conf, iou=args.iou, imgsz=args.imgsz, classes=args.classes, max_det=args.max_det,
                  nms_threshold=args.nms_threshold, match_metric=args.match_metric,
                  class_agnostic=args.class_agnostic, sorter=args.sorter, bands=args.bands,
                  batch_size=args.batch_size, device=args.device, threads=args.threads,
                  gdal_cache_mb=args.gdal_cache_mb, progress=not args.no_progress)
    result = job.run()
    print(f"tiler: {result.summary()} -> {args.out}")
    return 0


def _run_synth(args) -> int:
    from .config import parse_size
    from .synth import SceneSpec, write_scene

    w, h = parse_size(args.size, "size")
    path, truth = write_scene(SceneSpec(w, h, seed=args.seed, nodata_margin=args.nodata_margin), args.out,
                              args.truth)
    print(f"tiler: wrote {w}x{h} scene {path} and ground truth {truth}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning, module="rasterio")
    try:
        if args.command == "predict":
            return _run_predict(args)
        return _run_synth(args)
    except TilerError as exc:
        print(f"tiler: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("tiler: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
