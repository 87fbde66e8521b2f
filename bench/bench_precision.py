"""fp32 against bf16 (what precision auto runs on a CPU with native bfloat16): the same jobs, scored against labels.

    .venv/bin/python bench/bench_precision.py

1. DOTA P0706 (531 ships, ../shared), yolov8n-obb at 640 px, 25 % overlap: objects, ships kept, ship precision,
   recall and F1 at IoU 0.3, per precision.
2. Generated scenes (seeds 31 and 32 at 3000 x 3000, 900 at 2048 x 2048), each of the project's three models at
   320 px: objects, then per class and overall precision / recall (IoU 0.5) and the median IoU of the matched
   objects (outlines for segment), per precision.
Whole local jobs (`TileJob`, every other option its default); job seconds are printed too, but they are single
runs: speed is measured side by side in bench_default_vs_sahi.py (`--also-precision fp32`).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
P0706 = REPO.parent / "shared" / "data" / "dota" / "P0706.png"
DOTA_MODEL = REPO.parent / "shared" / "models" / "yolov8n-obb.pt"


def main() -> int:
    sys.path.insert(0, str(REPO))
    from tiler.evaluate import match, read_dota_labels, scene_report
    from tiler.job import TileJob
    from tiler.model.predictor import cpu_has_native_bf16
    from tiler.synth import SceneSpec, write_scene

    if not cpu_has_native_bf16():
        print("this CPU has no native bfloat16: precision auto is fp32 here, nothing to compare")
        return 0
    if P0706.exists() and DOTA_MODEL.exists():
        names, truth, _ = read_dota_labels(P0706.with_suffix(".txt"))
        for precision in ("fp32", "bf16"):
            t = time.perf_counter()
            r = TileJob(P0706, DOTA_MODEL, patch_size=640, overlap=0.25, progress=False, runner="local",
                        precision=precision).run()
            d = r.detections
            ship = d.class_id == next(k for k, v in r.names.items() if v == "ship")
            s = match(d.geometries()[ship], d.score[ship], truth[names == "ship"], iou_threshold=0.3)
            f1 = 2 * s.precision * s.recall / (s.precision + s.recall)
            print(f"P0706 {precision}: {len(d)} objects, {ship.sum()} ships, P {s.precision:.4f} R {s.recall:.4f} "
                  f"F1 {f1:.4f} ({time.perf_counter() - t:.1f} s)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for seed, size in ((31, 3000), (32, 3000), (900, 2048)):
            tif, labels = write_scene(SceneSpec(size, size, seed=seed), work / f"scene{seed}.tif")
            for task in ("obb", "detect", "segment"):
                print(f"seed {seed}, {size} px, tiler-{task}:")
                for precision in ("fp32", "bf16"):
                    out = work / f"{seed}-{task}-{precision}.geojson"
                    t = time.perf_counter()
                    r = TileJob(tif, REPO / "models" / f"tiler-{task}.pt", patch_size=320, overlap=0.25,
                                progress=False, runner="local", precision=precision, out=out).run()
                    seconds = time.perf_counter() - t
                    rep = scene_report(out, labels, tif, task)
                    print(f"  {precision}: {len(r.detections)} objects ({seconds:.1f} s) | " + " | ".join(
                        f"{k} P {v.precision:.3f} R {v.recall:.3f} IoU {rep['median_iou'][k]:.3f}"
                        for k, v in rep["scores"].items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
